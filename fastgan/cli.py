"""The `fastgan` command line.

    fastgan bench ops [options]    time the fused ops against PyTorch and torch.compile

Each command is a subparser whose `run` default takes the parsed arguments and returns the
exit status. Bad input gives one line on stderr, `fastgan: error: ...`, and exit status 2.
"""

import argparse
import shlex
import sys
from pathlib import Path

import torch

from fastgan.bench import ops as bench_ops
from fastgan.ops._backend import backend_for

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


def batch_list(text: str) -> list[int]:
    try:
        batches = [int(part) for part in text.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}")
    return batches


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available to torch")
    return torch.device(name)


# ---------------------------------------------------------------------------------------
# Commands


def run_bench_ops(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    try:
        backend_for(device)  # an unusable FASTGAN_BACKEND is bad input, found before any work
    except (ValueError, RuntimeError) as error:
        raise UsageError(str(error)) from error
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out: cannot create {str(args.out)!r}: {error.strerror}") from error
    bench_ops.run(device, DTYPES[args.dtype], args.batches, args.repeat_ms, args.quick,
                  args.out, args.command_line, args.compile_mode)
    return 0


def _commas(numbers: list[int]) -> str:
    return ",".join(map(str, numbers))


def add_bench(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks")
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="benchmark", required=True)

    ops = benchmarks.add_parser(
        "ops", help="each fused op, forward + backward, against PyTorch and torch.compile")
    ops.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="default: cuda when a GPU is available, else cpu")
    ops.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    ops.add_argument("--batches", type=batch_list, metavar="N,N,...",
                     help=f"batch sizes; default {_commas(bench_ops.DEFAULT_BATCHES['cuda'])} "
                          f"on cuda, {_commas(bench_ops.DEFAULT_BATCHES['cpu'])} on cpu")
    ops.add_argument("--compile-mode", choices=COMPILE_MODES, metavar="MODE",
                     help="torch.compile mode of the compile baseline; default "
                          "max-autotune-no-cudagraphs on CUDA, default on the CPU")
    ops.add_argument("--quick", action="store_true",
                     help="batches 64 and 256, one layer per activation, short timings")
    ops.add_argument("--out", type=Path, default=Path("profiles"), metavar="DIR",
                     help="where the JSON report goes (default: ./profiles)")
    ops.add_argument("--repeat-ms", type=positive_float, metavar="MS",
                     help="time spent timing each variant of each case; default "
                          f"{bench_ops.DEFAULT_REPEAT_MS['cuda']:g} on cuda, "
                          f"{bench_ops.DEFAULT_REPEAT_MS['cpu']:g} on cpu, "
                          f"{bench_ops.QUICK_REPEAT_MS:g} with --quick")
    ops.set_defaults(run=run_bench_ops)


def build_parser() -> Parser:
    parser = Parser(prog="fastgan", description="Fused ops and a fast trainer for "
                                                "autoencoders and conditional GANs.")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    add_bench(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        args.command_line = shlex.join(["fastgan", *argv])
        return args.run(args)
    except UsageError as error:
        print(f"fastgan: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastgan: interrupted", file=sys.stderr)
        return 130
