"""Bad input through the command line: every case is one line on stderr naming the flag or
file and what is wrong, exit status 2, no traceback, and nothing written or overwritten.
Also checkpoints that would run code when unpickled: refused, and the code never runs."""

import gzip
import os
import pickle
import shlex

import numpy as np
import pytest
import torch

from fastgan import devices
from fastgan.cli import main

TINY = ["--steps", "12", "--batch-size", "16", "--log-every", "4", "--eval-every", "12",
        "--checkpoint-every", "4"]
RING = ["--dataset", "ring", "--g-hidden", "16", "--d-hidden", "16", *TINY]


def refused(capsys, *args: str) -> str:
    """Run `fastgan *args`; assert one line and exit status 2; return the line."""
    assert main(list(args)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fastgan: error: ") and captured.err.count("\n") == 1, \
        captured.err
    assert "Traceback" not in captured.err
    return captured.err.strip()


def snapshot(directory) -> dict:
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---- flags -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--steps", "-3"], "--steps: expected a positive integer, got '-3'"),
    (["--steps", "many"], "--steps: expected a positive integer, got 'many'"),
    (["--batch-size", "1.5"], "--batch-size: expected a positive integer, got '1.5'"),
    (["--batch-size", "0"], "--batch-size: expected a positive integer, got '0'"),
    (["--g-hidden", "64,-1"], "--g-hidden: expected comma-separated positive integers"),
    (["--ae-hidden", "wide"], "--ae-hidden: expected comma-separated positive integers"),
    (["--latent-dim", "-8"], "--latent-dim: expected a positive integer"),
    (["--lr", "nan"], "--lr: expected a positive number, got 'nan'"),
    (["--lr-d=-1e-4"], "--lr-d: expected a positive number, got '-1e-4'"),
    (["--lr", "-0.5"], "--lr: expected a positive number, got '-0.5'"),
    (["--epochs", "inf"], "--epochs: expected a positive number, got 'inf'"),
    (["--label-smoothing", "1"], "--label-smoothing: expected a number in [0, 1)"),
    (["--seed", "-1"], "--seed: expected an integer >= 0, got '-1'"),
    (["--log-every", "0"], "--log-every: expected a positive integer, got '0'"),
    (["--mode", "gan"], "--mode: invalid choice: 'gan'"),
    (["--dataset", "imagenet"], "imagenet: unknown dataset"),
    (["--device", "tpu"], "--device: invalid choice: 'tpu'"),
    (["--precision", "fp8"], "--precision: invalid choice: 'fp8'"),
    (["--stpes", "3"], "unrecognized arguments: --stpes 3"),
])
def test_bad_flags(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert message in refused(capsys, "train", *args)
    assert list(tmp_path.iterdir()) == []  # no run directory made


@pytest.mark.parametrize("text, message", [
    ("steps = -5\n", "--steps: expected a positive integer, got -5"),
    ('batch_size = "big"\n', "--batch-size: expected int, got 'big'"),
    ('device = "tpu"\n', "--device: expected one of auto, cpu, cuda, got 'tpu'"),
    ('precision = "fp8"\n', "--precision: expected one of fp32, bf16, got 'fp8'"),
    ("g_hidden = [64, 0]\n", "--g-hidden: expected tuple[int, ...], got (64, 0)"),
])
def test_bad_values_in_a_config_file(tmp_path, monkeypatch, capsys, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(text)
    assert message in refused(capsys, "train", "--config", "run.toml")
    assert [p.name for p in tmp_path.iterdir()] == ["run.toml"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_on_a_machine_without_a_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert "--device cuda: no CUDA GPU is available" in refused(capsys, "train", "--device",
                                                                 "cuda")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["train"], ["profile"], ["bench", "step", "--quick"]])
def test_bf16_on_a_cpu_without_bf16_instructions(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(devices, "cpu_extensions",
                        lambda: dict.fromkeys(devices.CPU_EXTENSIONS, False))
    monkeypatch.setattr(devices.platform, "machine", lambda: "x86_64")
    line = refused(capsys, *command, "--device", "cpu", "--precision", "bf16")
    assert "--precision bf16: this CPU" in line and "avx512_bf16 or amx_bf16" in line
    assert list(tmp_path.iterdir()) == []


# ---- data ------------------------------------------------------------------------------------

def idx(a: np.ndarray, magic: int | None = None, shape=None) -> bytes:
    header = np.array([magic or 0x800 + a.ndim, *(shape or a.shape)], ">i4").tobytes()
    return header + a.astype(np.uint8).tobytes()


def write_idx_dir(d, images: bytes, labels: bytes) -> None:
    d.mkdir()
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


IMAGES = np.zeros((20, 4, 4))
LABELS = np.arange(20) % 3


def bad_data(kind: str, tmp_path) -> tuple[list[str], str, str]:
    """(flags, the file the error must name, what it must say) for one kind of bad data."""
    d = tmp_path / "idx"
    if kind == "truncated gzip":
        write_idx_dir(d, idx(IMAGES), idx(LABELS))
        gz = d / "train-images-idx3-ubyte.gz"
        gz.write_bytes(gz.read_bytes()[:-20])
        return ["--data-dir", str(d)], str(gz), "cannot read"
    if kind == "wrong magic":
        write_idx_dir(d, idx(IMAGES, magic=0x801), idx(LABELS))
        return ["--data-dir", str(d)], str(d / "train-images-idx3-ubyte.gz"), "bad magic"
    if kind == "wrong header":
        write_idx_dir(d, idx(IMAGES, shape=(30, 4, 4)), idx(LABELS))
        return (["--data-dir", str(d)], str(d / "train-images-idx3-ubyte.gz"),
                "truncated: header says 30x4x4 bytes")
    if kind == "counts differ":
        write_idx_dir(d, idx(IMAGES), idx(LABELS[:19]))
        return (["--data-dir", str(d)], str(d / "train-labels-idx1-ubyte.gz"),
                "19 labels for the 20 images")
    if kind == "missing directory":
        return ["--data-dir", str(tmp_path / "nowhere")], str(tmp_path / "nowhere"), \
            "no such directory"
    path = tmp_path / {"unparseable csv": "data.csv", "ragged": "data.npy",
                       "1-D": "data.npy"}.get(kind, "data.npz")
    x = np.random.default_rng(0).normal(size=(20, 3))
    if kind == "missing file":
        return ["--dataset", str(path)], str(path), "no such file"
    if kind == "unparseable csv":
        path.write_text("a,b\n1,2\n3,4)\n")
        return ["--dataset", str(path)], str(path), "line 3: '4)' is not a number"
    if kind == "ragged":
        np.save(path, np.array([[1.0, 2.0], [3.0]], dtype=object), allow_pickle=True)
        return ["--dataset", str(path)], str(path), "cannot read"
    if kind == "1-D":
        np.save(path, x[:, 0])
        return ["--dataset", str(path)], str(path), "expected shape (N, D)"
    arrays, message = {
        "nan": ({"x": np.where(x > 1.5, np.nan, x)}, "non-finite values"),
        "inf": ({"x": np.where(x > 1.5, -np.inf, x)}, "non-finite values"),
        "labels out of range": ({"x": x, "y": np.r_[np.zeros(19), 10**9]},
                                "label 1e+09 is out of range"),
        "labels not integers": ({"x": x, "y": np.linspace(0, 2, 20)}, "whole numbers"),
        "labels not numbers": ({"x": x, "y": np.array(["cat", "dog"] * 10)}, "expected (20,)"),
        "labels 2-D": ({"x": x, "y": np.zeros((20, 2))}, "expected (20,) integers"),
    }[kind]
    np.savez(path, **arrays)
    return ["--dataset", str(path)], str(path), message


@pytest.mark.parametrize("kind", [
    "missing file", "missing directory", "truncated gzip", "wrong magic", "wrong header",
    "counts differ", "nan", "inf", "labels out of range", "labels not integers",
    "labels not numbers", "labels 2-D", "ragged", "1-D", "unparseable csv"])
def test_bad_data(tmp_path, capsys, kind):
    flags, path, message = bad_data(kind, tmp_path)
    out = tmp_path / "run"
    line = refused(capsys, "train", *flags, "--out", str(out), *TINY)
    assert line.startswith(f"fastgan: error: {path}: ") and message in line, line
    assert not out.exists()


# ---- checkpoints -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run, copied fresh for each test."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--out", str(out), *RING]) == 0
    return snapshot(out), out


@pytest.fixture
def run_dir(trained, tmp_path):
    files, source = trained
    out = tmp_path / "run"
    for path, content in files.items():
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return out


def every_command(out) -> list[list[str]]:
    return [["train", "--out", str(out), "--resume", *RING],
            ["sample", "--run", str(out), "--out", str(out.parent / "s.npy")],
            ["eval", "--run", str(out)]]


def assert_each_command_refuses(capsys, out, message: str) -> None:
    before = snapshot(out)
    for args in every_command(out):
        line = refused(capsys, *args)
        assert message in line, (args, line)
        assert snapshot(out) == before, args  # nothing overwritten
    assert not (out.parent / "s.npy").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint(run_dir, capsys, damage):
    last = run_dir / "checkpoints" / "last.pt"
    content = last.read_bytes()
    last.write_bytes({"truncated": content[:len(content) // 2], "garbage": os.urandom(500),
                      "empty": b""}[damage])
    assert_each_command_refuses(capsys, run_dir,
                                f"{last}: not a loadable fastgan checkpoint")


def test_a_checkpoint_that_is_not_a_run(run_dir, capsys):
    last = run_dir / "checkpoints" / "last.pt"
    torch.save({"config": {"mode": "ae"}, "weights": torch.ones(3)}, last)
    assert_each_command_refuses(capsys, run_dir, f"{last}: not a fastgan checkpoint (no data, "
                                                 "best, step, models, optimizers, rng in it)")


def test_a_checkpoint_from_an_incompatible_config(run_dir, capsys):
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["config"]["g_hidden"] = [8]  # the weights are 16 wide
    torch.save(state, last)
    before = snapshot(run_dir)
    resume, sample, evaluate = every_command(run_dir)
    assert "was trained with other settings (g_hidden: [8] -> [16])" in refused(capsys, *resume)
    for args in (sample, evaluate):
        line = refused(capsys, *args)
        assert f"{last}: not a loadable run (" in line and "size mismatch" in line, line
    assert snapshot(run_dir) == before

    state["config"]["g_hidden"], state["config"]["colour"] = [16], "blue"
    torch.save(state, last)
    before = snapshot(run_dir)
    assert "unknown setting(s) colour" in refused(capsys, *resume)
    assert "unknown setting(s) colour" in refused(capsys, *sample)
    assert snapshot(run_dir) == before


def test_resuming_on_data_that_changed_shape(tmp_path, capsys):
    data, out = tmp_path / "data.npy", tmp_path / "run"
    np.save(data, np.random.default_rng(0).normal(size=(64, 3)))
    assert main(["train", "--out", str(out), "--dataset", str(data), "--mode", "ae", *TINY]) == 0
    np.save(data, np.random.default_rng(0).normal(size=(64, 5)))
    capsys.readouterr()
    before = snapshot(out)
    line = refused(capsys, "train", "--out", str(out), "--resume", "--steps", "20")
    assert f"{out / 'checkpoints' / 'last.pt'}: does not fit this run's models and data" in line
    assert snapshot(out) == before


def test_a_damaged_config_json_on_resume(run_dir, capsys):
    (run_dir / "config.json").write_text('{"mode": "cgan", "steps": ')
    before = snapshot(run_dir)
    line = refused(capsys, "train", "--out", str(run_dir), "--resume")
    assert f"{run_dir / 'config.json'}: cannot read the run's settings" in line
    assert snapshot(run_dir) == before


def test_an_out_holding_another_run(run_dir, capsys):
    before = snapshot(run_dir)
    line = refused(capsys, "train", "--out", str(run_dir), *RING)
    assert f"--out: {run_dir} holds another run" in line and "--resume" in line
    assert snapshot(run_dir) == before


# ---- checkpoints that carry code -------------------------------------------------------------

class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.mark.parametrize("container", ["torch.save", "plain pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(
        run_dir, tmp_path, capsys, container):
    marker = tmp_path / "pwned"
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["rng"] = Payload(marker)
    if container == "torch.save":
        torch.save(state, last)
    else:
        last.write_bytes(pickle.dumps(state, protocol=2))  # torch.load's own protocol
    # The payload is real: an unrestricted load runs it.
    if container == "torch.save":
        torch.load(last, weights_only=False)
    else:
        pickle.loads(last.read_bytes())
    assert marker.exists()
    marker.unlink()

    assert_each_command_refuses(capsys, run_dir, f"{last}: not a loadable fastgan checkpoint")
    assert not marker.exists()
