"""Training on two processes through torchrun: CPU, gloo, one thread per process.

Two ranks with a per-rank batch of b compute the steps of one process with a batch of 2b
and the same seed: every rank draws the global batch from the same generator state and
trains on its own half, and DDP averages the gradients. The only difference is the order of
the sums (the all-reduce adds two half-batch means), so the tolerances below are a few fp32
roundings, not a bound loose enough to hide a wrong batch or a missing gradient."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
import torch

from fastgan import checkpoint
from fastgan.cli import main
from fastgan.config import from_dict, to_dict
from fastgan.data import load_dataset
from fastgan.distributed import World
from fastgan.step import Training

# latent-cgan crosses both phases; --augment covers latent-cgan's own batch rows
RUN = ["--dataset", "ring", "--mode", "latent-cgan", "--steps", "24", "--ae-steps", "8",
       "--augment", "0.25", "--latent-dim", "2", "--ae-hidden", "16", "--g-hidden", "16",
       "--d-hidden", "16", "--noise-dim", "4", "--log-every", "1", "--eval-every", "12",
       "--checkpoint-every", "12"]
LOSS_RTOL = 1e-5  # per logged loss; they came out equal to ~1e-7
WEIGHT_ATOL = 1e-6  # per weight after 24 steps; they came out equal to ~3e-8


def environment(**extra: str) -> dict:
    # one thread per rank: two ranks on 2 cores otherwise spin-wait against each other.
    # conftest's Triton interpreter is for the in-process kernel tests.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def fastgan_train(*args: str, ranks: int = 0, timeout: float = 240, **env: str):
    """`fastgan train` in one process (ranks=0) or under torchrun with `ranks` ranks."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={ranks}"] if ranks else [sys.executable]
    result = subprocess.run([*launcher, "-m", "fastgan", "train", "--device", "cpu", *args],
                            capture_output=True, text=True, env=environment(**env),
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(out: Path) -> dict[int, dict[str, float]]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: {k: v for k, v in line.items() if k.startswith("loss_")}
            for line in lines if "eval" not in line}


def assert_same_models(a: dict, b: dict) -> None:
    for name, state in a.items():
        for key, value in state.items():
            torch.testing.assert_close(b[name][key], value, rtol=0, atol=WEIGHT_ATOL,
                                       msg=f"{name}.{key}")


def assert_same_losses(expected: dict, got: dict) -> None:
    assert set(got) == set(expected)
    for step, values in expected.items():
        assert got[step] == pytest.approx(values, rel=LOSS_RTOL), step


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess,
                                    subprocess.CompletedProcess]:
    """One process with batch 32, and two ranks with batch 16 each."""
    root = tmp_path_factory.mktemp("distributed")
    single = fastgan_train(*RUN, "--batch-size", "32", "--out", str(root / "single"))
    double = fastgan_train(*RUN, "--batch-size", "16", "--out", str(root / "double"), ranks=2)
    return root, single, double


def test_each_rank_trains_on_its_own_rows_of_the_global_batch():
    """In-process, without DDP: the first step's loss of each of two ranks is its half's,
    and their mean is the loss of one process with the global batch."""
    data = load_dataset("ring")
    config = from_dict({"dataset": "ring", "mode": "ae", "batch_size": 16, "steps": 2,
                        "ae_hidden": [16], "latent_dim": 2})
    first_loss = lambda world, config: Training(config, data, torch.device("cpu"),
                                                world).train_step()["ae"].item()
    halves = [first_loss(World(rank, 2), config) for rank in (0, 1)]
    whole = first_loss(World(), from_dict({**to_dict(config), "batch_size": 32}))
    assert halves[0] != pytest.approx(halves[1], rel=1e-3)  # different rows
    assert sum(halves) / 2 == pytest.approx(whole, rel=1e-6)
    assert torch.equal(World(1, 2).shard(torch.arange(8), 4), torch.arange(4, 8))


def test_two_ranks_train_as_one_process_with_the_global_batch(runs):
    root, _, _ = runs
    single, double = root / "single", root / "double"
    assert_same_losses(losses(single), losses(double))
    assert len(losses(double)) == 24
    assert_same_models(checkpoint.load(single / "checkpoints" / "last.pt")["models"],
                       checkpoint.load(double / "checkpoints" / "last.pt")["models"])
    summary = json.loads((double / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 24
    assert summary["samples_per_s"] > 0


def test_compiled_ranks_train_as_one_eager_process(runs, tmp_path):
    """torch.compile under DDP (not fullgraph: DDP's forward wrapper runs eagerly)."""
    root, _, _ = runs
    fastgan_train(*RUN, "--batch-size", "16", "--compile", "--out", str(tmp_path / "compiled"),
                  ranks=2)
    assert_same_losses(losses(root / "single"), losses(tmp_path / "compiled"))
    assert_same_models(
        checkpoint.load(root / "single" / "checkpoints" / "last.pt")["models"],
        checkpoint.load(tmp_path / "compiled" / "checkpoints" / "last.pt")["models"])


def test_rank_0_alone_writes_files_and_reports(runs):
    root, _, double = runs
    out = root / "double"
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.jsonl", "summary.json",
                                              "checkpoints", "samples", "curves.png",
                                              "reconstructions.png", "interpolations.png"}
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step-000012.png", "step-000024.png"]
    # a second writer would log every step twice and print a second report
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text()
             .splitlines() if "eval" not in line]
    assert steps == list(range(1, 25))
    assert double.stdout.count("fastgan: wrote") == 1


def test_a_two_rank_checkpoint_resumes_in_one_process(runs, tmp_path):
    """The resumed run continues as one process would from that checkpoint: with the same
    per-rank batch, now the global batch of one rank."""
    root, _, _ = runs
    out = tmp_path / "resumed"
    shutil.copytree(root / "double", out)
    saved = checkpoint.load(out / "checkpoints" / "last.pt")
    fastgan_train("--out", str(out), "--resume", "--steps", "30")

    config = from_dict({**saved["config"], "steps": 30})
    reference = Training(config, load_dataset("ring"), torch.device("cpu"), World())
    reference.load_state_dict(saved)
    expected = {}
    for _ in range(6):
        values = reference.train_step()
        expected[reference.step] = {f"loss_{k}": v.item() for k, v in values.items()}
    resumed = losses(out)
    assert_same_losses(expected, {step: resumed[step] for step in expected})
    state = checkpoint.load(out / "checkpoints" / "last.pt")
    assert state["step"] == 30
    assert_same_models({k: m.state_dict() for k, m in reference.models.items()},
                       state["models"])
    assert json.loads((out / "summary.json").read_text())["world_size"] == 1


def torchrun_workers(pid: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes."""
    workers = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            ranks = [int(v.split(b"=")[1]) for v in env if v.startswith(b"RANK=")]
            workers.update({rank: int(child) for rank in ranks})
    return workers


def stop_rank_1(tmp_path: Path, stop: signal.Signals, timeout: int, within: float,
                until: str | None = None) -> str:
    """Start a long 2-rank job, send rank 1 `stop` once training began, and return
    torchrun's stderr, asserting that within `within` seconds the job failed or, with
    `until`, its stderr said `until` (the job is then killed)."""
    out = tmp_path / "run"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        job = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc-per-node=2", "-m", "fastgan", "train", "--device", "cpu", *RUN,
             "--steps", "100000", "--batch-size", "16", "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=stderr, text=True,
            env=environment(FASTGAN_DIST_TIMEOUT=str(timeout)))

    def err() -> str:
        return (tmp_path / "stderr.txt").read_text()

    rank_1 = None
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():  # both ranks are training
            assert job.poll() is None and time.monotonic() < deadline, "training never began"
            time.sleep(0.2)
        rank_1 = torchrun_workers(job.pid)[1]
        os.kill(rank_1, stop)
        deadline = time.monotonic() + within
        while job.poll() is None and not (until and until in err()):
            assert time.monotonic() < deadline, err()[-3000:]
            time.sleep(0.2)
    finally:
        job.kill()
        if rank_1 is not None and stop != signal.SIGKILL:
            with suppress(ProcessLookupError):  # gone already, unless torchrun gave up on it
                os.kill(rank_1, signal.SIGKILL)
        job.wait()
    assert until or job.returncode != 0
    return err()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds workers in /proc")
def test_a_killed_rank_ends_the_job(tmp_path):
    err = stop_rank_1(tmp_path, signal.SIGKILL, timeout=30, within=30)
    assert "Signal 9 (SIGKILL)" in err, err[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds workers in /proc")
def test_a_hung_rank_ends_the_job_after_the_timeout(tmp_path):
    """A rank that stops answering without exiting: rank 0's collective times out after
    FASTGAN_DIST_TIMEOUT and rank 0 fails, which makes torchrun stop the job (after up to
    30 s for the stopped rank to take its SIGTERM: torchrun's, not waited for here)."""
    err = stop_rank_1(tmp_path, signal.SIGSTOP, timeout=5, within=5 + 15,
                      until="Timed out waiting 5000ms")  # FASTGAN_DIST_TIMEOUT's 5 s
    assert "Timed out waiting 5000ms" in err, err[-3000:]


def test_a_bad_timeout_is_one_line_and_status_2(monkeypatch, capsys):
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                        ("FASTGAN_DIST_TIMEOUT", "soon")):
        monkeypatch.setenv(name, value)
    assert main(["train", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == ("fastgan: error: FASTGAN_DIST_TIMEOUT: expected a positive number of "
                   "seconds, got 'soon'\n")



@pytest.mark.parametrize("rank, lines", [("0", 1), ("1", 0)])
def test_under_torchrun_rank_0_alone_prints_an_input_error(rank, lines, monkeypatch, capsys):
    # every rank meets the same input error (rank 0 sends them its outcome); one line says it
    for name, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", "2"),
                        ("FASTGAN_DIST_TIMEOUT", "soon")):
        monkeypatch.setenv(name, value)
    assert main(["train", "--device", "cpu"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == lines
