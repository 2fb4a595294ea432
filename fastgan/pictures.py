"""Pictures of what a run learned, beyond its samples: reconstructions.png and
interpolations.png (`fastgan sample --reconstruct / --interpolate`, the end of a run, and
`fastgan report`).

    reconstructions   held-out data and the autoencoder's reconstructions of it: images in
                      two rows (the data above), 2-D data as a scatter (reconstructions red
                      over the held-out points grey)
    interpolations    walks from class A to class B, `steps` evenly spaced points each:
                      the autoencoder block decodes points between the latents of a held-out
                      A and a held-out B; the generator block keeps one noise vector per row
                      and moves G's label embedding from A's to B's. Images: one row per walk,
                      the blocks one above the other; 2-D data: a scatter per block, side by
                      side. Without labels, the autoencoder walks between held-out pairs.
"""

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastgan.api import Run
from fastgan.data import Dataset
from fastgan.images import image_grid, scatter_plot, write_png

GAP_SHADE = 128  # grey band between the blocks of a picture
GAP = 6
RUN_EXAMPLES = 10  # what the end of a run draws: 10 reconstructions, 10 walks of 10 points
RUN_STEPS = 10
RUN_POINTS = 500  # reconstructions of 2-D data: enough points to see the shape


def can_draw(data: Dataset) -> bool:
    """Images and 2-D points have a picture; other vectors don't."""
    return data.image_shape is not None or data.dim == 2


def class_pairs(data: Dataset) -> list[tuple[int, int]] | None:
    """The walks of a run's interpolations.png: each class of the held-out split to the
    next (the first ten classes), None without labels."""
    if data.test_y is None:
        return None
    classes = data.test_y.unique().tolist()[:10]
    if len(classes) < 2:
        return None
    return list(zip(classes, classes[1:] + classes[:1], strict=True))


def held_out_endpoints(data: Dataset, pairs: list[tuple[int, int]] | None, rows: int
                       ) -> tuple[Tensor, Tensor]:
    """Held-out (start, end) rows in model units. With pairs: per pair (A, B), a held-out
    example of class A and one of B, the k-th of each for the k-th repeat of that pair.
    Without: `rows` consecutive pairs of held-out examples."""
    if pairs is None:
        if 2 * rows > len(data.test_x):
            raise ValueError(f"the held-out split has {len(data.test_x)} examples, too few "
                             f"for {rows} walks")
        return data.test_x[0:2 * rows:2], data.test_x[1:2 * rows:2]
    repeats = {}
    starts, ends = [], []
    for pair in pairs:
        k = repeats[pair] = repeats.get(pair, -1) + 1
        starts.append(_example_of_class(data, pair[0], k))
        ends.append(_example_of_class(data, pair[1], k))
    return data.test_x[starts], data.test_x[ends]


def _example_of_class(data: Dataset, label: int, k: int) -> int:
    """The index of the k-th held-out example of class `label`."""
    where = torch.nonzero(data.test_y == label).flatten()
    if k >= len(where):
        raise ValueError(f"class {label}: the held-out split has {len(where)} examples of it, "
                         f"too few for {k + 1} walks")
    return int(where[k])


def walk(start: Tensor, end: Tensor, steps: int) -> Tensor:
    """(rows * steps, dim): row r's `steps` points from start[r] to end[r]. (1 - t) a + t b
    is exactly a at t = 0 and b at t = 1, so the ends are the endpoints themselves."""
    t = torch.linspace(0, 1, steps, device=start.device)[None, :, None]
    return ((1 - t) * start[:, None] + t * end[:, None]).reshape(-1, start.shape[1])


@torch.no_grad()
def latent_walk(run: Run, start: Tensor, end: Tensor, steps: int) -> Tensor:
    """The autoencoder block, in model units: decoded walks between the encoded ends."""
    encoder, decoder = run.autoencoder.encoder, run.autoencoder.decoder
    return decoder(walk(encoder(start), encoder(end), steps)).float()


@torch.no_grad()
def label_walk(run: Run, pairs: list[tuple[int, int]], steps: int,
               generator: torch.Generator) -> Tensor:
    """The generator block, in model units: per pair one noise vector, and G's label
    embedding walked from A's to B's."""
    g = run.generator
    noise = torch.randn(len(pairs), run.config.noise_dim, generator=generator,
                        device=run.device)
    table = g.embed.weight
    a, b = (torch.tensor(side, device=run.device) for side in zip(*pairs, strict=True))
    embeddings = walk(table[a], table[b], steps)
    out = g.forward_embedded(noise.repeat_interleave(steps, 0), embeddings)
    if run.config.mode == "latent-cgan":
        out = run.autoencoder.decode_standardized(out)
    return out.float()


def walks_label_space(run: Run) -> bool:
    """Whether the run's generator has classes to walk between (not k-means clusters)."""
    return run.generator is not None and bool(run.num_classes) and not run.clustered


@torch.no_grad()
def reconstructions(run: Run, data: Dataset, n: int) -> np.ndarray:
    """reconstructions.png's pixels for the first `n` held-out examples."""
    if run.autoencoder is None:
        raise ValueError(f"this run (mode {run.config.mode}) has no autoencoder to reconstruct "
                         "with")
    if n > len(data.test_x):
        raise ValueError(f"the held-out split has {len(data.test_x)} examples")
    real = data.test_x[:n]
    again = run.autoencoder(real).float()
    if data.image_shape is not None:
        return image_grid(data.to_data_units(torch.cat([real, again])), rows=2)
    return scatter_plot(data.to_data_units(again), data.to_data_units(real))


def interpolations(run: Run, data: Dataset, pairs: list[tuple[int, int]] | None,
                   steps: int, rows: int, generator: torch.Generator) -> np.ndarray:
    """interpolations.png's pixels: the autoencoder's block (where the run has one) and the
    generator's (where its classes are the data's)."""
    blocks = []
    if run.autoencoder is not None:
        start, end = held_out_endpoints(data, pairs, rows)
        blocks.append(latent_walk(run, start, end, steps))
    if pairs is not None and walks_label_space(run):
        blocks.append(label_walk(run, pairs, steps, generator))
    if not blocks:
        raise ValueError("this run has no autoencoder, and no generator conditioned on the "
                         "data's classes, to walk between classes")
    if data.image_shape is not None:
        grids = [image_grid(data.to_data_units(block), rows=len(block) // steps)
                 for block in blocks]
        return _stack(grids, axis=0)
    reference = data.to_data_units(data.test_x)
    return _stack([scatter_plot(data.to_data_units(block), reference, modes=data.modes)
                   for block in blocks], axis=1)


def _stack(pictures: list[np.ndarray], axis: int) -> np.ndarray:
    """The pictures one after the other along `axis` (0: below, 1: beside), a grey band
    between them."""
    shape = list(pictures[0].shape)
    shape[axis] = GAP
    gap = np.full(shape, GAP_SHADE, np.uint8)
    parts = [pictures[0]]
    for picture in pictures[1:]:
        parts += [gap, picture]
    return np.concatenate(parts, axis=axis)


def write_run_pictures(run: Run, data: Dataset, out: Path, seed: int) -> list[Path]:
    """reconstructions.png and interpolations.png in the run directory `out`, those that fit
    the run and its data; returns the paths written."""
    if not can_draw(data):
        return []
    written = []
    n = min(RUN_EXAMPLES if data.image_shape is not None else RUN_POINTS, len(data.test_x))
    if run.autoencoder is not None and n > 0:
        written.append(out / "reconstructions.png")
        write_png(written[-1], reconstructions(run, data, n))
    pairs = class_pairs(data)
    rows = len(pairs) if pairs is not None else min(RUN_EXAMPLES, len(data.test_x) // 2)
    walks = run.autoencoder is not None or (pairs is not None and walks_label_space(run))
    if walks and rows > 0:  # a held-out split of one example has no pair to walk between
        generator = torch.Generator(run.device).manual_seed(seed)
        written.append(out / "interpolations.png")
        write_png(written[-1], interpolations(run, data, pairs, RUN_STEPS, rows, generator))
    return written
