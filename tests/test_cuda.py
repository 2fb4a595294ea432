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


# ---------------------------------------------------------------------------------------
# The training engine: one CUDA graph per iteration, compiled losses.

# Per-step relative tolerance between the engine's paths over 50 steps of fp32 training.
# Their kernels sum in different orders, and GAN training amplifies such differences step
# by step; a graph replaying stale inputs or a wrong update is off by far more.
ENGINE_RTOL = 2e-2


def _engine_run(**settings):
    from fastgan.config import TrainConfig, resolve_lengths
    from fastgan.data import load_dataset
    from fastgan.step import Training

    data = load_dataset("mnist").to("cuda")
    values = {"mode": "latent-cgan", "steps": 50, "ae_steps": 20, "batch_size": 64,
              "augment": 0.25, **settings}
    return Training(resolve_lengths(TrainConfig(**values), len(data.x)), data,
                    torch.device("cuda"))


def _trajectory(run, steps=50):
    return [{k: v.item() for k, v in run.train_step().items()} for _ in range(steps)]


def test_graphed_compiled_and_eager_iterations_give_the_same_trajectory():
    paths = {"eager": {"compile": False, "cuda_graphs": False},
             "compiled": {"compile": True, "cuda_graphs": False},
             "graphed": {"compile": False, "cuda_graphs": True},
             "compiled+graphed": {}}
    trajectories = {name: _trajectory(_engine_run(**settings)) for name, settings in paths.items()}
    expected = trajectories.pop("eager")
    assert len({round(step["ae"], 6) for step in expected[:20]}) == 20  # new batches each step
    for name, got in trajectories.items():
        for step, (want, have) in enumerate(zip(expected, got, strict=True)):
            for loss in want:
                assert have[loss] == pytest.approx(want[loss], rel=ENGINE_RTOL), (name, step, loss)


def test_the_default_cuda_run_is_compiled_and_graphed():
    run = _engine_run()
    assert run.compiled and run.graphed
    assert all(group["capturable"] and group["fused"]
               for optimizer in run.optimizers.values() for group in optimizer.param_groups)


@pytest.mark.parametrize("settings", [{}, {"compile": False, "cuda_graphs": False}],
                         ids=["graphed", "eager"])
def test_training_iterations_never_sync_with_the_host(settings):
    run = _engine_run(**settings)
    for _ in range(25):  # warm-up, capture and the GAN phase's latent tables
        run.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            run.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_graphed_run_checkpoints_and_resumes():
    run = _engine_run()
    _trajectory(run, 30)
    state = run.state_dict()
    expected = _trajectory(run, 5)
    resumed = _engine_run()
    resumed.load_state_dict(state)
    got = _trajectory(resumed, 5)
    for want, have in zip(expected, got, strict=True):
        for loss in want:
            assert have[loss] == pytest.approx(want[loss], rel=ENGINE_RTOL)


def test_bf16_graphed_iterations_train():
    losses = _trajectory(_engine_run(precision="bf16"), 50)
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in losses)
