"""torch.library plumbing shared by the ops.

Each op has two layers:
- internal `fastgan::<op>_fwd` / `_bwd` custom ops that run one backend and return the
  result together with what the backward needs (for the losses: the gradients themselves,
  computed in the forward pass);
- the public `fastgan::<op>`, a CompositeImplicitAutograd op with the PyTorch-style
  signature, which checks its arguments and calls the internal op. It decomposes before
  autograd and before torch.compile's backend, so both see the fused internal ops.
"""

import torch

LIB = torch.library.Library("fastgan", "FRAGMENT")


def define_public_op(schema: str, composite_fn) -> None:
    LIB.define(schema)
    LIB.impl(schema.split("(", 1)[0], composite_fn, "CompositeImplicitAutograd")


def forbid_double_backward(op: str) -> None:
    # The backward reuses gradients saved by the forward, which are not differentiable
    # functions of the inputs: refuse rather than return a wrong second derivative.
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"fastgan.ops.{op}: double backward (create_graph=True) is not supported")


def register_saved_grad_autograd(op, name: str, grad_of_input: dict[int, int]) -> None:
    """Autograd for a loss op returning (loss, *grads), where output 1 + j is the gradient
    of the loss with respect to input `i` for grad_of_input = {i: j}. The backward is a
    single scale (or an elementwise product for reduction="none")."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output[1:])
        ctx.num_inputs = len(inputs)

    def backward(ctx, grad_loss, *unused):
        forbid_double_backward(name)
        saved = ctx.saved_tensors
        grads = [None] * ctx.num_inputs
        for i, j in grad_of_input.items():
            if ctx.needs_input_grad[i]:
                grads[i] = (grad_loss * saved[j]).to(saved[j].dtype)
        return tuple(grads)

    op.register_autograd(backward, setup_context=setup_context)
