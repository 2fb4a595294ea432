"""The training loop: steps, logs, evaluations, checkpoints and samples of one run.

    <out>/config.json          the settings (what --resume reads back)
    <out>/metrics.jsonl        one line per logged step, and one per evaluation
    <out>/checkpoints/last.pt  every --checkpoint-every steps and at the end
    <out>/checkpoints/best.pt  the evaluation with the lowest score
    <out>/samples/*.png        a sample grid per evaluation (one row per class)
    <out>/summary.json         the final metrics, samples_per_s and seconds_to
    <out>/curves.png           losses, samples/s and the evaluations (fastgan/curves.py),
                               redrawn at each evaluation (the last is at the last step)
    <out>/reconstructions.png  at the end: the autoencoder's pictures (fastgan/pictures.py)
    <out>/interpolations.png
    <out>/tb/                  with --tensorboard: TensorBoard event files (fastgan/board.py)

Every metrics.jsonl line has `time`: wall seconds since the run started, counted on across
--resume (checkpoints hold it), so quality can be read against the clock.

Losses stay on the device between log intervals: the loop syncs with it only to log.
samples_per_s counts training samples over the steady-state log windows: each phase's first
window (compilation, warm-up, the latent tables) and all evaluation and I/O are left out.

Under torchrun every rank trains (fastgan/distributed.py); rank 0 alone writes the files and
shows progress, the logged losses are the global batch's (averaged over the ranks), and
samples_per_s counts the samples of all ranks.
"""

import json
import math
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from fastgan import board, checkpoint, curves, faults
from fastgan import config as cfg
from fastgan.api import Run
from fastgan.data import Dataset, load_dataset
from fastgan.devices import SetupError, check_fits, check_precision, resolve_device
from fastgan.distributed import World, join
from fastgan.evaluate import Evaluator
from fastgan.files import atomic_write, remove_unfinished, write_json
from fastgan.images import write_png
from fastgan.pictures import write_run_pictures
from fastgan.samples import picture
from fastgan.step import Training

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints", "samples",
             "curves.png", "reconstructions.png", "interpolations.png", "tb")
# Settings a resumed run may change: they don't alter what the steps compute.
RESUMABLE_CHANGES = {"steps", "epochs", "log_every", "eval_every", "checkpoint_every",
                     "device", "samples_per_class", "compile", "cuda_graphs", "engine",
                     "tf32"}


def default_out(config: cfg.TrainConfig) -> Path:
    name = Path(config.data_dir).name if config.data_dir else Path(config.dataset).stem
    return Path("runs") / f"{name}-{config.mode}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_out(out: Path, resume: bool, overwrite: bool) -> dict | None:
    """Make `out` ready; returns the state of its last complete checkpoint when resuming."""
    present = [name for name in RUN_FILES if (out / name).exists()]
    last = out / "checkpoints" / "last.pt"
    state = checkpoint.load(last) if resume and last.exists() else None
    if present and not (resume or overwrite):
        raise SetupError(f"--out: {out} holds another run ({', '.join(present)}); pass "
                          "--resume to continue it or --overwrite to replace it")
    if present and overwrite and state is None:
        for name in present:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=out / "checkpoints") as probe:
            probe.write(b"fastgan")
    except OSError as error:
        raise SetupError(f"--out: cannot write in {out}: {error.strerror}") from error
    for directory in (out, out / "checkpoints", out / "samples"):
        remove_unfinished(directory)  # temp files of a run killed while writing
    return state


def check_space(out: Path, models: dict[str, torch.nn.Module]) -> None:
    """Refuse a disk too full for the checkpoints before training. A checkpoint holds the
    models and Adam's two moments per trained parameter; up to three are on disk at once
    (best.pt, last.pt and the new last.pt before it replaces the old one)."""
    size = sum(t.nbytes for m in models.values() for t in m.state_dict().values())
    size += 2 * sum(p.nbytes for m in models.values() for p in m.parameters() if p.requires_grad)
    there = sum(p.stat().st_size for p in (out / "checkpoints").glob("*.pt"))
    need, free = 3 * size - there, shutil.disk_usage(out).free
    if need > free:
        raise SetupError(f"--out: {out} has {free / 2**20:,.1f} MiB free; this run's "
                         f"checkpoints need about {need / 2**20:,.1f} MiB more")


def check_resumable(saved: dict, config: cfg.TrainConfig, path: Path) -> None:
    try:
        before = cfg.to_dict(cfg.from_dict(saved))
    except (cfg.ConfigError, TypeError) as error:
        raise checkpoint.CheckpointError(f"{path}: its settings are not valid ({error})") from None
    now = cfg.to_dict(config)
    changed = sorted(k for k, v in before.items() if k not in RESUMABLE_CHANGES and now[k] != v)
    if changed:
        detail = ", ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed)
        raise checkpoint.CheckpointError(
            f"{path}: was trained with other settings ({detail}); resume without them")


def keep_log_until(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their old log lines, and a
    last line cut short by a kill."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record["step"] <= step:
            kept.append(line + "\n")
    with atomic_write(path) as file:
        file.write("".join(kept).encode())


# summary.json's seconds_to: the first evaluation reaching each cond_accuracy
ACCURACY_LEVELS = (0.9, 0.95, 0.98)


class Loop:
    def __init__(self, config: cfg.TrainConfig, data: Dataset, out: Path,
                 state: dict | None, world: World | None = None, started: float | None = None,
                 tensorboard: bool = False):
        self.config, self.out, self.data = config, out, data
        self.started = time.perf_counter() if started is None else started
        self.time_before = 0.0  # wall seconds of the runs this one resumes
        self.world = world or World()
        self.device = data.x.device
        self.training = Training(config, data, self.device, self.world)
        self.best = float("inf")
        self.last = out / "checkpoints" / "last.pt"
        self.saved_step = None  # the step of the last checkpoint written (or resumed from)
        if state is not None:
            try:
                self.training.load_state_dict(state)
            except (KeyError, RuntimeError, ValueError, TypeError) as error:
                reason = " ".join(str(error).split())[:200]
                raise checkpoint.CheckpointError(
                    f"{self.last}: does not fit this run's models and data ({reason})") from None
            self.best, self.saved_step = state["best"], state["step"]
            self.time_before = state.get("time", 0.0)  # checkpoints before `time` lack it
        self.watched = faults.watched_tensors(self.training.models.values())
        self.run = Run(config, data.info(), self.training.models)
        self.board = None
        self.skipped_plot = False  # said once that there is no matplotlib for curves.png
        if self.world.is_main:
            keep_log_until(out / "metrics.jsonl", self.training.step)
            self.evaluator = Evaluator(data, config)
            if tensorboard:
                self.board = board.Board(out / "tb", self.saved_step)
        self.steady_seconds = {"ae": 0.0, "gan": 0.0}
        self.steady_samples = {"ae": 0, "gan": 0}

    def elapsed(self) -> float:
        """Wall seconds of the run so far, its resumed parts included."""
        return self.time_before + time.perf_counter() - self.started

    def state(self) -> dict:
        return {"config": cfg.to_dict(self.config), "data": self.run.data_info,
                "best": self.best, "time": self.elapsed(), **self.training.state_dict()}

    def save_last(self) -> None:
        checkpoint.save(self.state(), self.last)
        self.saved_step = self.training.step

    def stop(self, stop: faults.StopRequests):
        """A signal came: save the state reached (rank 0), unless it diverged since the last
        check."""
        if not faults.all_finite([], self.watched).item():
            raise faults.diverged(self.training.step, {}, self.last, self.saved_step)
        if self.world.is_main:
            self.save_last()
        raise stop.stopped(self.training.step, self.out)

    def log(self, record: dict) -> None:
        record = {**record, "time": round(self.elapsed(), 3)}
        with open(self.out / "metrics.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")
        if self.board is not None:
            self.board.scalars(record)

    def draw_curves(self) -> bool:
        """curves.png from the whole log; without matplotlib, say so once and go on."""
        path = self.out / "curves.png"
        drawn = curves.draw(read_log(self.out / "metrics.jsonl"), path)
        if not drawn and not self.skipped_plot:
            tqdm.write(curves.NO_PLOT, file=sys.stderr)
            self.skipped_plot = True
        return drawn

    def write_pictures(self) -> None:
        """reconstructions.png and interpolations.png of the finished run."""
        with evaluating(self.training.models):
            write_run_pictures(self.run, self.data, self.out, self.config.seed)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()

    def evaluate(self, phase: str) -> dict:
        """Metrics after a step of `phase`, a sample grid, and best.pt when the score
        improved."""
        step, gan = self.training.step, phase == "gan"
        run = self.run if gan else without_generator(self.run)
        with evaluating(self.training.models):
            evaluated = self.evaluator(run, seed=self.config.seed)
            image = picture(run, self.data, self.config.samples_per_class,
                            torch.Generator(self.device).manual_seed(self.config.seed))
        if image is not None:
            write_png(self.out / "samples" / f"step-{step:06d}.png", image)
        self.log({"step": step, "phase": phase, "eval": evaluated})
        drawn = self.draw_curves()
        if self.board is not None:
            if image is not None:
                self.board.image("samples", image, step)
            if drawn:
                self.board.png("curves", self.out / "curves.png", step)
            self.board.flush()
        final_kind = gan or self.config.mode == "ae"
        if final_kind and evaluated["score"] < self.best:
            self.best = evaluated["score"]
            checkpoint.save(self.state(), self.out / "checkpoints" / "best.pt")
        return evaluated

    def run_steps(self, stop: faults.StopRequests) -> dict | None:
        """Train to the last step; returns the last evaluation (None on ranks other than
        0, which do not evaluate)."""
        bar = tqdm(total=self.config.steps, initial=self.training.step, unit="step",
                   dynamic_ncols=True, mininterval=0.5, file=sys.stderr, desc=self.config.mode,
                   disable=not self.world.is_main)
        try:
            return self._steps(bar, stop)
        finally:
            bar.close()  # before any message of why the run stopped

    def _steps(self, bar: tqdm, stop: faults.StopRequests) -> dict | None:
        c, training, main = self.config, self.training, self.world.is_main
        global_batch = c.batch_size * self.world.size
        evaluated = None
        window_steps, warm = 0, False
        window_start = time.perf_counter()
        while training.step < c.steps:
            if stop.signum is not None:
                self.stop(stop)
            phase = training.phase
            losses = training.train_step()
            window_steps += 1
            step = training.step
            phase_ends = step == c.steps or training.phase != phase
            if step % c.log_every and not phase_ends:
                continue
            finite = faults.all_finite(losses.values(), self.watched)
            values = self.world.mean(losses)  # the sync: the global batch's losses
            # Every rank holds the same weights and the same mean losses, so every rank
            # stops here together.
            if not (finite.item() and all(math.isfinite(v) for v in values.values())):
                raise faults.diverged(step, values, self.last, self.saved_step)
            seconds = time.perf_counter() - window_start
            rate = window_steps * global_batch / seconds
            if warm:  # the phase's first window holds its warm-up: left out
                self.steady_seconds[phase] += seconds
                self.steady_samples[phase] += window_steps * global_batch
            warm = not phase_ends
            if not main:  # the other ranks go on training; the next collective waits
                window_steps, window_start = 0, time.perf_counter()
                continue
            self.log({"step": step, "phase": phase, **{f"loss_{k}": v for k, v in values.items()},
                      "samples_per_s": round(rate, 1)})
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in values.items()},
                             "samples/s": f"{rate:,.0f}"}, refresh=False)
            bar.update(window_steps)
            if step % c.eval_every == 0 or phase_ends:
                evaluated = self.evaluate(phase)
            if step % c.checkpoint_every == 0 or step == c.steps:
                self.save_last()
            window_steps, window_start = 0, time.perf_counter()
        if not main:
            return None
        return evaluated if evaluated is not None else self.evaluate(training.phase)

    def samples_per_s(self) -> dict:
        return {phase: round(self.steady_samples[phase] / seconds, 1)
                for phase, seconds in self.steady_seconds.items() if seconds > 0}


@contextmanager
def evaluating(models: dict[str, torch.nn.Module]):
    """The models in eval mode, back in training mode after."""
    for module in models.values():
        module.eval()
    try:
        yield
    finally:
        for module in models.values():
            module.train()


def without_generator(run: Run) -> Run:
    """The run as the autoencoder phase sees it: no generator to evaluate yet."""
    models = {k: v for k, v in run.models.items() if k == "autoencoder"}
    return Run(replace(run.config, mode="ae"), run.data_info, models)


def train(config: cfg.TrainConfig, out: Path | None = None, resume: bool = False,
          overwrite: bool = False, tensorboard: bool = False) -> dict:
    """Train one run into `out` and return its summary (also written to summary.json);
    `tensorboard` also writes TensorBoard event files under <out>/tb/."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    world, device = join(device, config.cuda_graphs)
    try:
        return _train(config, out, resume, overwrite, device, world, started, tensorboard)
    finally:
        world.close()


def _train(config: cfg.TrainConfig, out: Path | None, resume: bool, overwrite: bool,
           device: torch.device, world: World, started: float, tensorboard: bool) -> dict:
    config = world.rank0_then_all(lambda: config)  # each rank read its own disk: rank 0's
    data = load_dataset(config.dataset, config.data_dir and Path(config.data_dir),
                        seed=config.seed)
    # --epochs count passes of the global batch: each rank sees 1 / world.size of them
    config = cfg.resolve_lengths(config, len(data.x) // world.size)
    check_fits(data, device)
    out = out or default_out(config)
    out = world.rank0_then_all(lambda: out)  # default_out's time stamp: rank 0's
    state = world.rank0_then_all(
        lambda: _start_out(config, out, resume, overwrite, tensorboard))
    loop = Loop(config, data.to(device), out, state, world, started, tensorboard)
    world.rank0_then_all(lambda: _write_config(loop))
    try:
        with faults.StopRequests() as stop:
            final = loop.run_steps(stop)
        if not world.is_main:
            return {"out": str(out), "world_size": world.size, "rank": world.rank}
        return finish(loop, final, device, data.name, started)
    except OSError as error:  # a full disk, mostly: the atomic writes kept the old files
        raise faults.write_failed(error, out, loop.training.step, loop.last,
                                  loop.saved_step) from error
    finally:
        loop.close()


def finish(loop: Loop, final: dict, device: torch.device, name: str, started: float) -> dict:
    """Write the pictures and summary.json; return the summary, with the run's directory."""
    config, out = loop.config, loop.out
    loop.write_pictures()
    rates = loop.samples_per_s()
    steady = sum(loop.steady_seconds.values())
    summary = {
        "mode": config.mode, "dataset": name, "steps": config.steps,
        "device": str(device), "precision": config.precision,
        "world_size": loop.world.size,
        "metrics": final, "best_score": loop.best,
        "samples_per_s": round(sum(loop.steady_samples.values()) / steady, 1) if steady else None,
        "samples_per_s_by_phase": rates,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    reached = seconds_to(read_log(out / "metrics.jsonl"))
    if reached is not None:
        summary["seconds_to"] = reached
    write_json(out / "summary.json", summary)
    return {**summary, "out": str(out)}


def read_log(path: Path) -> list[dict]:
    """metrics.jsonl's records, in order; a line cut short by a kill is skipped."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def seconds_to(records: list[dict]) -> dict | None:
    """For each of ACCURACY_LEVELS, the first evaluation whose cond_accuracy reaches it, as
    {"seconds", "step"} (None while not reached); None for runs that report no
    cond_accuracy (no labels, 2-D mixtures, the autoencoder alone)."""
    evaluations = [r for r in records if "cond_accuracy" in r.get("eval", {})]
    if not evaluations:
        return None
    reached = {}
    for level in ACCURACY_LEVELS:
        first = next((r for r in evaluations if r["eval"]["cond_accuracy"] >= level), None)
        reached[str(level)] = None if first is None else {"seconds": first.get("time"),
                                                          "step": first["step"]}
    return reached


def _start_out(config: cfg.TrainConfig, out: Path, resume: bool, overwrite: bool,
               tensorboard: bool) -> dict | None:
    """Rank 0's part of starting: `out` made ready, the checkpoint to resume checked."""
    if tensorboard:
        board.require()  # before any file is touched
    state = prepare_out(out, resume, overwrite)
    if state is not None:
        check_resumable(state["config"], config, out / "checkpoints" / "last.pt")
    return state


def _write_config(loop: Loop) -> None:
    """Rank 0's last part of starting, once the models exist: room for their checkpoints,
    then the settings written."""
    check_space(loop.out, loop.training.models)
    write_json(loop.out / "config.json", cfg.to_dict(loop.config))

