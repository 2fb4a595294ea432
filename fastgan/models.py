"""The models: an autoencoder, a conditional generator and a conditional discriminator, all
MLPs of FusedLinear layers (each layer one fused GEMM + activation, forward and backward).

Conditioning concatenates a learned label embedding (one vector per class, as wide as the
number of classes up to MAX_EMBEDDING) to the noise or the data; with num_classes = 0 the models are
unconditional and take no labels.
"""

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgan.backends.codes import ACTIVATION_CODES
from fastgan.backends.pytorch import activate as _activate
from fastgan.config import TrainConfig
from fastgan.nn import FusedLinear

LEAKY_SLOPE = 0.2


def activate(z: Tensor, activation: str, negative_slope: float) -> Tensor:
    return _activate(z, ACTIVATION_CODES[activation], negative_slope)

MAX_EMBEDDING = 128  # label embeddings are as wide as the number of classes, up to this


def mlp(sizes: Sequence[int], out_activation: str) -> nn.Sequential:
    """FusedLinear layers through `sizes`: LeakyReLU(0.2) on hidden layers, `out_activation`
    on the last."""
    layers = [FusedLinear(n_in, n_out, activation="leaky_relu", negative_slope=LEAKY_SLOPE)
              for n_in, n_out in zip(sizes[:-2], sizes[1:-1], strict=True)]
    layers.append(FusedLinear(sizes[-2], sizes[-1], activation=out_activation))
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """dim -> hidden -> latent_dim -> reversed(hidden) -> dim, trained on MSE."""

    def __init__(self, dim: int, latent_dim: int = 32, hidden: Sequence[int] = (512, 256),
                 out_activation: str = "sigmoid"):
        super().__init__()
        self.encoder = mlp([dim, *hidden, latent_dim], "none")
        self.decoder = mlp([latent_dim, *reversed(hidden), dim], out_activation)
        # The training set's latent statistics, set when a GAN is trained on these latents.
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def decode_standardized(self, u: Tensor) -> Tensor:
        """Decode latents given in units of the training set's latent statistics."""
        return self.decoder(u * self.latent_std + self.latent_mean)


class _Conditioned(nn.Module):
    """An MLP whose input is its first argument concatenated with a label embedding, `pack`
    consecutive rows side by side.

    The first layer's weight is kept as two parameters: `net[0].weight` for the input's
    columns and `label_weight` for the embedding's. The layer computes
    act(x @ W_x.T + b + e @ W_e.T), the same as act([x, e] @ W.T + b), without building
    [x, e]: the gradient for the embedding then costs a (rows x width) GEMM, not a full
    input gradient through W (D's step would otherwise compute dL/dx, 794 columns wide, for
    the 10 columns of the embedding). Both start with the values nn.Linear would give W.
    """

    def __init__(self, in_dim: int, num_classes: int, sizes: Sequence[int], out_activation: str,
                 pack: int = 1):
        super().__init__()
        self.num_classes, self.pack = num_classes, pack
        width = min(num_classes, MAX_EMBEDDING)
        self.embed = nn.Embedding(num_classes, width) if num_classes else None
        self.net = mlp([(in_dim + width) * pack, *sizes], out_activation)
        if self.embed is not None:  # split the first layer's columns: input | embedding
            first = self.net[0]
            columns = torch.arange((in_dim + width) * pack).reshape(pack, in_dim + width)
            data_columns, label_columns = columns[:, :in_dim].flatten(), \
                columns[:, in_dim:].flatten()
            self.label_weight = nn.Parameter(first.weight.detach()[:, label_columns].clone())
            first.weight = nn.Parameter(first.weight.detach()[:, data_columns].clone())
            first.in_features = in_dim * pack
            self.first_activation = first.activation
            first.activation = "none"  # applied after the label term is added

    def forward(self, inputs: Tensor, labels: Tensor | None = None) -> Tensor:
        rows = len(inputs) // self.pack
        x = inputs.reshape(rows, -1) if self.pack > 1 else inputs
        if self.embed is None:
            return self.net(x)
        if labels is None:
            raise ValueError(f"labels: expected class indices in [0, {self.num_classes}) "
                             "for a conditional model, got None")
        return self.forward_embedded(x, self.embed(labels).reshape(rows, -1))

    def forward_embedded(self, x: Tensor, e: Tensor) -> Tensor:
        """The conditioned forward from label embeddings `e` instead of labels: what walks
        from one class's embedding to another's (fastgan/pictures.py)."""
        first = self.net[0]
        e = e.to(x.dtype)
        z = first(x) + F.linear(e, self.label_weight.to(x.dtype))
        h = activate(z, self.first_activation, first.negative_slope)
        return self.net[1:](h)


class Generator(_Conditioned):
    """G(noise, label) -> out_dim: data (sigmoid for images) or, in latent mode, an
    autoencoder latent (linear)."""

    def __init__(self, out_dim: int, num_classes: int, noise_dim: int = 64,
                 hidden: Sequence[int] = (256, 512), out_activation: str = "sigmoid"):
        super().__init__(noise_dim, num_classes, [*hidden, out_dim], out_activation)
        self.noise_dim = noise_dim
        # How often each class occurs in the training data: what unlabeled sampling draws
        # from when the classes are k-means clusters.
        self.register_buffer("label_prior", torch.ones(num_classes))


class Discriminator(_Conditioned):
    """D(data, label) -> one logit per row, or with pack > 1 one per `pack` consecutive rows
    (PacGAN, Lin et al. 2018: judging samples jointly exposes a generator that covers too few
    modes)."""

    def __init__(self, dim: int, num_classes: int, hidden: Sequence[int] = (512, 256),
                 pack: int = 1):
        super().__init__(dim, num_classes, [*hidden, 1], "none", pack)


def build_models(config: TrainConfig, dim: int, num_classes: int, image: bool
                 ) -> dict[str, nn.Module]:
    """The run's modules by name: autoencoder, generator, ema_generator, discriminator
    (those the mode uses)."""
    out_activation = "sigmoid" if image else "none"
    models = {}
    if config.mode != "cgan":
        models["autoencoder"] = Autoencoder(dim, config.latent_dim, config.ae_hidden,
                                            out_activation)
    if config.mode != "ae":
        latent = config.mode == "latent-cgan"
        models["generator"] = Generator(config.latent_dim if latent else dim, num_classes,
                                        config.noise_dim, config.g_hidden,
                                        "none" if latent else out_activation)
        models["ema_generator"] = copy.deepcopy(models["generator"]).requires_grad_(False)
        models["discriminator"] = Discriminator(dim, num_classes, config.d_hidden, config.pack)
    return models
