"""fused_dense(x, weight, bias=None, activation="none", negative_slope=0.01)

act(x @ weight.T + bias) in one kernel, with weight in nn.Linear layout and any leading
batch dimensions, as F.linear. The backward applies act' inside the GEMMs that make dx
and dw, and db comes out of the dw pass. Kernels: fastgan/backends/triton/dense.py (Triton) and
fastgan/csrc/fastgan_cpu.cpp (CPU).
"""

import math

import torch
from torch import Tensor

from fastgan.backends.codes import ACTIVATION_CODES, ACTIVATIONS, FROM_OUTPUT
from fastgan.backends.select import implementation
from fastgan.ops import checks
from fastgan.ops._library import define_public_op, dispatch, forbid_double_backward

# ---------------------------------------------------------------------------------------
# Backend calls, shared by every path.


def _as_2d(t: Tensor) -> Tensor:
    """(..., features) -> (rows, features), a view when the strides allow it."""
    return t if t.dim() == 2 else t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def _forward(x, weight, bias, activation, negative_slope):
    """(out, preact); preact is the pre-activation for gelu, else empty."""
    out, preact = implementation(x.device).dense_fwd(
        _as_2d(x), weight, bias, ACTIVATION_CODES[activation], negative_slope,
        activation == "gelu")
    if x.dim() != 2:
        out_shape = (*x.shape[:-1], weight.shape[0])
        out, preact = out.view(out_shape), (preact.view(out_shape) if preact.numel() else preact)
    return out, preact


def _saved_for_backward(activation, out, preact):
    """What act' is computed from: the output, the pre-activation (gelu) or nothing."""
    return preact if activation == "gelu" else out if activation in FROM_OUTPUT else None


def _backward(grad_out, x, weight, saved, activation, negative_slope, need_dx, need_dw,
              need_db):
    """(dx, dw, db); gradients not asked for come back empty."""
    grad_2d = _as_2d(grad_out)
    dx, dw, db = implementation(x.device).dense_bwd(
        grad_2d, _as_2d(x), weight, grad_2d if saved is None else _as_2d(saved),
        ACTIVATION_CODES[activation], negative_slope, need_dx, need_dw, need_db)
    return (dx.view(x.shape) if need_dx and x.dim() != 2 else dx), dw, db


# ---------------------------------------------------------------------------------------
# Registered ops: what torch.compile and tracing see.


@torch.library.custom_op("fastgan::fused_dense_fwd", mutates_args=())
def fused_dense_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str,
                    negative_slope: float) -> tuple[Tensor, Tensor]:
    return _forward(x, weight, bias, activation, negative_slope)


@fused_dense_fwd.register_fake
def _(x, weight, bias, activation, negative_slope):
    out = x.new_empty((*x.shape[:-1], weight.shape[0]))
    return out, x.new_empty(out.shape if activation == "gelu" else (0,))


@torch.library.custom_op("fastgan::fused_dense_bwd", mutates_args=())
def fused_dense_bwd(grad_out: Tensor, x: Tensor, weight: Tensor, saved: Tensor | None,
                    activation: str, negative_slope: float, need_dx: bool, need_dw: bool,
                    need_db: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _backward(grad_out, x, weight, saved, activation, negative_slope, need_dx,
                     need_dw, need_db)


@fused_dense_bwd.register_fake
def _(grad_out, x, weight, saved, activation, negative_slope, need_dx, need_dw, need_db):
    return (x.new_empty(x.shape if need_dx else (0,)),
            weight.new_empty(weight.shape if need_dw else (0,)),
            x.new_empty((weight.shape[0],) if need_db else (0,)))


def _setup_context(ctx, inputs, output):
    x, weight, bias, activation, negative_slope = inputs
    ctx.save_for_backward(x, weight, _saved_for_backward(activation, *output))
    ctx.activation, ctx.negative_slope = activation, negative_slope


def _registered_backward(ctx, grad_out, _grad_preact):
    forbid_double_backward("fused_dense")
    x, weight, saved = ctx.saved_tensors
    need = ctx.needs_input_grad[:3]
    grads = torch.ops.fastgan.fused_dense_bwd(grad_out, x, weight, saved, ctx.activation,
                                              ctx.negative_slope, *need)
    return (*(g if n else None for g, n in zip(grads, need, strict=True)), None, None)


fused_dense_fwd.register_autograd(_registered_backward, setup_context=_setup_context)

# ---------------------------------------------------------------------------------------
# Eager path: the same backend calls without the dispatcher's Python layers.


class _FusedDense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, activation, negative_slope):
        out, preact = _forward(x, weight, bias, activation, negative_slope)
        ctx.save_for_backward(x, weight, _saved_for_backward(activation, out, preact))
        ctx.activation, ctx.negative_slope = activation, negative_slope
        return out

    @staticmethod
    def backward(ctx, grad_out):
        forbid_double_backward("fused_dense")
        x, weight, saved = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        grads = _backward(grad_out, x, weight, saved, ctx.activation, ctx.negative_slope,
                          *need)
        return (*(g if n else None for g, n in zip(grads, need, strict=True)), None, None)


# ---------------------------------------------------------------------------------------
# Public op and functional API.


def _check_args(x, weight, bias, activation, negative_slope):
    checks.check_float_tensor("x", x)
    checks.check_float_tensor("weight", weight)
    if bias is not None:
        checks.check_float_tensor("bias", bias)
    checks.check_same_device("x", x, weight=weight, bias=bias)
    checks.check_choice("activation", activation, ACTIVATIONS)
    if x.dim() < 1:
        raise ValueError("x: expected a tensor with at least 1 dimension, got a 0-dim tensor")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D (out_features, in_features) tensor, "
                         f"got shape {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight: expected in_features = {x.shape[-1]} (the last dimension of "
                         f"x), got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None and value.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {value.dtype}")
    checks.check_number("negative_slope", negative_slope)
    if activation == "leaky_relu" and negative_slope < 0:
        raise ValueError(f"negative_slope: expected >= 0 for leaky_relu (the backward reads the "
                         f"sign of the saved output), got {negative_slope}")


def _autocast(device_type, *tensors):
    dtype = torch.get_autocast_dtype(device_type)
    return (t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t
            for t in tensors)


def fused_dense(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                activation: str = "none", negative_slope: float = 0.01) -> Tensor:
    """act(F.linear(x, weight, bias)) in one fused kernel, forward and backward.

    activation: "none", "relu", "leaky_relu", "tanh", "sigmoid" or "gelu" (exact, as
    F.gelu). negative_slope is leaky_relu's slope and must be >= 0. Under autocast it
    computes in the autocast dtype, as F.linear does.
    """
    if isinstance(x, Tensor) and torch.is_autocast_enabled(x.device.type):
        x, weight, bias = _autocast(x.device.type, x, weight, bias)
    _check_args(x, weight, bias, activation, negative_slope)
    slope = float(negative_slope)
    return dispatch(
        "fused_dense", (x, weight, bias),
        registered=lambda: torch.ops.fastgan.fused_dense_fwd(x, weight, bias, activation,
                                                             slope)[0],
        native_args=(x, weight, bias, ACTIVATION_CODES[activation], slope),
        autograd=lambda: _FusedDense.apply(x, weight, bias, activation, slope),
        plain=lambda: _forward(x, weight, bias, activation, slope)[0])


# torch.ops.fastgan.fused_dense is this same function, registered with the dispatcher.
define_public_op(
    "fused_dense(Tensor x, Tensor weight, Tensor? bias=None, str activation='none', "
    "float negative_slope=0.01) -> Tensor",
    fused_dense,
)
