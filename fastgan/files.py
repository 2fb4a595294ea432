"""Files written whole or not at all, and where fastgan caches things."""

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def cache_dir() -> Path:
    """$FASTGAN_CACHE_DIR, default ~/.cache/fastgan: measured peaks, trained classifiers, the
    native engine's GEMM choices and (unless $FASTGAN_BUILD_DIR says otherwise) the C++
    build."""
    return Path(os.environ.get("FASTGAN_CACHE_DIR") or Path.home() / ".cache" / "fastgan")


def build_dir() -> Path:
    """$FASTGAN_BUILD_DIR, default cache_dir(): where the C++ kernels are built. Apart, so that
    the tests can keep a throwaway cache while reusing the (minute-long) C++ build."""
    return Path(os.environ.get("FASTGAN_BUILD_DIR") or cache_dir())


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` only once fully written and synced (temp file in the
    same directory, fsync, rename): a crash or an error leaves the old file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:  # say which file
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    _fsync_dir(path.parent)  # make the rename itself durable


def write_json(path: Path, value) -> None:
    """`value` as indented JSON, written atomically."""
    with atomic_write(path) as file:
        file.write((json.dumps(value, indent=2) + "\n").encode())


def remove_unfinished(directory: Path) -> None:
    """Delete the temp files atomic_write leaves behind when its process is killed."""
    for path in Path(directory).glob(".*.tmp"):
        path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems don't open directories; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
