"""A run's held-out metrics (`fastgan eval`, the training log and summary.json).

    autoencoder         recon_mse on the held-out split, and pca_mse: PCA with as many
                        components as the latent has dimensions, fit on the training split
    GAN, labeled data   fd: Fréchet distance between held-out and generated features of a
                        classifier trained once per dataset (cached); cond_accuracy: how often
                        that classifier gives a generated sample the label it was made for
    GAN, 2-D mixtures   modes_captured / modes_total and high_quality (VEEGAN / PacGAN)
    GAN, other data     fd_data: the Fréchet distance on the data's own features

`score` is the number best.pt is chosen by, lower is better: recon_mse for the autoencoder
alone, otherwise fd, missed modes plus the low-quality share, or fd_data.
"""

import torch

from fastgan import metrics
from fastgan.api import Run
from fastgan.config import TrainConfig
from fastgan.data import Dataset
from fastgan.files import cache_dir

IMAGE_SAMPLES = 1000  # generated images per evaluation
MIXTURE_SAMPLES = 2500  # the standard count for the 2-D mixture metrics


class Evaluator:
    """Makes the references once (the PCA baseline, the classifier), then scores runs."""

    def __init__(self, data: Dataset, config: TrainConfig):
        self.data = data
        self.reference = {}  # numbers about the references themselves, reported with each score
        if config.mode != "cgan":
            components = min(config.latent_dim, data.dim)  # PCA is exact past data.dim
            self.reference["pca_mse"] = metrics.pca_mse(data.x, data.test_x, components)
        self.classifier = None
        if config.mode != "ae" and data.y is not None and data.modes is None:
            self.classifier = metrics.cached_classifier(data.x, data.y, data.num_classes,
                                                        cache_dir())
            self.reference["classifier_accuracy"] = metrics.accuracy(
                self.classifier, data.test_x, data.test_y)

    def __call__(self, run: Run, seed: int = 0) -> dict[str, float]:
        data, result = self.data, dict(self.reference)
        if run.autoencoder is not None:
            result["recon_mse"] = metrics.reconstruction_mse(run.autoencoder, data.test_x)
            result["score"] = result["recon_mse"]
        if run.generator is None:
            return result
        n = IMAGE_SAMPLES if data.modes is None else MIXTURE_SAMPLES
        generator = torch.Generator(run.device).manual_seed(seed)
        labels = run.labels_for(n, None, generator)
        samples = run.sample_model_units(labels, n, generator)
        if self.classifier is not None:
            asked = None if run.clustered else labels  # cluster ids are not the data's classes
            result.update(metrics.classifier_metrics(self.classifier, samples, asked,
                                                     data.test_x))
            result["score"] = result["fd"]
        elif data.modes is not None:
            result.update(metrics.mode_metrics(data.to_data_units(samples), data.modes,
                                               data.mode_std))
            result["score"] = (result["modes_total"] - result["modes_captured"]
                               + 1 - result["high_quality"])
        else:
            result["fd_data"] = metrics.frechet_distance(data.test_x, samples)
            result["score"] = result["fd_data"]
        return result
