"""Dense layer + activation, forward and backward, fused in Triton.

forward:  out = act(x @ weight.T + bias)                       one kernel
backward: dz = grad_out * act'(saved), recomputed on the fly inside
          dx = dz @ weight                                      one kernel
          dw = dz.T @ x, db = sum_rows(dz)                      one kernel

dz is never written to memory. relu, leaky_relu, tanh and sigmoid take their derivative
from the saved output; gelu from the saved pre-activation, which the forward writes only
for gelu. The activation and leaky_relu's slope are constexprs: each compiles to its own
specialised kernel, and the slope stays exact in fp64 (a float argument would be fp32).
"""

import functools

import torch
import triton
import triton.language as tl

from fastgan.backends.codes import ACTIVATION_CODES
from fastgan.backends.common import TRITON_INTERPRET
from fastgan.backends.triton import _math

# The activation codes of fastgan/backends/codes.py, as compile-time constants for the kernels.
NONE, RELU, LEAKY_RELU, TANH, SIGMOID, GELU = (tl.constexpr(ACTIVATION_CODES[name]) for name in (
    "none", "relu", "leaky_relu", "tanh", "sigmoid", "gelu"))

# tl.dot takes fp64 tiles from triton 3.5; before that, fp64 tiles are multiplied and summed.
FP64_DOT = tl.constexpr(tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 5))


@triton.jit
def _full_like(t, value: tl.constexpr):
    # A float constant on its own would be fp32; this keeps its full precision in fp64.
    return tl.full(t.shape, value, t.dtype)


@triton.jit
def _activate(z, ACT: tl.constexpr, NEGATIVE_SLOPE: tl.constexpr):
    if ACT == RELU:
        out = tl.where(z < 0, 0.0, z)  # keeps NaN, as torch.relu
    elif ACT == LEAKY_RELU:
        out = tl.where(z > 0, z, z * _full_like(z, NEGATIVE_SLOPE))
    elif ACT == TANH:
        out = _math.tanh(z)
    elif ACT == SIGMOID:
        out = _math.sigmoid(z)
    elif ACT == GELU:
        out = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    else:
        out = z
    return out


@triton.jit
def _activation_grad(saved, ACT: tl.constexpr, NEGATIVE_SLOPE: tl.constexpr):
    if ACT == RELU:
        d = tl.where(saved <= 0, 0.0, 1.0)  # NaN: 1, as torch.relu's backward
    elif ACT == LEAKY_RELU:  # NaN: the slope, as F.leaky_relu's backward
        d = tl.where(saved > 0, 1.0, _full_like(saved, NEGATIVE_SLOPE))
    elif ACT == TANH:
        d = 1.0 - saved * saved
    elif ACT == SIGMOID:
        d = saved * (1.0 - saved)
    else:  # gelu: saved is the pre-activation
        cdf = 0.5 * (1.0 + tl.erf(saved * 0.7071067811865476))
        d = cdf + saved * tl.exp(-0.5 * saved * saved) * 0.3989422804014327
    return d


@triton.jit
def _dot(a, b, acc, INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    if INTERPRETED:
        # Triton's CPU interpreter multiplies bfloat16 tiles wrongly (seen with triton 3.9);
        # in fp32 the products are exact, so the test still checks the kernel's logic.
        a = a.to(acc.dtype)
        b = b.to(acc.dtype)
    # Nested ifs and one return: compiled triton 3.2 cannot `and` a Python bool (the dtype
    # test) with a constexpr, and compiles what follows a return in a static if (there a
    # tl.dot of fp64 tiles, which it refuses); its interpreter does neither, so only the
    # compile check saw it. out_dtype named: triton 3.6 checks a given acc against it.
    if a.dtype == tl.float64:
        if FP64_DOT:
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)
        else:
            acc = acc + tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _grouped_tile(pid, num_rows, num_cols, GROUP: tl.constexpr):
    # Walk GROUP row-tiles at a time so neighbouring programs share operand tiles in L2.
    width = GROUP * num_cols
    group = pid // width
    first_row = group * GROUP
    rows_in_group = tl.minimum(num_rows - first_row, GROUP)
    row = first_row + (pid % width) % rows_in_group
    col = (pid % width) // rows_in_group
    return row, col


@triton.jit
def dense_fwd_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, preact_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_b,
    NEGATIVE_SLOPE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    SAVE_PREACT: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N),
                                 GROUP_M)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        a = tl.load(x_ptr + rm[:, None] * stride_xm + k[None, :] * stride_xk,
                    mask=(rm[:, None] < M) & (k[None, :] < K), other=0.0)
        b = tl.load(w_ptr + rn[None, :] * stride_wn + k[:, None] * stride_wk,
                    mask=(rn[None, :] < N) & (k[:, None] < K), other=0.0)
        acc = _dot(a, b, acc, INPUT_PRECISION, INTERPRETED)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn * stride_b, mask=rn < N, other=0.0).to(ACC_DTYPE)[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offsets = rm[:, None] * N + rn[None, :]
    if SAVE_PREACT:
        tl.store(preact_ptr + offsets, _math.cast(acc, preact_ptr.dtype.element_ty), mask=mask)
    out = _activate(acc, ACT, NEGATIVE_SLOPE)
    tl.store(out_ptr + offsets, _math.cast(out, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dz_tile(g_ptr, s_ptr, rows, cols, M, N, stride_gm, stride_gn,
             NEGATIVE_SLOPE: tl.constexpr, ACT: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """dz[rows, cols] = grad_out * act'(saved), with rows indexing M and cols indexing N;
    rows and cols may come in either orientation, so the tile may be dz or dz.T."""
    mask = (rows < M) & (cols < N)
    g = tl.load(g_ptr + rows * stride_gm + cols * stride_gn, mask=mask, other=0.0).to(ACC_DTYPE)
    if ACT != NONE:
        s = tl.load(s_ptr + rows * N + cols, mask=mask, other=0.0).to(ACC_DTYPE)
        g = g * _activation_grad(s, ACT, NEGATIVE_SLOPE)
    return g


@triton.jit
def dense_dx_kernel(
    g_ptr, s_ptr, w_ptr, dx_ptr,
    M, N, K,
    stride_gm, stride_gn, stride_wn, stride_wk,
    NEGATIVE_SLOPE: tl.constexpr, ACT: tl.constexpr, ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_k = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K),
                                 GROUP_M)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rk = (pid_k * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    rn = tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC_DTYPE)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + rn
        dz = _dz_tile(g_ptr, s_ptr, rm[:, None], n[None, :], M, N, stride_gm, stride_gn,
                      NEGATIVE_SLOPE, ACT, ACC_DTYPE)
        w = tl.load(w_ptr + n[:, None] * stride_wn + rk[None, :] * stride_wk,
                    mask=(n[:, None] < N) & (rk[None, :] < K), other=0.0)
        acc = _dot(_math.cast(dz, w.dtype), w, acc, INPUT_PRECISION, INTERPRETED)
    tl.store(dx_ptr + rm[:, None] * K + rk[None, :], _math.cast(acc, dx_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rk[None, :] < K))


@triton.jit
def dense_dw_kernel(
    g_ptr, s_ptr, x_ptr, dw_ptr, db_ptr,
    M, N, K, rows_per_split,
    stride_gm, stride_gn, stride_xm, stride_xk,
    NEGATIVE_SLOPE: tl.constexpr, ACT: tl.constexpr, NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr,
):
    # Programs are (row split, output tile). With several splits each writes a partial
    # dw / db for its rows, summed by the launcher: a wide batch reduced by a small layer
    # (e.g. 256 -> 1 at batch 65536) would otherwise run on a handful of programs.
    tiles = tl.cdiv(N, BLOCK_N) * tl.cdiv(K, BLOCK_K)
    split = tl.program_id(0) // tiles
    pid_n, pid_k = _grouped_tile(tl.program_id(0) % tiles, tl.cdiv(N, BLOCK_N),
                                 tl.cdiv(K, BLOCK_K), GROUP_N)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rk = (pid_k * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    rm = tl.arange(0, BLOCK_M)
    m_start = split * rows_per_split
    m_end = tl.minimum(M, m_start + rows_per_split)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC_DTYPE)
    db = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
    for m0 in range(m_start, m_end, BLOCK_M):
        m = (m0 + rm).to(tl.int64)
        dz_t = _dz_tile(g_ptr, s_ptr, m[None, :], rn[:, None], m_end, N, stride_gm, stride_gn,
                        NEGATIVE_SLOPE, ACT, ACC_DTYPE)  # [BLOCK_N, BLOCK_M]
        if NEED_DW:
            x = tl.load(x_ptr + m[:, None] * stride_xm + rk[None, :] * stride_xk,
                        mask=(m[:, None] < m_end) & (rk[None, :] < K), other=0.0)
            acc = _dot(_math.cast(dz_t, x.dtype), x, acc, INPUT_PRECISION, INTERPRETED)
        if NEED_DB:
            db += tl.sum(dz_t, axis=1)
    # The partial's offset in int64: split * N * K passes 2**31 for wide layers at large
    # batch, where int32 (program ids and small int arguments are int32) would wrap.
    split64 = split.to(tl.int64)
    if NEED_DW:
        tl.store(dw_ptr + split64 * N * K + rn[:, None] * K + rk[None, :],
                 _math.cast(acc, dw_ptr.dtype.element_ty),
                 mask=(rn[:, None] < N) & (rk[None, :] < K))
    if NEED_DB:
        # Every K-tile computes the same column sums; the first one writes them.
        if pid_k == 0:
            tl.store(db_ptr + split64 * N + rn, _math.cast(db, db_ptr.dtype.element_ty),
                     mask=rn < N)


# ---------------------------------------------------------------------------------------
# Launchers


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _input_precision(dtype: torch.dtype) -> str:
    # Follow torch's own matmul setting, as cuBLAS does: TF32 for fp32 unless it is "highest"
    # (the trainer sets it on CUDA: fastgan.devices.use_fp32_policy).
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def _slope(activation: int, negative_slope: float) -> float:
    # Only leaky_relu reads the slope; a fixed value elsewhere avoids recompiles.
    return float(negative_slope) if activation == LEAKY_RELU else 0.0


def _block(size: int, smallest: int, largest: int) -> int:
    return max(smallest, min(largest, triton.next_power_of_2(size)))


def _tiles(m: int, n: int, k: int):
    """Tile sizes for an (m x n) output reduced over k. tl.dot needs every side >= 16."""
    return _block(m, 16, 64), _block(n, 16, 64), _block(k, 16, 32)


def _launch_kw(dtype: torch.dtype) -> dict:
    # Below fp64, 8 warps with a budget of 160 registers each: with 4 warps ptxas spilled in
    # fp32, bf16 and fp16 kernels on sm_80 and sm_90 (up to 348 bytes in fp32's dx on
    # sm_80); left to itself at 8 it kept to 64-96 registers and spilled a few bytes, and a
    # budget of 128 (two programs per SM) spilled up to 140 on sm_80. From compiles alone
    # (python -m fastgan.perf.compile_check; profiles/kernels-sm*.json): their speed on
    # hardware, at one program of 8 warps per SM, is not measured yet.
    if dtype == torch.float64:
        return {"num_warps": 4, "num_stages": 1, "INTERPRETED": TRITON_INTERPRET}
    return {"num_warps": 8, "num_stages": 3, "maxnreg": 160, "INTERPRETED": TRITON_INTERPRET}


def dense_fwd(x, weight, bias, activation, negative_slope, save_preact):
    M, K = x.shape
    N = weight.shape[0]
    out = torch.empty((M, N), device=x.device, dtype=x.dtype)
    preact = torch.empty((M, N) if save_preact else (0,), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out, preact
    bm, bn, bk = _tiles(M, N, K)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    dense_fwd_kernel[grid](
        x, weight, bias if bias is not None else x, out, preact,
        M, N, K, x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        bias.stride(0) if bias is not None else 0,
        NEGATIVE_SLOPE=_slope(activation, negative_slope), HAS_BIAS=bias is not None,
        ACT=activation, SAVE_PREACT=save_preact,
        ACC_DTYPE=_acc_dtype(x.dtype), INPUT_PRECISION=_input_precision(x.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, **_launch_kw(x.dtype),
    )
    return out, preact


def dense_bwd(grad_out, x, weight, saved, activation, negative_slope, need_dx, need_dw, need_db):
    M, K = x.shape
    N = weight.shape[0]
    acc, precision = _acc_dtype(x.dtype), _input_precision(x.dtype)
    dx = x.new_empty((M, K) if need_dx else (0,))
    dw = x.new_empty((N, K) if need_dw else (0,))
    db = x.new_empty((N,) if need_db else (0,))
    if M == 0:  # nothing flows back; the weight and bias gradients are zero
        return dx, dw.zero_(), db.zero_()
    if need_dx and dx.numel():
        bm, bn, bk = _tiles(M, K, N)
        dense_dx_kernel[(triton.cdiv(M, bm) * triton.cdiv(K, bk),)](
            grad_out, saved, weight, dx, M, N, K,
            grad_out.stride(0), grad_out.stride(1), weight.stride(0), weight.stride(1),
            NEGATIVE_SLOPE=_slope(activation, negative_slope), ACT=activation, ACC_DTYPE=acc,
            INPUT_PRECISION=precision,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, **_launch_kw(x.dtype),
        )
    if need_dw or need_db:
        bn, bk, bm = _tiles(N, K, M)
        # Without dw, one K-tile is enough: the kernel's K extent is then one block.
        k_extent = K if need_dw else bk
        tiles = triton.cdiv(N, bn) * triton.cdiv(k_extent, bk)
        splits = m_splits(M, tiles, x.device)
        rows_per_split = triton.cdiv(triton.cdiv(M, splits), bm) * bm
        splits = triton.cdiv(M, rows_per_split)
        if splits == 1:
            dw_out, db_out = dw, db
        else:  # fp32 partials, summed in a fixed order below
            dw_out = x.new_empty((splits, N, K) if need_dw else (0,), dtype=_partial(x.dtype))
            db_out = x.new_empty((splits, N) if need_db else (0,), dtype=_partial(x.dtype))
        dense_dw_kernel[(splits * tiles,)](
            grad_out, saved, x, dw_out, db_out, M, N, k_extent, rows_per_split,
            grad_out.stride(0), grad_out.stride(1), x.stride(0), x.stride(1),
            NEGATIVE_SLOPE=_slope(activation, negative_slope), ACT=activation,
            NEED_DW=need_dw, NEED_DB=need_db, ACC_DTYPE=acc, INPUT_PRECISION=precision,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_N=8, **_launch_kw(x.dtype),
        )
        if splits > 1:
            if need_dw:
                dw = dw_out.sum(0).to(x.dtype)
            if need_db:
                db = db_out.sum(0).to(x.dtype)
    return dx, dw, db


def m_splits(rows: int, tiles: int, device: torch.device) -> int:
    """How many row ranges the weight-gradient kernel splits the batch into on `device`
    (splits_for); one off CUDA."""
    if device.type != "cuda" or rows < 4096:
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    return splits_for(rows, tiles, _sm_count(index))


def splits_for(rows: int, tiles: int, sm_count: int) -> int:
    """Enough row ranges to give every SM about two programs, with at least 1024 rows each
    (none below 4096 rows)."""
    if rows < 4096:
        return 1
    return max(1, min(2 * sm_count // tiles, rows // 1024))


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _partial(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
