"""Every Triton kernel specialization fastgan's ops launch, compiled for a real GPU on a
machine without one:

    python -m fastgan.perf.compile_check --arch 90 --out profiles/kernels-sm90.json

fastgan's own launchers (dense_fwd, dense_bwd, gan_loss_fwd, pointwise_loss_fwd) run on
empty CPU tensors shaped as the default models' layers and losses, with each kernel replaced
by a recorder that compiles what the launcher asks for (JITFunction.warmup: Triton's own
specialization on dtypes, alignment and sizes) and launches nothing. A stand-in driver
answers the questions Triton asks a driver before compiling (the current device, stream
and target: GPUTarget("cuda", arch, 32)). ptxas, the one shipped with triton for that target,
builds every kernel with triton's flags; its -v log, which triton discards (its backend's
subprocess module is swapped for one that keeps it), gives the registers, spills and static
shared memory. Each specialization is compiled once, into an empty temporary triton cache.

This proves that the kernels build for those GPUs, and how many registers and how much
shared memory they take there. It proves nothing about their speed or their results on the
hardware: nothing runs.

Exit status 1 on any compile error, or on spills in an fp32, bf16 or fp16 kernel (fp64 tiles
may spill; the table records how much).
"""

import argparse
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from fastgan.backends.codes import ACTIVATION_CODES, LOSS_CODES, REDUCTION_CODES
from fastgan.backends.common import TRITON_INTERPRET

ARCHS = (80, 90)
# SMs of the GPUs the split weight-gradient path sizes itself for (A100, H100 SXM).
SM_COUNT = {80: 108, 90: 132}
BATCHES = (64, 65536)  # 65536 takes the split dw path
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
MAY_SPILL = (torch.float64,)
LEAKY_SLOPE = 0.2
DATA_DIM, NUM_CLASSES = 784, 10  # MNIST, the default dataset


class StandInDriver:
    """What Triton's JIT asks its driver before it compiles: the device, the stream and the
    target. Nothing launches, so nothing else is asked."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        return self.target


class PtxasLogs:
    """Stands in for the subprocess module in triton's NVIDIA backend: runs ptxas as triton
    asks (its flags, its -v) and keeps the log that triton itself throws away."""

    def __init__(self):
        self.last: str | None = None

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    def run(self, command, *args, **kwargs):
        result = subprocess.run(command, *args, **kwargs)
        log = kwargs.get("stderr")
        if "-v" in command and hasattr(log, "name"):
            self.last = Path(log.name).read_text()
        return result


class Recorder:
    """Stands in for one kernel in its module: kernel[grid](...) compiles the launch's
    specialization and keeps the compiled kernel and its ptxas usage (or the error) with
    what launched it."""

    def __init__(self, kernel, found: dict, errors: list, context: dict, logs: PtxasLogs):
        self.kernel, self.found, self.errors, self.context = kernel, found, errors, context
        self.logs = logs

    def __getitem__(self, grid):
        return functools.partial(self._compile, grid)

    def _compile(self, grid, *args, **kwargs) -> None:
        name = self.kernel.fn.__name__
        self.logs.last = None
        try:
            compiled = self.kernel.warmup(*args, grid=grid, **kwargs)
        except Exception as error:  # a compile error: recorded, and the check goes on
            self.errors.append({"kernel": name, **self.context, "error": _message(error)})
            return
        if compiled.hash in self.found:  # an earlier launch's specialization
            return
        constexprs = {p.name: _plain(kwargs[p.name]) for p in self.kernel.params
                      if p.is_constexpr and p.name in kwargs}
        # The tensors' dtypes: the split dw path writes fp32 partials for bf16 inputs.
        positional = zip(self.kernel.params, args, strict=False)  # the constexprs come named
        pointers = {p.name: _name(arg.dtype) for p, arg in positional
                    if isinstance(arg, torch.Tensor)}
        self.found[compiled.hash] = (name, {**self.context, "pointers": pointers}, constexprs,
                                     compiled, ptxas_usage(self.logs.last or ""))


def _message(error: Exception) -> str:
    # Triton's CompilationError says where (the source); its cause says what went wrong.
    cause = f"{error.__cause__!r} " if error.__cause__ else ""
    return " ".join(f"{cause}{error}".split())[:2000]


def _plain(value):
    return value if isinstance(value, bool | int | float | str) else str(value)


# ---------------------------------------------------------------------------------------
# The launches


@functools.cache
def layer_shapes() -> list[tuple[int, int]]:
    """(in_features, out_features) of every FusedLinear in the default models of every mode."""
    from fastgan import config as cfg
    from fastgan.models import build_models
    from fastgan.nn import FusedLinear

    shapes = set()
    for mode in ("ae", "cgan", "latent-cgan"):
        models = build_models(cfg.TrainConfig(mode=mode), DATA_DIM, NUM_CLASSES, image=True)
        shapes |= {(layer.in_features, layer.out_features) for model in models.values()
                   for layer in model.modules() if isinstance(layer, FusedLinear)}
    return sorted(shapes)


def dense_launches(context: dict) -> Iterator[None]:
    """The dense forward, dx and dw launches: every activation and dtype, at every layer
    shape and batch, the first layer's backward (no dx) included."""
    from fastgan.backends.triton import dense

    for dtype in DTYPES:
        for activation, code in ACTIVATION_CODES.items():
            for (n_in, n_out) in layer_shapes():
                for batch in BATCHES:
                    context.update(dtype=_name(dtype), activation=activation,
                                   launch=f"x ({batch}, {n_in}), weight ({n_out}, {n_in})")
                    x = torch.empty(batch, n_in, dtype=dtype)
                    weight, bias = torch.empty(n_out, n_in, dtype=dtype), torch.empty(
                        n_out, dtype=dtype)
                    out, preact = dense.dense_fwd(x, weight, bias, code, LEAKY_SLOPE,
                                                  activation == "gelu")
                    saved = preact if activation == "gelu" else out
                    for need_dx in (True, False):
                        dense.dense_bwd(out, x, weight, saved, code, LEAKY_SLOPE, need_dx,
                                        True, True)
                    yield


def loss_launches(context: dict) -> Iterator[None]:
    """The GAN losses (D's: real and fake logits; G's: fake logits) and the pointwise losses
    for every reduction, with and without weight and pos_weight, with and without
    gradients, on a default batch of D's logits and of images."""
    from fastgan.backends.triton import gan_loss_fwd, pointwise_loss_fwd

    for dtype in DTYPES:
        logits = torch.empty(BATCHES[0], 1, dtype=dtype)
        for need_grad in (True, False):
            context.update(dtype=_name(dtype), activation=None, launch=f"gan_loss grad={need_grad}")
            gan_loss_fwd(logits.view(-1), 1.0, logits.view(-1), 0.0, need_grad, need_grad)
            gan_loss_fwd(logits.view(-1), 1.0, None, 0.0, need_grad, False)
            yield
        # A batch of images: past one program's size, so the reductions write partial sums.
        x, target = (torch.empty(BATCHES[0], DATA_DIM, dtype=dtype) for _ in range(2))
        for loss, reduction, weighted, pos_weighted, need_grads in _pointwise_cases():
            context.update(dtype=_name(dtype), activation=None, launch=(
                f"{loss} {reduction} x ({BATCHES[0]}, {DATA_DIM}) weight={weighted} "
                f"pos_weight={pos_weighted} grads={need_grads}"))
            # broadcast over the batch (stride 0), as a per-pixel weight is
            weight, pos_weight = (torch.empty(1, DATA_DIM, dtype=dtype).expand_as(x) if given
                                  else None for given in (weighted, pos_weighted))
            pointwise_loss_fwd(x, target, weight, pos_weight, LOSS_CODES[loss],
                               REDUCTION_CODES[reduction], need_grads, need_grads)
            yield


def _pointwise_cases() -> Iterator[tuple]:
    for loss in LOSS_CODES:
        for reduction in REDUCTION_CODES:
            for weighted in (False, True):
                for pos_weighted in (False, True) if loss == "bce_with_logits" else (False,):
                    for need_grads in (False, True):  # both gradients or none
                        yield loss, reduction, weighted, pos_weighted, need_grads


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------
# Compiling and reading ptxas


@contextlib.contextmanager
def recording(arch: int) -> Iterator[tuple[dict, list, dict]]:
    """The stand-in driver for `arch`, every fastgan kernel replaced by a Recorder, and the
    split dw path sized for that GPU's SMs; all undone on exit."""
    from triton.backends import backends
    from triton.runtime.driver import driver

    from fastgan.backends.triton import dense, gan_loss, pointwise_loss

    found, errors, context, logs = {}, [], {}, PtxasLogs()
    kernels = [(dense, "dense_fwd_kernel"), (dense, "dense_dx_kernel"),
               (dense, "dense_dw_kernel"), (gan_loss, "gan_loss_kernel"),
               (pointwise_loss, "pointwise_loss_kernel")]
    originals = [getattr(module, name) for module, name in kernels]
    m_splits = dense.m_splits
    # Read without making the default driver, which fails where there is no GPU: triton
    # 3.9 keeps it in _active (None until made), 3.2 in active (a lazy proxy).
    previous = vars(driver).get("_active", vars(driver).get("active"))
    driver.set_active(StandInDriver(arch))
    # The globals of the module triton's NVIDIA backend runs in (triton 3.2 loads it under
    # another name than triton.backends.nvidia.compiler).
    backend_globals = backends["nvidia"].compiler.make_cubin.__globals__
    backend_globals["subprocess"] = logs
    # An empty cache: each specialization's first launch compiles, so ptxas runs and logs;
    # its later launches (most are repeats) load it from there, and the Recorder skips them.
    saved_env = {"TRITON_CACHE_DIR": os.environ.get("TRITON_CACHE_DIR")}
    cache = tempfile.TemporaryDirectory(prefix="fastgan-compile-check-")
    os.environ.update(TRITON_CACHE_DIR=cache.name)
    try:
        for (module, name), kernel in zip(kernels, originals, strict=True):
            setattr(module, name, Recorder(kernel, found, errors, context, logs))
        dense.m_splits = lambda rows, tiles, device: dense.splits_for(rows, tiles,
                                                                      SM_COUNT[arch])
        yield found, errors, context
    finally:
        for (module, name), kernel in zip(kernels, originals, strict=True):
            setattr(module, name, kernel)
        dense.m_splits = m_splits
        driver.set_active(previous)
        backend_globals["subprocess"] = subprocess
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        cache.cleanup()


def ptxas_path(arch: int) -> str:
    """The ptxas triton itself runs for `arch` (triton.backends.nvidia.compiler)."""
    from triton.backends.nvidia import compiler

    if hasattr(compiler, "get_ptxas"):
        try:
            tool = compiler.get_ptxas(arch)  # triton >= 3.6 picks it per architecture
        except TypeError:
            tool = compiler.get_ptxas()
        return tool.path if hasattr(tool, "path") else tool[0]
    return compiler._path_to_binary("ptxas")[0]  # triton 3.2


def unavailable() -> str | None:
    """Why the check cannot run with this triton, or None: it needs the NVIDIA backend, a
    replaceable driver and ptxas (all in triton's Linux x86-64 wheels, 3.2 to 3.9)."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
        from triton.runtime.driver import driver
    except ImportError as error:
        return f"this triton lacks what the check needs ({error})"
    if not hasattr(driver, "set_active"):
        return "this triton's driver cannot be replaced by a stand-in"
    try:
        path = ptxas_path(max(ARCHS))
    except Exception as error:  # triton raises its own errors when the binary is missing
        return f"triton's ptxas not found ({error})"
    return None if os.access(path, os.X_OK) else f"triton's ptxas not executable: {path}"


def gpu_name(arch: int) -> str:
    # triton builds sm_90a (wgmma), not sm_90, for capability 90
    return f"sm_{arch}a" if arch == 90 else f"sm_{arch}"


def ptxas_usage(log: str) -> dict:
    """Registers, spill stores and loads (bytes), stack frame and static shared memory, from
    the `ptxas -v` log of one kernel's compile."""

    def number(pattern: str) -> int | None:
        match = re.search(pattern, log)
        return int(match.group(1)) if match else None

    return {"registers": number(r"Used (\d+) registers"),
            "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads"),
            "stack_frame": number(r"(\d+) bytes stack frame"),
            "static_smem": number(r"(\d+) bytes smem") or 0}


def check(arch: int) -> dict:
    """Compile every launch for `arch`; the report with one row per kernel specialization."""
    import triton

    with recording(arch) as (found, errors, context):
        launches = sum(1 for _ in dense_launches(context)) + sum(
            1 for _ in loss_launches(context))
    rows = []
    for name, launched, constexprs, compiled, usage in found.values():
        rows.append({"kernel": name, "dtype": launched["dtype"],
                     "activation": launched["activation"], "first_launch": launched["launch"],
                     "pointers": launched["pointers"], "constexprs": constexprs, **usage,
                     # the dynamic shared memory Triton requests at launch
                     "shared_memory": compiled.metadata.shared,
                     "num_warps": compiled.metadata.num_warps,
                     "num_stages": compiled.metadata.num_stages})
    rows.sort(key=specialization)
    spills = [row for row in rows if row["spill_stores"] or row["spill_loads"]]
    unread = [_row_name(row) for row in rows if row["registers"] is None]
    version = subprocess.run([ptxas_path(arch), "--version"], capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
    return {
        "target": f"cuda {gpu_name(arch)} (GPUTarget('cuda', {arch}, 32))",
        "triton": triton.__version__, "torch": torch.__version__, "ptxas": version,
        "what": "every Triton kernel specialization fastgan's ops launch, compiled (not run) "
                "for this target: registers, spills and static shared memory from the log of "
                "the ptxas -v triton runs, "
                "shared_memory the dynamic shared memory Triton requests at launch (bytes)",
        "layer_shapes": layer_shapes(), "batches": list(BATCHES), "sm_count": SM_COUNT[arch],
        "launches": launches, "kernels_compiled": len(rows), "compile_errors": errors,
        "spilling": [_row_name(row) for row in spills],
        "failures": failures(errors, spills) + [f"no ptxas log: {name}" for name in unread],
        "kernels": rows,
    }


def specialization(row: dict) -> tuple:
    """What tells a row's kernel specialization apart: the kernel, its tensors' dtypes and
    its constexprs (the sizes' specialization aside)."""
    return (row["kernel"], row["dtype"], json.dumps(row["pointers"], sort_keys=True),
            json.dumps(row["constexprs"], sort_keys=True))


def failures(errors: list, spills: list) -> list[str]:
    """What fails the check: any compile error; spills except in fp64 kernels."""
    allowed = {_name(dtype) for dtype in MAY_SPILL}
    return ([f"compile error: {e['kernel']} ({e['dtype']}, {e['launch']}): {e['error'][:200]}"
             for e in errors]
            + [f"spills: {_row_name(row)}" for row in spills if row["dtype"] not in allowed])


def _row_name(row: dict) -> str:
    return (f"{row['kernel']} {row['dtype']} {row['activation'] or ''} "
            f"{row['spill_stores']}/{row['spill_loads']} bytes stored/loaded").replace("  ", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastgan.perf.compile_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, choices=ARCHS, required=True)
    parser.add_argument("--out", type=Path, help="write the report (JSON) here")
    args = parser.parse_args(argv)
    reason = ("TRITON_INTERPRET=1 runs kernels in the interpreter, which compiles nothing; "
              "unset it") if TRITON_INTERPRET else unavailable()
    if reason:
        print(f"compile_check: {reason}", file=sys.stderr)
        return 2
    report = check(args.arch)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['target']}: {report['launches']} launches, {report['kernels_compiled']} "
          f"kernels compiled, {len(report['compile_errors'])} compile errors, "
          f"{len(report['spilling'])} spilling")
    for failure in report["failures"]:
        print(f"FAIL {failure}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
