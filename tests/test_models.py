"""The models' shapes, conditioning and packing."""

import pytest
import torch

from fastgan.models import Autoencoder, Discriminator, Generator
from fastgan.nn import FusedLinear


def test_default_sizes_match_the_spec():
    ae = Autoencoder(784)
    widths = lambda net: [(m.in_features, m.out_features) for m in net]
    assert widths(ae.encoder) == [(784, 512), (512, 256), (256, 32)]
    assert widths(ae.decoder) == [(32, 256), (256, 512), (512, 784)]
    assert all(isinstance(m, FusedLinear) for m in [*ae.encoder, *ae.decoder])
    assert ae.decoder[-1].activation == "sigmoid" and ae.encoder[0].negative_slope == 0.2
    g, d = Generator(784, 10), Discriminator(784, 10)
    assert widths(g.net) == [(74, 256), (256, 512), (512, 784)]
    assert widths(d.net) == [(794, 512), (512, 256), (256, 1)]


def test_conditioning_changes_the_output_and_needs_labels():
    g = Generator(5, num_classes=3, noise_dim=4)
    noise = torch.randn(6, 4)
    a, b = g(noise, torch.zeros(6, dtype=torch.long)), g(noise, torch.ones(6, dtype=torch.long))
    assert a.shape == (6, 5) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="labels: expected class indices in \\[0, 3\\)"):
        g(noise)
    assert Generator(5, num_classes=0, noise_dim=4)(noise).shape == (6, 5)


def test_packing_judges_consecutive_rows_together():
    d = Discriminator(2, num_classes=0, hidden=(8,), pack=4)
    x = torch.randn(12, 2)
    assert d(x).shape == (3, 1)
    torch.testing.assert_close(d(x)[0], d(x[:4])[0])  # pack 0 is rows 0..3 side by side
    assert d.net[0].in_features == 8


def test_decode_standardized_uses_the_latent_statistics():
    ae = Autoencoder(6, latent_dim=2, hidden=(4,))
    ae.latent_mean.fill_(3.0)
    ae.latent_std.fill_(2.0)
    u = torch.randn(5, 2)
    assert torch.equal(ae.decode_standardized(u), ae.decoder(u * 2.0 + 3.0))


def test_label_embeddings_are_capped_in_width():
    assert Generator(5, num_classes=10).embed.embedding_dim == 10
    d = Discriminator(5, num_classes=300, hidden=(8,))
    assert d.embed.embedding_dim == 128 and d.net[0].in_features == 5 + 128
