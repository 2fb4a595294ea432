"""Evaluation numbers: reconstruction and PCA-baseline MSE, the Fréchet distance on a small
classifier's features, and the mode-coverage metrics of 2-D mixtures.

Nothing here touches the global RNG, so evaluating inside a run leaves a resumed run bit-exact.
"""

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgan.files import atomic_write
from fastgan.nn import FusedLinear

BATCH_SIZE = 1024  # evaluation batch: bounds memory, not a tuning knob
# Part of the cache key: bump it whenever Classifier or train_classifier's defaults change, so
# stale classifiers are retrained rather than loaded.
CLASSIFIER_VERSION = "classifier-v1"


def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int = BATCH_SIZE) -> Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def reconstruction_mse(reconstruct: Callable[[Tensor], Tensor], x: Tensor,
                       batch_size: int = BATCH_SIZE) -> float:
    """Mean squared error of reconstruct(x) over all elements, summed in float64."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size]
            total += (reconstruct(batch).double() - batch.double()).square().sum().item()
    return total / x.numel()


def pca_mse(train_x: Tensor, test_x: Tensor, components: int) -> float:
    """Held-out MSE of the best rank-`components` linear code fit on train_x: the baseline an
    autoencoder with a `components`-wide code has to beat."""
    train, test = train_x.flatten(1).double(), test_x.flatten(1).double()
    if not 0 <= components <= train.shape[1]:
        raise ValueError(f"components must be in [0, {train.shape[1]}], got {components}")
    mean = train.mean(dim=0)
    centered = train - mean
    # The scatter matrix has the covariance's eigenvectors; eigh sorts them by ascending variance.
    _, vectors = torch.linalg.eigh(centered.T @ centered)
    basis = vectors[:, vectors.shape[1] - components:]
    residual = (test - mean) - (test - mean) @ basis @ basis.T
    return residual.square().mean().item()


def _sqrtm_psd(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix; rounding can leave tiny negative
    eigenvalues, which are 0."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fit to features a (N, F) and b (M, F), in float64:
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)."""
    a, b = a.double(), b.double()
    f = a.shape[1]
    cov_a, cov_b = torch.cov(a.T).reshape(f, f), torch.cov(b.T).reshape(f, f)  # 1 feature: 0-d
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (a.mean(0) - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(distance.item(), 0.0)  # it is >= 0; rounding can give -1e-12


def mode_metrics(samples: Tensor, modes: Tensor, std: float) -> dict[str, float]:
    """The 2-D mixture metrics of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018):
    a sample is high quality within 3 std of its nearest mode, and a mode is captured with at
    least 20 high-quality samples per 2,500 drawn. modes_captured and modes_total are ints."""
    distance, nearest = torch.cdist(samples.double(), modes.double()).min(dim=1)
    high_quality = distance <= 3 * std
    counts = torch.bincount(nearest[high_quality], minlength=len(modes))
    threshold = math.ceil(20 * len(samples) / 2500)
    return {"modes_captured": int((counts >= threshold).sum()), "modes_total": len(modes),
            "high_quality": high_quality.double().mean().item()}


class Classifier(nn.Module):
    """An MLP for labeled data, dim -> 256 -> 256 -> num_classes; its last hidden layer is the
    feature space of the Fréchet distance."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.hidden = nn.Sequential(
            FusedLinear(dim, 256, activation="leaky_relu", negative_slope=0.2),
            FusedLinear(256, 256, activation="leaky_relu", negative_slope=0.2))
        self.head = FusedLinear(256, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.hidden(x.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _new_classifier(dim: int, num_classes: int, seed: int = 0) -> Classifier:
    # Initialization draws random numbers: take them from a forked RNG, not the global one.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(dim, num_classes)


def train_classifier(x: Tensor, y: Tensor, num_classes: int, steps: int = 1500,
                     batch_size: int = 128, seed: int = 0) -> Classifier:
    """Fit a Classifier to (x, y) with Adam; deterministic given seed. The model lives on
    x.device and is returned in eval mode."""
    model = _new_classifier(x[0].numel(), num_classes, seed).to(x.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(len(x), (batch_size,), generator=generator).to(x.device)
        # Label smoothing lifts held-out MNIST accuracy from 0.94 to 0.96 (9,000 training images).
        loss = F.cross_entropy(model(x[index]), y[index], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def cached_classifier(x: Tensor, y: Tensor, num_classes: int, cache_dir: Path) -> Classifier:
    """train_classifier(x, y, num_classes), trained once per dataset: the weights are cached in
    cache_dir under a hash of the data. An unreadable cache file is retrained and replaced."""
    key = hashlib.sha256(f"{CLASSIFIER_VERSION} {num_classes} {tuple(x.shape)} {x.dtype} "
                         f"{tuple(y.shape)} {y.dtype}".encode())
    for t in (x, y):
        key.update(t.detach().to("cpu").contiguous().numpy())
    path = Path(cache_dir) / f"classifier-{key.hexdigest()[:16]}.pt"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = _new_classifier(saved["dim"], saved["num_classes"])
        model.load_state_dict(saved["state_dict"])
        return model.to(x.device).eval()
    except Exception:  # missing, truncated or otherwise unreadable: (re)train
        pass
    model = train_classifier(x, y, num_classes)
    with atomic_write(path) as file:
        torch.save({"state_dict": model.state_dict(), "dim": model.dim,
                    "num_classes": model.num_classes}, file)
    return model


def _on_model(classifier: Classifier, x: Tensor) -> Tensor:
    weight = classifier.head.weight
    return x.to(weight.device, weight.dtype)


def accuracy(classifier: Classifier, x: Tensor, y: Tensor) -> float:
    """Fraction of x that classifier labels y."""
    predicted = _batched(lambda batch: classifier(_on_model(classifier, batch)).argmax(1), x)
    return (predicted == y.to(predicted.device)).double().mean().item()


def classifier_metrics(classifier: Classifier, samples: Tensor, labels: Tensor | None,
                       real: Tensor) -> dict[str, float]:
    """{"fd": Fréchet distance between the classifier features of real and samples} and, for
    conditional samples, {"cond_accuracy": how often the classifier agrees with their labels}."""
    features = lambda batch: classifier.features(_on_model(classifier, batch))
    metrics = {"fd": frechet_distance(_batched(features, real), _batched(features, samples))}
    if labels is not None:
        metrics["cond_accuracy"] = accuracy(classifier, samples, labels)
    return metrics
