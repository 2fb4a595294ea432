"""Every public op on every backend against the reference, on inputs Hypothesis makes up:
random shapes with empty and size-1 dimensions, random strides and storage offsets, every
float dtype, tiny, huge and non-finite values.

Finite inputs are compared with the float64 reference at the tolerances of
fastgan/testing.py. Inputs with ±inf or NaN are compared with PyTorch itself in the same
dtype (the ops are drop-ins: NaN and inf must land where torch puts them). The example
counts are fixed and the search is derandomized, so CI runs the same cases in bounded time;
the Triton interpreter is slow, so its cases are fewer and smaller.
"""

import math

import pytest
import torch
from helpers import grads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgan import ops
from fastgan.backends.codes import ACTIVATIONS
from fastgan.backends.select import backend_for
from fastgan.ops import reference
from fastgan.testing import assert_close

BACKENDS = ("torch", "cpp", "triton")
EXAMPLES = {"torch": 100, "cpp": 100, "triton": 60}
# Sizes of a dimension: 0 last, so that failures shrink toward 1; 17 and 33 cross block edges.
SIZES = {"torch": (1, 2, 3, 5, 7, 17, 33, 0), "cpp": (1, 2, 3, 5, 7, 17, 33, 0),
         "triton": (1, 2, 3, 5, 17, 33, 0)}
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
SPECIALS = (math.inf, -math.inf, math.nan)
LAYOUTS = ("contiguous", "every_other", "transposed", "offset")


def fuzz(backend: str):
    return settings(max_examples=EXAMPLES[backend], deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck))


def device_for(backend: str) -> torch.device:
    on_gpu = torch.cuda.is_available() and backend != "cpp"
    return torch.device("cuda" if on_gpu else "cpu")


@st.composite
def values(draw, shape, dtype, device, scales=(1e-3, 1.0, 4.0), non_finite=False):
    """A tensor of `shape` and `dtype` in a random memory layout: seeded normal values at a
    random scale, with up to three ±inf / NaN at random places when non_finite."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    v = torch.randn(shape, generator=generator, dtype=torch.float64) * draw(
        st.sampled_from(scales))
    if non_finite and v.numel():
        for place, special in draw(st.lists(st.tuples(st.integers(0, 10**6),
                                                      st.sampled_from(SPECIALS)), max_size=3)):
            v.view(-1)[place % v.numel()] = special
    return laid_out(v.to(dtype), draw(st.sampled_from(LAYOUTS))).to(device)


def laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """t's values with other strides: every other element of a wider tensor, the transpose
    of a transposed copy, or a view one element into its storage."""
    if layout == "every_other" and t.dim():
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "offset":
        return torch.cat([t.new_zeros(1), t.reshape(-1)])[1:].view(t.shape)
    return t


def sizes(backend: str):
    return st.sampled_from(SIZES[backend])


def shapes(backend: str, min_dims=0, max_dims=3):
    return st.lists(sizes(backend), min_size=min_dims, max_size=max_dims).map(tuple)


def compare(out, expected, inputs, ref_inputs, dtype, expected_value=None):
    """Value and every gradient (for a random incoming gradient) against the reference;
    expected_value, if given, is the value to match in place of expected's."""
    assert out.shape == expected.shape
    assert_close(out, expected if expected_value is None else expected_value, dtype, "output")
    wanted_inputs = [t for t in inputs if t is not None and t.requires_grad]
    if not wanted_inputs or not out.requires_grad:
        return
    grad_out = torch.rand(out.shape, dtype=torch.float64,  # not the global RNG: a case
                          generator=torch.Generator().manual_seed(0)) + 0.5  # is one case
    actual = grads(out, inputs, grad_out.to(out.device, out.dtype))
    wanted = grads(expected, ref_inputs, grad_out.to(expected.device, expected.dtype))
    for i, (a, e) in enumerate(zip(actual, wanted, strict=True)):
        if a is not None:
            assert a.shape == e.shape and a.dtype == inputs[i].dtype
            assert_close(a, e, dtype, f"gradient of input {i}")


def references(inputs, same_dtype: bool):
    """Leaf copies for the reference: float64, or the inputs' own dtype for non-finite
    cases, where torch in that dtype is what the op must match."""
    return [None if t is None else
            (t.detach().clone() if same_dtype else t.detach().to(torch.float64))
            .requires_grad_(t.requires_grad) for t in inputs]


# ---- fused_dense -----------------------------------------------------------------------------

@st.composite
def dense_cases(draw, backend):
    device = device_for(backend)
    dtype, non_finite = draw(st.sampled_from(DTYPES)), draw(st.booleans())
    lead = draw(shapes(backend, min_dims=1, max_dims=2))
    k, n = draw(sizes(backend)), draw(sizes(backend))
    # In 16-bit dtypes, tanh and sigmoid saturate to outputs whose rounding swamps the
    # derivative taken from them (by design: act' comes from the saved output), so there the
    # pre-activations stay near 1 in size, as in a trained layer; fp32 and fp64 get the
    # extremes.
    half = dtype in (torch.bfloat16, torch.float16)
    x = draw(values((*lead, k), dtype, device, (1e-3, 1.0) if half else (1e-3, 1.0, 4.0),
                    non_finite))
    weight = draw(values((n, k), dtype, device, (1e-3, max(k, 1) ** -0.5) if half else
                         (1e-3, 0.5), non_finite))
    bias = draw(st.none() | values((n,), dtype, device, non_finite=non_finite))
    activation = draw(st.sampled_from(ACTIVATIONS))
    slope = draw(st.sampled_from((0.0, 0.01, 0.2, 1.0)))
    for t, wanted in zip((x, weight, bias), draw(st.tuples(*[st.booleans()] * 3)),
                         strict=True):
        if t is not None:
            t.requires_grad_(wanted)
    return x, weight, bias, activation, slope, non_finite


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_dense(backend, monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", backend)

    @fuzz(backend)
    @given(case=dense_cases(backend))
    def check(case):
        x, weight, bias, activation, slope, non_finite = case
        assert backend_for(x.device) == backend
        out = ops.fused_dense(x, weight, bias, activation, slope)
        ref = references([x, weight, bias], same_dtype=non_finite)
        expected = reference.fused_dense(*ref, activation, slope)
        value = None
        if non_finite:
            # torch's CPU gelu gives NaN at +inf in float32 and 16-bit, and the limit, inf,
            # in float64 (as on CUDA): a NaN of torch's may be that limit in the op's output.
            limit = reference.fused_dense(*references([x, weight, bias], same_dtype=False),
                                          activation, slope).detach()
            value = torch.where(expected.isnan() & limit.isinf() & ~out.isnan(),
                                limit.to(expected.device), expected.detach().to(torch.float64))
        compare(out, expected, [x, weight, bias], ref, x.dtype, value)

    check()


# ---- bce_with_logits and mse_loss ------------------------------------------------------------

@st.composite
def pointwise_cases(draw, backend, loss):
    device = device_for(backend)
    dtype, non_finite = draw(st.sampled_from(DTYPES)), draw(st.booleans())
    shape = draw(shapes(backend))
    scales = (1e-3, 1.0, 30.0, 1e4) if loss == "bce" and dtype != torch.float16 else (
        1e-3, 1.0, 4.0)
    x = draw(values(shape, dtype, device, scales, non_finite)).requires_grad_(draw(st.booleans()))
    if loss == "bce":
        target = (torch.rand(shape, generator=torch.Generator().manual_seed(
            draw(st.integers(0, 99)))).to(dtype))
        target = laid_out(target, draw(st.sampled_from(LAYOUTS))).to(device)
    else:
        target = draw(values(shape, dtype, device, non_finite=non_finite))
    target.requires_grad_(draw(st.booleans()))
    extra = {}
    if loss == "bce":
        for name in ("weight", "pos_weight"):
            if draw(st.booleans()):  # a suffix of the shape, broadcast as torch does
                cut = draw(st.integers(0, len(shape)))
                extra[name] = draw(values(shape[cut:], dtype, device, scales=(1.0,))).abs()
    reduction = draw(st.sampled_from(("none", "mean", "sum")))
    return x, target, extra, reduction, non_finite


@pytest.mark.parametrize("loss", ["bce", "mse"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_pointwise_losses(backend, loss, monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", backend)
    op, ref_op = {"bce": (ops.bce_with_logits, reference.bce_with_logits),
                  "mse": (ops.mse_loss, reference.mse_loss)}[loss]

    @fuzz(backend)
    @given(case=pointwise_cases(backend, loss))
    def check(case):
        x, target, extra, reduction, non_finite = case
        assert backend_for(x.device) == backend
        out = op(x, target, reduction=reduction, **extra)
        ref = references([x, target], same_dtype=non_finite)
        ref_extra = {k: v if non_finite else v.double() for k, v in extra.items()}
        expected = ref_op(*ref, reduction=reduction, **ref_extra)
        compare(out, expected, [x, target], ref, x.dtype)

    check()


# ---- gan_d_loss and gan_g_loss ---------------------------------------------------------------

@st.composite
def gan_cases(draw, backend):
    device = device_for(backend)
    dtype, non_finite = draw(st.sampled_from(DTYPES)), draw(st.booleans())
    scales = (1e-3, 1.0, 30.0) if dtype == torch.float16 else (1e-3, 1.0, 30.0, 1e4)
    real, fake = (draw(values(draw(shapes(backend, max_dims=2)), dtype, device, scales,
                              non_finite)).requires_grad_(draw(st.booleans()))
                  for _ in range(2))
    targets = draw(st.sampled_from(((1.0, 0.0), (0.9, 0.0), (0.7, 0.2))))
    return real, fake, targets, non_finite


@pytest.mark.parametrize("backend", BACKENDS)
def test_gan_losses(backend, monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", backend)

    @fuzz(backend)
    @given(case=gan_cases(backend))
    def check(case):
        real, fake, (real_target, fake_target), non_finite = case
        assert backend_for(real.device) == backend
        ref_real, ref_fake = references([real, fake], same_dtype=non_finite)
        compare(ops.gan_d_loss(real, fake, real_target, fake_target),
                reference.gan_d_loss(ref_real, ref_fake, real_target, fake_target),
                [real, fake], [ref_real, ref_fake], real.dtype)
        compare(ops.gan_g_loss(fake), reference.gan_g_loss(ref_fake), [fake], [ref_fake],
                fake.dtype)

    check()
