"""`fastgan bench ops`: each fused op against the plain PyTorch it replaces ("eager") and
torch.compile of that same code ("compile"), at the default models' layer shapes.

One timed call is a forward and the gradients of every input that requires grad (a fixed
random gradient flows into non-scalar outputs), so the three variants do the same work.
Before timing, compile's and fastgan's outputs and gradients are checked against eager's:
a broken op gets an error in its cell, not a number. The variants of a row are then timed
in alternating rounds (timing.time_interleaved), each getting the median of its rounds.
"""

import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import fastgan.ops
from fastgan.devices import use_fp32_policy
from fastgan.perf.results import new_report, report_path, write_report
from fastgan.perf.timing import time_interleaved

# (in_features, out_features, activation) of the default models' layers. The generator
# takes 64 noise + 10 label-embedding features, the discriminator 784 pixels + 10.
AUTOENCODER_LAYERS = [
    (784, 512, "leaky_relu"), (512, 256, "leaky_relu"), (256, 32, "none"),
    (32, 256, "leaky_relu"), (256, 512, "leaky_relu"), (512, 784, "sigmoid"),
]
GENERATOR_LAYERS = [(74, 256, "leaky_relu"), (256, 512, "leaky_relu"), (512, 784, "sigmoid")]
DISCRIMINATOR_LAYERS = [(794, 512, "leaky_relu"), (512, 256, "leaky_relu"), (256, 1, "none")]
NEGATIVE_SLOPE = 0.2  # every leaky_relu's
DENSE_LAYERS = list(dict.fromkeys(AUTOENCODER_LAYERS + GENERATOR_LAYERS + DISCRIMINATOR_LAYERS))

# Each loss and the features per row of its inputs: the discriminator's (batch, 1) logits,
# the autoencoder's (batch, 784) reconstructions.
LOSS_FEATURES = {"gan_d_loss": 1, "gan_g_loss": 1, "bce_with_logits": 1, "mse_loss": 784}
OPS = ("fused_dense", *LOSS_FEATURES)  # what --ops selects from

DEFAULT_BATCHES = {"cuda": [64, 256, 4096, 65536], "cpu": [64, 256, 4096]}
DEFAULT_REPEAT_MS = {"cuda": 100.0, "cpu": 300.0}
QUICK_BATCHES = [64, 256]
QUICK_REPEAT_MS = 20.0

# Loose on purpose: the check catches a broken op, not rounding from another summation
# order. Used as rtol, and times the reference's largest magnitude as atol.
TOLERANCE = {torch.float32: 1e-2, torch.float16: 2e-2, torch.bfloat16: 5e-2}

EAGER_ACTIVATIONS = {
    "none": lambda z: z,
    "relu": torch.relu,
    "leaky_relu": lambda z: F.leaky_relu(z, NEGATIVE_SLOPE),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
}


def _eager_gan_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def _eager_gan_g_loss(fake_logits: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


EAGER_LOSSES = {
    "gan_d_loss": _eager_gan_d_loss,
    "gan_g_loss": _eager_gan_g_loss,
    # In Python functions of their own: torch 2.6's torch.compile refuses torch's functions.
    "bce_with_logits": lambda *args: F.binary_cross_entropy_with_logits(*args),
    "mse_loss": lambda *args: F.mse_loss(*args),
}


@dataclasses.dataclass
class Case:
    op: str
    shape: str
    batch: int
    eager: Callable[..., Tensor]
    fastgan: Callable[..., Tensor]
    args: tuple[Tensor, ...]
    grad_out: Tensor | None = None  # the gradient flowing into the output; None for a loss
    inputs_with_grad: tuple[Tensor, ...] = dataclasses.field(init=False)

    def __post_init__(self):
        self.inputs_with_grad = tuple(arg for arg in self.args if arg.requires_grad)


def _dense_case(layer: tuple[int, int, str], batch: int, device: torch.device,
                dtype: torch.dtype) -> Case:
    in_features, out_features, activation = layer
    randn = functools.partial(torch.randn, device=device, dtype=dtype)
    scale = 1 / math.sqrt(in_features)  # nn.Linear's init scale keeps pre-activations ~ N(0, 1)
    x = randn(batch, in_features)
    weight = randn(out_features, in_features) * scale
    bias = randn(out_features) * scale
    act = EAGER_ACTIVATIONS[activation]
    return Case(
        op=f"fused_dense/{activation}", shape=f"{in_features}x{out_features}", batch=batch,
        eager=lambda *x_weight_bias: act(F.linear(*x_weight_bias)),
        fastgan=lambda *x_weight_bias: fastgan.ops.fused_dense(*x_weight_bias, activation,
                                                               NEGATIVE_SLOPE),
        args=tuple(t.requires_grad_() for t in (x, weight, bias)),
        grad_out=randn(batch, out_features),
    )


def _loss_case(name: str, batch: int, device: torch.device, dtype: torch.dtype) -> Case:
    shape = (batch, LOSS_FEATURES[name])
    logits = lambda: torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    probabilities = lambda: torch.rand(shape, device=device, dtype=dtype)
    args = {
        "gan_d_loss": lambda: (logits(), logits()),
        "gan_g_loss": lambda: (logits(),),
        "bce_with_logits": lambda: (logits(), probabilities().round()),  # 0 / 1 labels
        "mse_loss": lambda: (probabilities().requires_grad_(), probabilities()),
    }[name]()
    return Case(op=name, shape=f"(b,{shape[1]})", batch=batch, eager=EAGER_LOSSES[name],
                fastgan=getattr(fastgan.ops, name), args=args)


def _first_per_activation(layers: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    first = {}
    for layer in layers:
        first.setdefault(layer[2], layer)
    return list(first.values())


# torch.compile's mode per device: the strongest baseline, autotuned GEMMs on CUDA (no
# CUDA graphs: fastgan's ops run without them here). --compile-mode overrides it.
DEFAULT_COMPILE_MODE = {"cuda": "max-autotune-no-cudagraphs", "cpu": "default"}


def _compile_options(device: torch.device, mode: str | None) -> dict:
    # Static shapes, as in a training step.
    return {"mode": mode or DEFAULT_COMPILE_MODE[device.type], "dynamic": False}


def _forward_backward(fn: Callable[..., Tensor], case: Case) -> tuple[Tensor, tuple[Tensor]]:
    """One timed call: the output, and the gradients of the inputs that require grad."""
    out = fn(*case.args)
    return out, torch.autograd.grad(out, case.inputs_with_grad, case.grad_out)


def _check_close(result, reference, dtype: torch.dtype) -> None:
    if reference is None:
        raise RuntimeError("eager failed, so there is nothing to check against")
    (out, grads), (ref_out, ref_grads) = result, reference
    tolerance = TOLERANCE[dtype]
    named = [("output", out, ref_out)] + [
        (f"gradient {i}", grad, ref)
        for i, (grad, ref) in enumerate(zip(grads, ref_grads, strict=True))]
    for name, actual, expected in named:
        torch.testing.assert_close(
            actual, expected, rtol=tolerance,
            atol=tolerance * max(expected.abs().max().item(), 1e-6),
            msg=lambda message, name=name: f"{name}: {message}")


def _measure(case: Case, device: torch.device, dtype: torch.dtype, repeat_ms: float,
             compile_options: dict) -> dict:
    torch._dynamo.reset()  # compile each case afresh: no recompile limit, no dynamic shapes
    variants = {
        "eager": case.eager,
        "compile": torch.compile(case.eager, **compile_options),
        "fastgan": case.fastgan,
    }
    row = {"op": case.op, "shape": case.shape, "batch": case.batch}
    errors = {}
    reference = None
    checked = {}
    for variant, fn in variants.items():
        try:
            result = _forward_backward(fn, case)  # the "compile" variant compiles here
            if variant == "eager":
                reference = result
            else:
                _check_close(result, reference, dtype)
            checked[variant] = functools.partial(_forward_backward, fn, case)
        except Exception as error:  # record it and go on: one broken case spoils no others
            errors[variant] = f"{type(error).__name__}: {error}"
    # timed in alternating rounds: a busy spell on the machine falls on every variant alike
    times = time_interleaved(checked, device, repeat_ms) if checked else {}
    for variant in variants:
        row[f"{variant}_ms"] = times.get(variant)
    row["fastgan_vs_eager"] = _ratio(row["eager_ms"], row["fastgan_ms"])
    row["fastgan_vs_compile"] = _ratio(row["compile_ms"], row["fastgan_ms"])
    row["errors"] = errors
    return row


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or denominator is None else numerator / denominator


# ---------------------------------------------------------------------------------------
# Output: a table streamed to stdout row by row, a progress line on a terminal's stderr.

COLUMNS = [  # (title, width, alignment)
    ("op", 22, "<"), ("shape", 8, "<"), ("batch", 6, ">"), ("eager ms", 10, ">"),
    ("compile ms", 10, ">"), ("fastgan ms", 10, ">"), ("fastgan/eager", 13, ">"),
    ("fastgan/compile", 15, ">"),
]


def _table_line(cells: list[str]) -> str:
    return "  ".join(f"{cell:{align}{width}}"
                     for cell, (_, width, align) in zip(cells, COLUMNS, strict=True))


def _table_row(row: dict) -> str:
    times = ["error" if row[f"{v}_ms"] is None else f"{row[f'{v}_ms']:.3f}"
             for v in ("eager", "compile", "fastgan")]
    speedups = ["-" if row[key] is None else f"{row[key]:.2f}x"
                for key in ("fastgan_vs_eager", "fastgan_vs_compile")]
    return _table_line([row["op"], row["shape"], str(row["batch"]), *times, *speedups])


def _show_progress(text: str) -> None:
    # Only on a terminal: in a log, the rows streamed to stdout already show the progress.
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{text}")
        sys.stderr.flush()


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run(device: torch.device, dtype: torch.dtype, batches: list[int] | None,
        repeat_ms: float | None, quick: bool, out_dir: Path, command: str,
        compile_mode: str | None = None, ops: list[str] | None = None) -> Path:
    """Benchmarks every case of `ops` (default: all of OPS), prints the table and writes the
    JSON report; returns its path. batches and repeat_ms default by device, or to short ones
    with quick."""
    batches = batches or (QUICK_BATCHES if quick else DEFAULT_BATCHES[device.type])
    repeat_ms = repeat_ms or (QUICK_REPEAT_MS if quick else DEFAULT_REPEAT_MS[device.type])
    ops = ops or list(OPS)
    layers = _first_per_activation(DENSE_LAYERS) if quick else DENSE_LAYERS
    builders = ([functools.partial(_dense_case, layer) for layer in layers
                 if "fused_dense" in ops]
                + [functools.partial(_loss_case, name) for name in LOSS_FEATURES if name in ops])

    use_fp32_policy(device)  # every variant under the trainer's fp32 policy; recorded
    report = new_report("ops", device, dtype, command)
    report.update(batches=batches, repeat_ms=repeat_ms, quick=quick,
                  compile_options=_compile_options(device, compile_mode), rows=[])
    path = report_path(out_dir, report)
    total = len(builders) * len(batches)
    print(f"{report['device']}, {report['dtype']}, fastgan backend {report['fastgan_backend']}")
    print(_table_line([title for title, _, _ in COLUMNS]), flush=True)
    for build in builders:
        for batch in batches:
            torch.manual_seed(0)  # the same inputs in every run
            case = build(batch, device, dtype)
            _show_progress(f"[{len(report['rows']) + 1}/{total}] {case.op} {case.shape} "
                           f"b={batch}")
            report["rows"].append(_measure(case, device, dtype, repeat_ms,
                                           report["compile_options"]))
            write_report(path, report)  # after every case: a run cut short keeps its rows
            _show_progress("")
            print(_table_row(report["rows"][-1]), flush=True)
    for row in report["rows"]:
        for variant, error in row["errors"].items():
            print(f"{variant} failed at {row['op']} {row['shape']} b={row['batch']}: "
                  f"{_one_line(error)}")
    print(f"wrote {path}")
    return path
