"""Runs that go wrong: killed at random moments, stopped by SIGTERM or Ctrl-C, diverging, or
writing to a full disk. Each keeps its last good checkpoint and says how it stopped."""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from fastgan import checkpoint, faults
from fastgan import files as fastgan_files
from fastgan.cli import main

# A run of a few seconds on the CPU: 300 steps of the ring mixture with 16-wide G and D.
RING = ["--dataset", "ring", "--batch-size", "32", "--g-hidden", "16", "--d-hidden", "16",
        "--checkpoint-every", "20", "--log-every", "10", "--eval-every", "100"]
TINY_MNIST = ["--ae-hidden", "32", "--g-hidden", "32", "--d-hidden", "32", "--batch-size", "16",
              "--eval-every", "1000"]


def command(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fastgan", "train", "--out", str(out), *RING, *args]


def environment() -> dict:
    # One thread: the same arithmetic in every process (and quiet on a shared machine);
    # conftest's Triton interpreter is for the in-process kernel tests only.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return {**env, "OMP_NUM_THREADS": "1"}


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(out, *args), capture_output=True, text=True,
                          env=environment(), timeout=300)


def weights(out: Path) -> dict:
    return checkpoint.load(out / "checkpoints" / "last.pt")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for name, state in a["models"].items():
        for key, value in state.items():
            assert torch.equal(value, b["models"][name][key]), (name, key)
    assert torch.equal(a["rng"], b["rng"])


def logged_losses(out: Path) -> dict:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: (line["loss_d"], line["loss_g"]) for line in lines if "loss_d" in line}


def unfinished_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# ---- SIGKILL ---------------------------------------------------------------------------------

def launch(out: Path) -> subprocess.Popen:
    return subprocess.Popen(command(out, "--steps", "300"), env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_checkpoint(process: subprocess.Popen, out: Path, step: int | None = None) -> None:
    """Until `out` holds a checkpoint (of `step`, if given) or the process has ended."""
    last = out / "checkpoints" / "last.pt"
    while process.poll() is None:
        if last.exists() and (step is None or checkpoint.load(last)["step"] == step):
            return
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_a_run_never_killed(tmp_path):
    # Time the uninterrupted run's start-up (to its first checkpoint) and training (to its last),
    # so that the kills are aimed at each whatever the machine's load: training is a fraction
    # of a second between a start-up and a finish that take longer.
    started = time.perf_counter()
    whole = launch(tmp_path / "whole")
    wait_for_checkpoint(whole, tmp_path / "whole")
    first_checkpoint = time.perf_counter()
    wait_for_checkpoint(whole, tmp_path / "whole", step=300)
    startup, training = first_checkpoint - started, time.perf_counter() - first_checkpoint
    assert whole.wait(timeout=300) == 0
    expected = weights(tmp_path / "whole")
    picker = random.Random(6)
    killed_mid_training = 0
    for trial in range(6):
        out = tmp_path / f"trial{trial}"
        process = launch(out)
        if trial < 2:  # during start-up: nothing or only the first checkpoint is there
            time.sleep(picker.uniform(0, startup))
        else:
            wait_for_checkpoint(process, out)
            time.sleep(picker.uniform(0, training))
        process.kill()
        process.wait()
        # Whatever is there now is a whole checkpoint: each .pt file loads.
        saved = sorted((out / "checkpoints").glob("*.pt")) if out.exists() else []
        steps = [checkpoint.load(path)["step"] for path in saved]
        killed_mid_training += bool(steps) and max(steps) < 300

        resumed = run(out, "--steps", "300", "--resume")
        assert resumed.returncode == 0, (trial, resumed.stderr)
        assert_same_weights(weights(out), expected)
        assert logged_losses(out) == logged_losses(tmp_path / "whole"), trial
        assert unfinished_files(out) == [], trial
        assert {p.name for p in (out / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    assert killed_mid_training >= 2  # the kills did land between checkpoints


def test_a_resumed_run_removes_temp_files_of_a_killed_write_and_a_cut_log_line(tmp_path):
    out = tmp_path / "run"
    assert run(out, "--steps", "40").returncode == 0
    expected = weights(out)
    cut = tmp_path / "cut"
    assert run(cut, "--steps", "20").returncode == 0
    # What a SIGKILL can leave: the temp file of a checkpoint write and half a log line.
    (cut / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    with open(cut / "metrics.jsonl", "a") as log:
        log.write('{"step": 30, "phase": "gan", "loss_d": 1.3')
    resumed = run(cut, "--steps", "40", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert unfinished_files(cut) == []
    assert_same_weights(weights(cut), expected)
    assert logged_losses(cut) == logged_losses(out)


# ---- SIGTERM and SIGINT ----------------------------------------------------------------------

@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path, signum, status):
    out = tmp_path / "run"
    process = subprocess.Popen(command(out, "--steps", "1000000"), env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists():  # training has started
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)

    assert process.returncode == status, err
    last_line = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last_line.startswith(f"fastgan: stopped by {name} at step ")
    assert last_line.endswith(f"resume with: fastgan train --out {out} --resume")
    assert "Traceback" not in err
    step = int(last_line.split(" at step ")[1].split(",")[0])
    assert weights(out)["step"] == step > 0
    assert unfinished_files(out) == []

    if signum == signal.SIGTERM:  # the stopped run goes on as if never stopped
        assert run(out, "--steps", str(step + 15), "--resume").returncode == 0
        assert run(tmp_path / "whole", "--steps", str(step + 15)).returncode == 0
        assert_same_weights(weights(out), weights(tmp_path / "whole"))


def test_stop_requests_note_the_signal_and_put_the_handlers_back():
    before = signal.getsignal(signal.SIGTERM)
    with faults.StopRequests() as stop:
        assert signal.getsignal(signal.SIGTERM) != before
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python runs the handler between bytecodes
        assert stop.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == before  # a second signal acts at once
    assert signal.getsignal(signal.SIGTERM) == before


# ---- divergence ------------------------------------------------------------------------------

def test_divergence_stops_with_status_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    # The autoencoder phase (steps 1-20) trains at a sane rate and is checkpointed; the GAN
    # phase's learning rate of 1e30 makes its weights overflow.
    status = main(["train", "--out", str(out), *TINY_MNIST, "--steps", "40", "--ae-steps", "20",
                   "--log-every", "5", "--checkpoint-every", "10", "--lr", "1e30"])
    err = capsys.readouterr().err.strip().splitlines()

    assert status == faults.DIVERGED == 3
    assert err[-1].startswith("fastgan: diverged at step 25 (a non-finite loss or weight, "
                              "loss_d ")
    assert err[-1].endswith(f"{out / 'checkpoints' / 'last.pt'} (step 20) is kept; "
                            "try a lower learning rate")
    state = weights(out)
    assert state["step"] == 20
    assert all(torch.isfinite(t).all() for m in state["models"].values() for t in m.values())
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text()
              .splitlines()]
    assert max(logged) == 20  # nothing of the diverged steps is logged
    assert not (out / "summary.json").exists()


def test_the_divergence_check_runs_on_the_device_only_at_log_intervals(tmp_path, monkeypatch):
    checks = []
    real = faults.all_finite

    def counted(losses, tensors):
        flag = real(losses, tensors)
        checks.append(flag)
        return flag

    monkeypatch.setattr(faults, "all_finite", counted)
    assert main(["train", "--out", str(tmp_path / "run"), *TINY_MNIST, "--mode", "ae",
                 "--steps", "24", "--log-every", "6", "--checkpoint-every", "12"]) == 0
    assert len(checks) == 4  # steps 6, 12, 18 and 24, not every step
    assert all(flag.shape == () and flag.dtype == torch.bool for flag in checks)


def test_all_finite_finds_nan_or_inf_in_any_loss_or_weight():
    weights_ = [torch.randn(5, 3), torch.full((2,), 3e38), torch.empty(0)]
    losses = [torch.tensor(0.7), torch.tensor(1.2)]
    assert faults.all_finite(losses, weights_).item()  # large but finite is fine
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = [w.clone() for w in weights_]
        broken[0][4, 2] = bad
        assert not faults.all_finite(losses, broken).item()
        assert not faults.all_finite([torch.tensor(bad), losses[1]], weights_).item()


# ---- a full disk, an unwritable --out --------------------------------------------------------

def test_an_out_that_cannot_be_written_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "file" / "run"
    assert main(["train", "--out", str(out), *TINY_MNIST, "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fastgan: error: --out: cannot write in {out}")


def test_a_disk_too_full_for_the_checkpoints_is_refused_before_training(tmp_path, capsys,
                                                                          monkeypatch):
    real = __import__("shutil").disk_usage
    monkeypatch.setattr("fastgan.train.shutil.disk_usage",
                        lambda path: real(path)._replace(free=100_000))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY_MNIST, "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--out: {out} has 0.1 MiB free; this run's checkpoints need about" in err
    assert not (out / "config.json").exists() and not list((out / "checkpoints").iterdir())


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_disk_that_fills_up_mid_run_keeps_the_last_good_checkpoint(tmp_path, capsys,
                                                                        monkeypatch):
    """The second write of last.pt goes to /dev/full, which fails as a full disk does."""
    real, writes = tempfile.mkstemp, []

    def mkstemp(*, dir, prefix, suffix):
        fd, path = real(dir=dir, prefix=prefix, suffix=suffix)
        if prefix.startswith(".last.pt."):
            writes.append(path)
            if len(writes) > 1:
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
        return fd, path

    monkeypatch.setattr(fastgan_files.tempfile, "mkstemp", mkstemp)
    out = tmp_path / "run"
    status = main(["train", "--out", str(out), *TINY_MNIST, "--mode", "ae", "--steps", "24",
                   "--log-every", "4", "--checkpoint-every", "8"])
    err = capsys.readouterr().err.strip().splitlines()

    assert status == faults.WRITE_FAILED == 74
    last = out / "checkpoints" / "last.pt"
    assert err[-1] == (f"fastgan: error: cannot write {last}: No space left on device; "
                       f"training stopped at step 16; {last} (step 8) is kept")
    assert weights(out)["step"] == 8
    assert unfinished_files(out) == []
