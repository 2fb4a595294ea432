"""What fastgan reads of the machine: other processes' load, and the thread count fitted to it."""

import subprocess
import sys

import pytest
import torch

from fastgan import devices


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_competitor_is_seen():
    assert devices.busy_cores_elsewhere(0.3) < 0.5  # the suite runs alone
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        seen = devices.busy_cores_elsewhere(0.5)
    finally:
        busy.kill()
        busy.wait()
    assert 0.6 <= seen <= 1.4


@pytest.mark.parametrize("elsewhere, threads, fitted", [(0.0, 2, 2), (0.9, 2, 1), (1.7, 2, 1),
                                                         (1.2, 4, 3), (None, 2, 2)])
def test_train_leaves_busy_cores_to_others(monkeypatch, capsys, elsewhere, threads, fitted):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "busy_cores_elsewhere", lambda: elsewhere)
    monkeypatch.setattr(devices.os, "cpu_count", lambda: threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        devices.fit_threads_to_load(torch.device("cpu"))
        assert torch.get_num_threads() == fitted
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert err.count("\n") == (fitted < threads)
    if fitted < threads:
        assert f"training on {fitted} thread" in err and "OMP_NUM_THREADS" in err


def test_omp_num_threads_and_the_gpu_are_left_alone(monkeypatch):
    monkeypatch.setattr(devices, "busy_cores_elsewhere", lambda: 5.0)
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))
    devices.fit_threads_to_load(torch.device("cpu"))
    monkeypatch.delenv("OMP_NUM_THREADS")
    devices.fit_threads_to_load(torch.device("cuda"))
    assert torch.get_num_threads() == before
