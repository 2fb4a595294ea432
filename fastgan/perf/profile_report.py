"""report.md of a profiling session: the reading of where the time goes, the iteration's
floor, fastgan's ops against the device's peaks, and the top ops or kernels. Every number
comes from the session (summary), the trace (trace.Breakdown), the FLOP and byte counts
(roofline.OpCounts) and the measured peaks."""

from pathlib import Path

from fastgan.files import atomic_write
from fastgan.perf import trace
from fastgan.perf.roofline import OpCounts, Peaks

SHARE_SHOWN = 0.01  # categories under 1% of the window stay out of the reading's list


def _ms(us: float, steps: int) -> float:
    """µs over the window -> ms per iteration."""
    return us / steps / 1e3


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def fastgan_op_rows(b: trace.Breakdown, counts: OpCounts, peaks: Peaks, dtype: str) -> list[dict]:
    """Per fastgan op (trace.FASTGAN_OPS): calls, time, FLOPs and bytes per iteration, and the
    achieved TFLOP/s and GB/s with their shares of the peaks."""
    rows = []
    for key, pattern in trace.FASTGAN_OPS.items():
        names = [name for name in counts.op_calls if pattern.search(name)]
        us = b.fastgan_us.get(key, 0.0)
        if not names and not us:
            continue
        flops = sum(counts.op_flops[n] for n in names)
        nbytes = sum(counts.op_bytes[n] for n in names)
        seconds = us / b.steps / 1e6
        tflops = flops / seconds / 1e12 if seconds and flops else None
        gbps = nbytes / seconds / 1e9 if seconds and nbytes else None
        rows.append({"op": key, "calls": sum(counts.op_calls[n] for n in names),
                     "ms": seconds * 1e3, "flops": flops, "bytes": nbytes,
                     "tflops": tflops, "gbps": gbps,
                     "tflops_share": tflops and tflops / peaks.tflops(dtype),
                     "gbps_share": gbps and gbps / peaks.copy_gbps})
    return rows


def reading(s: dict, b: trace.Breakdown, op_rows: list[dict]) -> str:
    """One paragraph on where the time goes, from the measured numbers."""
    where = "device time" if b.device == "cuda" else "CPU time on the training thread"
    unreliable = s.get("peaks_unreliable")
    ratio = s["iteration_ms"] / s["floor_ms"] if s["floor_ms"] else float("inf")
    launch = f", {s['launch_ms']:.3f} ms per graph launch" if s["launch_ms"] else ""
    to_floor = "against a" if unreliable else f"{ratio:.1f}x its"
    text = [
        f"One {s['phase']} iteration at batch {s['batch_size']} takes "
        f"{s['iteration_ms']:.3f} ms ({s['samples_per_s']:,.0f} samples/s), {to_floor} "
        f"floor of {s['floor_ms']:.3f} ms, which is {s['bound']}-bound "
        f"({s['compute_ms']:.3f} ms of FLOPs at the {s['floor_dtype']} matmul peak, "
        f"{s['memory_ms']:.3f} ms of bytes at copy bandwidth{launch})."]
    window = sum(b.by_category.values())
    shares = sorted(((us / window, name) for name, us in b.by_category.items()
                     if us / window >= SHARE_SHOWN), reverse=True)
    listed = "; ".join(f"{name} {share:.0%}" for share, name in shares)
    text.append(f"Of the profiled window's {where}: {listed}.")
    dense = [row for row in op_rows if row["op"] in trace.DENSE_OPS and row["tflops"]]
    if dense:
        rates = " and ".join(f"{row['tflops']:.3g} TFLOP/s {row['op'].split()[-1]}"
                             for row in dense)
        best = max(row["tflops_share"] for row in dense)
        share = "" if unreliable else f", at most {best:.0%} of the measured matmul peak"
        text.append(f"fastgan's fused_dense runs at {rates}{share}.")
    largest = shares[0][1] if shares else None
    text.append(_verdict(largest, b, s))
    overhead = s["profiled_iteration_ms"] / s["iteration_ms"] - 1
    text.append(f"(Under the profiler an iteration took {abs(overhead):.0%} "
                f"{'longer' if overhead >= 0 else 'less'}: the shares come from the profiled "
                "window, the times from the unprofiled one.)")
    return " ".join(text)


def _verdict(largest: str | None, b: trace.Breakdown, s: dict) -> str:
    if largest in (trace.HOST, trace.IDLE):
        where = ("the device waits for the host" if largest == trace.IDLE
                 else "the host runs Python and framework code between ops")
        return (f"The largest share is time where {where}, not arithmetic: at batch "
                f"{s['batch_size']} the step is bound by per-op overhead, which fewer and "
                "larger launches (a compiled or CUDA-graphed step) would cut.")
    if largest in (trace.GEMMS, trace.OTHER_GEMMS):
        return ("The GEMMs take the largest share, so the step spends its time in "
                "arithmetic; what is left between it and the floor is the GEMMs' efficiency "
                "at these layer shapes.")
    if largest == trace.OPTIMIZER:
        return ("The optimizer and the EMA take the largest share: they touch every "
                "parameter several times a step in many small kernels, which a fused or "
                "compiled optimizer step would merge.")
    top = b.top[0]["name"] if b.top else "small ops"
    return (f"Ops outside fastgan's fused kernels take the largest share ({top} first): "
            "they are what fusing further would remove.")


def write_report(path: Path, s: dict, b: trace.Breakdown, counts: OpCounts,
                 peaks: Peaks) -> None:
    op_rows = fastgan_op_rows(b, counts, peaks, s["floor_dtype"])
    lines = [f"# Profile: {s['mode']}, {s['phase']} phase, batch {s['batch_size']}, "
             f"{s['device']}", "",
             f"`{s['command']}`", "",
             f"{s['date']}; torch {s['torch']}, fastgan backend {s['fastgan_backend']}, "
             f"precision {s['precision']}; {s['warmup_steps']} warm-up steps, then "
             f"{s['steps']} timed and {s['steps']} profiled.", ""]
    if s["nvml_note"]:
        lines += [s["nvml_note"] + ".", ""]
    lines += [_graph_note(s, b), ""]
    if s["mode"] == "latent-cgan" and s["phase"] == "gan":
        lines += ["The GAN phase runs on an untrained autoencoder (the profile skips its "
                  "training): the same shapes and kernels as after it.", ""]
    lines += ["## Where the time goes", ""]
    if s.get("peaks_unreliable"):
        lines += [f"**Note:** {s['peaks_unreliable']}.", ""]
    lines += [reading(s, b, op_rows), ""]
    window = sum(b.by_category.values())
    lines += _table(["", "ms per iteration (profiled)", "share"], [
        [name, f"{_ms(us, b.steps):.3f}", f"{us / window:.1%}"]
        for name, us in sorted(b.by_category.items(), key=lambda item: -item[1])])
    lines += ["", "## Iteration floor", ""]
    lines += _floor_lines(s, peaks)
    lines += ["", "## fastgan ops", "",
              "Per iteration: calls and FLOPs (torch.utils.flop_counter) and MB (the ops' "
              "input and output tensors) from one counted step, ms from the profiled window; "
              "the shares are of the measured matmul and copy peaks.", ""]
    lines += _table(
        ["op", "calls", "ms", "GFLOP", "TFLOP/s", "of peak", "MB", "GB/s", "of peak"],
        [[row["op"], str(row["calls"]), f"{row['ms']:.3f}", f"{row['flops'] / 1e9:.3f}",
          _number(row["tflops"], ".3g"), _share(row["tflops_share"]),
          f"{row['bytes'] / 1e6:.2f}", _number(row["gbps"], ".3g"),
          _share(row["gbps_share"])] for row in op_rows])
    title = ("Top kernels by device time" if b.device == "cuda"
             else "Top ops by self CPU time")
    total = b.busy_us if b.device == "cuda" else b.window_us
    lines += ["", f"## {title}", ""]
    lines += _table(["name", "calls per iteration", "ms per iteration", "share"], [
        [f"`{_short(row['name'])}`", f"{row['calls'] / b.steps:g}",
         f"{_ms(row['us'], b.steps):.3f}", f"{row['us'] / total:.1%}"] for row in b.top])
    lines += ["", "## Files", "",
              "- `trace.json`: the profiled window's Chrome trace (https://ui.perfetto.dev "
              "or chrome://tracing), CPU" + (" and CUDA" if b.device == "cuda" else "")
              + " activity with shapes and FLOPs",
              "- `summary.json`: the numbers above"]
    if s["nvml"] is not None:
        lines.append(f"- `nvml.csv`: {s['nvml']} NVML samples, every 50 ms, phases labelled")
        lines.append("- `nvml.png`: their timeline" if s["plot_note"] is None
                     else f"- no `nvml.png`: {s['plot_note']}")
    with atomic_write(path) as file:
        file.write(("\n".join(lines) + "\n").encode())


def _graph_note(s: dict, b: trace.Breakdown) -> str:
    if b.device != "cuda":
        return "The CPU path: no CUDA graphs."
    if b.graph_launches:
        return (f"The step is CUDA-graphed ({b.graph_launches / b.steps:g} graph launches per "
                "iteration); the profiler was initialized for graphs before capture, so the "
                "replayed kernels are in the trace.")
    return "The step is not CUDA-graphed: every kernel is launched from the host."


def _floor_lines(s: dict, peaks: Peaks) -> list[str]:
    launch = (f"{peaks.graph_launch_s * 1e6:.2f} µs" if peaks.graph_launch_s
              else "none (no CUDA graphs on the CPU)")
    rows = [
        ["FLOPs per iteration", f"{s['flops_per_iteration'] / 1e9:.4g} GFLOP"],
        ["bytes per iteration (lower bound)", f"{s['bytes_per_iteration'] / 1e6:.4g} MB"],
        [f"matmul peak ({s['floor_dtype']})", f"{peaks.tflops(s['floor_dtype']):.3g} TFLOP/s"],
        ["copy peak (read + write)", f"{peaks.copy_gbps:.3g} GB/s"],
        ["graph launch", launch],
        ["compute time", f"{s['compute_ms']:.4f} ms"],
        ["memory time", f"{s['memory_ms']:.4f} ms"],
        ["launch time", f"{s['launch_ms']:.4f} ms"],
        ["**floor** (the largest of the three)", f"**{s['floor_ms']:.4f} ms** ({s['bound']})"],
        ["**measured iteration** (unprofiled)", f"**{s['iteration_ms']:.4f} ms**"],
        ["measured / floor", "not shown: the peaks are unreliable" if s.get("peaks_unreliable")
         else f"{s['iteration_ms'] / s['floor_ms']:.1f}x"],
        ["samples/s (unprofiled)", f"{s['samples_per_s']:,.0f}"],
        ["iteration in the profiled window", f"{s['profiled_iteration_ms']:.4f} ms"],
    ]
    measured = ", ".join(f"{dtype} {tflops:.3g} TFLOP/s"
                         for dtype, tflops in peaks.matmul_tflops.items())
    return _table(["", ""], rows) + [
        "", f"Peaks measured {peaks.measured} on {peaks.device} (matmul: {measured}), cached "
        "per device and torch version; `--measure-peaks` measures again. FLOPs count the "
        "GEMMs (2 per multiply-add). The bytes count each trained parameter's Adam traffic "
        "(gradient written, parameter, gradient and both moments read, parameter and moments "
        "written), frozen weights and the batch read once, and the EMA's read-read-write; "
        "activations are left out, and caches can beat the bound where the state fits."]


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _share(value: float | None) -> str:
    # Over 100% only where the peaks stayed unreliable (roofline.recheck), as the note says.
    return "?" if value is not None and value > 1 else _number(value, ".1%")


def _short(name: str, limit: int = 70) -> str:
    name = name.replace("|", "\\|")
    return name if len(name) <= limit else name[:limit - 3] + "..."
