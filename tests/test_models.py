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
    # the first layer's data columns; the 10 embedding columns are label_weight
    assert widths(g.net) == [(64, 256), (256, 512), (512, 784)]
    assert widths(d.net) == [(784, 512), (512, 256), (256, 1)]
    assert g.label_weight.shape == (256, 10) and d.label_weight.shape == (512, 10)


@pytest.mark.parametrize("pack", [1, 3])
def test_the_split_first_layer_is_the_concatenated_layer(pack):
    """act([x, e] @ W.T + b), with W's columns reassembled from the two parameters: the
    same outputs and gradients as the textbook concatenation, in float64."""
    torch.manual_seed(0)
    d = Discriminator(5, num_classes=4, hidden=(7, 6), pack=pack).double()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(4, (6,))
    first = d.net[0]
    columns = torch.arange(9 * pack).reshape(pack, 9)
    weight = torch.empty(7, 9 * pack, dtype=torch.float64)
    weight[:, columns[:, :5].flatten()] = first.weight.detach()
    weight[:, columns[:, 5:].flatten()] = d.label_weight.detach()
    weight.requires_grad_()
    inputs = torch.cat([x, d.embed(labels)], dim=1).reshape(6 // pack, -1)
    hidden = torch.nn.functional.leaky_relu(inputs @ weight.T + first.bias, 0.2)
    expected = d.net[1:](hidden)
    got = d(x, labels)
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    grads = {name: p.grad.clone() for name, p in d.named_parameters()}
    x_grad = x.grad.clone()
    d.zero_grad()
    x.grad = None
    expected.sum().backward()
    torch.testing.assert_close(x_grad, x.grad)
    torch.testing.assert_close(grads["net.0.weight"], weight.grad[:, columns[:, :5].flatten()])
    torch.testing.assert_close(grads["label_weight"], weight.grad[:, columns[:, 5:].flatten()])
    torch.testing.assert_close(grads["embed.weight"], d.embed.weight.grad)


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
    assert d.embed.embedding_dim == 128 and d.label_weight.shape == (8, 128)
