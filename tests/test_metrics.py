"""The evaluation metrics against hand-computed values, and the cached feature classifier."""

import math

import pytest
import torch

from fastgan import files, metrics
from fastgan.metrics import (
    Classifier,
    accuracy,
    cached_classifier,
    classifier_metrics,
    frechet_distance,
    mode_metrics,
    pca_mse,
    reconstruction_mse,
    train_classifier,
)


def test_reconstruction_mse():
    x = torch.randn(10, 3, 2)
    assert reconstruction_mse(lambda b: b, x) == 0.0
    assert reconstruction_mse(lambda b: b + 0.5, x, batch_size=3) == pytest.approx(0.25)
    halved = reconstruction_mse(lambda b: b / 2, x, batch_size=4)
    assert halved == pytest.approx((x.double() / 2).square().mean().item())


def test_pca_mse_by_hand():
    # Train points along e1, e2, e3 (variances 18/5 > 8/5 > 2/5), mean 0: the principal
    # directions are e1, e2, e3 in that order; e4 and e5 carry no variance.
    eye = torch.eye(5)
    train = torch.stack([3 * eye[0], -3 * eye[0], 2 * eye[1], -2 * eye[1], eye[2], -eye[2]])
    test = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    assert pca_mse(train, test, 0) == pytest.approx(55 / 5)
    assert pca_mse(train, test, 2) == pytest.approx((9 + 16 + 25) / 5)  # keeps 1, 2
    assert pca_mse(train, test, 3) == pytest.approx((16 + 25) / 5)
    in_span = torch.tensor([[1.0, -2.0, 0.5, 0.0, 0.0]])
    assert pca_mse(train, in_span, 3) == pytest.approx(0.0, abs=1e-20)
    assert pca_mse(train, in_span, 2) == pytest.approx(0.25 / 5)
    with pytest.raises(ValueError):
        pca_mse(train, test, 6)


def test_pca_mse_subspace_and_svd():
    k, dim = 3, 8
    basis, offset = torch.randn(k, dim, dtype=torch.float64), torch.randn(dim)
    train = torch.randn(200, k, dtype=torch.float64) @ basis + offset
    test = torch.randn(50, k, dtype=torch.float64) @ basis + offset
    assert pca_mse(train, test, k) < 1e-20
    assert pca_mse(train, test, k - 1) > 1e-2

    train, test = torch.randn(300, dim) * torch.arange(1, dim + 1), torch.randn(40, dim)
    mean = train.double().mean(0)
    _, _, vh = torch.linalg.svd(train.double() - mean, full_matrices=False)
    centered = test.double() - mean
    expected = (centered - centered @ vh[:k].T @ vh[:k]).square().mean().item()
    assert pca_mse(train, test, k) == pytest.approx(expected, rel=1e-10)


def gaussian_set(mean: list[float], std: list[float], n: int = 64) -> torch.Tensor:
    """n points whose sample mean and (unbiased) covariance are exactly mean and diag(std^2)."""
    noise = torch.randn(n, len(mean), dtype=torch.float64)
    q, _ = torch.linalg.qr(noise - noise.mean(0))  # orthonormal columns, each summing to 0
    return torch.tensor(mean) + q * math.sqrt(n - 1) * torch.tensor(std)


def test_frechet_distance_closed_forms():
    a, b = gaussian_set([1.0], [2.0]), gaussian_set([-0.5], [0.5], n=100)
    assert frechet_distance(a, b) == pytest.approx(1.5**2 + 1.5**2)
    a = gaussian_set([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    b = gaussian_set([1.0, 1.0, 0.0], [3.0, 2.0, 0.5])
    assert frechet_distance(a, b) == pytest.approx((1 + 0 + 4) + (4 + 0 + 2.5**2))


def test_frechet_distance_identical_and_symmetric():
    a, b = torch.randn(200, 6), torch.randn(150, 6) * 2 + 1
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, b) > 1.0


def test_mode_metrics_by_hand():
    angles = torch.arange(8) * (2 * math.pi / 8)
    modes = 2 * torch.stack([angles.cos(), angles.sin()], dim=1)
    std = 0.02
    shift = torch.tensor([0.0, 1.0])
    samples = torch.cat([
        modes[0].expand(20, 2),  # exactly the threshold of 20 per 2,500: captured
        modes[1].expand(19, 2),  # one short: high quality but not captured
        modes[2] + 0.05 * shift.expand(25, 2),  # within 3 std: captured
        modes[3] + 0.07 * shift.expand(30, 2),  # beyond 3 std: low quality
        torch.full((2500 - 94, 2), 10.0),  # far off
    ])
    result = mode_metrics(samples, modes, std)
    assert result == {"modes_captured": 2, "modes_total": 8, "high_quality": 64 / 2500}
    assert isinstance(result["modes_captured"], int)
    # 100 samples: the threshold scales to ceil(20 * 100 / 2500) = 1.
    small = mode_metrics(torch.cat([modes[:3], torch.full((97, 2), 10.0)]), modes, std)
    assert small == {"modes_captured": 3, "modes_total": 8, "high_quality": 0.03}


def blobs(n: int, num_classes: int = 4, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated Gaussian blobs: class c around 4 * e_c."""
    y = torch.arange(n) % num_classes
    return torch.randn(n, dim) + 4 * torch.eye(dim)[y], y


def test_classifier_learns_blobs_without_touching_the_global_rng():
    x, y = blobs(800)
    state = torch.random.get_rng_state()
    model = train_classifier(x[:600], y[:600], 4, steps=200)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert isinstance(model, Classifier) and not model.training
    assert model(x[:5]).shape == (5, 4) and model.features(x[:5]).shape == (5, 256)
    assert accuracy(model, x[600:], y[600:]) > 0.95
    again = train_classifier(x[:600], y[:600], 4, steps=200)
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name


def test_classifier_metrics():
    x, y = blobs(2400)
    model = train_classifier(x[:600], y[:600], 4, steps=200)
    real, samples, labels = x[600:1500], x[1500:], y[1500:]
    result = classifier_metrics(model, samples, labels, real)
    assert result.keys() == {"fd", "cond_accuracy"}
    assert result["cond_accuracy"] > 0.95
    noise = classifier_metrics(model, torch.randn(900, 8), None, real)
    assert noise.keys() == {"fd"}
    assert result["fd"] < 0.05 * noise["fd"]
    wrong = classifier_metrics(model, samples, (labels + 1) % 4, real)
    assert wrong["cond_accuracy"] < 0.05


def test_cached_classifier_trains_once_and_survives_corruption(tmp_path, monkeypatch):
    calls = []

    def quick_train(x, y, num_classes):
        calls.append(num_classes)
        return train_classifier(x, y, num_classes, steps=50)

    monkeypatch.setattr(metrics, "train_classifier", quick_train)
    x, y = blobs(200)
    first = cached_classifier(x, y, 4, tmp_path)
    (path,) = tmp_path.iterdir()
    assert path.name.startswith("classifier-") and path.suffix == ".pt"
    second = cached_classifier(x, y, 4, tmp_path)
    assert len(calls) == 1
    for name, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], value), name

    path.write_bytes(b"not a checkpoint")
    third = cached_classifier(x, y, 4, tmp_path)
    assert len(calls) == 2
    assert torch.equal(third.head.weight, first.head.weight)  # retrained: deterministic
    cached_classifier(x, y, 4, tmp_path)
    assert len(calls) == 2  # the replaced file loads

    cached_classifier(x, (y + 1) % 4, 4, tmp_path)  # other data: another file
    assert len(calls) == 3 and len(list(tmp_path.iterdir())) == 2


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path))
    assert files.cache_dir() == tmp_path
    monkeypatch.delenv("FASTGAN_CACHE_DIR")
    assert files.cache_dir().parts[-2:] == (".cache", "fastgan")
