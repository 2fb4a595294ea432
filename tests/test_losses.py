"""bce_with_logits, mse_loss, gan_d_loss and gan_g_loss against the float64 reference, on
every backend: values and every gradient, awkward shapes and layouts, extreme and
non-finite logits."""

import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import as_reference, grads, randn

from fastgan import ops
from fastgan.ops import reference
from fastgan.testing import assert_close

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
SHAPES = ((), (1,), (7,), (33, 5), (2, 3, 7), (64, 1), (300, 127))
REDUCTIONS = ("none", "mean", "sum")
NON_FINITE = (float("inf"), float("-inf"), float("nan"), 1e4, -1e4, 0.0, 30.0, -30.0)


def compare(fn, ref_fn, inputs, dtype, kwargs=None, float64_reference=True):
    """fn(*inputs) against ref_fn on float64 copies (or on same-dtype copies when
    float64_reference is False), value and gradients."""
    kwargs = kwargs or {}
    out = fn(*inputs, **kwargs)
    ref_inputs = as_reference(*inputs) if float64_reference else [
        t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    expected = ref_fn(*ref_inputs, **kwargs)
    assert out.shape == expected.shape
    assert_close(out, expected, dtype, "loss")
    grad_out = torch.rand(out.shape, dtype=torch.float64) + 0.5
    if not any(t.requires_grad for t in inputs):
        return
    actual = grads(out, inputs, grad_out.to(out.dtype).to(out.device))
    wanted = grads(expected, ref_inputs, grad_out.to(expected.dtype).to(expected.device))
    for i, (a, e) in enumerate(zip(actual, wanted, strict=True)):
        if a is not None:
            assert a.dtype == inputs[i].dtype
            assert_close(a, e, dtype, f"grad of input {i}")


# ---------------------------------------------------------------------------------------
# bce_with_logits


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bce_matches_reference(backend, shape, dtype, reduction):
    logits = randn(shape, dtype, backend.device, scale=3.0, requires_grad=True)
    target = torch.rand(shape, dtype=torch.float64).to(backend.device, dtype)
    compare(ops.bce_with_logits, reference.bce_with_logits, [logits, target], dtype,
            {"reduction": reduction})


WEIGHT_SHAPES = {"none": None, "full": (7, 5), "last_dim": (5,), "per_row": (7, 1),
                 "scalar": (1,)}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("pos_weight", ("none", "last_dim", "full"))
@pytest.mark.parametrize("weight", tuple(WEIGHT_SHAPES))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_bce_weight_and_pos_weight_broadcast(backend, dtype, weight, pos_weight, reduction):
    logits = randn((7, 5), dtype, backend.device, scale=3.0, requires_grad=True)
    target = torch.rand(7, 5, dtype=dtype).to(backend.device).requires_grad_()
    w = None if weight == "none" else torch.rand(WEIGHT_SHAPES[weight], dtype=dtype).to(
        backend.device) + 0.5
    pw = None if pos_weight == "none" else torch.rand(WEIGHT_SHAPES[pos_weight],
                                                      dtype=dtype).to(backend.device) * 3
    compare(lambda x, t: ops.bce_with_logits(x, t, w, pos_weight=pw, reduction=reduction),
            lambda x, t: reference.bce_with_logits(
                x, t, _f64(w), _f64(pw), reduction=reduction),
            [logits, target], dtype)


def _f64(t):
    return None if t is None else t.to(torch.float64)


@pytest.mark.parametrize("target_value", (0.0, 0.5, 1.0))
@pytest.mark.parametrize("with_pos_weight", (False, True))
def test_bce_extreme_and_non_finite_logits_follow_torch(backend, target_value, with_pos_weight):
    logits = torch.tensor(NON_FINITE, device=backend.device).requires_grad_()
    target = torch.full_like(logits, target_value).requires_grad_()
    pw = torch.full_like(logits, 2.0) if with_pos_weight else None
    # torch itself in float32 is the reference here: NaN and inf must land where it puts them.
    compare(lambda x, t: ops.bce_with_logits(x, t, pos_weight=pw, reduction="none"),
            lambda x, t: F.binary_cross_entropy_with_logits(x, t, pos_weight=pw,
                                                            reduction="none"),
            [logits, target], torch.float32, float64_reference=False)


def test_bce_large_finite_logits_are_stable(backend):
    logits = torch.tensor([1e4, -1e4, 80.0, -80.0, 1e-7], device=backend.device)
    logits.requires_grad_()
    for target in (torch.zeros_like(logits), torch.ones_like(logits)):
        loss = ops.bce_with_logits(logits, target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        compare(ops.bce_with_logits, reference.bce_with_logits, [logits, target],
                torch.float32, {"reduction": "none"})


def test_bce_non_contiguous_inputs(backend):
    logits = randn((33, 5), torch.float32, backend.device, layout="transposed",
                   requires_grad=True)
    target = torch.rand(33, 10, device=backend.device)[:, ::2]
    weight = torch.rand(33, 1, device=backend.device).expand(33, 5)
    assert not (logits.is_contiguous() or target.is_contiguous())
    compare(lambda x, t: ops.bce_with_logits(x, t, weight),
            lambda x, t: reference.bce_with_logits(x, t, weight.double()),
            [logits, target], torch.float32)


def test_bce_mixed_dtypes_promote_as_torch(backend):
    logits = randn((6, 4), torch.float32, backend.device, requires_grad=True)
    target = torch.rand(6, 4, dtype=torch.float64, device=backend.device)
    out = ops.bce_with_logits(logits, target)
    assert out.dtype == F.binary_cross_entropy_with_logits(logits, target).dtype
    compare(ops.bce_with_logits, reference.bce_with_logits, [logits, target], torch.float32)


def test_bce_multi_program_reduction(backend):
    # Large enough that the Triton kernel reduces through per-program partial sums.
    logits = randn((40_000,), torch.float32, backend.device, requires_grad=True)
    target = torch.rand(40_000, device=backend.device)
    for reduction in ("mean", "sum"):
        compare(ops.bce_with_logits, reference.bce_with_logits, [logits, target],
                torch.float32, {"reduction": reduction})


def test_bce_legacy_reduction_arguments():
    logits, target = torch.randn(5), torch.rand(5)
    with pytest.warns(UserWarning, match="size_average"):
        expected = F.binary_cross_entropy_with_logits(logits, target, size_average=False)
    with pytest.warns(UserWarning, match="size_average"):
        actual = ops.bce_with_logits(logits, target, size_average=False)
    assert_close(actual, expected, torch.float32)


def test_bce_empty_input(backend):
    logits = torch.empty(0, 3, device=backend.device, requires_grad=True)
    target = torch.empty(0, 3, device=backend.device)
    for reduction in REDUCTIONS:
        compare(ops.bce_with_logits, reference.bce_with_logits, [logits, target],
                torch.float32, {"reduction": reduction})


# ---------------------------------------------------------------------------------------
# mse_loss


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mse_matches_reference(backend, shape, dtype, reduction):
    # scale 0.5 keeps the (300, 127) float16 sum inside float16's range
    x = randn(shape, dtype, backend.device, scale=0.5, requires_grad=True)
    target = randn(shape, dtype, backend.device, scale=0.5, requires_grad=True)
    compare(ops.mse_loss, reference.mse_loss, [x, target], dtype, {"reduction": reduction})


def test_mse_non_contiguous_and_large(backend):
    x = randn((300, 127), torch.float32, backend.device, layout="transposed",
              requires_grad=True)
    target = randn((300, 127), torch.float32, backend.device, layout="strided")
    compare(ops.mse_loss, reference.mse_loss, [x, target], torch.float32)
    big = randn((20_000, 2), torch.float32, backend.device, requires_grad=True)
    compare(ops.mse_loss, reference.mse_loss, [big, torch.zeros_like(big)], torch.float32)


# ---------------------------------------------------------------------------------------
# GAN losses

LOGIT_SHAPES = (((1, 1), (1, 1)), ((64, 1), (64, 1)), ((7,), (33,)), ((33, 3), (5,)),
                ((20_000, 1), (3, 1)))


@pytest.mark.parametrize("targets", ((1.0, 0.0), (0.9, 0.0), (0.7, 0.2)), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shapes", LOGIT_SHAPES, ids=str)
def test_gan_d_loss_matches_reference(backend, shapes, dtype, targets):
    real = randn(shapes[0], dtype, backend.device, scale=3.0, requires_grad=True)
    fake = randn(shapes[1], dtype, backend.device, scale=3.0, requires_grad=True)
    compare(ops.gan_d_loss, reference.gan_d_loss, [real, fake], dtype,
            {"real_target": targets[0], "fake_target": targets[1]})


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [s[0] for s in LOGIT_SHAPES], ids=str)
def test_gan_g_loss_matches_reference(backend, shape, dtype):
    fake = randn(shape, dtype, backend.device, scale=3.0, requires_grad=True)
    compare(ops.gan_g_loss, reference.gan_g_loss, [fake], dtype)


def test_gan_losses_only_requested_gradients(backend):
    real = randn((16, 1), torch.float32, backend.device)  # D step with fake detached
    fake = randn((16, 1), torch.float32, backend.device, requires_grad=True)
    compare(ops.gan_d_loss, reference.gan_d_loss, [real, fake], torch.float32)
    compare(ops.gan_d_loss, reference.gan_d_loss, [fake, real], torch.float32)


def test_gan_losses_non_contiguous_logits(backend):
    logits = randn((32, 3), torch.float32, backend.device, requires_grad=True)
    real, fake = logits[:, :1], logits[:, 2:]
    loss = ops.gan_d_loss(real, fake, 0.9)
    ref = as_reference(logits)[0]
    expected = reference.gan_d_loss(ref[:, :1], ref[:, 2:], 0.9)
    assert_close(loss, expected, torch.float32)
    assert_close(torch.autograd.grad(loss, logits)[0], torch.autograd.grad(expected, ref)[0],
                 torch.float32)


@pytest.mark.parametrize("real_target", (1.0, 0.9))
def test_gan_losses_extreme_and_non_finite_logits_follow_torch(backend, real_target):
    real = torch.tensor(NON_FINITE, device=backend.device).requires_grad_()
    fake = torch.tensor(NON_FINITE[::-1], device=backend.device).requires_grad_()
    compare(ops.gan_d_loss, reference.gan_d_loss, [real, fake], torch.float32,
            {"real_target": real_target}, float64_reference=False)
    compare(ops.gan_g_loss, reference.gan_g_loss, [fake], torch.float32,
            float64_reference=False)
    finite_real = torch.tensor([1e4, -1e4, 50.0, -50.0], device=backend.device)
    finite_fake = torch.tensor([-50.0, 1e4, -1e4, 50.0], device=backend.device)
    compare(ops.gan_d_loss, reference.gan_d_loss,
            [finite_real.requires_grad_(), finite_fake.requires_grad_()], torch.float32,
            {"real_target": real_target})


# ---------------------------------------------------------------------------------------
# Bad input


def _refuse(monkeypatch, module, fn, error, match):
    def no_kernels(device):
        raise AssertionError("a kernel was launched before the arguments were checked")

    for where in (module, "fastgan.ops._library"):  # the op's backend calls, and its dispatch
        monkeypatch.setattr(sys.modules[where], "implementation", no_kernels)
    with pytest.raises(error, match=match):
        fn()


X, T = torch.randn(4, 3), torch.rand(4, 3)


@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.bce_with_logits(X, T[:2]), ValueError, r"target: expected shape \(4, 3\)"),
    (lambda: ops.bce_with_logits(X.long(), T), TypeError, "input: expected a floating-point"),
    (lambda: ops.bce_with_logits(X, T, reduction="avg"), ValueError,
     "reduction: expected one of"),
    (lambda: ops.bce_with_logits(X, T, torch.rand(2)), ValueError,
     "weight: expected a shape that broadcasts"),
    (lambda: ops.bce_with_logits(X, T, pos_weight=torch.rand(3, requires_grad=True)),
     ValueError, "pos_weight: bce_with_logits is not differentiable"),
    (lambda: ops.bce_with_logits(X, T.to("meta")), ValueError,
     "target: expected a tensor on cpu"),
    (lambda: ops.bce_with_logits([1.0], T), TypeError, "input: expected a torch.Tensor"),
    (lambda: ops.mse_loss(X, T.t()), ValueError, "target: expected shape"),
    (lambda: ops.mse_loss(X, T, reduction="max"), ValueError, "reduction"),
])
def test_pointwise_losses_refuse_bad_input(monkeypatch, call, error, match):
    _refuse(monkeypatch, "fastgan.ops.pointwise_losses", call, error, match)


@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.gan_d_loss(X, T.int()), TypeError, "fake_logits: expected a floating-point"),
    (lambda: ops.gan_d_loss(X, T, real_target="1"), TypeError, "real_target: expected a float"),
    (lambda: ops.gan_d_loss(X, T.to("meta")), ValueError, "fake_logits: expected a tensor on"),
    (lambda: ops.gan_g_loss(None), TypeError, "fake_logits: expected a torch.Tensor"),
])
def test_gan_losses_refuse_bad_input(monkeypatch, call, error, match):
    _refuse(monkeypatch, "fastgan.ops.gan_losses", call, error, match)


def test_losses_backward_twice_with_retained_graph_accumulates(backend):
    # The backward may hand the saved gradient itself to autograd; a second backward over
    # the same graph must still add, not alias.
    x = randn((16, 5), torch.float32, backend.device, requires_grad=True)
    target = torch.rand(16, 5, device=backend.device)
    real = randn((16, 1), torch.float32, backend.device, requires_grad=True)
    for loss in (ops.mse_loss(x, target), ops.bce_with_logits(x, target),
                 ops.gan_d_loss(real, x[:, :1], 0.9)):
        x.grad = real.grad = None
        loss.backward(retain_graph=True)
        first = x.grad.clone()
        loss.backward()
        assert_close(x.grad, 2 * first.double(), torch.float32)
