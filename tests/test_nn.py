"""FusedLinear is a drop-in for nn.Linear (+ activation)."""

import pytest
import torch
from torch import nn

from fastgan.nn import FusedLinear
from fastgan.ops import reference
from fastgan.testing import assert_close


def test_same_parameters_keys_and_initialization():
    torch.manual_seed(3)
    linear = nn.Linear(17, 9)
    torch.manual_seed(3)
    fused = FusedLinear(17, 9, activation="tanh")
    assert isinstance(fused, nn.Linear)
    assert fused.state_dict().keys() == linear.state_dict().keys()
    for name, value in linear.state_dict().items():
        assert torch.equal(fused.state_dict()[name], value), name
    assert FusedLinear(3, 2, bias=False).bias is None


@pytest.mark.parametrize("activation", ("none", "leaky_relu", "sigmoid"))
def test_matches_linear_plus_activation(backend, activation):
    linear = nn.Linear(12, 5).to(backend.device)
    fused = FusedLinear(12, 5, activation=activation, negative_slope=0.2).to(backend.device)
    fused.load_state_dict(linear.state_dict())
    x = torch.randn(2, 3, 12, device=backend.device)
    expected = reference.fused_dense(x.double(), linear.weight.double(), linear.bias.double(),
                                     activation, 0.2)
    out = fused(x)
    assert_close(out, expected, torch.float32)
    out.sum().backward()
    expected.sum().backward()
    assert fused.weight.grad is not None and fused.bias.grad is not None


def test_repr_and_bad_activation():
    assert "activation='leaky_relu', negative_slope=0.2" in repr(
        FusedLinear(2, 3, activation="leaky_relu", negative_slope=0.2))
    with pytest.raises(ValueError, match="activation: expected one of"):
        FusedLinear(2, 3, activation="softmax")


def test_dtype_and_device_arguments():
    layer = FusedLinear(4, 3, dtype=torch.float64, device="cpu")
    assert layer.weight.dtype == torch.float64
    assert layer(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64


def test_autocast_computes_in_the_autocast_dtype_like_linear(backend):
    linear = nn.Linear(12, 5).to(backend.device)
    fused = FusedLinear(12, 5).to(backend.device)
    fused.load_state_dict(linear.state_dict())
    x = torch.randn(7, 12, device=backend.device)
    with torch.autocast(backend.device.type, dtype=torch.bfloat16):
        expected, out = linear(x), fused(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    assert_close(out, reference.fused_dense(x.double(), linear.weight.double(),
                                            linear.bias.double(), "none", 0.0), torch.bfloat16)
    out.float().sum().backward()
    assert fused.weight.grad.dtype == torch.float32
