"""FusedLinear: nn.Linear and its activation as one fused op."""

from torch import Tensor, nn

from fastgan.backends.codes import ACTIVATIONS
from fastgan.ops import fused_dense
from fastgan.ops.checks import check_choice


class FusedLinear(nn.Linear):
    """nn.Linear followed by an activation, as one fused op.

    A drop-in for nn.Linear (+ activation): the same parameters, state_dict keys and
    initialization; isinstance(m, nn.Linear) holds.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "none", negative_slope: float = 0.01, device=None,
                 dtype=None) -> None:
        check_choice("activation", activation, ACTIVATIONS)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.activation = activation
        self.negative_slope = negative_slope

    def forward(self, input: Tensor) -> Tensor:
        return fused_dense(input, self.weight, self.bias, self.activation, self.negative_slope)

    def extra_repr(self) -> str:
        extra = f", activation={self.activation!r}" if self.activation != "none" else ""
        if self.activation == "leaky_relu":
            extra += f", negative_slope={self.negative_slope}"
        return super().extra_repr() + extra
