"""`fastgan bench step`: one whole training iteration of the default models, per mode and
batch size, for

    eager     plain PyTorch as people write it: nn.Linear + nn.LeakyReLU MLPs, nn.Embedding
              conditioning, F.binary_cross_entropy_with_logits / F.mse_loss,
              torch.optim.Adam with its defaults, a per-parameter EMA loop
    compile   the same, with each model torch.compile'd (mode max-autotune on CUDA,
              default on the CPU)
    fastgan   fastgan's Training.train_step, as `fastgan train` runs it by default
    ablations fastgan with one piece changed (CUDA: without graphs, without compile, without
              either; CPU: the torch engine instead of the native one, and on the torch
              engine: compiled, plain-PyTorch ops, unfused Adam)

Every variant does the same work per iteration: ae is one autoencoder step; cgan and
latent-cgan are one D step (real and fake batches) and one G step with D frozen, then the
EMA of G. latent-cgan's G makes latents that the frozen decoder turns into images. Batches
are drawn on the device from the packaged MNIST digits in every variant.

Each variant is warmed up, then all of a row's variants are timed in alternating rounds
(timing.time_interleaved: the median over rounds of each round's median), so that what changes
on the machine during a row falls on every variant alike. A round is timed with
triton.testing.do_bench on CUDA, on the wall clock on the CPU. samples/s = batch / iteration
time.
Each row also gives fastgan's floor (fastgan/roofline.py): the iteration's FLOPs at the
measured matmul peak, its bytes at the measured copy bandwidth and, on CUDA, one graph
launch, whichever is largest; c/floor says how far the measured iteration is from it.
With --precision bf16 every variant runs under bf16 autocast with fp32 weights.
"""

import contextlib
import copy
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastgan import config as cfg
from fastgan.data import Dataset, load_dataset
from fastgan.devices import check_precision, use_fp32_policy
from fastgan.models import LEAKY_SLOPE, MAX_EMBEDDING
from fastgan.perf import roofline
from fastgan.perf.profile import count_iteration
from fastgan.perf.results import new_report, report_path, write_report
from fastgan.perf.timing import time_interleaved
from fastgan.step import EMA_WARMUP, Training

MODES = ("ae", "cgan", "latent-cgan")
DEFAULT_MODES = ("cgan", "latent-cgan")
DEFAULT_BATCHES = [64, 256, 1024, 4096]
QUICK_BATCHES = [64]
DEFAULT_REPEAT_MS = {"cuda": 200.0, "cpu": 1500.0}
QUICK_REPEAT_MS = 30.0
WARMUP_ITERATIONS = 10  # before timing: compilation, graph capture, lazy optimizer state
DEFAULT_COMPILE_MODE = {"cuda": "max-autotune", "cpu": "default"}

# fastgan variants: (config overrides, FASTGAN_BACKEND, fused Adam). The first is fastgan as
# `fastgan train` runs it on that device; each other changes one piece of it.
FASTGAN_VARIANTS = {
    "cuda": {
        "fastgan": ({}, None, True),
        "fastgan_no_graphs": ({"cuda_graphs": False}, None, True),
        "fastgan_no_compile": ({"compile": False}, None, True),
        "fastgan_no_compile_no_graphs": ({"compile": False, "cuda_graphs": False}, None, True),
    },
    "cpu": {
        "fastgan": ({}, None, True),
        "fastgan_torch_engine": ({"engine": "torch"}, None, True),
        "fastgan_compiled": ({"compile": True, "engine": "torch"}, None, True),
        "fastgan_torch_ops": ({"engine": "torch"}, "torch", True),
        "fastgan_unfused_adam": ({"engine": "torch"}, None, False),
    },
}


# ---------------------------------------------------------------------------------------
# The plain PyTorch reference.


def _plain_mlp(sizes: list[int], sigmoid: bool) -> nn.Sequential:
    layers = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.LeakyReLU(LEAKY_SLOPE)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    if sigmoid:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


class _PlainConditioned(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, sizes: list[int], sigmoid: bool):
        super().__init__()
        width = min(num_classes, MAX_EMBEDDING)
        self.embed = nn.Embedding(num_classes, width)
        self.net = _plain_mlp([in_dim + width, *sizes], sigmoid)

    def forward(self, x, labels):
        return self.net(torch.cat([x, self.embed(labels)], dim=1))


class PlainIteration:
    """The reference iteration for `mode`, on the models `fastgan train` would build."""

    def __init__(self, c: cfg.TrainConfig, data: Dataset, compile_mode: str | None):
        self.c, self.x, self.y = c, data.x, data.y
        self.autocast = functools.partial(torch.autocast, data.x.device.type,
                                          dtype=torch.bfloat16,
                                          enabled=c.precision == "bf16")
        self.batch, device = c.batch_size, data.x.device
        nc, dim, latent = data.num_classes, data.dim, c.mode == "latent-cgan"
        adam = lambda m, lr: torch.optim.Adam(m.parameters(), lr, betas=c.betas)
        compiled = (lambda m: torch.compile(m, mode=compile_mode)) if compile_mode else \
            (lambda m: m)
        if c.mode == "ae":
            ae = nn.Sequential(_plain_mlp([dim, *c.ae_hidden, c.latent_dim], False),
                               _plain_mlp([c.latent_dim, *reversed(c.ae_hidden), dim], True))
            self.ae, self.ae_opt = compiled(ae.to(device)), adam(ae, c.lr_ae)
            return
        g = _PlainConditioned(c.noise_dim, nc, [*c.g_hidden, c.latent_dim if latent else dim],
                              not latent).to(device)
        d = _PlainConditioned(dim, nc, [*c.d_hidden, 1], False).to(device)
        self.ema = copy.deepcopy(g).requires_grad_(False)
        self.g_params, self.ema_params = list(g.parameters()), list(self.ema.parameters())
        self.g_opt, self.d_opt = adam(g, c.lr), adam(d, c.lr)
        self.d_model = d
        self.g, self.d = compiled(g), compiled(d)
        decoder = _plain_mlp([c.latent_dim, *reversed(c.ae_hidden), dim], True)
        self.decoder = compiled(decoder.to(device).requires_grad_(False)) if latent else None
        self.t = 0

    def __call__(self) -> None:
        if self.c.mode == "ae":
            x = self.x[torch.randint(len(self.x), (self.batch,), device=self.x.device)]
            with self.autocast():
                loss = F.mse_loss(self.ae(x).float(), x)
            self.ae_opt.zero_grad()
            loss.backward()
            self.ae_opt.step()
            return
        rows = torch.randint(len(self.x), (self.batch,), device=self.x.device)
        real, real_labels = self.x[rows], self.y[rows]
        noise, labels = self._noise_and_labels()
        with self.autocast():
            with torch.no_grad():
                fake = self._generate(noise, labels)
            real_logits, fake_logits = self.d(real, real_labels), self.d(fake, labels)
            d_loss = (F.binary_cross_entropy_with_logits(real_logits,
                                                         torch.ones_like(real_logits))
                      + F.binary_cross_entropy_with_logits(fake_logits,
                                                           torch.zeros_like(fake_logits)))
        self.d_opt.zero_grad()
        d_loss.backward()
        self.d_opt.step()

        noise, labels = self._noise_and_labels()
        self.d_model.requires_grad_(False)
        with self.autocast():
            logits = self.d(self._generate(noise, labels), labels)
            g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        self.g_opt.zero_grad()
        g_loss.backward()
        self.g_opt.step()
        self.d_model.requires_grad_(True)
        decay = min(self.c.ema_decay, (1 + self.t) / (EMA_WARMUP + self.t))
        with torch.no_grad():
            for ema, param in zip(self.ema_params, self.g_params, strict=True):
                ema.lerp_(param, 1 - decay)
        self.t += 1

    def _noise_and_labels(self):
        noise = torch.randn(self.batch, self.c.noise_dim, device=self.x.device)
        rows = torch.randint(len(self.y), (self.batch,), device=self.x.device)
        return noise, self.y[rows]

    def _generate(self, noise, labels):
        out = self.g(noise, labels)
        return self.decoder(out) if self.decoder is not None else out


# ---------------------------------------------------------------------------------------
# fastgan's iteration.


@contextlib.contextmanager
def _backend(name: str | None) -> Iterator[None]:
    saved = os.environ.get("FASTGAN_BACKEND")
    if name is not None:
        os.environ["FASTGAN_BACKEND"] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("FASTGAN_BACKEND", None)
        else:
            os.environ["FASTGAN_BACKEND"] = saved


def fastgan_iteration(c: cfg.TrainConfig, data: Dataset, overrides: dict, backend: str | None,
                      fused_adam: bool) -> Callable[[], object]:
    training = Training(dataclasses.replace(c, **overrides), data, data.x.device)
    training.step = _first_step(c)
    if not fused_adam:
        for optimizer in training.optimizers.values():
            for group in optimizer.param_groups:
                group["fused"] = False

    def iteration():
        with _backend(backend):
            training.train_step()
    return iteration


# ---------------------------------------------------------------------------------------
# The benchmark.


def _config(mode: str, batch: int, device: torch.device, precision: str) -> cfg.TrainConfig:
    c = cfg.TrainConfig(mode=mode, batch_size=batch, steps=10**9, device=device.type,
                        precision=precision)
    return cfg.resolve_lengths(c, 1)


def _first_step(c: cfg.TrainConfig) -> int:
    return c.ae_phase_steps if c.mode == "latent-cgan" else 0  # latent-cgan: the GAN phase


def floor(c: cfg.TrainConfig, data: Dataset, peaks: roofline.Peaks) -> dict:
    """fastgan's iteration's floor: its FLOPs at the matmul peak, its bytes at the copy
    bandwidth, one graph launch; the largest of the three (roofline.floor)."""
    counts, nbytes = count_iteration(c, data, _first_step(c))
    return _floor_of(counts.flops, nbytes, peaks, c.precision)


def _floor_of(flops: int, nbytes: int, peaks: roofline.Peaks, precision: str) -> dict:
    limit = roofline.floor(flops, nbytes, peaks, "bfloat16" if precision == "bf16" else "float32")
    return {"flops": flops, "bytes": nbytes, "compute_ms": limit.compute_s * 1e3,
            "memory_ms": limit.memory_s * 1e3, "launch_ms": limit.launch_s * 1e3,
            "floor_ms": limit.floor_s * 1e3, "bound": limit.bound}


def variant_names(device: torch.device) -> list[str]:
    return ["eager", "compile", *FASTGAN_VARIANTS[device.type]]


def _set_floors(rows: list[dict], peaks: roofline.Peaks, precision: str) -> None:
    """Each row's floor and c/floor against `peaks` (the rows' FLOPs and bytes kept)."""
    for row in rows:
        row["floor"] = _floor_of(row["floor"]["flops"], row["floor"]["bytes"], peaks, precision)
        row["fastgan_vs_floor"] = _vs_floor(row)


def _vs_floor(row: dict) -> float | None:
    ours = row["ms"].get("fastgan")
    return None if ours is None else round(ours / row["floor"]["floor_ms"], 2)


def _beaten_floors(rows: list[dict], peaks: roofline.Peaks, precision: str) -> list[str]:
    """The rows whose fastgan iteration ran faster than its floor under `peaks`."""
    beaten = []
    for row in rows:
        ours, limit = row["ms"].get("fastgan"), _floor_of(row["floor"]["flops"],
                                                      row["floor"]["bytes"], peaks, precision)
        if ours is not None and ours < limit["floor_ms"]:
            beaten.append(f"c/floor {ours / limit['floor_ms']:.2f}x at {row['mode']} "
                          f"b={row['batch']}")
    return beaten


def check_floors(report: dict, device: torch.device, peaks: roofline.Peaks) -> None:
    """The consistency check: a fastgan iteration faster than its floor measures the peaks
    again (once) and sets the rows' floors from them; if one still is, the report's
    "peaks_unreliable" says so, and the table shows no c/floor below 1."""
    precision = report["precision"]
    new_peaks, beaten = roofline.recheck(device, peaks,
                                         lambda p: _beaten_floors(report["rows"], p, precision))
    if new_peaks is not peaks:
        _set_floors(report["rows"], new_peaks, precision)
        report["peaks"] = dataclasses.asdict(new_peaks)
    report["peaks_unreliable"] = roofline.unreliable_line(beaten) if beaten else None


def measure(mode: str, batch: int, data: Dataset, device: torch.device, repeat_ms: float,
            compile_mode: str, peaks: roofline.Peaks, precision: str = "fp32",
            variants: list[str] | None = None,
            on_variant: Callable[[dict, str], None] = lambda row, name: None) -> dict:
    """The row of (mode, batch): every variant's time, or its error. `on_variant(row, name)`
    is called for each variant once the row is timed."""
    c = _config(mode, batch, device, precision)
    builders = {
        "eager": lambda: PlainIteration(c, data, None),
        "compile": lambda: PlainIteration(c, data, compile_mode),
        **{name: functools.partial(fastgan_iteration, c, data, *variant)
           for name, variant in FASTGAN_VARIANTS[device.type].items()},
    }
    row = {"mode": mode, "batch": batch, "ms": {}, "samples_per_s": {}, "errors": {},
           "floor": floor(c, data, peaks)}
    names = variants or variant_names(device)
    iterations = {}
    torch._dynamo.reset()  # the row's variants compile afresh
    for name in names:
        torch.manual_seed(0)
        iterations[name] = _guarded(row, name, builders[name])
        for _ in range(WARMUP_ITERATIONS):
            iterations[name]()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = time_interleaved(iterations, device, repeat_ms)
    for name in names:
        row["ms"][name] = None if name in row["errors"] else ms[name]
        row["samples_per_s"][name] = None if row["ms"][name] is None else \
            round(batch / ms[name] * 1e3, 1)
        _add_ratios(row)
        on_variant(row, name)
    return row


def _guarded(row: dict, name: str, build: Callable[[], Callable[[], object]]
             ) -> Callable[[], object]:
    """build()'s iteration, which records its first error in row["errors"] and then does
    nothing: one broken variant spoils no others."""
    def record(error: Exception) -> None:
        row["errors"][name] = " ".join(f"{type(error).__name__}: {error}".split())[:300]

    try:
        iteration = build()
    except Exception as error:
        record(error)
        return lambda: None

    def call() -> None:
        if name not in row["errors"]:
            try:
                iteration()
            except Exception as error:
                record(error)
    return call


def _add_ratios(row: dict) -> None:
    """c/a, c/b and c/floor, from the variants measured so far (None until both are)."""
    eager, compiled, ours = (row["ms"].get(k) for k in ("eager", "compile", "fastgan"))
    row["fastgan_vs_eager"] = None if None in (eager, ours) else round(eager / ours, 3)
    row["fastgan_vs_compile"] = None if None in (compiled, ours) else round(compiled / ours, 3)
    row["fastgan_vs_floor"] = _vs_floor(row)


def _table(rows: list[dict], variants: list[str]) -> str:
    head = ["mode", "batch", *(f"{v} samples/s" for v in variants), "c/a", "c/b",
            "floor samples/s", "c/floor"]
    lines = [head]
    for row in rows:
        rates = [f"{r:,.0f}" if (r := row["samples_per_s"].get(v)) is not None else "error"
                 for v in variants]
        ratios = [f"{r:.2f}x" if (r := row[k]) is not None else "-"
                  for k in ("fastgan_vs_eager", "fastgan_vs_compile")]
        floor_rate = row["batch"] / row["floor"]["floor_ms"] * 1e3
        to_floor = _to_floor(row["fastgan_vs_floor"])
        lines.append([row["mode"], str(row["batch"]), *rates, *ratios,
                      f"{floor_rate:,.0f} ({row['floor']['bound']})", to_floor])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True))
                     for line in lines)


def _to_floor(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    # Below 1 only where the peaks stayed unreliable (check_floors), whose line is printed.
    return "?" if ratio < 1 else f"{ratio:.1f}x"


def run(device: torch.device, modes: list[str], batches: list[int] | None,
        repeat_ms: float | None, quick: bool, out_dir: Path, command: str,
        compile_mode: str | None = None, precision: str = "fp32",
        variants: list[str] | None = None) -> Path:
    """Benchmarks every (mode, batch), prints the table and writes the JSON report: a line
    per variant and the report's rewrite after every row, so that a run cut short keeps what
    it measured. `variants` defaults to all of the device's."""
    batches = batches or (QUICK_BATCHES if quick else DEFAULT_BATCHES)
    repeat_ms = repeat_ms or (QUICK_REPEAT_MS if quick else DEFAULT_REPEAT_MS[device.type])
    compile_mode = compile_mode or DEFAULT_COMPILE_MODE[device.type]
    check_precision(precision, device)  # the CLI checked it; this is for callers from Python
    use_fp32_policy(device)  # the peaks and every variant under the trainer's; recorded
    data = load_dataset("mnist").to(device)
    peaks = roofline.measure_peaks(device)
    variants = variants or variant_names(device)
    report = new_report("step" if precision == "fp32" else f"step-{precision}", device,
                        torch.float32, command)
    report.update(modes=modes, batches=batches, repeat_ms=repeat_ms, quick=quick,
                  compile_mode=compile_mode, precision=precision, variants=variants,
                  peaks=dataclasses.asdict(peaks), rows=[])
    path = report_path(out_dir, report)
    print(f"{report['device']}, fastgan backend {report['fastgan_backend']}, "
          f"{torch.get_num_threads()} CPU threads", flush=True)
    def measured(row: dict, name: str) -> None:
        if not report["rows"] or report["rows"][-1] is not row:  # the row's first variant
            report["rows"].append(row)
        write_report(path, report)
        result = f"{row['ms'][name]:.4f} ms" if row["ms"][name] is not None else "error"
        print(f"{row['mode']} b={row['batch']} {name}: {result}", flush=True)

    for mode in modes:
        for batch in batches:
            measure(mode, batch, data, device, repeat_ms, compile_mode, peaks, precision,
                    variants, measured)
    check_floors(report, device, peaks)
    write_report(path, report)
    print(_table(report["rows"], variants))
    if report["peaks_unreliable"]:
        print(f"c/floor: {report['peaks_unreliable']}")
    for row in report["rows"]:
        for name, error in row["errors"].items():
            print(f"{name} failed at {row['mode']} b={row['batch']}: {error}")
    print(f"wrote {path}")
    return path
