"""CUDA-only checks: no host sync inside the ops, and the ops inside CUDA-graph capture.
They run on the GPU machine through scripts/gpu_check.sh."""

import pytest
import torch

from fastgan import ops
from fastgan.nn import FusedLinear
from fastgan.testing import assert_close

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _matmul_precision():
    # A Training sets the process-wide fp32 policy: leave the next test torch's as it was.
    saved = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(saved)


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


def test_compile_reduce_overhead_replays_its_graph_and_matches_eager(monkeypatch):
    generator, discriminator = _models()
    noise, real = torch.randn(64, 16, device="cuda"), torch.rand(64, 32, device="cuda")
    replays = []
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay",
                        lambda graph: (replays.append(graph), replay(graph))[1])
    compiled = torch.compile(_losses, fullgraph=True, mode="reduce-overhead")
    # Forward only, without autograd: a training graph's forward with its backward pending
    # is never replayed. Calls: warm-up, record (replayed once to run it), then replays.
    with torch.no_grad():
        for _ in range(4):
            loss = compiled(generator, discriminator, noise, real).clone()
        expected = _losses(generator, discriminator, noise, real)
    assert len(replays) >= 2, "the compiled graph was recorded but never replayed"
    assert_close(loss, expected.double(), torch.float32)


# ---------------------------------------------------------------------------------------
# The training engine: one CUDA graph per iteration, compiled losses.

# Per-step relative tolerance between compiled and eager iterations over 50 steps of fp32
# training. Their kernels sum in different orders, and GAN training amplifies such
# differences step by step; a graph replaying stale inputs or a wrong update is off by far
# more. A graph changes no bit: it replays the same kernels on the same random offsets.
ENGINE_RTOL = 2e-2


def _engine_run(**settings):
    from fastgan.config import TrainConfig, resolve_lengths
    from fastgan.data import load_dataset
    from fastgan.step import Training

    data = load_dataset("mnist").to("cuda")
    # Strict fp32 unless a test says otherwise: the paths then differ by summation order alone.
    values = {"mode": "latent-cgan", "steps": 50, "ae_steps": 20, "batch_size": 64,
              "augment": 0.25, "tf32": False, **settings}
    return Training(resolve_lengths(TrainConfig(**values), len(data.x)), data,
                    torch.device("cuda"))


def _trajectory(run, steps=50):
    return [{k: v.item() for k, v in run.train_step().items()} for _ in range(steps)]


def _assert_same_weights(got, expected):
    """Every model's state, the EMA generator's included, bit for bit."""
    for name, module in expected.models.items():
        for key, value in module.state_dict().items():
            assert torch.equal(got.models[name].state_dict()[key], value), f"{name}.{key}"


def test_graphs_change_no_bit_and_compiled_iterations_stay_close():
    paths = {"eager": {"compile": False, "cuda_graphs": False},
             "compiled": {"compile": True, "cuda_graphs": False},
             "graphed": {"compile": False, "cuda_graphs": True},
             "compiled+graphed": {}}
    runs = {name: _engine_run(**settings) for name, settings in paths.items()}
    trajectories = {name: _trajectory(run) for name, run in runs.items()}
    expected = trajectories["eager"]
    assert len({round(step["ae"], 6) for step in expected[:20]}) == 20  # new batches each step
    for graphed, plain in (("graphed", "eager"), ("compiled+graphed", "compiled")):
        assert trajectories[graphed] == trajectories[plain], graphed
        _assert_same_weights(runs[graphed], runs[plain])
    for step, (want, have) in enumerate(zip(expected, trajectories["compiled"], strict=True)):
        for loss in want:
            assert have[loss] == pytest.approx(want[loss], rel=ENGINE_RTOL), (step, loss)


def test_the_default_cuda_run_is_compiled_and_graphed_with_tf32():
    from fastgan.backends.triton.dense import _input_precision

    run = _engine_run(tf32=True)
    assert run.compiled and run.graphed
    assert all(group["capturable"] and group["fused"]
               for optimizer in run.optimizers.values() for group in optimizer.param_groups)
    assert torch.get_float32_matmul_precision() == "high"
    assert _input_precision(torch.float32) == "tf32"
    _engine_run(tf32=False)
    assert torch.get_float32_matmul_precision() == "highest"
    assert _input_precision(torch.float32) == "ieee"


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


def test_a_graphed_run_resumes_from_its_checkpoint_bit_for_bit(tmp_path):
    from fastgan import checkpoint

    run = _engine_run()
    _trajectory(run, 30)
    # Saved to a file at step 30, as training does: state_dict()'s tensors are the live ones.
    path = tmp_path / "last.pt"
    checkpoint.save({"config": {}, "data": {}, "best": None, **run.state_dict()}, path)
    expected = _trajectory(run, 5)
    resumed = _engine_run()
    resumed.load_state_dict(checkpoint.load(path))
    assert resumed.step == 30
    assert _trajectory(resumed, 5) == expected
    _assert_same_weights(resumed, run)


def test_bf16_graphed_iterations_train():
    losses = _trajectory(_engine_run(precision="bf16"), 50)
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in losses)
