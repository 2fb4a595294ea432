"""The three backends that run fastgan's fused ops, side by side, and the choice between them.

    triton/     Triton kernels: CUDA tensors (CPU tensors under TRITON_INTERPRET=1)
    cpp.py      the csrc/ C++ kernels: CPU tensors
    pytorch.py  plain PyTorch: the fallback, and the readable statement of what the others compute
    select.py   FASTGAN_BACKEND and the tensors' device -> the backend that runs a call
    common.py   the environment and dtype helpers every backend shares
    codes.py    the integer codes that name activations, losses and reductions in the kernels

Every backend implements the same four functions, with the same arguments and results:

    dense_fwd(x, weight, bias, activation, negative_slope, save_preact) -> (out, preact)
    dense_bwd(grad_out, x, weight, saved, activation, negative_slope,
              need_dx, need_dw, need_db) -> (dx, dw, db)
    pointwise_loss_fwd(input, target, weight, pos_weight, loss, reduction,
                       need_grad_input, need_grad_target) -> (loss, grad_input, grad_target)
    gan_loss_fwd(a, target_a, b, target_b, need_grad_a, need_grad_b) -> (loss, grad_a, grad_b)

Shapes: dense takes 2-D x (M, K) and weight (N, K); pointwise losses take 2-D (R, C) operands,
with weight and pos_weight already expanded to (R, C) (stride 0 where broadcast); the GAN
losses take 1-D logits. Any strides. Outputs are contiguous. A result that was not asked for
(need_* False, or preact when save_preact is False) is an empty tensor. Losses compute in
fp32 (fp64 for fp64 inputs); gradients come from the same pass as the loss. activation, loss
and reduction are the integer codes of codes.py.

A backend may also bring its own autograd ops, `fused_dense_autograd`, `pointwise_loss_autograd`
and `gan_loss_autograd` (the C++ one does): fastgan.ops then calls them in eager mode.

Nothing here imports fastgan.ops or anything above it.
"""
