"""The ops as torch.library ops: opcheck, float64 gradcheck, torch.compile(fullgraph=True)
with no graph break, and the torch.ops.fastgan.* names."""

import pytest
import torch

from fastgan import nn as fnn
from fastgan import ops
from fastgan.backends.codes import ACTIVATIONS
from fastgan.ops import reference
from fastgan.testing import assert_close


def _f64(*shape, requires_grad=True):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=requires_grad)


def _samples(device):
    """(op, args) pairs covering every internal and public op."""
    x, w, b = _f64(3, 2, 6), _f64(4, 6), _f64(4)
    logits, target = _f64(5, 3), torch.rand(5, 3, dtype=torch.float64)
    real, fake = _f64(7, 1), _f64(6, 1)
    pos_weight = torch.rand(3, dtype=torch.float64) + 0.5
    samples = []
    for act in ACTIVATIONS:
        samples.append((torch.ops.fastgan.fused_dense_fwd.default, (x, w, b, act, 0.2)))
        samples.append((torch.ops.fastgan.fused_dense.default, (x, w, None, act, 0.2)))
    # The backward op runs inside autograd's backward and is itself not differentiable.
    saved = torch.randn(3, 2, 4, dtype=torch.float64)
    samples += [
        (torch.ops.fastgan.fused_dense_bwd.default,
         (_f64(3, 2, 4, requires_grad=False), x.detach(), w.detach(), saved, "tanh", 0.0,
          True, True, True)),
        (torch.ops.fastgan.pointwise_loss_fwd.default,
         (logits, target, None, pos_weight, "bce_with_logits", "mean", True, False)),
        (torch.ops.fastgan.pointwise_loss_fwd.default,
         (logits, target, None, None, "mse", "none", True, False)),
        (torch.ops.fastgan.bce_with_logits.default, (logits, target, None, pos_weight, "sum")),
        (torch.ops.fastgan.mse_loss.default, (logits, target, "mean")),
        (torch.ops.fastgan.gan_loss_fwd.default, (real, 0.9, fake, 0.0, True, True)),
        (torch.ops.fastgan.gan_d_loss.default, (real, fake, 0.9, 0.0)),
        (torch.ops.fastgan.gan_g_loss.default, (fake,)),
    ]
    return [(op, tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args))
            for op, args in samples]


def test_opcheck(backend):
    for op, args in _samples(backend.device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_dense_gradcheck(backend, activation):
    x, w, b = (t.to(backend.device).detach().requires_grad_() for t in
               (_f64(5, 3), _f64(4, 3), _f64(4)))
    assert torch.autograd.gradcheck(
        lambda x, w, b: ops.fused_dense(x, w, b, activation, 0.2), (x, w, b))


def test_loss_gradchecks(backend):
    d = backend.device
    logits, target = _f64(4, 3).to(d).detach().requires_grad_(), torch.rand(4, 3).double().to(d)
    target.requires_grad_()
    weight, pos_weight = torch.rand(1, 3).double().to(d), torch.rand(3).double().to(d) + 0.5
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda x, t, r=reduction: ops.bce_with_logits(x, t, weight, reduction=r,
                                                          pos_weight=pos_weight),
            (logits, target))
        assert torch.autograd.gradcheck(
            lambda x, t, r=reduction: ops.mse_loss(x, t, r), (logits, target))
    real, fake = _f64(6, 1).to(d).detach().requires_grad_(), _f64(5).to(d).detach()
    fake.requires_grad_()
    assert torch.autograd.gradcheck(lambda r, f: ops.gan_d_loss(r, f, 0.9, 0.1), (real, fake))
    assert torch.autograd.gradcheck(ops.gan_g_loss, (fake,))


def _gan_step(generator, discriminator, noise, real):
    """A small GAN iteration's losses through every op."""
    fake = generator(noise)
    d_loss = ops.gan_d_loss(discriminator(real), discriminator(fake.detach()), 0.9)
    g_loss = ops.gan_g_loss(discriminator(fake))
    weight = torch.ones(real.shape[-1], device=real.device)
    extra = ops.mse_loss(fake, real) + ops.bce_with_logits(fake, real.sigmoid(), weight)
    return d_loss + g_loss + extra


def _models(device):
    generator = torch.nn.Sequential(fnn.FusedLinear(8, 16, activation="gelu"),
                                    fnn.FusedLinear(16, 12, activation="tanh")).to(device)
    discriminator = torch.nn.Sequential(
        fnn.FusedLinear(12, 16, activation="leaky_relu", negative_slope=0.2),
        fnn.FusedLinear(16, 1)).to(device)
    return generator, discriminator


def test_compile_fullgraph_matches_eager(backend):
    _check_compiled_step(backend.device, "aot_eager")


def test_compile_fullgraph_with_inductor_matches_eager():
    # Inductor on the default path (C++ kernels on this CPU, Triton on a GPU machine).
    _check_compiled_step(torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                         "inductor")


def _check_compiled_step(device, compiler):
    torch._dynamo.reset()
    generator, discriminator = _models(device)
    noise = torch.randn(10, 8, device=device)
    real = torch.randn(10, 12, device=device)
    params = [*generator.parameters(), *discriminator.parameters()]

    eager = _gan_step(generator, discriminator, noise, real)
    eager_grads = torch.autograd.grad(eager, params)
    compiled_step = torch.compile(_gan_step, fullgraph=True, backend=compiler)
    compiled = compiled_step(generator, discriminator, noise, real)
    compiled_grads = torch.autograd.grad(compiled, params)
    assert_close(compiled, eager.double(), torch.float32)
    for a, e in zip(compiled_grads, eager_grads, strict=True):
        assert_close(a, e.double(), torch.float32)


def test_public_ops_are_registered():
    x, w = torch.randn(3, 4), torch.randn(2, 4)
    assert_close(torch.ops.fastgan.fused_dense(x, w, None, "relu"),
                 reference.fused_dense(x.double(), w.double(), None, "relu"), torch.float32)
    for name in ("fused_dense", "bce_with_logits", "mse_loss", "gan_d_loss", "gan_g_loss"):
        assert hasattr(torch.ops.fastgan, name) and callable(getattr(ops, name))


def test_double_backward_is_refused(backend):
    x = torch.randn(4, 3, device=backend.device, requires_grad=True)
    w = torch.randn(2, 3, device=backend.device, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ops.gan_g_loss(ops.fused_dense(x, w)), x, create_graph=True)
