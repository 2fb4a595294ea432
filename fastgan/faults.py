"""What a training run does when things go wrong mid-run, and the exit status it ends with.

    SIGTERM, SIGINT   the step in progress finishes, last.pt is saved, exit 128 + signal
                      (143, 130): a job scheduler can requeue the run with --resume
    divergence        a non-finite loss or weight, found at a log interval: no checkpoint
                      of the bad state, exit 3
    a failed write    (a full disk) the last good checkpoint stays whole, exit 74 (EX_IOERR)

Bad input (exit 2) is found before training and is not this module's business.
"""

import signal
import threading
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

DIVERGED = 3
WRITE_FAILED = 74  # EX_IOERR in sysexits.h


class RunStopped(Exception):
    """A run that stopped before its last step: the message is one line, `status` the exit
    status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def kept(last: Path, saved_step: int | None) -> str:
    """What the run has to resume from."""
    if saved_step is None:
        return "no checkpoint had been written yet"
    return f"{last} (step {saved_step}) is kept"


class StopRequests:
    """SIGTERM and SIGINT during training. The handler only notes the signal, so the step in
    progress finishes and the loop saves before it stops. It also puts back the handlers it
    replaced: a second signal acts at once (and the atomic writes keep last.pt whole).
    Handlers can only be set in the main thread; elsewhere (a run started from a thread)
    signals keep their usual effect."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._note) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _note(self, signum, frame) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def stopped(self, step: int, out: Path) -> RunStopped:
        name = signal.Signals(self.signum).name
        return RunStopped(f"stopped by {name} at step {step}, saved in "
                          f"{out / 'checkpoints' / 'last.pt'}; resume with: "
                          f"fastgan train --out {out} --resume", 128 + self.signum)


def watched_tensors(models: Iterable[nn.Module]) -> list[Tensor]:
    """The floating-point parameters and buffers the divergence check looks at."""
    return [t for module in models for t in (*module.parameters(), *module.buffers())
            if t.is_floating_point()]


def all_finite(losses: Iterable[Tensor], tensors: list[Tensor]) -> Tensor:
    """A 0-dim bool tensor on the device, True when every loss and tensor is finite: computed
    without a host sync, so the caller decides when to read it."""
    # t * 0 is 0 where t is finite and NaN where it is NaN or ±inf, so each norm is 0 or NaN:
    # no overflow for large finite weights, and a few multi-tensor kernels for all of them.
    zeros = torch._foreach_mul([*losses, *tensors], 0.0)
    return torch.stack([n.float() for n in torch._foreach_norm(zeros)]).eq(0).all()


def diverged(step: int, losses: dict[str, float], last: Path,
             saved_step: int | None) -> RunStopped:
    shown = "".join(f", loss_{name} {value:.4g}" for name, value in losses.items())
    return RunStopped(f"diverged at step {step} (a non-finite loss or weight{shown}); "
                      f"{kept(last, saved_step)}; try a lower learning rate", DIVERGED)


def write_failed(error: OSError, out: Path, step: int, last: Path,
                 saved_step: int | None) -> RunStopped:
    where = error.filename or out
    return RunStopped(f"error: cannot write {where}: {error.strerror or error}; training "
                      f"stopped at step {step}; {kept(last, saved_step)}", WRITE_FAILED)
