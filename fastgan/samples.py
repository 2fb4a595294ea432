"""Pictures and arrays of a run's samples.

    images, labeled      a grid with one row per class (PyTorch-GAN's 10 x 10 layout)
    images, unlabeled    a square-ish grid
    autoencoder alone    held-out images above their reconstructions
    2-D data             a scatter plot of samples over the real data, modes marked
    .npy                 the samples themselves, in data units
"""

import math
from pathlib import Path

import numpy as np
import torch

from fastgan.api import Run
from fastgan.data import Dataset
from fastgan.images import image_grid, scatter_plot, write_png

SCATTER_POINTS = 2500
UNLABELED_GRID = 100


def picture(run: Run, data: Dataset, columns: int, generator: torch.Generator) -> np.ndarray | None:
    """What samples/*.png shows for this run, or None where no picture fits the data."""
    if run.generator is None:
        if data.image_shape is None:
            return None
        real = data.test_x[:columns]
        return image_grid(data.to_data_units(torch.cat([real, run.autoencoder(real)])), rows=2)
    if data.image_shape is not None:
        by_class = run.num_classes and not run.clustered  # row r is class r
        rows = run.num_classes if by_class else math.isqrt(UNLABELED_GRID)
        labels = (torch.arange(rows, device=run.device).repeat_interleave(columns) if by_class
                  else run.labels_for(rows * columns, None, generator))
        samples = run.sample_model_units(labels, rows * columns, generator)
        return image_grid(data.to_data_units(samples), rows=rows)
    if data.dim == 2:
        labels = run.labels_for(SCATTER_POINTS, None, generator)
        samples = run.sample_model_units(labels, SCATTER_POINTS, generator)
        return scatter_plot(data.to_data_units(samples), data.to_data_units(data.test_x),
                            modes=data.modes)
    return None


def save_samples(samples: torch.Tensor, path: Path, image_shape: tuple | None) -> None:
    """`fastgan sample`'s output: .npy (the array) or .png (a grid of images, or a scatter)."""
    if path.suffix == ".npy":
        np.save(path, samples.cpu().numpy())
        return
    if image_shape is not None:
        rows = math.isqrt(len(samples))
        while len(samples) % rows:
            rows -= 1
        write_png(path, image_grid(samples, rows=rows))
    else:
        write_png(path, scatter_plot(samples))
