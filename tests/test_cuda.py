"""CUDA-only checks: no host sync inside the ops, and the ops inside CUDA-graph capture.
They run on the GPU machine through scripts/gpu_check.sh."""

import pytest
import torch

from fastgan import ops
from fastgan.nn import FusedLinear
from fastgan.testing import assert_close

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _models():
    generator = torch.nn.Sequential(
        FusedLinear(16, 64, activation="leaky_relu", negative_slope=0.2),
        FusedLinear(64, 32, activation="sigmoid")).cuda()
    discriminator = torch.nn.Sequential(
        FusedLinear(32, 64, activation="leaky_relu", negative_slope=0.2),
        FusedLinear(64, 1)).cuda()
    return generator, discriminator


def _losses(generator, discriminator, noise, real):
    fake = generator(noise)
    d_loss = ops.gan_d_loss(discriminator(real), discriminator(fake.detach()), 0.9)
    g_loss = ops.gan_g_loss(discriminator(fake))
    return d_loss + g_loss + ops.mse_loss(fake, real) + ops.bce_with_logits(fake, real)


def test_ops_never_sync_with_the_host():
    generator, discriminator = _models()
    noise, real = torch.randn(64, 16, device="cuda"), torch.rand(64, 32, device="cuda")
    _losses(generator, discriminator, noise, real).backward()  # compile the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _losses(generator, discriminator, noise, real).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_forward_and_backward_inside_cuda_graph_capture():
    generator, discriminator = _models()
    params = [*generator.parameters(), *discriminator.parameters()]
    noise, real = torch.randn(64, 16, device="cuda"), torch.rand(64, 32, device="cuda")

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compile kernels) outside the capture
        for _ in range(3):
            torch.autograd.grad(_losses(generator, discriminator, noise, real), params)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _losses(generator, discriminator, noise, real)
        static_grads = torch.autograd.grad(static_loss, params)

    noise.copy_(torch.randn_like(noise))
    real.copy_(torch.rand_like(real))
    graph.replay()
    eager_loss = _losses(generator, discriminator, noise, real)
    eager_grads = torch.autograd.grad(eager_loss, params)
    assert_close(static_loss, eager_loss.double(), torch.float32)
    for captured, eager in zip(static_grads, eager_grads, strict=True):
        assert_close(captured, eager.double(), torch.float32)


def test_compile_reduce_overhead_matches_eager():
    generator, discriminator = _models()
    noise, real = torch.randn(64, 16, device="cuda"), torch.rand(64, 32, device="cuda")
    compiled = torch.compile(_losses, fullgraph=True, mode="reduce-overhead")
    for _ in range(3):
        loss = compiled(generator, discriminator, noise, real)
    assert_close(loss, _losses(generator, discriminator, noise, real).double(), torch.float32)
