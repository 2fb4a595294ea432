"""The integer codes that name activations, losses and reductions inside the kernels.
Triton and C++ see the index; Python sees the name."""

ACTIVATIONS = ("none", "relu", "leaky_relu", "tanh", "sigmoid", "gelu")
# Activations whose derivative is computed from the saved output. gelu needs the saved
# pre-activation; "none" needs nothing.
FROM_OUTPUT = ("relu", "leaky_relu", "tanh", "sigmoid")
LOSSES = ("bce_with_logits", "mse")
REDUCTIONS = ("none", "mean", "sum")
# Who runs the native engine's GEMMs: the faster of the two per shape, timed at first use; or
# always ATen's at::mm (MKL); or always ATen's oneDNN matmul.
GEMM_LIBRARIES = ("auto", "aten", "onednn")

ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
LOSS_CODES = {name: code for code, name in enumerate(LOSSES)}
REDUCTION_CODES = {name: code for code, name in enumerate(REDUCTIONS)}
GEMM_LIBRARY_CODES = {name: code for code, name in enumerate(GEMM_LIBRARIES)}
