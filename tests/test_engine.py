"""The training engine on the CPU: compiled and eager steps agree, the EMA's decay comes from
the device, optimizer state moves between runs with other implementation flags, and
`fastgan bench step` measures every variant. The CUDA-graph checks are in test_cuda.py."""

import json

import pytest
import torch

from fastgan.cli import main
from fastgan.config import TrainConfig, resolve_lengths
from fastgan.data import load_dataset
from fastgan.perf import bench_step
from fastgan.step import EMA_WARMUP, Training

SMALL = {"batch_size": 32, "ae_hidden": (64,), "g_hidden": (64,), "d_hidden": (64,)}
TRAJECTORY_RTOL = 1e-5  # compiled vs eager, per step, over 50 steps of fp32 training


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


def training(data, **settings) -> Training:
    config = resolve_lengths(TrainConfig(**{**SMALL, **settings}), len(data.x))
    return Training(config, data, torch.device("cpu"))


def losses_over(run: Training, steps: int) -> list[dict[str, float]]:
    return [{k: v.item() for k, v in run.train_step().items()} for _ in range(steps)]


def test_compiled_and_eager_steps_give_the_same_trajectory(mnist):
    # latent-cgan crosses both phases: 20 autoencoder steps, then 30 GAN steps
    settings = {"mode": "latent-cgan", "steps": 50, "ae_steps": 20, "augment": 0.25}
    eager, compiled = training(mnist, compile=False, **settings), \
        training(mnist, compile=True, **settings)
    assert not eager.compiled and compiled.compiled
    expected, got = losses_over(eager, 50), losses_over(compiled, 50)
    assert [set(step) for step in got] == [{"ae"}] * 20 + [{"d", "g"}] * 30
    for step, (want, have) in enumerate(zip(expected, got, strict=True)):
        for name in want:
            assert have[name] == pytest.approx(want[name], rel=TRAJECTORY_RTOL), (step, name)
    for name, module in eager.models.items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(compiled.models[name].state_dict()[key], value,
                                       rtol=1e-4, atol=1e-6, msg=f"{name}.{key}")


def test_the_cpu_runs_eager_with_fused_adam_by_default(mnist):
    run = training(mnist, mode="cgan", steps=4)
    assert not run.compiled and not run.graphed
    for optimizer in run.optimizers.values():
        assert all(group["fused"] and not group["capturable"]
                   for group in optimizer.param_groups)


def test_the_ema_decay_ramps_up_on_the_device(mnist):
    run = training(mnist, mode="cgan", steps=8, ema_decay=0.5)
    G, ema = run.models["generator"], run.models["ema_generator"]
    for t in range(3):  # decay = min(0.5, (1 + t) / (10 + t)): 0.1, 2/11, 0.25
        before = [p.clone() for p in ema.parameters()]
        run.train_step()
        decay = min(0.5, (1 + t) / (EMA_WARMUP + t))
        for old, new, param in zip(before, ema.parameters(), G.parameters(), strict=True):
            torch.testing.assert_close(new, decay * old + (1 - decay) * param)


def test_a_checkpoint_from_other_optimizer_flags_loads_and_trains_on(mnist):
    run = training(mnist, mode="cgan", steps=8)
    run.train_step()
    state = run.state_dict()
    for optimizer_state in state["optimizers"].values():  # as an unfused CPU run saves it
        for group in optimizer_state["param_groups"]:
            group.update(fused=None, capturable=False, foreach=None)
        for param_state in optimizer_state["state"].values():
            param_state["step"] = param_state["step"].to(torch.float64)

    resumed = training(mnist, mode="cgan", steps=8)
    resumed.load_state_dict(state)
    for optimizer in resumed.optimizers.values():
        assert all(group["fused"] for group in optimizer.param_groups)
        assert all(s["step"].dtype == torch.float32 for s in optimizer.state.values())
    assert resumed._ema_steps.item() == 1
    losses = resumed.train_step()
    assert all(torch.isfinite(loss) for loss in losses.values())


def test_engine_flags_reach_the_config(tmp_path):
    out = tmp_path / "run"
    precision = torch.get_float32_matmul_precision()
    assert main(["train", "--out", str(out), "--mode", "ae", "--steps", "2", "--batch-size",
                 "8", "--no-compile", "--no-cuda-graphs", "--no-tf32", "--eval-every", "2",
                 "--device", "cpu"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["compile"] is False and saved["cuda_graphs"] is False
    assert saved["tf32"] is False
    assert torch.get_float32_matmul_precision() == precision  # the CPU's is left alone


def test_bench_step_measures_every_variant_and_writes_the_report(tmp_path, capsys):
    assert main(["bench", "step", "--device", "cpu", "--quick", "--modes", "ae",
                 "--repeat-ms", "5", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    [path] = tmp_path.glob("step-cpu-*.json")
    report = json.loads(path.read_text())
    [row] = report["rows"]
    assert (row["mode"], row["batch"], row["errors"]) == ("ae", 64, {})
    assert set(row["samples_per_s"]) == set(report["variants"]) >= {
        "eager", "compile", "fastgan", "fastgan_torch_engine", "fastgan_compiled",
        "fastgan_torch_ops"}
    assert all(rate > 0 for rate in row["samples_per_s"].values())
    assert row["fastgan_vs_eager"] == pytest.approx(
        row["ms"]["eager"] / row["ms"]["fastgan"], rel=1e-2)
    assert "c/a" in printed and f"wrote {path}" in printed


def test_bench_step_writes_each_row_as_it_finishes(tmp_path, monkeypatch, capsys):
    # A run cut short (here: interrupted while timing the second row, as a timeout would)
    # keeps the rows measured so far, in the report and in the log.
    rows_timed = []

    def stop_at_second(fns, device, repeat_ms):
        if rows_timed:
            raise KeyboardInterrupt
        rows_timed.append(list(fns))
        return dict.fromkeys(fns, 1.0)

    monkeypatch.setattr(bench_step, "time_interleaved", stop_at_second)
    assert main(["bench", "step", "--device", "cpu", "--modes", "ae", "--batches", "8,16",
                 "--variants", "eager,fastgan_torch_engine", "--out", str(tmp_path)]) == 130
    assert rows_timed == [["eager", "fastgan_torch_engine"]]  # timed together, in one row
    [path] = tmp_path.glob("step-cpu-*.json")
    report = json.loads(path.read_text())
    assert report["variants"] == ["eager", "fastgan_torch_engine"]
    [row] = report["rows"]
    assert row["batch"] == 8 and row["ms"] == {"eager": 1.0, "fastgan_torch_engine": 1.0}
    assert "ae b=8 eager: 1.0000 ms" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--modes", "gan"], "--modes: expected comma-separated modes"),
    (["--variants", "eager,fast"], "--variants: expected comma-separated names of eager"),
    (["--batches", "0"], "--batches: expected comma-separated positive integers"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--repeat-ms", "-1"],
     "--device cuda: no CUDA GPU" if not torch.cuda.is_available() else "--repeat-ms"),
])
def test_bench_step_bad_input_is_one_line(args, message, capsys):
    assert main(["bench", "step", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
