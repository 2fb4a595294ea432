"""torch.library and autograd plumbing shared by the ops.

Each op is reachable three ways, all running the same backend calls:
- internal `fastgan::<op>_fwd` / `_bwd` custom ops, each one backend call that returns the
  result together with what the backward needs (for the losses: the gradients themselves,
  computed in the forward pass). torch.compile, export and fake-tensor tracing see these.
- the public `fastgan::<op>`, a CompositeImplicitAutograd op with the PyTorch-style
  signature: the Python API function itself, registered with the dispatcher.
- in plain eager mode the Python API skips the dispatcher: custom_op's Python layers cost
  ~20 µs a call, several times a small kernel. The C++ backend brings its own autograd ops
  (forward and backward in C++); the others run an autograd.Function that calls the
  backend directly.
"""

import torch

from fastgan.backends.select import implementation

LIB = torch.library.Library("fastgan", "FRAGMENT")
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def define_public_op(schema: str, fn) -> None:
    LIB.define(schema)
    LIB.impl(schema.split("(", 1)[0], fn, "CompositeImplicitAutograd")


def eager(*tensors) -> bool:
    """True when the direct eager path (C++ autograd op or autograd.Function) may run: not
    under torch.compile, no dispatch mode (fake tensors, make_fx, functionalization)
    active, no tensor subclasses."""
    return (not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0
            and all(t is None or type(t) in _PLAIN_TENSOR_TYPES for t in tensors))


def dispatch(op: str, tensors, *, registered, native_args, autograd, plain):
    """Run an op the cheapest way its inputs allow, all paths calling the same backend
    (tensors: the op's tensor arguments, the first one given, the others or None):
    - not eager (see eager()): registered(), the registered custom op, which torch.compile
      and tracing see;
    - a backend with its own autograd op `<op>_autograd` (the C++ one): that op on
      native_args, forward and backward in C++;
    - a gradient needed: autograd(), an autograd.Function around the backend calls;
    - else plain(), the backend's forward alone."""
    if not eager(*tensors):
        return registered()
    native = getattr(implementation(tensors[0].device), f"{op}_autograd", None)
    if native is not None:
        return native(*native_args)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return autograd()
    return plain()


def forbid_double_backward(op: str) -> None:
    # The backward reuses results saved by the forward, which are not differentiable
    # functions of the inputs: refuse rather than return a wrong second derivative.
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"fastgan.ops.{op}: double backward (create_graph=True) is not supported")


def scale_saved_grad(grad_loss: torch.Tensor, saved_grad: torch.Tensor) -> torch.Tensor:
    return (grad_loss * saved_grad).to(saved_grad.dtype)


def register_saved_grad_autograd(op, name: str, grad_of_input: dict[int, int]) -> None:
    """Autograd for a registered loss op returning (loss, *grads), where output 1 + j is
    the gradient of the loss with respect to input i for grad_of_input = {i: j}."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output[1:])
        ctx.num_inputs = len(inputs)

    def backward(ctx, grad_loss, *unused):
        forbid_double_backward(name)
        saved = ctx.saved_tensors
        grads = [None] * ctx.num_inputs
        for i, j in grad_of_input.items():
            if ctx.needs_input_grad[i]:
                grads[i] = scale_saved_grad(grad_loss, saved[j])
        return tuple(grads)

    op.register_autograd(backward, setup_context=setup_context)


class LossWithSavedGrads(torch.autograd.Function):
    """Eager autograd for a loss whose kernel also returned its gradients:
    apply(name, compute, *inputs), where compute(*inputs) -> (loss, [grad or None per
    input]). The backward is one scale per input."""

    @staticmethod
    def forward(ctx, name, compute, *inputs):
        loss, grads = compute(*inputs)
        ctx.name = name
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        forbid_double_backward(ctx.name)
        return (None, None, *(None if g is None else scale_saved_grad(grad_loss, g)
                              for g in ctx.saved_tensors))
