"""fuse(model): each nn.Linear + activation pair in a model's nn.Sequentials runs as one fused
dense layer (fastgan.ops.fused_dense); unfuse(model) puts the plain modules back."""

import copy
import dataclasses
import logging

from torch import nn

from fastgan.nn.linear import FusedLinear

log = logging.getLogger("fastgan.nn")

# Activations that commute with Dropout: act(d * z) = d * act(z) for every d >= 0.
POSITIVELY_HOMOGENEOUS = ("relu", "leaky_relu")

# What unfuse() puts back for each fused activation, from (activation, negative_slope).
_PLAIN_ACTIVATIONS = {
    "relu": lambda slope: nn.ReLU(),
    "leaky_relu": nn.LeakyReLU,
    "tanh": lambda slope: nn.Tanh(),
    "sigmoid": lambda slope: nn.Sigmoid(),
    "gelu": lambda slope: nn.GELU(),
}


class FoldedActivation(nn.Identity):
    """The slot of an activation that fuse() folded into the Linear before it. An identity,
    so the Sequential keeps its length, indices and state_dict keys; unfuse() puts the
    activation back here."""


@dataclasses.dataclass
class FuseReport:
    """What runs fused in a model, and why each plain nn.Linear is not fused.

    fused: layer name -> its activation, e.g. {"net.0": "leaky_relu(0.2)"}.
    left: layer name -> the reason it is a plain nn.Linear.
    """

    fused: dict[str, str]
    left: dict[str, str]

    def __str__(self) -> str:
        fused = ", ".join(f"{name} {what}" for name, what in self.fused.items()) or "none"
        line = f"fused {len(self.fused)} Linear layer(s): {fused}"
        if self.left:
            left = "; ".join(f"{name}: {why}" for name, why in self.left.items())
            line += f"; left {len(self.left)} as they were ({left})"
        return line


@dataclasses.dataclass
class _Fusion:
    """One Linear + activation pair that fuse() can fold: slot indices in `sequential`."""

    sequential: nn.Sequential
    linear: int
    activation: int
    name: str
    kind: str
    negative_slope: float
    dropout: int | None

    def describe(self) -> str:
        return _describe(self.kind, self.negative_slope, self.dropout is not None)


def _describe(kind: str, negative_slope: float, dropout_moved: bool) -> str:
    what = f"leaky_relu({negative_slope:g})" if kind == "leaky_relu" else kind
    return what + (" (Dropout moved after it)" if dropout_moved else "")


def fuse(module: nn.Module, *, inplace: bool = True) -> nn.Module:
    """Make every nn.Linear that an activation directly follows, in any nn.Sequential at any
    depth of `module`, run as one fused dense layer (fastgan.nn.FusedLinear).

    The activations fused: ReLU, LeakyReLU (negative_slope >= 0, inplace or not), Tanh,
    Sigmoid and GELU(approximate="none"). The FusedLinear keeps the Linear's Parameter
    objects, so an optimizer built before still trains them, and the activation's slot
    becomes an nn.Identity (FoldedActivation), so state_dict keys do not change and old
    checkpoints load.

    A Dropout between the Linear and a ReLU or LeakyReLU is moved after the activation:
    both are positively homogeneous, act(d * z) = d * act(z) for the dropout's scale
    d >= 0, so the result is the same in training and in eval (and the same random mask is
    drawn).

    Left as they are: a Linear followed by anything else (BatchNorm, a custom module,
    Dropout before Tanh), a Linear or activation with hooks, an nn.Linear subclass, a
    Linear outside an nn.Sequential (or in one with its own forward), and a pair whose next
    module works in place (it would overwrite the output the fused backward reads).
    The fused layers do not support double backward (create_graph=True, as gradient
    penalties use).

    Returns the model, with inplace=False a fused deep copy. What was fused, and why the
    other Linears were not, is logged at INFO on the "fastgan.nn" logger and is
    fuse_report(model).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    fusions, _ = _plan(module)
    for fusion in fusions:
        seq = fusion.sequential
        seq[fusion.linear] = _fused_linear(seq[fusion.linear], fusion.kind,
                                           fusion.negative_slope)
        seq[fusion.activation] = FoldedActivation()
    log.info("fastgan.nn.fuse: %s", fuse_report(module))
    return module


def unfuse(module: nn.Module, *, inplace: bool = True) -> nn.Module:
    """Undo fuse(): each FusedLinear it made becomes an nn.Linear with the same Parameters
    again, and its activation (a new module: ReLU, LeakyReLU, ...) goes back to its slot.
    For export, or for code that expects plain modules. With inplace=False, works on a deep
    copy."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    for _, seq in _sequentials(module):
        for i, layer in enumerate(list(seq)):
            slot = _folded_slot(seq, i)
            if slot is not None:
                seq[i] = _plain_linear(layer)
                seq[slot] = _PLAIN_ACTIVATIONS[layer.activation](layer.negative_slope)
    return module


def fuse_report(module: nn.Module) -> FuseReport:
    """The layers of `module` that run fused by fuse(), and why each plain nn.Linear does
    not."""
    fusions, left = _plan(module)
    fused = {}
    for prefix, seq in _sequentials(module):
        for i, layer in enumerate(seq):
            slot = _folded_slot(seq, i)
            if slot is not None:
                fused[_child_name(prefix, seq, i)] = _describe(layer.activation,
                                                          layer.negative_slope, slot == i + 2)
    for fusion in fusions:
        left[fusion.name] = f"fuse() would fuse it with {fusion.describe()}"
    return FuseReport(fused=fused, left=left)


# ---------------------------------------------------------------------------------------


def _sequentials(module: nn.Module):
    """(name, Sequential) for every nn.Sequential that runs its children in order."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Sequential) and type(sub).forward is nn.Sequential.forward:
            yield name, sub


def _child_name(prefix: str, seq: nn.Sequential, index: int) -> str:
    # By position in _modules: named_children() would skip a module that appears twice.
    key = list(seq._modules)[index]
    return f"{prefix}.{key}" if prefix else key


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks
                or module._backward_hooks or module._backward_pre_hooks)


def _activation(module: nn.Module) -> tuple[str, float] | str | None:
    """(kind, negative_slope) for an activation fuse() folds, a reason for one it cannot,
    None for a module that is no activation."""
    kind = type(module)
    if kind is nn.ReLU:
        return "relu", 0.0
    if kind is nn.LeakyReLU:
        if module.negative_slope < 0:
            return f"LeakyReLU with negative_slope {module.negative_slope} < 0"
        return "leaky_relu", float(module.negative_slope)
    if kind is nn.Tanh:
        return "tanh", 0.0
    if kind is nn.Sigmoid:
        return "sigmoid", 0.0
    if kind is nn.GELU:
        if module.approximate != "none":
            return f"GELU(approximate={module.approximate!r})"
        return "gelu", 0.0
    return None


def _plan(module: nn.Module) -> tuple[list[_Fusion], dict[str, str]]:
    """The pairs fuse() folds, and each other plain nn.Linear with why it is left alone."""
    fusions, left, seen = [], {}, set()
    for prefix, seq in _sequentials(module):
        children = list(seq)
        for i, layer in enumerate(children):
            if type(layer) is not nn.Linear:
                continue
            name = _child_name(prefix, seq, i)
            seen.add(id(layer))
            found = _pair(children, i)
            if isinstance(found, str):
                left[name] = found
            else:
                slot, dropout, (kind, slope) = found
                fusions.append(_Fusion(seq, i, slot, name, kind, slope, dropout))
    for name, sub in module.named_modules():
        if type(sub) is nn.Linear and id(sub) not in seen:
            left[name or type(sub).__name__] = (
                "not in an nn.Sequential that runs its children in order")
    return fusions, left


def _pair(children: list[nn.Module], i: int):
    """For the Linear at children[i]: (activation slot, dropout slot or None, (kind,
    slope)) when fuse() can fold it, else the reason it cannot."""
    if _has_hooks(children[i]):
        return "it has hooks"
    slot, dropout = i + 1, None
    if slot < len(children) and type(children[slot]) is nn.Dropout:
        slot, dropout = slot + 1, slot
    if slot >= len(children):
        return "no activation follows it"
    follower = children[slot]
    found = _activation(follower)
    if found is None:
        return f"followed by {type(follower).__name__}"
    if isinstance(found, str):
        return found
    if dropout is not None and found[0] not in POSITIVELY_HOMOGENEOUS:
        return f"Dropout before {type(follower).__name__} does not commute with it"
    if any(_has_hooks(children[j]) for j in range(i + 1, slot + 1)):
        return f"{type(follower).__name__} after it has hooks"
    # The fused output is saved for the backward; the next module must not overwrite it.
    receiver = dropout if dropout is not None else slot + 1
    if receiver < len(children) and getattr(children[receiver], "inplace", False) is True:
        return (f"{type(children[receiver]).__name__}(inplace=True) would overwrite the "
                "fused output")
    return slot, dropout, found


def _folded_slot(seq: nn.Sequential, i: int) -> int | None:
    """The FoldedActivation slot of a FusedLinear that fuse() made at seq[i], else None."""
    if type(seq[i]) is not FusedLinear:
        return None
    for slot in (i + 1, i + 2):  # right after it, or after the Dropout moved behind it
        if slot >= len(seq) or type(seq[slot]) not in (FoldedActivation, nn.Dropout):
            return None
        if type(seq[slot]) is FoldedActivation:
            return slot
    return None


def _adopt(new: nn.Linear, old: nn.Linear) -> nn.Linear:
    """new with old's Parameter objects and training mode (new's own were on meta)."""
    new.weight = old.weight
    new.bias = old.bias
    return new.train(old.training)


def _fused_linear(linear: nn.Linear, kind: str, negative_slope: float) -> FusedLinear:
    fused = FusedLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                        activation=kind, negative_slope=negative_slope, device="meta")
    return _adopt(fused, linear)


def _plain_linear(fused: FusedLinear) -> nn.Linear:
    linear = nn.Linear(fused.in_features, fused.out_features, bias=fused.bias is not None,
                       device="meta")
    return _adopt(linear, fused)
