"""scripts/gpu_check.sh, rehearsed on the CPU: every step runs through the same plumbing at
tiny sizes, and what it leaves in $OUT fits what the device brings back (at most 8 files, no
more than 2 folders down, names of letters, digits, '.', '_' and '-') within its budget."""

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
BUDGET_LIMIT_S = 480  # of the device's 600 s per call: packing, transfers and a margin
MAX_FILES, MAX_FOLDERS_DOWN = 8, 2
NAME = re.compile(r"[A-Za-z0-9._-]+")


def budget() -> tuple[dict[str, int], int]:
    """({step: timeout + kill grace}, the script's total), as `--budget` prints them."""
    printed = subprocess.run(["bash", str(SCRIPT), "--budget"], capture_output=True,
                             text=True, check=True).stdout
    rows = [line.split() for line in printed.splitlines()]
    steps = {name: int(timeout) + int(grace) for name, timeout, grace in rows[:-1]}
    name, total, limit = rows[-1]
    assert (name, int(limit)) == ("total", BUDGET_LIMIT_S)
    return steps, int(total)


def test_the_steps_timeouts_add_up_to_at_most_480_s():
    steps, total = budget()
    assert sum(steps.values()) == total <= BUDGET_LIMIT_S
    # Every timed command goes through limited(), one per step: the budget is all they take.
    text = SCRIPT.read_text()
    assert text.count("timeout -k") == 1
    bodies = {name: re.search(rf"\nstep_{name}\(\) {{\n(.*?)\n}}\n", text, re.S)
              for name in steps}
    assert {name: body and body[1].count("limited ") for name, body in bodies.items()} == \
        dict.fromkeys(steps, 1)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("out")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable,
           "TMPDIR": str(tmp_path_factory.mktemp("work"))}
    result = subprocess.run(["bash", str(SCRIPT), "--rehearse"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    return out, result


def status_rows(out: Path) -> list[list[str]]:
    lines = (out / "status.txt").read_text().splitlines()
    assert lines[0] == "# step status seconds timeout_s"
    return [line.split() for line in lines[1:]]


@pytest.mark.slow
def test_the_rehearsal_runs_every_step_and_each_passes(rehearsal):
    out, result = rehearsal
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    steps, _ = budget()
    rows = status_rows(out)
    assert [row[0] for row in rows] == list(steps)
    for name, status, seconds, timeout in rows:
        assert status == "0" and int(seconds) <= int(timeout), name


@pytest.mark.slow
def test_what_comes_back_fits_the_devices_limits(rehearsal):
    out, _ = rehearsal
    paths = list(out.rglob("*"))
    files = [path for path in paths if path.is_file()]
    assert sorted(path.name for path in files) == ["gpu_check.tgz", "status.txt", "summary.txt"]
    assert len(files) <= MAX_FILES
    for path in paths:
        parts = path.relative_to(out).parts
        assert all(NAME.fullmatch(part) for part in parts), path
        assert len(parts) - path.is_file() <= MAX_FOLDERS_DOWN, path
    assert all(path.stat().st_size < 16 * 2**20 for path in files)
    assert len((out / "summary.txt").read_text().splitlines()) <= 12


@pytest.mark.slow
def test_the_archive_holds_every_steps_output(rehearsal):
    out, _ = rehearsal
    with tarfile.open(out / "gpu_check.tgz") as archive:
        names = {name.removeprefix("./") for name in archive.getnames()}
    steps, _ = budget()
    assert {f"{name}.txt" for name in steps} | {"status.txt", "summary.txt"} <= names
    assert {"train-run/summary.json", "train-run/metrics.jsonl", "torchrun-run/summary.json",
            "profile-run/trace.json.gz", "profile-run/report.md"} <= names
    assert any(re.fullmatch(r"bench/ops-.*\.json", name) for name in names)
    assert any(re.fullmatch(r"bench/step-.*\.json", name) for name in names)
    assert not any(name.endswith(".pt") for name in names)  # checkpoints stay behind


def test_failing_steps_stop_nothing_and_everything_is_still_packed(tmp_path):
    # `false` as Python: every step fails at once, and the next one runs anyway.
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": "false", "TMPDIR": str(tmp_path)}
    result = subprocess.run(["bash", str(SCRIPT), "--rehearse"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    steps, _ = budget()
    assert [(row[0], row[1] != "0") for row in status_rows(tmp_path)] == \
        [(name, True) for name in steps]
    assert f"0 of {len(steps)} steps ok" in (tmp_path / "summary.txt").read_text()
    with tarfile.open(tmp_path / "gpu_check.tgz") as archive:
        assert {f"./{name}.txt" for name in steps} <= set(archive.getnames())
    assert not list(tmp_path.glob("gpu_check.??????"))  # the work folder is gone
