"""The fastgan/csrc/ C++ CPU kernels: built with torch.utils.cpp_extension on first use, then
loaded as the torch.ops.fastgan_cpu operators.

The build lands in $FASTGAN_BUILD_DIR (default $FASTGAN_CACHE_DIR, itself by default
~/.cache/fastgan), in a folder keyed by the torch version, the machine and a hash of the
source and flags, so an edit or a torch upgrade rebuilds and an unchanged setup loads the
cached library. FASTGAN_NO_CPP=1 turns the kernels off.
"""

import hashlib
import os
import platform
import shutil
import sys
import sysconfig
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

from fastgan.files import build_dir

NAME = "fastgan_cpu"
# Package data (fastgan/csrc/), so every install, editable or not, carries the sources.
CSRC = Path(__file__).resolve().parents[1] / "csrc"
# the kernels, and the native training iteration (fastgan/native.py), in one library
SOURCES = [CSRC / "fastgan_cpu.cpp", CSRC / "native_step.cpp"]
HEADERS = [CSRC / "vec_math.h"]
# -fno-math-errno lets sqrt vectorize (torch builds with it too; no result changes).
# -ffp-contract=off: no a * b + c fused into one FMA, as ATen's vectorized kernels do not fuse
# them, so that the native engine's Adam rounds as torch's fused Adam does, bit for bit.
CFLAGS = ["-O3", "-fopenmp", "-march=native", "-fno-math-errno", "-ffp-contract=off"]
LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_loaded: bool | None = None  # None until the first build attempt
_error: Exception | None = None  # why the kernels are unavailable


def available() -> bool:
    """True when the C++ kernels are built and loaded (building them on the first call). The
    first failure warns once; FASTGAN_NO_CPP=1 gives False without a warning."""
    global _loaded, _error
    if _disabled():
        return False
    with _lock:
        if _loaded is None:
            try:
                _build_and_load()
                _loaded = True
            except Exception as exc:  # any build failure means "unavailable"
                _loaded, _error = False, exc
                # warn_explicit with no source file keeps the warning to one line.
                warnings.warn_explicit(
                    f"C++ CPU kernels unavailable ({_reason(exc)}); using the PyTorch path",
                    UserWarning, filename="fastgan", lineno=0)
    return _loaded


def require() -> None:
    """Raise RuntimeError saying why the C++ kernels cannot be used, if they cannot."""
    if _disabled():
        raise RuntimeError("fastgan: C++ CPU kernels disabled by FASTGAN_NO_CPP=1")
    if not available():
        raise RuntimeError(f"fastgan: C++ CPU kernels unavailable: {_reason(_error)}") from _error


def ops() -> SimpleNamespace:
    """The C++ ops: the backend interface (dense_fwd, dense_bwd, pointwise_loss_fwd,
    gan_loss_fwd) and, as <op>_autograd, the eager ops whose backward also runs in C++
    (fused_dense, pointwise_loss, gan_loss). Each is the op's default overload, the
    cheapest to call."""
    require()
    cpu = torch.ops.fastgan_cpu
    interface = {name: getattr(cpu, name).default for name in (
        "dense_fwd", "dense_bwd", "pointwise_loss_fwd", "gan_loss_fwd")}
    autograd = {f"{name}_autograd": getattr(cpu, name).default for name in (
        "fused_dense", "pointwise_loss", "gan_loss")}
    return SimpleNamespace(**interface, **autograd)


def _disabled() -> bool:
    return os.environ.get("FASTGAN_NO_CPP", "0").strip() not in ("", "0")


def _reason(exc: Exception | None) -> str:
    """One short line: the compiler's first error for a failed build, else the error's first
    line. The full compiler output stays in the exception that require() chains."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    if errors:
        first = errors[0].split("error:", 1)
        where = first[0].rstrip(": ").rsplit("/", 1)[-1]
        return f"compile error at {where}: {first[1].strip()}"[:200]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _build_dir(source_text: str) -> Path:
    # -march=native code runs only where it was built: key on the CPU as well as the sources.
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu += "".join(ln for ln in f if ln.startswith(("model name", "flags")))
    except OSError:
        cpu += platform.processor()
    # The sources' folder too: each install (a checkout, a wheel) builds once into its own.
    key = "\0".join([source_text, str(CSRC), *CFLAGS, *LDFLAGS, cpu, sys.version])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return build_dir() / f"{NAME}-torch{torch.__version__}-{digest}"


def _build_and_load() -> None:
    missing = [str(source) for source in SOURCES + HEADERS if not source.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} not found: this fastgan install lacks its csrc/")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise FileNotFoundError(f"no C++ compiler: {compiler!r} not found")
    build_dir = _build_dir("\0".join(s.read_text(encoding="utf-8") for s in SOURCES + HEADERS))
    build_dir.mkdir(parents=True, exist_ok=True)
    from torch.utils import cpp_extension  # slow to import: only when building

    # A pip-installed ninja sits next to the interpreter, which is not on PATH when a
    # virtualenv's python runs without being activated.
    old_path = os.environ.get("PATH")
    scripts = sysconfig.get_path("scripts")
    if shutil.which("ninja") is None and scripts and shutil.which("ninja", path=scripts):
        os.environ["PATH"] = os.pathsep.join(filter(None, [scripts, old_path]))
    try:
        cpp_extension.load(
            name=NAME,
            sources=[str(source) for source in SOURCES],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
    finally:
        if old_path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old_path
