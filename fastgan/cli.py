"""The `fastgan` command line.

    fastgan train [options]        train a run (default: latent-cgan on the packaged MNIST)
    fastgan sample --run DIR ...   samples of a trained run, as .png or .npy; its
                                   reconstructions or latent walks (--reconstruct, --interpolate)
    fastgan eval --run DIR         a trained run's held-out metrics
    fastgan report --run DIR       a run's curves and pictures drawn again, and its summary
    fastgan profile [options]      a profiling session: trace, NVML samples, roofline report
    fastgan bench ops [options]    time the fused ops against PyTorch and torch.compile
    fastgan bench step [options]   time a whole training iteration against the same
    fastgan bench fuse [options]   a tutorial GAN's iteration, unpatched against fastgan.nn.fuse
    fastgan bench quality [opts]   training seconds to a good generator, fastgan against the
                                   recipe people copy

Each command is a subparser whose `run` default takes the parsed arguments and returns the
exit status. Bad input gives one line on stderr, `fastgan: error: ...`, and exit status 2.
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

import fastgan
from fastgan import api, checkpoint, config, curves, faults, native, pictures, report
from fastgan.backends.select import backend_for, requested_backend
from fastgan.data import DataError
from fastgan.devices import SetupError, check_precision, fit_threads_to_load, resolve_device
from fastgan.distributed import LaunchError
from fastgan.evaluate import Evaluator
from fastgan.images import write_png
from fastgan.perf import bench_fuse, bench_ops, bench_quality, bench_step
from fastgan.perf import profile as profiling
from fastgan.samples import save_samples
from fastgan.train import train

# Errors that are the user's input, reported in one line with exit status 2.
INPUT_ERRORS = (config.ConfigError, DataError, SetupError, checkpoint.CheckpointError,
                LaunchError)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UsageError(Exception):
    """Bad input, reported as `fastgan: error: <message>` with exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse would print the usage and exit; one line reads better in logs and tests.
        # Its messages start "argument --flag: ..."; "--flag: ..." says the same.
        raise UsageError(message.removeprefix("argument "))


# ---------------------------------------------------------------------------------------
# Argument types: each turns one flag's text into a value or explains what it expected.


def int_list(text: str) -> list[int]:
    try:
        batches = [int(part) for part in text.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}")
    return batches


def mode_list(text: str) -> list[str]:
    modes = text.split(",")
    unknown = [m for m in modes if m not in bench_step.MODES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated modes of {', '.join(bench_step.MODES)}, got {text!r}")
    return modes


def number(kind: type, accept, expected: str):
    """An argparse type: text -> kind, or a message saying what was expected."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive_int = number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number(int, lambda v: v >= 0, "an integer >= 0")
fraction = number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
positive_float = number(float, lambda v: 0 < v < float("inf"), "a positive number")


# ---------------------------------------------------------------------------------------
# Commands


def bench_device(args: argparse.Namespace) -> torch.device:
    """The benchmark's device, with its backend, precision and --out checked before any work."""
    device = resolve_device(args.device)
    check_precision(getattr(args, "precision", "fp32"), device)
    try:
        backend_for(device)  # an unusable FASTGAN_BACKEND is bad input
    except (ValueError, RuntimeError) as error:
        raise UsageError(str(error)) from error
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out: cannot create {str(args.out)!r}: {error.strerror}") from error
    return device


def run_bench_ops(args: argparse.Namespace) -> int:
    bench_ops.run(bench_device(args), DTYPES[args.dtype], args.batches, args.repeat_ms,
                  args.quick, args.out, args.command_line, args.compile_mode, args.ops)
    return 0


def name_list(known: tuple[str, ...], what: str):
    """An argparse type: comma-separated names, each one of `known`."""
    def parse(text: str) -> list[str]:
        names = text.split(",")
        if not set(names) <= set(known):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what} of {', '.join(known)}, got {text!r}")
        return names
    return parse


def run_bench_step(args: argparse.Namespace) -> int:
    device = bench_device(args)
    known = bench_step.variant_names(device)
    unknown = [name for name in args.variants or () if name not in known]
    if unknown:
        raise UsageError(f"--variants: expected comma-separated names of {', '.join(known)} "
                         f"on {device.type}, got {','.join(args.variants)!r}")
    bench_step.run(device, args.modes, args.batches, args.repeat_ms, args.quick,
                   args.out, args.command_line, args.compile_mode, args.precision,
                   args.variants)
    return 0


def run_bench_fuse(args: argparse.Namespace) -> int:
    bench_fuse.run(bench_device(args), args.batches, args.repeat_ms, args.quick, args.out,
                   args.command_line)
    return 0


def run_bench_quality(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    device = bench_device(args)  # on the CPU: builds fastgan's C++ kernels, or loads them
    setup_seconds = time.perf_counter() - started
    fastgan_runs = {"fastgan": {}, **{f"fastgan-{path.stem}": config.read_toml(path)
                                      for path in args.config}}
    bench_quality.run(device, args.out, args.command_line, setup_seconds, args.dataset,
                      args.data_dir, fastgan_runs, args.recipe, args.target, args.max_seconds,
                      args.eval_every, args.max_steps, args.keep_going)
    return 0


def settings(args: argparse.Namespace, saved: dict | None = None) -> config.TrainConfig:
    """The run's config from the settings flags over --config FILE.toml over `saved`."""
    flags = {name: value for name, value in vars(args).items() if name in config.FIELDS}
    for name in ("dataset", "data_dir"):  # paths, made absolute so config.json stays valid
        if name in flags and flags[name] not in (None, "mnist", "ring", "grid"):
            flags[name] = str(Path(flags[name]).resolve())
    file_values = config.read_toml(args.config) if args.config else {}
    return config.build({**(saved or {}), **file_values}, flags)


def run_train(args: argparse.Namespace) -> int:
    if args.resume and args.out is None:
        raise SetupError("--resume: pass --out DIR, the run to continue")
    saved = args.out / "config.json" if args.out else None
    base = config.read_json(saved) if args.resume and saved.exists() else {}
    run_config = settings(args, base)
    fit_threads_to_load(resolve_device(run_config.device))
    summary = train(run_config, args.out, resume=args.resume, overwrite=args.overwrite,
                    tensorboard=args.tensorboard)
    if summary.get("rank"):  # under torchrun, rank 0 reports
        return 0
    headline = {k: v for k, v in summary["metrics"].items()
                if k in ("recon_mse", "pca_mse", "cond_accuracy", "fd", "fd_data",
                         "modes_captured", "high_quality")}
    print(f"fastgan: wrote {summary['out']}: "
          + ", ".join(f"{k} {v:.4g}" for k, v in headline.items())
          + f", {summary['samples_per_s'] or 0:,.0f} samples/s")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    if args.out.suffix not in (".png", ".npy"):
        raise SetupError(f"--out: expected a file name ending in .png or .npy, got {args.out}")
    if args.reconstruct or args.interpolate:
        return run_sample_pictures(args)
    run = api.load(args.run_dir, args.checkpoint)
    if args.out.suffix == ".png" and run.units.image_shape is None and run.data_info["dim"] != 2:
        raise SetupError(f"--out: a .png shows images or 2-D points; this run makes "
                         f"{run.data_info['dim']}-D vectors, so ask for .npy")
    try:
        generator = torch.Generator().manual_seed(args.seed)
        samples = run.sample(args.n, args.label, generator)
    except ValueError as error:
        raise UsageError(str(error)) from error
    save_samples(samples, args.out, run.units.image_shape)
    print(f"fastgan: wrote {args.n} samples to {args.out}")
    return 0


def run_sample_pictures(args: argparse.Namespace) -> int:
    """--reconstruct N or --interpolate A B: pictures of held-out data through the run."""
    flag = "--reconstruct" if args.reconstruct else "--interpolate"
    if args.out.suffix != ".png":
        raise SetupError(f"--out: {flag} draws a picture: expected a file name ending in .png")
    run = api.load(args.run_dir, args.checkpoint)
    data = report.run_data(run)
    if not pictures.can_draw(data):
        raise SetupError(f"{flag}: pictures show images or 2-D points; this run makes "
                         f"{data.dim}-D vectors")
    pairs = None if args.reconstruct else interpolation_pairs(args, data)
    try:
        if args.reconstruct:
            pixels = pictures.reconstructions(run, data, args.reconstruct)
        else:
            pixels = pictures.interpolations(run, data, pairs, args.steps, args.rows,
                                             torch.Generator().manual_seed(args.seed))
    except ValueError as error:
        raise UsageError(f"{flag}: {error}") from error
    write_png(args.out, pixels)
    print(f"fastgan: wrote {args.out}")
    return 0


def interpolation_pairs(args: argparse.Namespace, data) -> list[tuple[int, int]]:
    a, b = args.interpolate
    if data.test_y is None:
        raise SetupError("--interpolate: this run's data has no classes to walk between")
    if max(a, b) >= data.num_classes:
        raise SetupError(f"--interpolate: expected classes in [0, {data.num_classes}), "
                         f"got {a} {b}")
    return [(a, b)] * args.rows


def run_eval(args: argparse.Namespace) -> int:
    run = api.load(args.run_dir, args.checkpoint)
    evaluated = Evaluator(report.run_data(run), run.config)(run, seed=args.seed)
    print(json.dumps(evaluated, indent=2))
    return 0


def run_report(args: argparse.Namespace) -> int:
    records, wrote = report.redraw(args.run_dir, args.checkpoint)
    if "curves.png" not in wrote:
        print(curves.NO_PLOT, file=sys.stderr)
    print("\n".join(report.summary_lines(args.run_dir, records, wrote)))
    return 0


def add_settings(add, lengths: bool = True) -> None:
    """The flags of a run's settings (config.TrainConfig) and --config, shared by train and
    profile; `lengths` adds --steps and --epochs (profile's --steps is its window)."""
    add("--mode", choices=config.MODES,
        help="ae, cgan or latent-cgan (default: latent-cgan; cgan on ring and grid)")
    add("--dataset", metavar="NAME|PATH",
        help="mnist (default, packaged), ring, grid, or a .npy/.npz/.csv file")
    add("--data-dir", metavar="DIR", help="a directory of IDX files (e.g. full MNIST)")
    add("--unconditional", action="store_true", help="ignore the labels")
    add("--clusters", type=non_negative_int, metavar="K",
        help="without labels, condition on K k-means clusters of the data (self-conditioned "
             "GAN); 0 turns it off (default: 50 on ring and grid, else 0)")
    if lengths:
        add("--steps", type=positive_int, help="optimizer steps of the whole run")
        add("--epochs", type=positive_float,
            help="passes over the training split; sets --steps")
    add("--ae-steps", type=positive_int,
        help="latent-cgan: steps of the autoencoder phase (default: --steps // "
             f"{config.AE_SHARE})")
    add("--batch-size", type=positive_int)
    tuned, plain = config.MODE_DEFAULTS["latent-cgan"], config.TrainConfig
    add("--lr", type=positive_float,
        help=f"G and D learning rate (default {tuned['lr']:g} in latent-cgan, else "
             f"{plain.lr:g})")
    add("--lr-g", type=positive_float)
    add("--lr-d", type=positive_float)
    add("--lr-ae", type=positive_float,
        help=f"autoencoder learning rate (default {tuned['lr_ae']:g} in latent-cgan, else "
             f"{plain.lr_ae:g})")
    add("--latent-dim", type=positive_int)
    add("--noise-dim", type=positive_int)
    for model in ("ae", "g", "d"):
        add(f"--{model}-hidden", type=int_list, metavar="N,N,...",
            help="hidden layer widths" + (" of the encoder (the decoder mirrors it)"
                                           if model == "ae" else ""))
    add("--pack", type=positive_int, help="D judges this many samples at once (PacGAN)")
    add("--label-smoothing", type=fraction, help="one-sided: D's real target is 1 - this")
    add("--ema-decay", type=fraction)
    add("--augment", type=fraction,
        help="latent-cgan: share of real batches replaced by AE interpolations")
    add("--finetune-decoder", action="store_true",
        help="latent-cgan: train the decoder with G in the GAN phase")
    add("--device", choices=config.DEVICES)
    add("--precision", choices=config.PRECISIONS, help="bf16: autocast, fp32 weights")
    add("--compile", action=argparse.BooleanOptionalAction,
        help="torch.compile the training step (default: on CUDA, not on the CPU, where "
             "it measured slower)")
    add("--cuda-graphs", action=argparse.BooleanOptionalAction,
        help="on CUDA, replay each training iteration as one CUDA graph (default: on)")
    add("--tf32", action=argparse.BooleanOptionalAction,
        help="on CUDA, fp32 matmuls as TF32 on tensor cores (default: on); --no-tf32: "
             "strict IEEE fp32")
    add("--engine", choices=config.ENGINES,
        help="native: each iteration as one C++ call (default on the CPU, fp32); torch: "
             "autograd and torch.optim")
    add("--seed", type=non_negative_int)
    add("--config", type=Path, default=None, metavar="FILE.toml")


def add_train(commands) -> None:
    train_cmd = commands.add_parser(
        "train", help="train an autoencoder, a conditional GAN, or both (latent-cgan)",
        argument_default=argparse.SUPPRESS,
        description="Flags override --config FILE.toml, which overrides the defaults.")
    add = train_cmd.add_argument
    add_settings(add)
    add("--log-every", type=positive_int)
    add("--eval-every", type=positive_int)
    add("--checkpoint-every", type=positive_int, metavar="N", help="steps between last.pt")
    add("--out", type=Path, default=None, metavar="DIR",
        help="the run directory (default: runs/<dataset>-<mode>-<time>)")
    add("--resume", action="store_true", default=False,
        help="continue the run in --out from its last checkpoint")
    add("--overwrite", action="store_true", default=False,
        help="replace the run in --out")
    add("--tensorboard", action="store_true", default=False,
        help="also write TensorBoard event files under <out>/tb/ (needs the tensorboard "
             "package: pip install 'fastgan[tensorboard]')")
    train_cmd.set_defaults(run=run_train)


def add_run_commands(commands) -> None:
    sample = commands.add_parser("sample", help="samples of a trained run")
    sample.add_argument("--run", type=Path, required=True, metavar="DIR", dest="run_dir")
    sample.add_argument("--n", type=positive_int, default=100)
    sample.add_argument("--label", type=non_negative_int, help="one class for all samples "
                        "(default: cycle through the classes)")
    sample.add_argument("--out", type=Path, required=True, metavar="FILE.png|FILE.npy")
    sample.add_argument("--seed", type=non_negative_int, default=0)
    sample.add_argument("--checkpoint", choices=("last", "best"), default="last")
    pictured = sample.add_mutually_exclusive_group()
    pictured.add_argument("--reconstruct", type=positive_int, metavar="N",
                          help="N held-out examples above their reconstructions")
    pictured.add_argument("--interpolate", type=non_negative_int, nargs=2, metavar=("A", "B"),
                          help="walks from class A to class B: in the autoencoder's latent "
                               "space, and in the generator's label embedding")
    sample.add_argument("--steps", type=number(int, lambda v: v >= 2, "an integer >= 2"),
                        default=10, metavar="K", help="--interpolate: points per walk "
                                                      "(default 10)")
    sample.add_argument("--rows", type=positive_int, default=8, metavar="R",
                        help="--interpolate: walks, each from its own held-out pair "
                             "(default 8)")
    sample.set_defaults(run=run_sample)

    evaluate = commands.add_parser("eval", help="a trained run's held-out metrics, as JSON")
    evaluate.add_argument("--run", type=Path, required=True, metavar="DIR", dest="run_dir")
    evaluate.add_argument("--seed", type=non_negative_int, default=0)
    evaluate.add_argument("--checkpoint", choices=("last", "best"), default="last")
    evaluate.set_defaults(run=run_eval)

    reporting = commands.add_parser(
        "report", help="draw a run's curves.png, reconstructions.png and interpolations.png "
                       "again from its files, and print a summary")
    reporting.add_argument("--run", type=Path, required=True, metavar="DIR", dest="run_dir")
    reporting.add_argument("--checkpoint", choices=("last", "best"), default="last")
    reporting.set_defaults(run=run_report)


def _commas(numbers: list[int]) -> str:
    return ",".join(map(str, numbers))


def run_profile(args: argparse.Namespace) -> int:
    summary = profiling.profile(
        settings(args), steps=args.window, phase=args.phase, out=args.out,
        warmup=args.warmup, overwrite=args.overwrite, refresh_peaks=args.measure_peaks,
        command=args.command_line)
    to_floor = (f"{summary['iteration_ms'] / summary['floor_ms']:.1f}x the "
                f"{summary['floor_ms']:.3f} ms floor ({summary['bound']}-bound)")
    print(f"fastgan: wrote {summary['out']}: {summary['iteration_ms']:.3f} ms per iteration, "
          f"{summary['samples_per_s']:,.0f} samples/s, "
          f"{summary['peaks_unreliable'] or to_floor}")
    return 0


def add_profile(commands) -> None:
    profile = commands.add_parser(
        "profile", argument_default=argparse.SUPPRESS,
        help="profile one training phase: trace, NVML samples and a roofline report",
        description="Warm-up steps, then a timed and a profiled window of --steps steps of "
                    "one phase. Takes train's settings flags; --steps is the window.")
    add = profile.add_argument
    add_settings(add, lengths=False)
    add("--steps", type=positive_int, dest="window", default=profiling.DEFAULT_STEPS,
        metavar="N", help=f"steps timed and steps profiled (default {profiling.DEFAULT_STEPS})")
    add("--warmup", type=non_negative_int, default=profiling.WARMUP_STEPS, metavar="N",
        help=f"steps before them (default {profiling.WARMUP_STEPS})")
    add("--phase", choices=profiling.PHASES, default=None,
        help="the phase to profile (default: gan, or ae in --mode ae)")
    add("--out", type=Path, default=None, metavar="DIR",
        help="default: profiles/<date>-<device>-<dataset>-<mode>-<phase>-b<batch>")
    add("--overwrite", action="store_true", default=False,
        help="replace the profile in --out")
    add("--measure-peaks", action="store_true", default=False,
        help="measure the device's peaks again instead of reading the cached ones")
    profile.set_defaults(run=run_profile)


def add_timing_options(parser, benchmark, quick_help: str) -> None:
    """--device, --batches, --quick, --out and --repeat-ms, with the defaults per device of
    `benchmark` (its DEFAULT_BATCHES, DEFAULT_REPEAT_MS and QUICK_REPEAT_MS)."""
    add = parser.add_argument
    add("--device", choices=("auto", "cpu", "cuda"), default="auto",
        help="default: cuda when a GPU is available, else cpu")
    add("--batches", type=int_list, metavar="N,N,...",
        help=f"batch sizes; default {_commas(benchmark.DEFAULT_BATCHES['cuda'])} on cuda, "
             f"{_commas(benchmark.DEFAULT_BATCHES['cpu'])} on cpu")
    add("--quick", action="store_true", help=quick_help)
    add("--out", type=Path, default=Path("profiles"), metavar="DIR",
        help="where the JSON report goes (default: ./profiles)")
    add("--repeat-ms", type=positive_float, metavar="MS",
        help=f"time spent timing each variant of each case; default "
             f"{benchmark.DEFAULT_REPEAT_MS['cuda']:g} on cuda, "
             f"{benchmark.DEFAULT_REPEAT_MS['cpu']:g} on cpu, "
             f"{benchmark.QUICK_REPEAT_MS:g} with --quick")


def add_bench(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks")
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="benchmark", required=True)

    ops = benchmarks.add_parser(
        "ops", help="each fused op, forward + backward, against PyTorch and torch.compile")
    add_timing_options(ops, bench_ops, "batches 64 and 256, one layer per activation, short "
                                       "timings")
    ops.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    ops.add_argument("--compile-mode", choices=COMPILE_MODES, metavar="MODE",
                     help="torch.compile mode of the compile baseline; default "
                          "max-autotune-no-cudagraphs on CUDA, default on the CPU")
    ops.add_argument("--ops", type=name_list(bench_ops.OPS, "ops"), metavar="OP,...",
                     help="the ops to time (default: all)")
    ops.set_defaults(run=run_bench_ops)

    step = benchmarks.add_parser(
        "step", help="a whole training iteration against plain PyTorch and torch.compile")
    step.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="default: cuda when a GPU is available, else cpu")
    step.add_argument("--modes", type=mode_list, default=list(bench_step.DEFAULT_MODES),
                      metavar="MODE,...", help="of " + ", ".join(bench_step.MODES)
                      + f" (default {','.join(bench_step.DEFAULT_MODES)})")
    step.add_argument("--batches", type=int_list, metavar="N,N,...",
                      help=f"batch sizes; default {_commas(bench_step.DEFAULT_BATCHES)}")
    step.add_argument("--compile-mode", choices=COMPILE_MODES, metavar="MODE",
                      help="torch.compile mode of the compile baseline; default max-autotune "
                           "on CUDA, default on the CPU")
    step.add_argument("--variants", type=lambda text: text.split(","), metavar="NAME,...",
                      help="the variants to time, in this order (default: all the device's)")
    step.add_argument("--precision", choices=config.PRECISIONS, default="fp32",
                      help="bf16: every variant under bf16 autocast, fp32 weights")
    step.add_argument("--quick", action="store_true", help="batch 64 only, short timings")
    step.add_argument("--out", type=Path, default=Path("profiles"), metavar="DIR",
                      help="where the JSON report goes (default: ./profiles)")
    step.add_argument("--repeat-ms", type=positive_float, metavar="MS",
                      help="time spent timing each variant; default "
                           f"{bench_step.DEFAULT_REPEAT_MS['cuda']:g} on cuda, "
                           f"{bench_step.DEFAULT_REPEAT_MS['cpu']:g} on cpu")
    step.set_defaults(run=run_bench_step)

    fuse = benchmarks.add_parser(
        "fuse", help="a GAN written as tutorials write one, one training iteration: as "
                     "written against fastgan.nn.fuse and fastgan's loss modules")
    add_timing_options(fuse, bench_fuse, "batch 64 only, short timings")
    fuse.set_defaults(run=run_bench_fuse)

    quality = benchmarks.add_parser(
        "quality", help="training seconds to a good conditional generator: fastgan's default "
                        "against the recipe people copy")
    add = quality.add_argument
    add("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add("--dataset", default="mnist", metavar="NAME|PATH",
        help="labeled images: mnist (default, packaged) or a .npy/.npz file")
    add("--data-dir", type=Path, metavar="DIR", help="a directory of IDX files (e.g. full MNIST)")
    add("--target", type=fraction, default=bench_quality.DEFAULT_TARGET,
        help=f"the cond_accuracy to reach (default {bench_quality.DEFAULT_TARGET}; "
             f"{bench_quality.ALSO_REPORTED} is reported too)")
    add("--max-seconds", type=positive_float, default=bench_quality.DEFAULT_MAX_SECONDS,
        help=f"training seconds per run (default {bench_quality.DEFAULT_MAX_SECONDS:g})")
    add("--eval-every", type=positive_int, default=bench_quality.DEFAULT_EVAL_EVERY,
        metavar="N", help=f"steps between evaluations (default {bench_quality.DEFAULT_EVAL_EVERY})")
    add("--max-steps", type=positive_int, metavar="N", help="stop each run after N steps")
    add("--keep-going", action="store_true",
        help="train past the target, to --max-seconds (fastgan: to its last step)")
    add("--config", type=Path, action="append", default=[], metavar="FILE.toml",
        help="also race fastgan with these settings over its defaults (repeatable)")
    add("--recipe", action=argparse.BooleanOptionalAction, default=True,
        help="race the recipe people copy (default: on)")
    add("--out", type=Path, default=Path("profiles"), metavar="DIR",
        help="where the JSON report and the plot go (default: ./profiles)")
    quality.set_defaults(run=run_bench_quality)


def check_environment() -> None:
    """The variables that choose kernels (FASTGAN_BACKEND, FASTGAN_NATIVE_GEMM), checked before
    any work: a value they cannot take is bad input."""
    try:
        requested_backend()
        native.gemm_library()
    except ValueError as error:
        raise UsageError(str(error)) from error


def build_parser() -> Parser:
    parser = Parser(prog="fastgan", description="Fused ops and a fast trainer for "
                                                "autoencoders and conditional GANs.")
    parser.add_argument("--version", action="version", version=f"fastgan {fastgan.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    add_train(commands)
    add_run_commands(commands)
    add_profile(commands)
    add_bench(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        args.command_line = shlex.join(["fastgan", *argv])
        check_environment()
        return args.run(args)
    except (UsageError, *INPUT_ERRORS) as error:
        say(f"fastgan: error: {' '.join(str(error).split())}")
        return 2
    except faults.RunStopped as stopped:  # a signal, divergence or a full disk mid-run
        say(f"fastgan: {stopped}")
        return stopped.status
    except KeyboardInterrupt:
        say("fastgan: interrupted")
        return 130


def say(line: str) -> None:
    """One line on stderr, from one process: under torchrun every rank meets the same input
    error, divergence or signal at once, and rank 0 speaks for them."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)
