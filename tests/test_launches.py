"""The fusion claims, counted: how many Triton kernels each op launches, forward and
backward, and that relu / leaky_relu / tanh / sigmoid never store the pre-activation."""

import sys

import pytest
import torch

from fastgan import ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class LaunchCounter:
    """Counts launches of the Triton kernels (kernel[grid](...)) by name."""

    def __init__(self, monkeypatch):
        self.counts = {}
        for module, names in (
            ("fastgan.backends.triton.dense",
             ("dense_fwd_kernel", "dense_dx_kernel", "dense_dw_kernel")),
            ("fastgan.backends.triton.pointwise_loss", ("pointwise_loss_kernel",)),
            ("fastgan.backends.triton.gan_loss", ("gan_loss_kernel",)),
        ):
            for name in names:
                monkeypatch.setattr(sys.modules[module], name,
                                    self._counting(name, getattr(sys.modules[module], name)))

    def _counting(self, name, kernel):
        counter = self

        class Counting:
            def __getitem__(self, grid):
                counter.counts[name] = counter.counts.get(name, 0) + 1
                return kernel[grid]

        return Counting()

    def take(self):
        counts, self.counts = self.counts, {}
        return counts


@pytest.fixture
def launches(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "triton")
    import fastgan.backends.triton  # noqa: F401  (the modules to patch)

    return LaunchCounter(monkeypatch)


def test_gan_losses_are_one_launch_forward_and_none_backward(launches):
    real = torch.randn(64, 1, device=DEVICE, requires_grad=True)
    fake = torch.randn(64, 1, device=DEVICE, requires_grad=True)
    loss = ops.gan_d_loss(real, fake, 0.9)
    assert launches.take() == {"gan_loss_kernel": 1}
    loss.backward()
    assert launches.take() == {}
    ops.gan_g_loss(fake).backward()
    assert launches.take() == {"gan_loss_kernel": 1}


@pytest.mark.parametrize("op", (ops.bce_with_logits, ops.mse_loss))
def test_pointwise_losses_are_one_launch_forward_and_none_backward(launches, op):
    x = torch.randn(33, 5, device=DEVICE, requires_grad=True)
    target = torch.rand(33, 5, device=DEVICE, requires_grad=True)
    loss = op(x, target)
    assert launches.take() == {"pointwise_loss_kernel": 1}
    loss.backward()
    assert launches.take() == {}


@pytest.mark.parametrize("activation", ("leaky_relu", "gelu", "none"))
def test_dense_is_one_launch_forward_and_two_backward(launches, activation):
    x = torch.randn(7, 20, device=DEVICE, requires_grad=True)
    weight = torch.randn(5, 20, device=DEVICE, requires_grad=True)
    bias = torch.randn(5, device=DEVICE, requires_grad=True)
    out = ops.fused_dense(x, weight, bias, activation)
    assert launches.take() == {"dense_fwd_kernel": 1}
    out.sum().backward()
    # dz is recomputed inside both GEMM kernels, and db comes out of the dw kernel.
    assert launches.take() == {"dense_dx_kernel": 1, "dense_dw_kernel": 1}


@pytest.mark.parametrize("activation", ("relu", "leaky_relu", "tanh", "sigmoid", "none"))
def test_pre_activation_is_never_stored(activation):
    x, weight = torch.randn(4, 6), torch.randn(3, 6)
    _, preact = torch.ops.fastgan.fused_dense_fwd(x, weight, None, activation, 0.2)
    assert preact.numel() == 0
    _, preact = torch.ops.fastgan.fused_dense_fwd(x, weight, None, "gelu", 0.2)
    assert preact.shape == (4, 3)
