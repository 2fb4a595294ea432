"""The native engine (fastgan/native.py, fastgan/csrc/native_step.cpp): the same training as
the torch engine, step by step, its choice and fallback, and checkpoints that move between
engines."""

import copy
import json

import pytest
import torch

from fastgan.backends.codes import GEMM_LIBRARY_CODES
from fastgan.cli import main
from fastgan.config import TrainConfig, resolve_lengths
from fastgan.data import load_dataset
from fastgan.devices import cpu_model
from fastgan.native import gemm_choices_path, onednn_available
from fastgan.step import Training

SMALL = {"batch_size": 32, "ae_hidden": (64,), "g_hidden": (64, 48), "d_hidden": (64,)}
ENGINE_RTOL = 1e-5  # native vs torch engine: losses per step and weights after 50 fp32 steps
WEIGHT_ATOL = 1e-5
# Adam's update has the same size for a tiny gradient as for a large one, so a gradient that is
# a sum cancelling to nearly zero carries its summation order's rounding into a whole step.
# Such weights are rare (1 in 50,000 here): up to 1 in 10^4 may be off by at most one step.
CANCELLED_SHARE = 1e-4


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


def training(data, **settings) -> Training:
    config = resolve_lengths(TrainConfig(**{**SMALL, **settings}), len(data.x))
    return Training(config, data, torch.device("cpu"))


def losses_over(run: Training, steps: int) -> list[dict[str, float]]:
    return [{k: v.item() for k, v in run.train_step().items()} for _ in range(steps)]


def assert_same_run(native: Training, torch_run: Training, steps: int) -> None:
    expected, got = losses_over(torch_run, steps), losses_over(native, steps)
    for step, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert set(have) == set(want), step
        for name in want:
            assert have[name] == pytest.approx(want[name], rel=ENGINE_RTOL), (step, name)
    one_step = max(group["lr"] for optimizer in native.optimizers.values()
                   for group in optimizer.param_groups)
    for name, module in torch_run.models.items():
        for key, value in module.state_dict().items():
            have = native.models[name].state_dict()[key]
            if not value.is_floating_point():
                assert torch.equal(have, value), f"{name}.{key}"
                continue
            apart = ~torch.isclose(have, value, rtol=ENGINE_RTOL, atol=WEIGHT_ATOL)
            assert apart.sum() <= CANCELLED_SHARE * apart.numel(), f"{name}.{key}: {apart.sum()}"
            assert torch.all((have - value).abs() <= one_step), f"{name}.{key}"
    for name, optimizer in torch_run.optimizers.items():
        params = zip(optimizer.param_groups[0]["params"],
                     native.optimizers[name].param_groups[0]["params"], strict=True)
        for want, have in params:
            assert native.optimizers[name].state[have]["step"].item() == \
                optimizer.state[want]["step"].item()


@pytest.mark.parametrize("gemm", ["aten", "onednn"])
@pytest.mark.parametrize("settings", [
    # both phases: 50 autoencoder steps, then 50 GAN steps with augmented real batches
    {"mode": "latent-cgan", "steps": 100, "ae_steps": 50, "augment": 0.25},
    {"mode": "cgan", "steps": 50, "pack": 2, "label_smoothing": 0.1},
    {"mode": "cgan", "steps": 50, "unconditional": True},
], ids=["latent-cgan", "cgan-pack-smoothing", "unconditional"])
def test_the_native_engine_trains_as_the_torch_engine(mnist, settings, gemm, monkeypatch):
    monkeypatch.setenv("FASTGAN_NATIVE_GEMM", gemm)
    if gemm == "onednn" and not onednn_available():  # then asking for it is bad input
        with pytest.raises(ValueError, match="FASTGAN_NATIVE_GEMM=onednn"):
            training(mnist, **settings)
        return
    native, eager = training(mnist, **settings), training(mnist, engine="torch", **settings)
    assert (native.engine, eager.engine) == ("native", "torch")
    assert_same_run(native, eager, settings["steps"])


def test_gemm_choices_are_timed_once_and_cached_per_cpu(mnist, monkeypatch):
    settings = {"mode": "cgan", "steps": 4, "batch_size": 128}  # shapes large enough to time
    path = gemm_choices_path()
    path.unlink(missing_ok=True)
    losses_over(training(mnist, **settings), 1)
    if not onednn_available():  # nothing to choose between
        assert not path.exists()
        return
    saved = json.loads(path.read_text())
    assert saved["cpu"] == cpu_model() and saved["choices"]
    assert {choice[-1] for choice in saved["choices"]} <= set(GEMM_LIBRARY_CODES.values()) - {0}
    # a run takes the file's choices: with each set to ATen, it is the ATen run bit for bit
    for choice in saved["choices"]:
        choice[-1] = GEMM_LIBRARY_CODES["aten"]
    path.write_text(json.dumps(saved))
    from_file = losses_over(training(mnist, **settings), 3)
    monkeypatch.setenv("FASTGAN_NATIVE_GEMM", "aten")
    assert from_file == losses_over(training(mnist, **settings), 3)


def test_gemm_choices_made_under_instruction_set_caps_are_kept_apart(monkeypatch):
    uncapped = gemm_choices_path()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert gemm_choices_path() != uncapped and "avx2" in gemm_choices_path().name


def test_an_unknown_gemm_library_is_refused_before_training(mnist, monkeypatch):
    monkeypatch.setenv("FASTGAN_NATIVE_GEMM", "mkl")
    with pytest.raises(ValueError, match="FASTGAN_NATIVE_GEMM: expected one of auto, aten"):
        training(mnist, mode="cgan", steps=2)


def test_a_native_checkpoint_resumes_bit_exact_in_either_engine(mnist):
    settings = {"mode": "latent-cgan", "steps": 12, "ae_steps": 4}
    whole = training(mnist, **settings)
    expected = losses_over(whole, 12)
    first = training(mnist, **settings)
    losses_over(first, 6)
    state = first.state_dict()
    resumed = training(mnist, **settings)
    # a copy each, as from a file: a loaded optimizer keeps the state's tensors and trains them
    resumed.load_state_dict(copy.deepcopy(state))
    assert losses_over(resumed, 6) == expected[6:]
    in_torch = training(mnist, engine="torch", **settings)
    in_torch.load_state_dict(copy.deepcopy(state))
    for step, (want, have) in enumerate(zip(expected[6:], losses_over(in_torch, 6),
                                            strict=True)):
        for name in want:
            assert have[name] == pytest.approx(want[name], rel=ENGINE_RTOL), (step, name)


def test_runs_the_native_engine_cannot_take_fall_back_with_one_line(mnist, capsys):
    run = training(mnist, mode="cgan", precision="bf16", steps=2)
    assert run.engine == "torch"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch engine" in err and "bf16" in err
    assert training(mnist, mode="cgan", compile=True, steps=2).engine == "torch"
    assert training(mnist, mode="cgan", engine="torch", steps=2).engine == "torch"
    assert capsys.readouterr().err.count("\n") == 1  # --compile's fallback; none for torch


def test_the_engine_flag_reaches_the_config(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--mode", "ae", "--steps", "2", "--batch-size",
                 "8", "--engine", "torch", "--eval-every", "2"]) == 0
    assert json.loads((out / "config.json").read_text())["engine"] == "torch"
