"""Plain PyTorch statements of every fastgan op, differentiated by autograd.

Tests run these in float64 as the ground truth for every backend; the benchmarks time
them as the eager baseline.
"""

import torch
import torch.nn.functional as F

ACTIVATION_FNS = {
    "none": lambda z, slope: z,
    "relu": lambda z, slope: torch.relu(z),
    "leaky_relu": lambda z, slope: F.leaky_relu(z, slope),
    "tanh": lambda z, slope: torch.tanh(z),
    "sigmoid": lambda z, slope: torch.sigmoid(z),
    "gelu": lambda z, slope: F.gelu(z),
}


def fused_dense(x, weight, bias=None, activation="none", negative_slope=0.01):
    return ACTIVATION_FNS[activation](F.linear(x, weight, bias), negative_slope)


def bce_with_logits(input, target, weight=None, pos_weight=None, reduction="mean"):
    return F.binary_cross_entropy_with_logits(input, target, weight, reduction=reduction,
                                              pos_weight=pos_weight)


def gan_d_loss(real_logits, fake_logits, real_target=1.0, fake_target=0.0):
    return (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits,
                                                                            real_target))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits,
                                                                              fake_target)))


def gan_g_loss(fake_logits):
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def mse_loss(input, target, reduction="mean"):
    return F.mse_loss(input, target, reduction=reduction)
