"""Checkpoints: written atomically (a temp file in the same directory, fsync, rename), so a
crash leaves the previous file whole, and loaded with torch.load(weights_only=True), so a
file can hold tensors and plain values but never code that runs on load."""

from pathlib import Path

import torch

from fastgan.files import atomic_write


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: the message names the file and what is wrong."""


def save(state: dict, path: Path) -> None:
    with atomic_write(path) as file:
        torch.save(state, file)


def load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: no such checkpoint") from error
    except Exception as error:  # torch raises many types for bad files; all mean the same
        reason = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{path}: not a loadable fastgan checkpoint ({reason})") from error
    if not isinstance(state, dict) or "config" not in state:
        raise CheckpointError(f"{path}: not a fastgan checkpoint (no config in it)")
    return state
