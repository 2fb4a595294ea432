"""A trained run as Python objects: `fastgan.load(run_dir)`.

    run = fastgan.load("runs/mnist-latent-cgan-...")
    digits = run.sample(10, labels=3)           # (10, 1, 28, 28) in [0, 1]
    z = run.encode(digits); same = run.decode(z)

Inputs and outputs are in data units: images in [0, 1] shaped (N, C, H, W), vectors (N, D) in
the units of the file they came from.
"""

from pathlib import Path

import torch
from torch import Tensor, nn

from fastgan import checkpoint
from fastgan.config import TrainConfig, conditioning, from_dict
from fastgan.data import Units
from fastgan.models import build_models


class Run:
    def __init__(self, config: TrainConfig, data_info: dict, models: dict[str, nn.Module]):
        self.config, self.data_info, self.models = config, data_info, models
        self.num_classes, self.clustered = conditioning(config, data_info["num_classes"])
        first_model = next(iter(models.values()))
        self.device = next(first_model.parameters()).device
        self.units = Units.from_info(data_info, self.device)

    @property
    def autoencoder(self) -> nn.Module | None:
        return self.models.get("autoencoder")

    @property
    def generator(self) -> nn.Module | None:
        """The EMA copy of the generator: the one that samples."""
        return self.models.get("ema_generator")

    @property
    def discriminator(self) -> nn.Module | None:
        return self.models.get("discriminator")

    def labels_for(self, n: int, labels: int | Tensor | None,
                   generator: torch.Generator | None = None) -> Tensor | None:
        """Per-row labels: None cycles through the classes (draws k-means clusters as often
        as the data has them); an int is one class for all."""
        if not self.num_classes:
            if labels is not None:
                raise ValueError("labels: this run's generator is unconditional; pass None")
            return None
        if labels is None and self.clustered:
            return torch.multinomial(self.generator.label_prior, n, replacement=True,
                                     generator=generator)
        if labels is None:
            return torch.arange(n, device=self.device) % self.num_classes
        labels = torch.as_tensor(labels, device=self.device).long().expand(n)
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels: expected class indices in [0, {self.num_classes}), "
                             f"got {labels.unique().tolist()}")
        return labels

    @torch.no_grad()
    def sample_model_units(self, labels: Tensor | None, n: int,
                           generator: torch.Generator | None = None) -> Tensor:
        if self.generator is None:
            raise ValueError(f"this run (mode {self.config.mode}) has no generator to sample")
        noise = torch.randn(n, self.config.noise_dim, generator=generator, device=self.device)
        out = self.generator(noise, labels)
        if self.config.mode == "latent-cgan":
            out = self.autoencoder.decode_standardized(out)
        return out.float()

    def sample(self, n: int, labels: int | Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """n samples in data units, from the EMA generator; `labels` as in labels_for."""
        return self.units.to_data(self.sample_model_units(
            self.labels_for(n, labels, generator), n, generator))

    def _require_autoencoder(self) -> nn.Module:
        if self.autoencoder is None:
            raise ValueError(f"this run (mode {self.config.mode}) has no autoencoder")
        return self.autoencoder

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        return self._require_autoencoder().encoder(self.units.to_model(x.to(self.device)))

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.units.to_data(self._require_autoencoder().decoder(z.to(self.device)))

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def load(run_dir: str | Path, which: str = "last", device: str | torch.device = "cpu") -> Run:
    """The run in `run_dir` from its checkpoints/<which>.pt ("last" or "best")."""
    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    state = checkpoint.load(path)
    try:
        return from_checkpoint(state, device)
    except (ValueError, KeyError, TypeError, RuntimeError) as error:  # the settings or the
        reason = " ".join(str(error).split())[:200]  # tensors do not make this run's models
        raise checkpoint.CheckpointError(f"{path}: not a loadable run ({reason})") from None


def from_checkpoint(state: dict, device: str | torch.device = "cpu") -> Run:
    config = from_dict(state["config"])
    info = state["data"]
    num_classes, _ = conditioning(config, info["num_classes"])
    models = build_models(config, info["dim"], num_classes, info["image_shape"] is not None)
    for name, module in models.items():
        module.load_state_dict(state["models"][name])
        module.to(device).eval().requires_grad_(False)
    return Run(config, info, models)
