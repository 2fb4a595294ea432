"""The PyTorch backend: the internal interface (fastgan/backends/__init__.py) written with plain
torch ops. It is the fallback where neither Triton nor a C++ compiler is available, and the
readable statement of what the kernels compute."""

import torch
import torch.nn.functional as F

from fastgan.backends.codes import ACTIVATIONS, LOSSES, REDUCTIONS
from fastgan.backends.common import accumulate_dtype, result_dtype

_EMPTY = (0,)
_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty(_EMPTY)


def activate(z: torch.Tensor, activation: int, negative_slope: float) -> torch.Tensor:
    name = ACTIVATIONS[activation]
    if name == "none":
        return z
    if name == "relu":
        return torch.relu(z)
    if name == "leaky_relu":
        return F.leaky_relu(z, negative_slope)
    if name == "tanh":
        return torch.tanh(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    return F.gelu(z)


def activation_grad(saved: torch.Tensor, activation: int, negative_slope: float) -> torch.Tensor:
    """d act / d z, from the saved output (relu, leaky_relu, tanh, sigmoid) or the saved
    pre-activation (gelu). Not called for "none"."""
    name = ACTIVATIONS[activation]
    s = saved.to(accumulate_dtype(saved.dtype))
    if name == "relu":  # NaN: 1, as torch.relu's backward
        return (s <= 0).logical_not().to(s.dtype)
    if name == "leaky_relu":  # NaN: the slope, as F.leaky_relu's backward
        return torch.full_like(s, negative_slope).masked_fill_(s > 0, 1.0)
    if name == "tanh":
        return 1.0 - s * s
    if name == "sigmoid":
        return s * (1.0 - s)
    cdf = 0.5 * (1.0 + torch.erf(s * _SQRT1_2))
    return cdf + s * torch.exp(-0.5 * s * s) * _INV_SQRT_2PI


def dense_fwd(x, weight, bias, activation, negative_slope, save_preact):
    z = F.linear(x, weight, bias)
    out = activate(z, activation, negative_slope).contiguous()
    return out, (z.contiguous() if save_preact else _empty_like(x))


def dense_bwd(grad_out, x, weight, saved, activation, negative_slope, need_dx, need_dw, need_db):
    if ACTIVATIONS[activation] == "none":
        dz = grad_out
    else:
        dz = (grad_out.to(accumulate_dtype(x.dtype)) * activation_grad(saved, activation,
              negative_slope)).to(x.dtype)
    dx = dz @ weight if need_dx else _empty_like(x)
    dw = dz.t() @ x if need_dw else _empty_like(weight)
    db = dz.sum(0, dtype=accumulate_dtype(x.dtype)).to(x.dtype) if need_db else _empty_like(x)
    return dx.contiguous(), dw.contiguous(), db


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp_max(x, 0.0) - torch.log1p(torch.exp(-x.abs()))


def bce_terms(x, t, weight, pos_weight, reduce_scale, need_gx, need_gt):
    """Elementwise BCE-with-logits loss and its derivatives, as torch computes them (so that
    ±inf and NaN give what torch gives)."""
    ls = log_sigmoid(x)
    if pos_weight is None:
        loss = (1.0 - t) * x - ls
        gx = torch.sigmoid(x) - t if need_gx else None
        gt = -x if need_gt else None
    else:
        log_weight = (pos_weight - 1.0) * t + 1.0
        loss = (1.0 - t) * x - log_weight * ls
        pt = pos_weight * t
        gx = (pt + 1.0 - t) * torch.sigmoid(x) - pt if need_gx else None
        gt = log_sigmoid(-x) - pos_weight * ls if need_gt else None
    scale = reduce_scale if weight is None else weight * reduce_scale
    return loss if weight is None else loss * weight, _mul(gx, scale), _mul(gt, scale)


def _mul(g, scale):
    return None if g is None else g * scale


def pointwise_loss_fwd(input, target, weight, pos_weight, loss, reduction, need_grad_input,
                       need_grad_target):
    out_dtype = result_dtype(input, target, weight, pos_weight)
    acc = accumulate_dtype(out_dtype)
    x, t = input.to(acc), target.to(acc)
    # The mean of nothing is NaN, as in torch.
    mean_scale = 1.0 / input.numel() if input.numel() else float("nan")
    reduce_scale = mean_scale if REDUCTIONS[reduction] == "mean" else 1.0
    if LOSSES[loss] == "bce_with_logits":
        w = None if weight is None else weight.to(acc)
        pw = None if pos_weight is None else pos_weight.to(acc)
        value, gx, gt = bce_terms(x, t, w, pw, reduce_scale, need_grad_input, need_grad_target)
    else:
        diff = x - t
        value = diff * diff
        gx = 2.0 * reduce_scale * diff if need_grad_input or need_grad_target else None
        gt = -gx if need_grad_target else None
    if REDUCTIONS[reduction] != "none":
        value = value.sum() * reduce_scale
    grad_input = gx.to(input.dtype).contiguous() if need_grad_input else _empty_like(input)
    grad_target = gt.to(target.dtype).contiguous() if need_grad_target else _empty_like(target)
    return value.to(out_dtype).contiguous(), grad_input, grad_target


def _mean_bce(x, target, need_grad):
    acc = accumulate_dtype(x.dtype)
    xf = x.to(acc)
    t = torch.full_like(xf, target)
    scale = 1.0 / x.numel() if x.numel() else float("nan")
    value, g, _ = bce_terms(xf, t, None, None, scale, need_grad, False)
    return value.mean(), (g.to(x.dtype) if need_grad else _empty_like(x))


def gan_loss_fwd(a, target_a, b, target_b, need_grad_a, need_grad_b):
    loss, grad_a = _mean_bce(a, target_a, need_grad_a)
    grad_b = _empty_like(a)
    if b is not None:
        loss_b, grad_b = _mean_bce(b, target_b, need_grad_b)
        loss = loss + loss_b
    return loss.to(result_dtype(a, b)), grad_a, grad_b
