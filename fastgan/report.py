"""`fastgan report --run DIR`: a run's pictures drawn again from its files, and a few lines
that say how it went.

    curves.png                 from metrics.jsonl
    reconstructions.png,       from checkpoints/<which>.pt and the run's dataset, where the
    interpolations.png         checkpoint is there

So runs made before these pictures existed get them too.
"""

import json
from pathlib import Path

from fastgan import api, curves, pictures
from fastgan.config import read_json
from fastgan.data import Dataset, load_dataset
from fastgan.devices import SetupError
from fastgan.train import read_log, seconds_to


def run_data(run: api.Run) -> Dataset:
    """The run's dataset: its held-out split is what the pictures show."""
    c = run.config
    return load_dataset(c.dataset, c.data_dir and Path(c.data_dir), seed=c.seed)


def redraw(out: Path, which: str) -> tuple[list[dict], list[str]]:
    """Draw the pictures of the run in `out` again; returns its log records and the names
    of the files written."""
    records = read_log(out / "metrics.jsonl")
    if not records:
        raise SetupError(f"--run: {out} has no metrics.jsonl to report on")
    wrote = ["curves.png"] if curves.draw(records, out / "curves.png") else []
    if (out / "checkpoints" / f"{which}.pt").exists():
        run = api.load(out, which)
        written = pictures.write_run_pictures(run, run_data(run), out, run.config.seed)
        wrote += [path.name for path in written]
    return records, wrote


def summary_lines(out: Path, records: list[dict], wrote: list[str]) -> list[str]:
    """How far the run went, its last evaluation, when it reached each accuracy, its speed,
    and what was drawn."""
    settings = read_json(out / "config.json") if (out / "config.json").exists() else {}
    last = records[-1]
    lines = [f"fastgan: {out}: {settings.get('mode', '?')} on "
             f"{Path(settings.get('dataset', '?')).name}, step {last['step']} of "
             f"{settings.get('steps', '?')}"
             + (f", {last['time']:.1f} wall seconds" if "time" in last else "")]
    evaluations = [r for r in records if "eval" in r]
    if evaluations:
        final = evaluations[-1]
        shown = ", ".join(f"{k} {v:.4g}" for k, v in final["eval"].items()
                          if k != "score" and isinstance(v, int | float))
        lines.append(f"  last evaluation (step {final['step']}): {shown}")
    reached = seconds_to(records)
    if reached is not None:
        lines.append("  cond_accuracy reached: " + ", ".join(
            _reached(level, r) for level, r in reached.items()))
    rate = _summary(out).get("samples_per_s")
    if rate:
        lines.append(f"  samples/s: {rate:,.0f} (steady state)")
    lines.append("  wrote: " + (", ".join(wrote) if wrote else "nothing"))
    return lines


def _reached(level: str, reached: dict | None) -> str:
    if reached is None:
        return f"{level} not reached"
    seconds = reached["seconds"]  # None in logs from before `time`
    return f"{level} at step {reached['step']}" + ("" if seconds is None else f" ({seconds:.1f} s)")


def _summary(out: Path) -> dict:
    """summary.json, or nothing for a run that did not finish (or whose file is damaged)."""
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
