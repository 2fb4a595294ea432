"""The native engine (fastgan/native.py, fastgan/csrc/native_step.cpp): the same training as
the torch engine, step by step, its choice and fallback, and checkpoints that move between
engines."""

import copy
import json

import pytest
import torch

from fastgan.cli import main
from fastgan.config import TrainConfig, resolve_lengths
from fastgan.data import load_dataset
from fastgan.step import Training

SMALL = {"batch_size": 32, "ae_hidden": (64,), "g_hidden": (64, 48), "d_hidden": (64,)}
ENGINE_RTOL = 1e-5  # native vs torch engine: losses per step and weights after 50 fp32 steps
# Weights may also differ by 5% of one Adam step (lr 2e-4): Adam's update has the same size
# for a tiny gradient as for a large one, so a gradient that is a sum cancelling to nearly
# zero carries its summation order's rounding into a whole step (1 weight in 10^5 here).
WEIGHT_ATOL = 1e-5


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
    for name, module in torch_run.models.items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(native.models[name].state_dict()[key], value,
                                       rtol=ENGINE_RTOL, atol=WEIGHT_ATOL, msg=f"{name}.{key}")
    for name, optimizer in torch_run.optimizers.items():
        params = zip(optimizer.param_groups[0]["params"],
                     native.optimizers[name].param_groups[0]["params"], strict=True)
        for want, have in params:
            assert native.optimizers[name].state[have]["step"].item() == \
                optimizer.state[want]["step"].item()


@pytest.mark.parametrize("settings", [
    # both phases: 50 autoencoder steps, then 50 GAN steps with augmented real batches
    {"mode": "latent-cgan", "steps": 100, "ae_steps": 50, "augment": 0.25},
    {"mode": "cgan", "steps": 50, "pack": 2, "label_smoothing": 0.1},
    {"mode": "cgan", "steps": 50, "unconditional": True},
], ids=["latent-cgan", "cgan-pack-smoothing", "unconditional"])
def test_the_native_engine_trains_as_the_torch_engine(mnist, settings):
    native, eager = training(mnist, **settings), training(mnist, engine="torch", **settings)
    assert (native.engine, eager.engine) == ("native", "torch")
    assert_same_run(native, eager, settings["steps"])


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
