"""How close a fastgan result must be to the float64 reference: the one place the
tolerances per dtype are written down. Used by the tests and by the benchmarks' checks."""

import torch

# (rtol, atol). atol is relative to the size of the values compared (see assert_close):
# GEMM outputs and sums carry an error proportional to their magnitude, not to 1.
TOLERANCES = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (3e-2, 2e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                 what: str = "") -> None:
    """actual (computed in `dtype`) against expected (float64). NaN must match NaN and
    ±inf must match exactly."""
    rtol, atol = TOLERANCES[dtype]
    expected = expected.detach().to(torch.float64)
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    torch.testing.assert_close(actual.detach().to(torch.float64), expected, rtol=rtol,
                               atol=atol * scale, equal_nan=True, check_device=False,
                               msg=lambda m: f"{what} ({dtype}): {m}")
