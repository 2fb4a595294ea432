"""curves.png: a run's metrics.jsonl as one figure.

    losses          loss_ae; loss_d and loss_g (two panels: their scales differ ~20x)
    samples/s       training throughput per log window
    autoencoder     recon_mse against pca_mse (the PCA baseline of the same width)
    generator       cond_accuracy and FD (fd, or fd_data), or on 2-D mixtures the share of
                    modes captured and of high-quality samples

The x-axis is the step; on top, each step tick is labeled with its wall time (the log's
`time`). Each series is cut to at most MAX_POINTS evenly spaced points, so a long run draws
as fast as a short one.
Drawn with matplotlib's Figure (no pyplot, no display); without matplotlib there is no plot.
"""

import io
from pathlib import Path

import numpy as np

from fastgan.files import atomic_write

NO_PLOT = "fastgan: matplotlib is not installed: skipped curves.png (pip install matplotlib)"
MAX_POINTS = 500
SIZE_INCHES = (11, 9)
DPI = 100  # with SIZE_INCHES: a 1100 x 900 picture


def subsample(records: list[dict], limit: int = MAX_POINTS) -> list[dict]:
    """At most `limit` of the records, evenly spaced, the first and the last kept."""
    if len(records) <= limit:
        return records
    picked = np.unique(np.linspace(0, len(records) - 1, limit).round().astype(int))
    return [records[i] for i in picked]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that have `key`."""
    kept = [r for r in records if r.get(key) is not None]
    return [r["step"] for r in kept], [r[key] for r in kept]


def draw(records: list[dict], path: Path) -> bool:
    """Write curves.png for these metrics.jsonl records; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    logged = subsample([r for r in records if "eval" not in r])
    evaluations = subsample([{"step": r["step"], **r["eval"]} for r in records if "eval" in r])
    mixture = any("modes_total" in r for r in evaluations)
    if mixture:  # as shares, so that the panel reads the same for any number of modes
        evaluations = [{**r, "modes_captured": r["modes_captured"] / r["modes_total"]}
                       if "modes_total" in r else r for r in evaluations]
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI)
    # fixed margins: constrained layout measured 40% of the drawing time
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.06, top=0.94, hspace=0.6,
                           wspace=0.2)
    for axes, (kind, keys, label) in zip(figure.subplots(3, 2).flatten(), panels(mixture),
                                         strict=True):
        axes.set_xlabel("step")
        if _plot(axes, logged if kind == "log" else evaluations, keys, label):
            _time_axis(axes, logged)  # an empty panel gets none
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    with atomic_write(path) as file:
        file.write(buffer.getbuffer())
    return True


def panels(mixture: bool) -> list[tuple[str, tuple[str, ...], str]]:
    """The six panels, in reading order: (log lines or evaluations, keys, y label)."""
    generator = [("eval", ("modes_captured",), "share of modes captured"),
                 ("eval", ("high_quality",), "high-quality share")] if mixture else [
                 ("eval", ("cond_accuracy",), "cond_accuracy"),
                 ("eval", ("fd", "fd_data"), "Fréchet distance")]
    return [("log", ("loss_ae",), "autoencoder loss (MSE)"),
            ("log", ("loss_d", "loss_g"), "GAN losses"),
            ("log", ("samples_per_s",), "samples/s"),
            ("eval", ("recon_mse", "pca_mse"), "held-out MSE"),
            *generator]


def _plot(axes, records: list[dict], keys: tuple[str, ...], ylabel: str) -> bool:
    """The series of `keys` on one panel; False where the run logged none of them."""
    drawn = False
    for key in keys:
        steps, values = series(records, key)
        if steps:
            axes.plot(steps, values, marker="." if len(steps) < 50 else None, label=key)
            drawn = True
    axes.set_ylabel(ylabel, fontsize=9)
    axes.grid(alpha=0.3)
    if drawn:
        axes.legend(fontsize=8)
    else:
        axes.text(0.5, 0.5, "not in this run", ha="center", va="center",
                  transform=axes.transAxes, color="grey")
    return drawn


def _time_axis(axes, logged: list[dict]) -> None:
    """Wall seconds on top, above the step ticks: each labeled with the log's `time` at that
    step (older logs have none). Ticks at the steps, not a scale of its own, because time is
    not linear in steps (phases run at different speeds; evaluations take time)."""
    steps, times = series(logged, "time")
    if len(steps) < 2:
        return
    low, high = axes.get_xlim()
    ticks = [tick for tick in axes.get_xticks() if low <= tick <= high]
    seconds = np.interp(ticks, steps, times)
    top = axes.secondary_xaxis("top")
    top.set_xticks(ticks, labels=[f"{s:.3g}" if s < 100 else f"{s:.0f}" for s in seconds])
    top.set_xlabel("wall seconds", fontsize=8)
