"""Checkpoints: written atomically (a temp file in the same directory, fsync, rename), so a
crash leaves the previous file whole, and loaded with torch.load(weights_only=True), so a
file can hold tensors and plain values but never code that runs on load."""

import io
from pathlib import Path

import torch

from fastgan.files import atomic_write


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: the message names the file and what is wrong."""


# What every checkpoint holds (train.Loop.state): a file without them is not one.
KEYS = ("config", "data", "best", "step", "models", "optimizers", "rng")


def save(state: dict, path: Path) -> None:
    buffer = io.BytesIO()  # serialized first: a failed write is then an OSError (torch.save
    torch.save(state, buffer)  # into a file turns it into a RuntimeError)
    with atomic_write(path) as file:
        file.write(buffer.getbuffer())


def load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: no such checkpoint") from error
    except Exception as error:  # torch raises many types for bad files; all mean the same
        reason = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{path}: not a loadable fastgan checkpoint ({reason})") from error
    missing = [key for key in KEYS if key not in state] if isinstance(state, dict) else KEYS
    if missing:
        raise CheckpointError(f"{path}: not a fastgan checkpoint (no {', '.join(missing)} in it)")
    return state
