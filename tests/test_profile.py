"""fastgan profile: the command on the CPU, the roofline arithmetic, the trace reading (a CPU
trace from a real run, a CUDA one made by hand), the NVML sampler with a fake NVML, and the
timeline plot."""

import csv
import json
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from fastgan import files
from fastgan.cli import main
from fastgan.nn import FusedLinear
from fastgan.perf import bench_step, nvml, roofline, trace

# ---------------------------------------------------------------------------------------
# The command


def test_profile_command_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "profile"
    args = ["profile", "--device", "cpu", "--batch-size", "32", "--steps", "3", "--warmup",
            "2", "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "no NVIDIA GPU" in captured.err and captured.err.count("\n") == 1
    assert f"fastgan: wrote {out}" in captured.out
    assert {p.name for p in out.iterdir()} == {"trace.json", "report.md", "summary.json"}

    events = trace.read_trace(out / "trace.json")
    names = {e["name"] for e in events}
    assert {"ProfilerStep#0", "ProfilerStep#1", "ProfilerStep#2"} <= names
    assert "ProfilerStep#3" not in names
    assert any(trace.fastgan_op(name) == "fused_dense forward" for name in names)
    assert any(e["cat"] == "cpu_op" and e["args"].get("Input Dims") for e in events)

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["phase"], summary["batch_size"], summary["nvml"]) == ("gan", 32, None)
    assert summary["iteration_ms"] > 0 and summary["floor_ms"] > 0
    assert summary["samples_per_s"] == pytest.approx(32 / summary["iteration_ms"] * 1e3)
    report = (out / "report.md").read_text()
    for heading in ("## Where the time goes", "## Iteration floor", "## fastgan ops",
                    "## Top ops by self CPU time"):
        assert heading in report
    assert "| fused_dense backward |" in report and "no NVIDIA GPU" in report

    assert main(args) == 2  # the profile is kept unless --overwrite
    assert "holds a profile" in capsys.readouterr().err
    assert main(["profile", "--mode", "ae", "--phase", "gan", "--out", str(tmp_path / "x")]) == 2
    assert "--phase: --mode ae has no gan phase" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# The roofline


def test_flops_of_a_small_mlp_by_hand():
    torch.manual_seed(0)
    batch, sizes = 8, [10, 20, 5]
    mlp = torch.nn.Sequential(FusedLinear(10, 20, activation="leaky_relu"), FusedLinear(20, 5))
    x = torch.randn(batch, 10)
    layer_flops = [2 * batch * n_in * n_out
                   for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
    forward = sum(layer_flops)  # 2 * 8 * (200 + 100) = 4,800
    backward = 2 * forward - layer_flops[0]  # dw everywhere, dx all but the first layer's
    counts = roofline.count_ops(lambda: mlp(x).sum().backward())
    assert counts.op_flops == {"fastgan::fused_dense_fwd": forward,
                               "fastgan::fused_dense_bwd": backward}
    assert roofline.count_flops(lambda: mlp(x).sum().backward()) == forward + backward == 11_200
    assert roofline.count_flops(lambda: mlp(x)) == forward
    # the forward's bytes: x, both weights and biases in, both outputs out (fp32)
    inputs = batch * 10 + 20 * 10 + 20 + batch * 20 + 5 * 20 + 5
    outputs = batch * 20 + batch * 5  # gelu's pre-activation is not kept: empty tensors
    assert counts.op_bytes["fastgan::fused_dense_fwd"] == 4 * (inputs + outputs)
    plain = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.Linear(20, 5))
    assert roofline.count_flops(lambda: plain(x).sum().backward()) == forward + backward


def test_floor_arithmetic():
    peaks = roofline.Peaks("test", {"bfloat16": 100.0, "float32": 10.0}, copy_gbps=1000.0,
                           graph_launch_s=5e-6, torch="x", measured="now")
    limit = roofline.floor(2e9, 4e6, peaks)  # bf16 by default where measured
    assert limit.compute_s == pytest.approx(2e9 / 100e12)  # 20 µs
    assert limit.memory_s == pytest.approx(4e6 / 1000e9)  # 4 µs
    assert limit.launch_s == 5e-6
    assert (limit.floor_s, limit.bound) == (limit.compute_s, "compute")
    assert roofline.floor(2e9, 4e6, peaks, "float32").compute_s == pytest.approx(200e-6)
    assert roofline.floor(1e3, 4e9, peaks).bound == "memory"
    assert roofline.floor(1e3, 1e3, peaks).bound == "launch"
    params = [torch.zeros(10, 3), torch.zeros(3)]
    assert roofline.iteration_bytes(params, [torch.zeros(4, dtype=torch.float64)], params) == (
        8 * 33 * 4 + 4 * 8 + 3 * 33 * 4)


def _small_peaks(monkeypatch):
    """Peak measurements of a few milliseconds."""
    monkeypatch.setattr(roofline, "MATMUL_SIZES", {"cpu": (32, 64)})
    monkeypatch.setattr(roofline, "COPY_ELEMENTS", {"cpu": 2**16})
    monkeypatch.setattr(roofline, "PEAK_BUDGET_MS", {"cpu": 5.0})


def test_peaks_are_cached_until_refreshed(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path))
    _small_peaks(monkeypatch)
    cpu = torch.device("cpu")
    first = roofline.measure_peaks(cpu)
    assert first.matmul_tflops["float32"] > 0 and first.copy_gbps > 0
    assert first.graph_launch_s is None
    assert roofline.peaks_path(cpu).parent == tmp_path / "peaks"
    assert roofline.measure_peaks(cpu) == first  # read back, not measured
    monkeypatch.setattr(roofline, "_copy_gbps", lambda device: 1.5)
    assert roofline.measure_peaks(cpu).copy_gbps == first.copy_gbps
    assert roofline.measure_peaks(cpu, refresh=True).copy_gbps == 1.5


def test_the_matmul_peak_is_the_best_size_up_to_a_long_call(monkeypatch):
    call_ms = {32: 1e-4, 64: 0.5, 128: 1e-3}  # 64 is the first call of MATMUL_LONG_MS or more
    monkeypatch.setattr(roofline, "MATMUL_SIZES", {"cpu": tuple(call_ms)})
    monkeypatch.setattr(roofline, "MATMUL_LONG_MS", {"cpu": 0.2})
    sizes = []

    def best_ms(fn, device, repeats, budget_ms):
        sizes.append(fn.args[0].shape[0])
        return call_ms[sizes[-1]]

    monkeypatch.setattr(roofline, "best_ms", best_ms)
    tflops = {n: 2 * n**3 / (call_ms[n] * 1e-3) / 1e12 for n in (32, 64)}
    assert roofline._matmul_tflops(torch.device("cpu"), torch.float32) == pytest.approx(
        max(tflops.values()))
    assert sizes == [32, 64]


def test_the_suite_never_writes_the_users_cache(user_cache_dir, monkeypatch):
    session = files.cache_dir()
    assert session != user_cache_dir and session.name.startswith("fastgan-test-cache-")
    user_peaks = user_cache_dir / "peaks"
    before = {p: p.stat().st_mtime_ns for p in user_peaks.glob("*")}
    _small_peaks(monkeypatch)
    cpu = torch.device("cpu")
    roofline.measure_peaks(cpu, refresh=True)
    assert roofline.peaks_path(cpu).is_relative_to(session) and roofline.peaks_path(cpu).exists()
    assert {p: p.stat().st_mtime_ns for p in user_peaks.glob("*")} == before
    # The C++ build still goes where the user's does: rebuilding per session costs minutes.
    assert files.build_dir() != session


def _peaks(tflops: float, gbps: float = 1000.0) -> roofline.Peaks:
    return roofline.Peaks("test", {"float32": tflops}, copy_gbps=gbps, graph_launch_s=None,
                          torch="x", measured="now")


def test_a_rate_beating_its_peak_measures_the_peaks_again(monkeypatch):
    measured = []
    monkeypatch.setattr(roofline, "measure_peaks",
                        lambda device, refresh=False: measured.append(refresh) or _peaks(2.0))
    beaten = lambda peaks: ["fast op"] if peaks.tflops() < 1.0 else []
    cpu = torch.device("cpu")
    good = _peaks(5.0)
    assert roofline.recheck(cpu, good, beaten) == (good, []) and measured == []
    peaks, still = roofline.recheck(cpu, _peaks(0.5), beaten)  # too low: measured again
    assert (peaks.tflops(), still, measured) == (2.0, [], [True])
    peaks, still = roofline.recheck(cpu, _peaks(0.5), lambda peaks: ["fast op"])
    assert still == ["fast op"] and measured == [True, True]  # once, not again and again
    line = roofline.unreliable_line(still)
    assert "unreliable" in line and "fast op" in line and "\n" not in line
    assert roofline.unreliable_line(list("abcde")).endswith("(a; b; c; 2 more), so figures "
                                                            "against them are not shown")


def _bench_rows(peaks: roofline.Peaks, *fastgan_ms: float) -> list[dict]:
    """bench step's rows of a 1 GFLOP iteration that fastgan ran in `fastgan_ms`."""
    rows = [{"mode": "ae", "batch": 64, "ms": {"fastgan": ms},
             "samples_per_s": {"fastgan": 64 / ms * 1e3}, "fastgan_vs_eager": None,
             "fastgan_vs_compile": None, "floor": bench_step._floor_of(10**9, 0, peaks, "fp32")}
            for ms in fastgan_ms]
    for row in rows:
        row["fastgan_vs_floor"] = bench_step._vs_floor(row)
    return rows


def test_bench_step_says_the_peaks_are_unreliable_instead_of_c_floor_below_1(monkeypatch):
    # At 1 TFLOP/s the floor is 1 ms: fastgan's 0.5 ms beats it, 10 ms does not.
    report = {"precision": "fp32", "rows": _bench_rows(_peaks(1.0), 0.5, 10.0), "peaks": {}}
    remeasured = []
    monkeypatch.setattr(roofline, "measure_peaks",
                        lambda device, refresh: remeasured.append(refresh) or _peaks(1.5))
    bench_step.check_floors(report, torch.device("cpu"), _peaks(1.0))
    assert remeasured == [True] and report["peaks"]["matmul_tflops"] == {"float32": 1.5}
    rows = report["rows"]
    assert [row["fastgan_vs_floor"] for row in rows] == [0.75, 15.0]  # from the new peaks
    assert "c/floor 0.75x at ae b=64" in report["peaks_unreliable"]
    table = bench_step._table(rows, ["fastgan"])
    assert "0.8x" not in table and table.splitlines()[1].endswith("?")
    assert table.splitlines()[2].endswith("15.0x")

    # Peaks measured again at 3 TFLOP/s explain the 0.5 ms: no warning, c/floor from them.
    report = {"precision": "fp32", "rows": _bench_rows(_peaks(1.0), 0.5), "peaks": {}}
    monkeypatch.setattr(roofline, "measure_peaks", lambda device, refresh: _peaks(3.0))
    bench_step.check_floors(report, torch.device("cpu"), _peaks(1.0))
    assert report["peaks_unreliable"] is None and report["rows"][0]["fastgan_vs_floor"] == 1.5


def test_the_profile_report_says_the_peaks_are_unreliable_instead_of_the_figures(
        tmp_path, monkeypatch, capsys):
    # Peaks far too low, measured again just as low: every figure against them beats them.
    monkeypatch.setattr(roofline, "measure_peaks", lambda device, refresh=False: _peaks(1e-9, 1e-9))
    out = tmp_path / "profile"
    assert main(["profile", "--device", "cpu", "--batch-size", "32", "--steps", "2",
                 "--warmup", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    line = summary["peaks_unreliable"]
    assert "its floor" in line and "fused_dense forward at" in line
    assert line in printed and "x the" not in printed
    report = (out / "report.md").read_text()
    assert report.count(line) == 1 and "more)" in line
    assert "x its floor" not in report.replace(line, "")
    assert "of the measured matmul peak" not in report
    assert "| measured / floor | not shown: the peaks are unreliable |" in report
    dense_row = next(row for row in report.splitlines() if row.startswith("| fused_dense forward"))
    assert "%" not in dense_row and "?" in dense_row


# ---------------------------------------------------------------------------------------
# Reading a CUDA trace: made by hand, as torch.profiler writes one


def _x(name, cat, ts, dur, external=None, tid=1):
    args = {} if external is None else {"External id": external}
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "pid": 1, "tid": tid,
            "args": args}


def test_a_cuda_trace_is_attributed_through_the_launching_ops():
    raw = [
        _x("ProfilerStep#0", "user_annotation", 0, 100, 1),
        _x("fastgan::fused_dense_fwd", "cpu_op", 5, 10, 2),
        _x("cudaLaunchKernel", "cuda_runtime", 6, 2, 2),
        _x("Optimizer.step#Adam.step", "user_annotation", 30, 40, 3),
        _x("aten::_foreach_add_", "cpu_op", 31, 5, 4),
        _x("aten::cat", "cpu_op", 80, 5, 5),
        _x("dense_fwd_kernel", "kernel", 10, 20, 2, tid=7),
        _x("multi_tensor_apply_kernel", "kernel", 40, 10, 4, tid=7),
        _x("sm90_xmma_gemm_f32f32", "kernel", 50, 10, 99, tid=7),  # launched by no known op
        _x("CatArrayBatchedCopy", "kernel", 85, 5, 5, tid=7),
        _x("CatArrayBatchedCopy", "kernel", 88, 4, 5, tid=8),  # overlaps on another stream
    ]
    b = trace.analyze(raw)
    assert (b.device, b.steps, b.window_us) == ("cuda", 1, 100)
    assert b.busy_us == 20 + 10 + 10 + 7  # the two copies overlap by 1 µs
    assert b.by_category == {trace.GEMMS: 20, trace.OPTIMIZER: 10, trace.OTHER_GEMMS: 10,
                             trace.OTHER: 9, trace.IDLE: 100 - 47}
    assert b.fastgan_us == {"fused_dense forward": 20}
    assert b.top[0] == {"name": "dense_fwd_kernel", "calls": 1, "us": 20}
    assert b.top[-1]["calls"] == 2


def test_a_trace_without_steps_is_refused():
    with pytest.raises(ValueError, match="ProfilerStep"):
        trace.analyze([_x("aten::mm", "cpu_op", 0, 5)])


# ---------------------------------------------------------------------------------------
# NVML


class NVMLError(Exception):
    pass


def fake_nvml(power_supported=True):
    """The parts of pynvml the sampler calls, answering for two GPUs."""
    calls = []

    def handle_by_index(index):
        calls.append(("index", index))
        return f"gpu{index}"

    def handle_by_uuid(uuid):
        calls.append(("uuid", uuid))
        return uuid

    def power(handle):
        if not power_supported:
            raise NVMLError("Not Supported")
        return 312_500

    return SimpleNamespace(
        calls=calls, NVMLError=NVMLError, NVML_CLOCK_SM=1, NVML_TEMPERATURE_GPU=0,
        nvmlDeviceGetHandleByIndex=handle_by_index, nvmlDeviceGetHandleByUUID=handle_by_uuid,
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=87, memory=40),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=3 * 2**30),
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetClockInfo=lambda h, clock: 1980 if clock == 1 else 0,
        nvmlDeviceGetTemperature=lambda h, sensor: 51)


def test_the_sampler_samples_a_fake_nvml_in_the_background(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = fake_nvml()
    sampler = nvml.open_sampler(1, nvml=fake, interval=0.01)
    started = time.perf_counter()
    with sampler:
        sampler.mark("timed")
        time.sleep(0.1)
    seconds = time.perf_counter() - started  # 0.1 s, or more on a loaded machine
    assert fake.calls == [("index", 1)]
    # One sample at the start, one per 10 ms interval (a late thread catches up), one at the
    # end, and one more for rounding.
    assert 5 <= len(sampler.samples) <= seconds / 0.01 + 3
    times = [row["time_s"] for row in sampler.samples]
    assert times == sorted(times)
    assert sampler.samples[-1] == {
        "time_s": times[-1], "phase": "timed", "sm_util_pct": 87, "mem_util_pct": 40,
        "mem_used_mib": 3072.0, "power_w": 312.5, "sm_clock_mhz": 1980, "temp_c": 51}
    sampler.write_csv(tmp_path / "nvml.csv")
    with open(tmp_path / "nvml.csv") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == list(nvml.COLUMNS) and len(rows) == len(sampler.samples)
    assert rows[-1]["power_w"] == "312.5"


def test_an_unsupported_query_leaves_its_column_empty(tmp_path):
    sampler = nvml.open_sampler(0, nvml=fake_nvml(power_supported=False))
    row = sampler.sample()
    assert row["power_w"] is None and row["sm_util_pct"] == 87
    nvml.write_samples_csv([row], tmp_path / "nvml.csv")
    assert ",," in (tmp_path / "nvml.csv").read_text().splitlines()[1]


@pytest.mark.parametrize("visible, expected", [
    (None, 1), ("", 1), ("3,5", 5), ("GPU-8f2e,GPU-aa01", "GPU-aa01"), ("MIG-1234,2", "MIG-1234"),
])
def test_the_handle_honours_cuda_visible_devices(monkeypatch, visible, expected):
    cuda_index = 0 if visible and visible.startswith("MIG") else 1
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    fake = fake_nvml()
    nvml.open_sampler(cuda_index, nvml=fake)
    assert fake.calls == [("index" if isinstance(expected, int) else "uuid", expected)]


def test_nvml_missing_degrades_to_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert nvml.open_sampler(0) == "nvidia-ml-py (pynvml) is not installed"
    fake = fake_nvml()
    fake.nvmlDeviceGetHandleByIndex = lambda index: (_ for _ in ()).throw(NVMLError("no GPU"))
    assert "no handle for CUDA device 0: no GPU" in nvml.open_sampler(0, nvml=fake)


def test_without_the_nvml_library_the_sampler_says_why():
    # pynvml is installed here, but this machine has no NVIDIA driver: nvmlInit fails.
    pytest.importorskip("pynvml")
    if torch.cuda.is_available():
        pytest.skip("this machine has an NVIDIA driver")
    reason = nvml.open_sampler(0)
    assert isinstance(reason, str) and reason.startswith("NVML did not start")


def test_the_timeline_plot_of_fake_samples(tmp_path, monkeypatch):
    samples = [{"time_s": i * 0.05, "phase": "warm-up" if i < 10 else "profiled",
                "sm_util_pct": i, "mem_util_pct": i / 2, "mem_used_mib": 100.0 + i,
                "power_w": None if i == 3 else 80.0 + i, "sm_clock_mhz": 1500, "temp_c": 40}
               for i in range(30)]
    pytest.importorskip("matplotlib")
    assert nvml.plot_samples(samples, tmp_path / "nvml.png") is None
    assert (tmp_path / "nvml.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert nvml.plot_samples([], tmp_path / "empty.png") == "no NVML samples to plot"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert "matplotlib is not installed" in nvml.plot_samples(samples, tmp_path / "n.png")
    assert not (tmp_path / "n.png").exists()
