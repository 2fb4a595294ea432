"""`fastgan train --tensorboard`: the run as TensorBoard event files under <out>/tb/.

    train/<key>     every number of metrics.jsonl's log lines (losses, samples_per_s, time)
    eval/<key>      every number of its evaluations
    samples         the sample grid of each evaluation
    curves          curves.png, as drawn at each evaluation

Written with torch.utils.tensorboard, which needs the `tensorboard` package (the optional
extra fastgan[tensorboard]). A resumed run appends to the same directory; the steps it
repeats after its checkpoint are purged from the view (SummaryWriter's purge_step), as
metrics.jsonl drops their lines.
"""

import io
from pathlib import Path

import numpy as np

from fastgan.devices import SetupError

MISSING = ("--tensorboard: needs the tensorboard package, which is not installed "
           "(pip install 'fastgan[tensorboard]')")


def require() -> None:
    """Raise the one-line input error where torch.utils.tensorboard cannot be imported."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as error:
        raise SetupError(MISSING) from error


class Board:
    def __init__(self, directory: Path, resumed_step: int | None):
        require()
        self.directory, self.resumed_step = directory, resumed_step
        self._writer = None

    @property
    def writer(self):
        """The SummaryWriter, made on first use: a run refused before training (a full
        disk) leaves no event file."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if self.resumed_step is None else self.resumed_step + 1
            self._writer = SummaryWriter(log_dir=str(self.directory), purge_step=purge)
        return self._writer

    def scalars(self, record: dict) -> None:
        """One metrics.jsonl record: its numbers as scalars at its step."""
        group = "eval" if "eval" in record else "train"
        values = record["eval"] if "eval" in record else record
        step = record["step"]
        for key, value in values.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"{group}/{key}", value, step)
        if "eval" in record:
            self.writer.add_scalar("eval/time", record["time"], step)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        """(H, W) grayscale or (H, W, 3) RGB uint8 pixels."""
        self.writer.add_image(tag, pixels, step, dataformats="HW" if pixels.ndim == 2 else "HWC")

    def png(self, tag: str, path: Path, step: int) -> None:
        """A PNG file (curves.png) as an image: decoded by matplotlib, which drew it."""
        from matplotlib.image import imread

        rgba = imread(io.BytesIO(path.read_bytes()), format="png")
        self.image(tag, (rgba[..., :3] * 255).round().astype(np.uint8), step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
