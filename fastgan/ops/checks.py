"""Argument checks shared by the ops. They run before any kernel launches, and every error
names the argument and what was expected."""

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {value.dtype}"
        )


def check_same_device(first_name: str, first: torch.Tensor, **others) -> None:
    for name, value in others.items():
        if value is not None and value.device != first.device:
            raise ValueError(
                f"{name}: expected a tensor on {first.device} (the device of {first_name}), "
                f"got {value.device}"
            )


def check_choice(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def check_same_shape(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.shape != ref.shape:
        raise ValueError(
            f"{name}: expected shape {tuple(ref.shape)} (the shape of {ref_name}), "
            f"got {tuple(value.shape)}"
        )


def check_broadcastable(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    try:
        shape = torch.broadcast_shapes(value.shape, ref.shape)
    except RuntimeError:
        shape = None
    if shape != ref.shape:
        raise ValueError(
            f"{name}: expected a shape that broadcasts to {tuple(ref.shape)} (the shape of "
            f"{ref_name}), got {tuple(value.shape)}"
        )


def check_no_grad(name: str, value: torch.Tensor | None, op: str) -> None:
    if value is not None and value.requires_grad:
        raise ValueError(f"{name}: {op} is not differentiable with respect to {name}; detach it")


def check_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
