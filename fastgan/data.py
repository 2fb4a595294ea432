"""Datasets: the packaged MNIST split, directories of IDX files, .npy/.npz/.csv arrays and the
ring/grid toy mixtures, loaded whole into memory as tensors.

Models see *model units*: images in [0, 1] (the generator ends in a sigmoid), vectors standardized
per feature (the generator's output is linear). `Dataset.shift`/`scale` map back to data units.
"""

import csv
import gzip
import math
import zlib
from dataclasses import dataclass, fields, replace
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

HELD_OUT = 0.1  # fraction held out when the source has no test split of its own
SPLIT_SEED = 0  # fixed, so the held-out split is the same in every run
LABEL_COLUMNS = ("label", "y", "class", "target")  # csv header names that mark a label column
TOY_TRAIN, TOY_TEST = 50_000, 5_000


class DataError(ValueError):
    """Bad or missing data: the message names the file and what is wrong (the CLI prints it as
    one line, exit status 2)."""


@dataclass(frozen=True)
class Dataset:
    name: str
    x: Tensor  # (N, dim) float32 training split, model units
    y: Tensor | None  # (N,) int64 labels in [0, num_classes); None when unlabeled
    test_x: Tensor  # held-out split, model units
    test_y: Tensor | None
    num_classes: int  # 0 when unlabeled
    image_shape: tuple[int, int, int] | None  # (C, H, W) for images, None for vectors
    shift: Tensor  # (dim,): data units = model units * scale + shift
    scale: Tensor  # (dim,)
    modes: Tensor | None = None  # (K, dim) mixture centres in data units (ring/grid only)
    mode_std: float | None = None  # the mixture's std in data units (ring/grid only)

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    @property
    def is_image(self) -> bool:
        return self.image_shape is not None

    def to(self, device: torch.device | str) -> "Dataset":
        tensors = [f.name for f in fields(self) if isinstance(getattr(self, f.name), Tensor)]
        return replace(self, **{k: getattr(self, k).to(device) for k in tensors})

    @property
    def units(self) -> "Units":
        return Units(self.shift, self.scale, self.image_shape)

    def to_data_units(self, x_model: Tensor) -> Tensor:
        return self.units.to_data(x_model)

    def to_model_units(self, x_data: Tensor) -> Tensor:
        return self.units.to_model(x_data)

    def info(self) -> dict:
        """What a checkpoint needs to describe the data: plain Python values only, so it survives
        JSON and torch.load(weights_only=True)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape) if self.is_image else None,
            "shift": self.shift.tolist(),
            "scale": self.scale.tolist(),
            "modes": None if self.modes is None else self.modes.tolist(),
            "mode_std": self.mode_std,
        }


@dataclass(frozen=True)
class Units:
    """The map between model units (what the models see) and data units (what users see)."""
    shift: Tensor
    scale: Tensor
    image_shape: tuple[int, int, int] | None

    @staticmethod
    def from_info(info: dict, device: torch.device | str = "cpu") -> "Units":
        shape = info["image_shape"]
        return Units(torch.tensor(info["shift"], device=device),
                     torch.tensor(info["scale"], device=device),
                     None if shape is None else tuple(shape))

    def to_data(self, x_model: Tensor) -> Tensor:
        x = x_model * self.scale + self.shift
        return x if self.image_shape is None else x.reshape(len(x), *self.image_shape)

    def to_model(self, x_data: Tensor) -> Tensor:
        return (x_data.reshape(len(x_data), -1) - self.shift) / self.scale


def load_dataset(dataset: str = "mnist", data_dir: Path | None = None, seed: int = 0) -> Dataset:
    """Load a dataset onto the CPU. `dataset` is "mnist", "ring", "grid" or a path to a .npy, .npz
    or .csv file; `data_dir` (a directory of IDX files) wins over it. `seed` drives the ring/grid
    sampling only."""
    if data_dir is not None:
        data_dir = Path(data_dir)
        return _load_idx_dir(data_dir, data_dir.resolve().name)
    if dataset == "mnist":
        return _load_idx_dir(files("fastgan") / "datasets/mnist", "mnist")
    if dataset in ("ring", "grid"):
        return _mixture(dataset, seed)
    path = Path(dataset)
    if path.suffix.lower() not in (".npy", ".npz", ".csv"):
        raise DataError(f"{dataset}: unknown dataset; choose mnist, ring or grid, a path ending "
                        "in .npy, .npz or .csv, or pass a directory of IDX files as data_dir")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    x, y = _read_file(path)
    return _build(path.name, str(path), x, y)


def kmeans_labels(x: Tensor, k: int, seed: int, iterations: int = 25) -> Tensor:
    """Cluster indices of x's rows by k-means (k-means++ seeding, Lloyd iterations), for
    self-conditioning a GAN on data without labels (Liu et al. 2020, "Diverse image
    generation via self-conditioned GANs"). Deterministic for a seed; leaves the global RNG
    alone."""
    if not 1 <= k <= len(x):
        raise DataError(f"--clusters: expected 1 to {len(x)} (the training rows), got {k}")
    generator = torch.Generator(x.device).manual_seed(seed)
    first = torch.randint(len(x), (1,), generator=generator, device=x.device)
    centres = x[first]
    nearest = torch.cdist(x, centres).squeeze(1).square()
    for _ in range(k - 1):  # each next centre drawn with probability ~ squared distance
        pick = torch.multinomial(nearest + 1e-12, 1, generator=generator)
        centres = torch.cat([centres, x[pick]])
        nearest = torch.minimum(nearest, (x - x[pick]).square().sum(1))
    for _ in range(iterations):
        labels = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return torch.cdist(x, centres).argmin(1)


class BatchSampler:
    """Random batches drawn on the data's device with a torch.Generator: indices by torch.randint
    (with replacement), no DataLoader and no host round trip per step, so a CUDA graph can
    capture it."""

    def __init__(self, x: Tensor, y: Tensor | None, batch_size: int,
                 generator: torch.Generator) -> None:
        if y is not None and len(y) != len(x):
            raise ValueError(f"{len(y)} labels for {len(x)} samples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.x, self.y, self.batch_size, self.generator = x, y, batch_size, generator

    def __call__(self) -> tuple[Tensor, Tensor | None]:
        idx = torch.randint(len(self.x), (self.batch_size,), generator=self.generator,
                            device=self.x.device)
        return self.x[idx], None if self.y is None else self.y[idx]


# ---- IDX directories (MNIST's format) ---------------------------------------------------------

def _load_idx_dir(d, name: str) -> Dataset:
    """`d` is a Path or an importlib Traversable (the packaged copy). The train-* files are the
    training split and t10k-* the held-out one; with only t10k-* files, 10% of them is held out."""
    if not d.is_dir():
        raise DataError(f"{d}: no such directory")
    splits = {}
    for split in ("train", "t10k"):
        images = _find(d, f"{split}-images-idx3-ubyte")
        labels = _find(d, f"{split}-labels-idx1-ubyte")
        if images is None:
            continue
        x = _read_idx(images, ndim=3)
        y = None if labels is None else _read_idx(labels, ndim=1)
        if y is not None and len(y) != len(x):
            raise DataError(f"{labels}: {len(y)} labels for the {len(x)} images in {images.name}")
        splits[split] = (str(images), x, y)
    if not splits:
        raise DataError(f"{d}: no train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz] here")
    if "train" not in splits:
        return _build(name, *splits["t10k"])
    (source, x, y), test = splits["train"], splits.get("t10k")
    if test is not None and y is None:
        test = (*test[:2], None)  # unlabeled training data makes the whole dataset unlabeled
    elif test is not None and test[2] is None:
        raise DataError(f"{d}: train-labels-idx1-ubyte is here but t10k-labels-idx1-ubyte is not")
    return _build(name, source, x, y, test)


def _find(d, stem: str):
    return next((d / n for n in (stem, stem + ".gz") if (d / n).is_file()), None)


def _read_idx(file, ndim: int) -> np.ndarray:
    """An IDX file of uint8: magic 0x00000800 + ndim, then ndim big-endian int32 sizes, then
    the bytes. Checked strictly, as truncated downloads are the usual failure."""
    try:
        raw = file.read_bytes()
        if file.name.endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{file}: cannot read: {e}") from None
    magic, header = 0x800 + ndim, 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{file}: truncated: {len(raw)} bytes, shorter than the IDX header")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        what = "images" if ndim == 3 else "labels"
        raise DataError(f"{file}: bad magic 0x{got:08x}, expected 0x{magic:08x} (uint8 {what})")
    shape = tuple(int(n) for n in np.frombuffer(raw, ">i4", ndim, 4))
    size = len(raw) - header
    if size != math.prod(shape):
        problem = "truncated" if size < math.prod(shape) else "trailing bytes"
        raise DataError(f"{file}: {problem}: header says {'x'.join(map(str, shape))} bytes, "
                        f"file has {size}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


# ---- .npy / .npz / .csv -----------------------------------------------------------------------

def _read_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    try:
        data = np.load(path, allow_pickle=False)  # no pickles: object (ragged) arrays fail here
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:  # an archive's members load lazily, so read them inside the try
                names, data = data.files, {k: data[k] for k in ("x", "y") if k in data.files}
    except Exception as e:  # numpy has no one error for a damaged file (BadZipFile, TokenError...)
        raise DataError(f"{path}: cannot read: {e}") from None
    if path.suffix.lower() == ".npy":
        if not isinstance(data, np.ndarray):
            raise DataError(f"{path}: not a .npy array (an .npz archive?)")
        return data, None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not an .npz archive")
    if "x" not in data:
        raise DataError(f"{path}: no array named 'x' (it has: {', '.join(names)})")
    return data["x"], data.get("y")


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Numbers, comma-separated, one sample a line, with an optional header row; a header whose
    last column is named label/y/class/target makes that column the labels."""
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader if row]
    except (OSError, UnicodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if not rows:
        raise DataError(f"{path}: empty file")
    header = rows.pop(0)[1] if not all(map(_is_number, rows[0][1])) else None
    width = len(header or rows[0][1])
    for line, row in rows:
        if len(row) != width:
            raise DataError(f"{path}: line {line}: {len(row)} columns, expected {width}")
        bad = [v for v in row if not _is_number(v)]
        if bad:
            raise DataError(f"{path}: line {line}: {bad[0]!r} is not a number")
    a = np.array([[float(v) for v in row] for _, row in rows]).reshape(len(rows), width)
    if header and header[-1].strip().lower() in LABEL_COLUMNS:
        return a[:, :-1], a[:, -1]
    return a, None


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# ---- arrays to a Dataset ----------------------------------------------------------------------

def _build(name: str, source: str, x: np.ndarray, y: np.ndarray | None,
           test: tuple[str, np.ndarray, np.ndarray | None] | None = None) -> Dataset:
    """Validate and convert arrays; without a `test` split, hold out 10% by a fixed permutation."""
    x, image_shape = _features(source, x)
    samples = len(x) + (0 if test is None else len(test[1]))  # the bound on class indices
    y = None if y is None else _labels(source, y, len(x), samples)
    if test is None:
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_test = max(1, round(HELD_OUT * len(x)))
        held, kept = perm[:n_test], perm[n_test:]
        test_x, test_y = x[held], None if y is None else y[held]
        x, y = x[kept], None if y is None else y[kept]
    else:
        test_source, test_x, test_y = test
        test_x, test_shape = _features(test_source, test_x)
        if test_shape != image_shape or test_x.shape[1] != x.shape[1]:
            raise DataError(f"{test_source}: samples of shape {test_shape or test_x.shape[1]}, "
                            f"but the training split's are {image_shape or x.shape[1]}")
        test_y = None if test_y is None else _labels(test_source, test_y, len(test_x), samples)
    return _finish(name, x, y, test_x, test_y, image_shape)


def _features(source: str, a: np.ndarray) -> tuple[Tensor, tuple[int, int, int] | None]:
    """(N, D) arrays are vectors; (N, H, W) and (N, C, H, W) are images, flattened."""
    if a.dtype.kind not in "biuf":
        raise DataError(f"{source}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim not in (2, 3, 4) or 0 in a.shape[1:]:
        raise DataError(f"{source}: expected shape (N, D), (N, H, W) or (N, C, H, W), "
                        f"got {a.shape}")
    if len(a) < 2:
        raise DataError(f"{source}: need at least 2 samples, got {len(a)}")
    x = torch.from_numpy(a.astype(np.float32))
    if not torch.isfinite(x).all():  # after the cast: float64 beyond float32's range is inf too
        raise DataError(f"{source}: non-finite values (NaN or inf)")
    if a.ndim == 2:
        return x, None
    if a.dtype == np.uint8:
        x = x / 255
    elif x.min() < 0 or x.max() > 1:
        raise DataError(f"{source}: image values must be uint8 or lie in [0, 1], got "
                        f"[{x.min().item():g}, {x.max().item():g}]")
    image_shape = (1, *a.shape[1:]) if a.ndim == 3 else a.shape[1:]
    return x.reshape(len(x), -1), tuple(image_shape)


def _labels(source: str, y: np.ndarray, n: int, samples: int) -> Tensor:
    """(n,) whole numbers in [0, samples): class indices, each class an embedding row."""
    if y.dtype.kind not in "biuf" or y.shape != (n,):
        raise DataError(f"{source}: labels of shape {y.shape} and dtype {y.dtype}, expected ({n},) "
                        "integers")
    if y.dtype.kind == "f" and not (np.isfinite(y) & (y == np.round(y))).all():
        raise DataError(f"{source}: labels must be whole numbers")
    if (y < 0).any():
        raise DataError(f"{source}: negative labels (min {y.min():g}); labels must be >= 0")
    if y.max() >= samples:
        raise DataError(f"{source}: label {y.max():g} is out of range: labels are class indices, "
                        f"below the number of samples ({samples})")
    return torch.from_numpy(y.astype(np.int64))


def _finish(name: str, x: Tensor, y: Tensor | None, test_x: Tensor, test_y: Tensor | None,
            image_shape: tuple[int, int, int] | None, modes: Tensor | None = None,
            mode_std: float | None = None) -> Dataset:
    """Standardize vectors by the training split's statistics; images stay in [0, 1]."""
    if image_shape is None:
        shift, scale = x.mean(0), x.std(0, correction=0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant features
    else:
        shift, scale = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    num_classes = 0 if y is None else int(torch.cat([y, test_y]).max()) + 1
    return Dataset(name, (x - shift) / scale, y, (test_x - shift) / scale, test_y, num_classes,
                   image_shape, shift, scale, modes, mode_std)


# ---- toy mixtures -----------------------------------------------------------------------------

def _mixture(name: str, seed: int) -> Dataset:
    """The standard mode-collapse benchmarks: ring (8 Gaussians on the unit circle, std 0.01) and
    grid (25 Gaussians at {-4, -2, 0, 2, 4}^2, std 0.05), labeled by mode, equal counts per mode."""
    if name == "ring":
        angles = torch.arange(8) * (2 * math.pi / 8)
        modes, std = torch.stack([angles.cos(), angles.sin()], 1), 0.01
    else:
        axis = torch.arange(-4.0, 5.0, 2.0)
        modes, std = torch.cartesian_prod(axis, axis), 0.05
    gen = torch.Generator().manual_seed(seed)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        y = (torch.arange(n) % len(modes))[torch.randperm(n, generator=gen)]
        return modes[y] + std * torch.randn(n, 2, generator=gen), y

    (x, y), (test_x, test_y) = sample(TOY_TRAIN), sample(TOY_TEST)
    return _finish(name, x, y, test_x, test_y, None, modes, std)
