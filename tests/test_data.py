"""fastgan.data: every source, the unit conversions, the sampler, and a real malformed file for
each DataError."""

import gzip
import re

import numpy as np
import pytest
import torch

from fastgan.data import BatchSampler, DataError, Dataset, kmeans_labels, load_dataset


def write_idx(path, a: np.ndarray) -> None:
    """An IDX file of uint8 (gzipped when the name ends in .gz)."""
    raw = (0x800 + a.ndim).to_bytes(4, "big") + np.array(a.shape, ">i4").tobytes()
    raw += a.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)


def write_mnist_like(d, n: int, split: str = "train", gz: bool = True, labels: bool = True):
    rng = np.random.default_rng(len(split) + n)
    x, y = rng.integers(0, 256, (n, 4, 5), dtype=np.uint8), rng.integers(0, 3, n, dtype=np.uint8)
    ext = ".gz" if gz else ""
    write_idx(d / f"{split}-images-idx3-ubyte{ext}", x)
    if labels:
        write_idx(d / f"{split}-labels-idx1-ubyte{ext}", y)
    return x, y


def rows(t: torch.Tensor) -> set:
    return {tuple(r) for r in t.tolist()}


# ---- sources ---------------------------------------------------------------------------------

def test_packaged_mnist():
    ds = load_dataset()
    assert ds.name == "mnist" and ds.is_image and ds.image_shape == (1, 28, 28)
    assert ds.x.shape == (9000, 784) and ds.test_x.shape == (1000, 784) and ds.dim == 784
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert 0 <= ds.x.min() and ds.x.max() == 1 and ds.num_classes == 10
    assert set(ds.y.tolist()) == set(range(10)) == set(ds.test_y.tolist())
    assert torch.all(ds.shift == 0) and torch.all(ds.scale == 1)
    # The published split's mean pixel value, over both halves.
    assert torch.cat([ds.x, ds.test_x]).mean() * 255 == pytest.approx(33.79, abs=0.01)
    again = load_dataset("mnist", seed=7)  # the held-out split ignores the seed
    assert torch.equal(again.test_x, ds.test_x) and torch.equal(again.y, ds.y)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dir_with_test_split(tmp_path, gz):
    x, y = write_mnist_like(tmp_path, 12, "train", gz)
    tx, ty = write_mnist_like(tmp_path, 5, "t10k", gz)
    ds = load_dataset("ignored", data_dir=tmp_path)
    assert ds.name == tmp_path.name and ds.image_shape == (1, 4, 5)
    assert torch.equal(ds.x, torch.from_numpy(x).reshape(12, 20) / 255)
    assert torch.equal(ds.test_x, torch.from_numpy(tx).reshape(5, 20) / 255)
    assert ds.y.tolist() == y.tolist() and ds.test_y.tolist() == ty.tolist()
    assert ds.num_classes == max(y.max(), ty.max()) + 1


def test_idx_dir_splits_off_held_out(tmp_path):
    x, y = write_mnist_like(tmp_path, 20, "train", gz=False)
    ds = load_dataset(data_dir=tmp_path)
    assert len(ds.x) == 18 and len(ds.test_x) == 2
    whole = torch.from_numpy(x).reshape(20, 20) / 255
    assert rows(torch.cat([ds.x, ds.test_x])) == rows(whole)
    for xs, ys in [(ds.x, ds.y), (ds.test_x, ds.test_y)]:  # labels stay with their images
        for xi, yi in zip(xs, ys, strict=True):
            assert y[(whole == xi).all(1).nonzero()[0, 0]] == yi


def test_idx_dir_only_t10k_or_unlabeled(tmp_path):
    write_mnist_like(tmp_path, 10, "t10k")
    ds = load_dataset(data_dir=tmp_path)
    assert len(ds.x) == 9 and len(ds.test_x) == 1 and ds.num_classes == 3
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    ds = load_dataset(data_dir=tmp_path)
    assert ds.y is None and ds.test_y is None and ds.num_classes == 0


def test_npy_images(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (10, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", a)
    ds = load_dataset(str(tmp_path / "imgs.npy"))
    assert ds.name == "imgs.npy" and ds.image_shape == (3, 4, 4) and ds.y is None
    assert ds.x.shape == (9, 48) and ds.test_x.shape == (1, 48)
    assert rows(torch.cat([ds.x, ds.test_x])) == rows(torch.from_numpy(a).reshape(10, 48) / 255)
    assert ds.to_data_units(ds.x).shape == (9, 3, 4, 4)
    assert torch.equal(ds.to_model_units(ds.to_data_units(ds.x)), ds.x)

    f = np.random.default_rng(1).random((10, 6, 7))
    np.save(tmp_path / "float.npy", f)
    ds = load_dataset(str(tmp_path / "float.npy"))
    assert ds.image_shape == (1, 6, 7) and torch.all(ds.shift == 0) and torch.all(ds.scale == 1)
    assert rows(torch.cat([ds.x, ds.test_x])) == rows(torch.from_numpy(f).float().reshape(10, 42))


def test_npy_vectors_standardized(tmp_path):
    a = np.random.default_rng(0).normal([5.0, -3.0, 2.0], [2.0, 0.5, 0.0], (50, 3))
    np.save(tmp_path / "v.npy", a)
    ds = load_dataset(str(tmp_path / "v.npy"))
    assert ds.image_shape is None and not ds.is_image and ds.dim == 3
    assert torch.allclose(ds.x.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(ds.x.std(0, correction=0), torch.tensor([1.0, 1.0, 0.0]), atol=1e-5)
    assert ds.scale[2] == 1  # a constant feature is shifted, not divided by 0
    back, a = ds.to_data_units(torch.cat([ds.x, ds.test_x])), torch.from_numpy(a).float()
    assert back.shape == (50, 3)
    assert torch.allclose(back[back[:, 0].argsort()], a[a[:, 0].argsort()], atol=1e-5)
    assert torch.allclose(ds.to_model_units(back[:45]), ds.x, atol=1e-5)


def test_npz(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 4))
    np.savez(tmp_path / "unlabeled.npz", x=x)
    ds = load_dataset(str(tmp_path / "unlabeled.npz"))
    assert ds.y is None and ds.num_classes == 0 and ds.x.shape == (18, 4)
    np.savez(tmp_path / "labeled.npz", x=x, y=np.arange(20) % 4)
    ds = load_dataset(str(tmp_path / "labeled.npz"))
    assert ds.num_classes == 4 and ds.y.dtype == torch.int64 and len(ds.test_y) == 2


def test_csv(tmp_path):
    (tmp_path / "plain.csv").write_text("1,2\n3,4.5\n\n5,6\n-1e3,0\n")
    ds = load_dataset(str(tmp_path / "plain.csv"))
    assert ds.y is None and ds.dim == 2 and len(ds.x) + len(ds.test_x) == 4
    (tmp_path / "header.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    ds = load_dataset(str(tmp_path / "header.csv"))
    assert ds.y is None and ds.dim == 2
    (tmp_path / "labeled.csv").write_text("a, b, Class\n1,2,0\n3,4,2\n5,6,1.0\n7,8,2\n")
    ds = load_dataset(str(tmp_path / "labeled.csv"))
    assert ds.dim == 2 and ds.num_classes == 3
    assert sorted(torch.cat([ds.y, ds.test_y]).tolist()) == [0, 1, 2, 2]


@pytest.mark.parametrize("name, k, std", [("ring", 8, 0.01), ("grid", 25, 0.05)])
def test_mixtures(name, k, std):
    ds = load_dataset(name, seed=3)
    assert ds.num_classes == k and ds.modes.shape == (k, 2) and ds.mode_std == std
    assert ds.x.shape == (50_000, 2) and ds.test_x.shape == (5_000, 2)
    assert torch.bincount(ds.y).tolist() == [50_000 // k] * k
    assert torch.bincount(ds.test_y).tolist() == [5_000 // k] * k
    points = ds.to_data_units(ds.x)
    assert (points - ds.modes[ds.y]).norm(dim=1).max() < 6 * std
    assert torch.allclose(ds.x.mean(0), torch.zeros(2), atol=1e-4)
    assert torch.allclose(ds.to_model_units(points), ds.x, atol=1e-4)
    if name == "ring":
        assert torch.allclose(ds.modes.norm(dim=1), torch.ones(8))
    else:
        assert set(ds.modes.flatten().tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    assert torch.equal(load_dataset(name, seed=3).x, ds.x)
    assert not torch.equal(load_dataset(name, seed=4).x, ds.x)


def test_info_and_to():
    ds = load_dataset("ring")
    info = ds.info()
    assert info["name"] == "ring" and info["dim"] == 2 and info["num_classes"] == 8
    assert info["image_shape"] is None and info["mode_std"] == 0.01
    assert all(isinstance(v, float) for v in info["shift"] + info["scale"])
    assert torch.tensor(info["modes"]).shape == (8, 2)
    assert load_dataset().info()["image_shape"] == [1, 28, 28]
    moved = ds.to("meta")
    assert isinstance(moved, Dataset) and moved.x.is_meta and moved.modes.is_meta
    assert moved.test_y.is_meta and moved.name == "ring" and ds.x.device.type == "cpu"


# ---- BatchSampler ----------------------------------------------------------------------------

def test_batch_sampler():
    x, y = torch.arange(40.0).reshape(20, 2), torch.arange(20)
    sample = BatchSampler(x, y, 8, torch.Generator().manual_seed(1))
    bx, by = sample()
    assert bx.shape == (8, 2) and by.shape == (8,) and torch.equal(bx[:, 0], 2.0 * by)
    again = BatchSampler(x, y, 8, torch.Generator().manual_seed(1))
    assert torch.equal(again()[0], bx)
    seen = torch.cat([sample()[1] for _ in range(50)])
    assert set(seen.tolist()) == set(range(20))  # draws from the whole dataset
    bx, by = BatchSampler(x, None, 3, torch.Generator())()
    assert bx.shape == (3, 2) and by is None


# ---- DataError: a real malformed file for each case -------------------------------------------

def expect_error(match: str, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as e:
        load_dataset(*args, **kwargs)
    return str(e.value)


def test_idx_errors(tmp_path):
    write_mnist_like(tmp_path, 12)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    good = images.read_bytes()

    images.write_bytes(good[: len(good) // 2])  # a cut-off download
    expect_error("train-images-idx3-ubyte.gz: cannot read", data_dir=tmp_path)
    images.write_bytes(b"not gzip at all")
    assert "train-images-idx3-ubyte.gz" in expect_error("cannot read", data_dir=tmp_path)

    raw = gzip.decompress(good)
    images.write_bytes(gzip.compress(raw[:-7]))  # a gzip of a truncated file
    msg = expect_error("truncated: header says 12x4x5 bytes, file has 233", data_dir=tmp_path)
    assert msg.startswith(str(images))
    images.write_bytes(gzip.compress(raw + b"\0"))
    expect_error("trailing bytes", data_dir=tmp_path)
    images.write_bytes(gzip.compress(raw[:10]))
    expect_error("train-images-idx3-ubyte.gz: truncated", data_dir=tmp_path)
    images.write_bytes(gzip.compress(b"\0\0\x08\x01" + raw[4:]))  # a labels magic
    expect_error("train-images-idx3-ubyte.gz: bad magic 0x00000801", data_dir=tmp_path)

    images.write_bytes(good)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11))
    expect_error("train-labels-idx1-ubyte.gz: 11 labels for the 12 images", data_dir=tmp_path)

    write_mnist_like(tmp_path, 5, "t10k", labels=False)
    write_mnist_like(tmp_path, 12)
    expect_error("t10k-labels-idx1-ubyte is not", data_dir=tmp_path)


def test_missing_errors(tmp_path):
    expect_error(re.escape(f"{tmp_path / 'nope'}: no such directory"), data_dir=tmp_path / "nope")
    expect_error(re.escape(f"{tmp_path}: no train-images"), data_dir=tmp_path)
    expect_error("nope.npy: no such file", str(tmp_path / "nope.npy"))
    msg = expect_error("mnsit: unknown dataset", "mnsit")
    assert all(s in msg for s in ("mnist", "ring", "grid", ".npy", ".npz", ".csv"))
    expect_error("data.txt: unknown dataset", str(tmp_path / "data.txt"))


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.ones(10)}, "expected shape"),  # 1-D
    ({"x": np.ones((1, 3))}, "at least 2 samples"),
    ({"x": np.array([[0.0, np.nan]] * 4)}, "non-finite"),
    ({"x": np.array([[0.0, np.inf]] * 4)}, "non-finite"),
    ({"x": np.full((4, 2, 2), 2.0)}, r"must be uint8 or lie in \[0, 1\]"),
    ({"x": np.array([["a", "b"]] * 4)}, "numeric array"),
    ({"x": np.ones((4, 2)), "y": np.array([0, 1, -1, 2])}, "negative labels"),
    ({"x": np.ones((4, 2)), "y": np.array([0, 1, 0.5, 2])}, "whole numbers"),
    ({"x": np.ones((4, 2)), "y": np.array([0, 1, 2])}, r"expected \(4,\)"),
    ({"y": np.ones(4)}, "no array named 'x'"),
])
def test_array_errors(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    assert expect_error(match, str(path)).startswith(str(path))


def test_file_errors(tmp_path):
    np.save(tmp_path / "ragged.npy", np.array([[1, 2], [3]], dtype=object), allow_pickle=True)
    expect_error("ragged.npy: cannot read", str(tmp_path / "ragged.npy"))
    (tmp_path / "text.npy").write_text("1,2\n3,4\n")
    expect_error("text.npy: cannot read", str(tmp_path / "text.npy"))
    with open(tmp_path / "array.npz", "wb") as f:  # np.save would append .npy to the name
        np.save(f, np.ones((4, 2)))
    expect_error("array.npz: not an .npz archive", str(tmp_path / "array.npz"))
    np.savez(tmp_path / "cut.npz", x=np.ones((4, 2)))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:-30])
    expect_error("cut.npz: cannot read", str(tmp_path / "cut.npz"))


@pytest.mark.parametrize("text, match", [
    ("1,2\n3,4\n5\n", "bad.csv: line 3: 1 columns, expected 2"),
    ("1,2\n3,x\n", "bad.csv: line 2: 'x' is not a number"),
    ("a,b\n1,2\n3,\n", "bad.csv: line 3: '' is not a number"),
    ("1,nan\n3,4\n", "bad.csv: non-finite"),
    ("a,label\n1,0\n2,-1\n", "bad.csv: negative labels"),
    ("a,target\n1,0\n2,1.5\n", "bad.csv: labels must be whole numbers"),
    ("", "bad.csv: empty file"),
])
def test_csv_errors(tmp_path, text, match):
    (tmp_path / "bad.csv").write_text(text)
    expect_error(match, str(tmp_path / "bad.csv"))


def test_csv_undecodable(tmp_path):
    (tmp_path / "bin.csv").write_bytes(bytes(range(128, 256)))
    expect_error("bin.csv: cannot read", str(tmp_path / "bin.csv"))



def test_kmeans_labels_find_separated_blobs_deterministically():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(300) % 3
    x = centres[truth] + 0.1 * torch.randn(300, 2)
    state = torch.get_rng_state()
    labels = kmeans_labels(x, 3, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(labels, kmeans_labels(x, 3, seed=0))
    # the same partition as the truth, up to the clusters' numbering
    assert len({(int(a), int(b)) for a, b in zip(truth, labels, strict=True)}) == 3
    with pytest.raises(ValueError, match="--clusters: expected 1 to 300"):
        kmeans_labels(x, 301, seed=0)
