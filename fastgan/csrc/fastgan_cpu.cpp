// fastgan's C++ CPU kernels: the four ops of fastgan/backends/pytorch.py (which states what they
// compute), with the elementwise work fused into one OpenMP pass each and the matrix products left
// to ATen's BLAS. Activation, loss and reduction codes are the indices in fastgan/backends/codes.py.
//
// Every reduction splits its pass into a fixed number of pieces (one per OpenMP thread) and adds
// the per-piece partials in piece order, so results are deterministic for a given thread count.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <omp.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "vec_math.h"

namespace {

// Passes over fewer elements run on the calling thread: waking the OpenMP team costs more than
// the work (batch-64 GAN logits, small layers).
constexpr int64_t kGrain = 32768;


enum class Act : int64_t { none, relu, leaky_relu, tanh, sigmoid, gelu };
constexpr int64_t kNumActivations = 6;
enum class Loss : int64_t { bce_with_logits, mse };
enum class Reduction : int64_t { none, mean, sum };

template <Act A>
using ActTag = std::integral_constant<Act, A>;

// Calls f(ActTag<A>{}) for the activation `code`: kernels are written once and compiled per
// activation, so the activation is not a branch inside their loops. gelu's passes run on ATen's
// kernels (uses_aten_pass), never here.
template <typename F>
void dispatch_activation(int64_t code, F&& f) {
  switch (static_cast<Act>(code)) {
    case Act::none: return f(ActTag<Act::none>{});
    case Act::relu: return f(ActTag<Act::relu>{});
    case Act::leaky_relu: return f(ActTag<Act::leaky_relu>{});
    case Act::tanh: return f(ActTag<Act::tanh>{});
    case Act::sigmoid: return f(ActTag<Act::sigmoid>{});
    case Act::gelu: break;
  }
  TORCH_CHECK(false, "fastgan_cpu: no per-element pass for activation code ", code);
}


using fastgan_math::exp_nonpositive;
using fastgan_math::log1p_unit;
using fastgan_math::sigmoid;

// The transcendental part of BCE-with-logits for a run of logits: e = exp(-|x|) and
// softplus = log1p(e). A separate loop over plain arrays, so the compiler vectorizes it.
template <typename T>
void logit_exp_terms(const T* x, int64_t n, T* e, T* softplus) {
  for (int64_t i = 0; i < n; ++i) {
    e[i] = exp_nonpositive(-std::abs(x[i]));
  }
  for (int64_t i = 0; i < n; ++i) {
    softplus[i] = log1p_unit(e[i]);
  }
}

// Logits are processed in chunks of this many: the exp/log run vectorized over a chunk.
constexpr int64_t kLogitChunk = 256;

// The terms of BCE-with-logits for one logit, sharing one exp(-|x|): log_sigmoid as
// backends/pytorch.py's log_sigmoid writes it (min(x, 0) - log1p(exp(-|x|)), so ±inf and NaN agree) and
// sigmoid. std::min(x, 0) returns x when x is NaN, like torch.clamp_max.
template <typename T>
struct Logit {
  T x;
  T e;         // exp(-|x|), in [0, 1]
  T softplus;  // log1p(e)

  T log_sigmoid() const { return std::min(x, T(0)) - softplus; }
  T log_sigmoid_of_minus_x() const { return std::min(-x, T(0)) - softplus; }
  // 1 / (1 + exp(-x)), written so that exp never overflows.
  T sigmoid() const { return (x >= T(0) ? T(1) : e) / (T(1) + e); }
};

template <Act A, typename T>
inline T activate(T z, T negative_slope) {
  if constexpr (A == Act::relu) {
    return z < T(0) ? T(0) : z;  // keeps NaN, as torch.relu does
  } else if constexpr (A == Act::leaky_relu) {
    return z > T(0) ? z : z * negative_slope;
  } else if constexpr (A == Act::tanh) {
    return fastgan_math::tanh(z);
  } else if constexpr (A == Act::sigmoid) {
    return sigmoid(z);
  } else {
    return z;
  }
}

// d act / d z from the saved output. Not used for "none", whose dz is grad_out itself.
template <Act A, typename T>
inline T activation_grad(T s, T negative_slope) {
  if constexpr (A == Act::relu) {
    return s <= T(0) ? T(0) : T(1);  // NaN: 1, as torch.relu's backward
  } else if constexpr (A == Act::leaky_relu) {
    return s > T(0) ? T(1) : negative_slope;  // NaN: the slope, as F.leaky_relu's backward
  } else if constexpr (A == Act::tanh) {
    return T(1) - s * s;
  } else {
    static_assert(A == Act::sigmoid);
    return s * (T(1) - s);
  }
}

// How many pieces a pass over n elements is split into: one per thread when the pass is large
// enough to be worth it. Depends only on n and the thread count, never on scheduling.
int num_pieces(int64_t n) {
  return n > kGrain ? std::max(1, omp_get_max_threads()) : 1;
}

// Runs body(piece, begin, end) for `pieces` consecutive ranges covering [0, n), in parallel.
// body must not throw: exceptions cannot leave an OpenMP region.
template <typename Body>
void parallel_pieces(int64_t n, int pieces, const Body& body) {
#pragma omp parallel for schedule(static) num_threads(pieces) if (pieces > 1)
  for (int p = 0; p < pieces; ++p) {
    body(p, n * p / pieces, n * (p + 1) / pieces);
  }
}

// Walks the flat range [begin, end) of a row-major (rows, cols) index space one row segment at a
// time: body(row, col_begin, col_end). Pieces then split work evenly even for a single long row.
template <typename Body>
void for_row_segments(int64_t begin, int64_t end, int64_t cols, const Body& body) {
  for (int64_t i = begin; i < end;) {
    const int64_t row = i / cols;
    const int64_t c0 = i % cols;
    const int64_t c1 = std::min(cols, c0 + (end - i));
    body(row, c0, c1);
    i += c1 - c0;
  }
}

// Loss sums run in double whatever the dtype: a float running sum over a million terms drifts by
// ~1e-5 relative, where torch's cascade sum does not.
double sum_in_order(const std::vector<double>& partials) {
  double total = 0;
  for (const double part : partials) {
    total += part;
  }
  return total;
}

// Sum of n values in double with eight running sums: the adds overlap (and vectorize) instead of
// each waiting on the one before, and the order is fixed, so the result is too.
template <typename T>
double sum_in_lanes(const T* values, int64_t n) {
  double lanes[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) {
      lanes[k] += static_cast<double>(values[i + k]);
    }
  }
  double total = 0;
  for (; i < n; ++i) {
    total += static_cast<double>(values[i]);
  }
  for (const double lane : lanes) {
    total += lane;
  }
  return total;
}

at::Tensor empty_result(const at::Tensor& like) {
  return at::empty({0}, like.options());
}

void check_2d(const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2, "fastgan_cpu: ", name, " must be 2-D, got ", t.dim(), "-D");
}

void check_shape(const char* name, const at::Tensor& t, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, "fastgan_cpu: ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

void check_dtype(const char* name, const at::Tensor& t, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, "fastgan_cpu: ", name, " must be ", dtype, ", got ",
              t.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// dense_fwd

// Passes that run on ATen's vectorised kernels instead of the loops below: 16-bit dtypes, whose
// per-element loop goes through c10's scalar conversions (the pass took 6x as long as the bf16
// GEMM before it, AMX), and gelu, whose erf has no vectorizable form here (scalar std::erf made
// the pass 90x slower than ATen's).
bool uses_aten_pass(at::ScalarType dtype, int64_t activation) {
  return dtype == at::kBFloat16 || dtype == at::kHalf || static_cast<Act>(activation) == Act::gelu;
}

// out = act(out) in place over a contiguous buffer, copying the pre-activation to preact in the
// same pass when asked.
template <Act A, bool SavePreact, typename scalar_t>
void activate_inplace(scalar_t* out, scalar_t* preact, int64_t n, double negative_slope) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t slope = static_cast<acc_t>(negative_slope);
  parallel_pieces(n, num_pieces(n), [&](int, int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t z = out[i];
      if constexpr (SavePreact) {
        preact[i] = z;
      }
      out[i] = static_cast<scalar_t>(activate<A>(static_cast<acc_t>(z), slope));
    }
  });
}

// dst = act(src) with ATen's kernels, which compute in float and round once, as the per-element
// loop does; dst may be src.
void activate_with_aten(at::Tensor& dst, const at::Tensor& src, int64_t activation,
                        double negative_slope) {
  switch (static_cast<Act>(activation)) {
    case Act::none: dst.copy_(src); return;
    case Act::relu: at::clamp_min_out(dst, src, 0); return;  // torch.relu's own kernel
    case Act::leaky_relu: at::leaky_relu_out(dst, src, negative_slope); return;
    case Act::tanh: at::tanh_out(dst, src); return;
    case Act::sigmoid: at::sigmoid_out(dst, src); return;
    case Act::gelu: at::gelu_out(dst, src); return;
  }
}

std::tuple<at::Tensor, at::Tensor> dense_fwd(const at::Tensor& x, const at::Tensor& weight,
                                             const std::optional<at::Tensor>& bias,
                                             int64_t activation, double negative_slope,
                                             bool save_preact) {
  check_2d("x", x);
  check_2d("weight", weight);
  TORCH_CHECK(0 <= activation && activation < kNumActivations,
              "fastgan_cpu: unknown activation code ", activation);
  // addmm/mm allocate a fresh contiguous result, which the activation then overwrites in place.
  at::Tensor out = bias.has_value() ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  out = out.contiguous();
  at::Tensor preact = save_preact ? at::empty_like(out) : empty_result(x);
  if (static_cast<Act>(activation) == Act::none && !save_preact) {
    return {out, preact};
  }
  if (uses_aten_pass(out.scalar_type(), activation)) {
    if (save_preact) {
      // The GEMM's result becomes the saved pre-activation; the output is a new buffer.
      std::swap(out, preact);
    }
    activate_with_aten(out, save_preact ? preact : out, activation, negative_slope);
    return {out, preact};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "dense_fwd", [&] {
    dispatch_activation(activation, [&](auto act) {
      constexpr Act A = decltype(act)::value;
      scalar_t* o = out.data_ptr<scalar_t>();
      if (save_preact) {
        activate_inplace<A, true>(o, preact.data_ptr<scalar_t>(), out.numel(), negative_slope);
      } else {
        activate_inplace<A, false, scalar_t>(o, nullptr, out.numel(), negative_slope);
      }
    });
  });
  return {out, preact};
}

// ---------------------------------------------------------------------------------------------
// dense_bwd

// One row segment of the backward pass: dz = grad_out * act'(saved) and, if SumDb, its column
// sums into col_sum. Contig hard-codes unit column strides so the loop vectorises.
template <Act A, bool Contig, bool SumDb, typename scalar_t, typename acc_t>
inline void backward_segment(const scalar_t* g, int64_t g_stride, const scalar_t* s,
                             int64_t s_stride, scalar_t* dz, acc_t* col_sum, int64_t c0, int64_t c1,
                             acc_t negative_slope) {
  const int64_t gs = Contig ? 1 : g_stride;
  const int64_t ss = Contig ? 1 : s_stride;
#pragma omp simd
  for (int64_t c = c0; c < c1; ++c) {
    scalar_t d;
    if constexpr (A == Act::none) {
      d = g[c * gs];
    } else {
      const acc_t grad = activation_grad<A>(static_cast<acc_t>(s[c * ss]), negative_slope);
      d = static_cast<scalar_t>(static_cast<acc_t>(g[c * gs]) * grad);
      dz[c] = d;
    }
    if constexpr (SumDb) {
      col_sum[c] += static_cast<acc_t>(d);  // the rounded dz, as the PyTorch path sums it
    }
  }
}

// Writes dz (rows, cols) contiguous unless A is none, and db = dz.sum(0) when db is not null.
template <Act A, bool SumDb, typename scalar_t>
void activation_backward(const at::Tensor& grad_out, const at::Tensor& saved, scalar_t* dz,
                         scalar_t* db, double negative_slope) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = grad_out.size(0);
  const int64_t cols = grad_out.size(1);
  const int64_t n = rows * cols;
  const acc_t slope = static_cast<acc_t>(negative_slope);
  const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
  const int64_t gs0 = grad_out.stride(0);
  const int64_t gs1 = grad_out.stride(1);
  // "none" never reads saved, which may then be an empty tensor.
  const bool reads_saved = A != Act::none;
  const scalar_t* s = reads_saved ? saved.const_data_ptr<scalar_t>() : nullptr;
  const int64_t ss0 = reads_saved ? saved.stride(0) : 0;
  const int64_t ss1 = reads_saved ? saved.stride(1) : 1;
  const bool contig = gs1 == 1 && ss1 == 1;

  const int pieces = num_pieces(n);
  std::vector<acc_t> partial(SumDb ? static_cast<size_t>(pieces) * cols : 0, acc_t(0));
  parallel_pieces(n, pieces, [&](int p, int64_t begin, int64_t end) {
    acc_t* col_sum = SumDb ? partial.data() + static_cast<int64_t>(p) * cols : nullptr;
    for_row_segments(begin, end, cols, [&](int64_t r, int64_t c0, int64_t c1) {
      const scalar_t* g_row = g + r * gs0;
      const scalar_t* s_row = s == nullptr ? nullptr : s + r * ss0;
      scalar_t* dz_row = dz == nullptr ? nullptr : dz + r * cols;
      if (contig) {
        backward_segment<A, true, SumDb>(g_row, 1, s_row, 1, dz_row, col_sum, c0, c1, slope);
      } else {
        backward_segment<A, false, SumDb>(g_row, gs1, s_row, ss1, dz_row, col_sum, c0, c1,
                                          slope);
      }
    });
  });
  if constexpr (SumDb) {
    for (int p = 1; p < pieces; ++p) {
      const acc_t* piece = partial.data() + static_cast<int64_t>(p) * cols;
      for (int64_t c = 0; c < cols; ++c) {
        partial[c] += piece[c];
      }
    }
    for (int64_t c = 0; c < cols; ++c) {
      db[c] = static_cast<scalar_t>(partial[c]);
    }
  }
}

// grad_out * act'(saved) with ATen's backward kernels (the saved output, or for gelu the
// pre-activation), contiguous.
at::Tensor activation_backward_with_aten(const at::Tensor& grad_out, const at::Tensor& saved,
                                         int64_t activation, double negative_slope) {
  switch (static_cast<Act>(activation)) {
    case Act::relu: return at::threshold_backward(grad_out, saved, 0).contiguous();
    case Act::leaky_relu:
      return at::leaky_relu_backward(grad_out, saved, negative_slope, true).contiguous();
    case Act::tanh: return at::tanh_backward(grad_out, saved).contiguous();
    case Act::sigmoid: return at::sigmoid_backward(grad_out, saved).contiguous();
    case Act::gelu: return at::gelu_backward(grad_out, saved).contiguous();
    case Act::none: break;
  }
  return grad_out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_bwd(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& saved, int64_t activation, double negative_slope, bool need_dx,
    bool need_dw, bool need_db) {
  check_2d("grad_out", grad_out);
  check_2d("x", x);
  check_2d("weight", weight);
  TORCH_CHECK(0 <= activation && activation < kNumActivations,
              "fastgan_cpu: unknown activation code ", activation);
  const bool act_none = static_cast<Act>(activation) == Act::none;
  const int64_t rows = x.size(0);
  const int64_t cols = weight.size(0);
  check_shape("weight", weight, {cols, x.size(1)});
  check_shape("grad_out", grad_out, {rows, cols});
  check_dtype("weight", weight, x.scalar_type());
  check_dtype("grad_out", grad_out, x.scalar_type());
  if (!act_none) {
    check_shape("saved", saved, {rows, cols});
    check_dtype("saved", saved, x.scalar_type());
  }

  const bool need_dz = need_dx || need_dw;
  // With no activation dz is grad_out itself; the pass then only sums the bias gradient.
  at::Tensor dz = act_none ? grad_out : at::Tensor();
  at::Tensor db = need_db ? at::empty({cols}, x.options()) : empty_result(x);
  if (uses_aten_pass(x.scalar_type(), activation) && ((need_dz && !act_none) || need_db)) {
    // The sum accumulates in float.
    if (!act_none) {
      dz = activation_backward_with_aten(grad_out, saved, activation, negative_slope);
    }
    if (need_db) {
      db = dz.sum(0);
    }
  } else if ((need_dz && !act_none) || need_db) {
    if (!act_none) {
      dz = at::empty({rows, cols}, x.options());
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dense_bwd", [&] {
      dispatch_activation(activation, [&](auto act) {
        constexpr Act A = decltype(act)::value;
        scalar_t* dz_out = act_none ? nullptr : dz.data_ptr<scalar_t>();
        if (need_db) {
          activation_backward<A, true>(grad_out, saved, dz_out, db.data_ptr<scalar_t>(),
                                       negative_slope);
        } else {
          activation_backward<A, false, scalar_t>(grad_out, saved, dz_out, nullptr,
                                                  negative_slope);
        }
      });
    });
  }
  at::Tensor dx = need_dx ? at::mm(dz, weight).contiguous() : empty_result(x);
  at::Tensor dw = need_dw ? at::mm(dz.t(), x).contiguous() : empty_result(weight);
  return {dx, dw, db};
}

// ---------------------------------------------------------------------------------------------
// pointwise_loss_fwd

// A 2-D operand read through its strides (stride 0 for broadcast weights). data is null when the
// optional operand is absent.
template <typename T>
struct Operand {
  const T* data = nullptr;
  int64_t s0 = 0;
  int64_t s1 = 0;

  explicit Operand(const at::Tensor& t) {
    if (t.defined()) {
      data = t.const_data_ptr<T>();
      s0 = t.stride(0);
      s1 = t.stride(1);
    }
  }
  T operator()(int64_t r, int64_t c) const { return data[r * s0 + c * s1]; }
};

// t in dtype. An expanded (stride-0) operand is converted at its distinct elements only and
// expanded again, so a broadcast weight is never materialised at full size.
at::Tensor to_dtype_keep_broadcast(const at::Tensor& t, at::ScalarType dtype) {
  if (t.scalar_type() == dtype) {
    return t;
  }
  at::Tensor compact = t;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) == 0 && t.size(d) > 1) {
      compact = compact.narrow(d, 0, 1);
    }
  }
  return compact.to(dtype).expand(t.sizes());
}

// One pass of the loss over (rows, cols) operands in the accumulation type T. Writes the
// elementwise loss to value (reduction none) or returns the sum of it (value null), and writes
// the gradients that are not null. reduce_scale is 1/numel for mean, else 1.
template <Loss L, typename T>
double loss_pass(const Operand<T>& x, const Operand<T>& target, const Operand<T>& weight,
                 const Operand<T>& pos_weight, int64_t rows, int64_t cols, double reduce_scale,
                 T* value, T* grad_input, T* grad_target) {
  const T scale = static_cast<T>(reduce_scale);
  const T two_scale = static_cast<T>(2.0 * reduce_scale);
  const bool need_gx = grad_input != nullptr;
  const bool need_gt = grad_target != nullptr;
  const int64_t n = rows * cols;
  const int pieces = num_pieces(n);
  std::vector<double> partial(pieces, 0.0);
  parallel_pieces(n, pieces, [&](int p, int64_t begin, int64_t end) {
    double piece_sum = 0;
    for_row_segments(begin, end, cols, [&](int64_t r, int64_t seg_begin, int64_t seg_end) {
     T xs[kLogitChunk], es[kLogitChunk], softplus[kLogitChunk], losses[kLogitChunk];
     for (int64_t c0 = seg_begin; c0 < seg_end; c0 += kLogitChunk) {
      const int64_t chunk = std::min(kLogitChunk, seg_end - c0);
      for (int64_t j = 0; j < chunk; ++j) {
        xs[j] = x(r, c0 + j);
      }
      if constexpr (L == Loss::bce_with_logits) {
        logit_exp_terms(xs, chunk, es, softplus);
      }
      for (int64_t j = 0; j < chunk; ++j) {
        const int64_t c = c0 + j;
        const T xv = xs[j];
        const T tv = target(r, c);
        T loss;
        T gx = 0;
        T gt = 0;
        if constexpr (L == Loss::bce_with_logits) {
          // backends/pytorch.py's bce_terms term for term (torch's own formulas), so ±inf/NaN agree.
          const Logit<T> logit{xv, es[j], softplus[j]};
          const T ls = logit.log_sigmoid();
          if (pos_weight.data == nullptr) {
            loss = (T(1) - tv) * xv - ls;
            if (need_gx) gx = logit.sigmoid() - tv;
            if (need_gt) gt = -xv;
          } else {
            const T pw = pos_weight(r, c);
            loss = (T(1) - tv) * xv - ((pw - T(1)) * tv + T(1)) * ls;
            const T pt = pw * tv;
            if (need_gx) gx = (pt + T(1) - tv) * logit.sigmoid() - pt;
            if (need_gt) gt = logit.log_sigmoid_of_minus_x() - pw * ls;
          }
          T grad_scale = scale;
          if (weight.data != nullptr) {
            const T w = weight(r, c);
            loss *= w;
            grad_scale = w * scale;
          }
          gx *= grad_scale;
          gt *= grad_scale;
        } else {
          const T diff = xv - tv;
          loss = diff * diff;
          gx = two_scale * diff;
          gt = -gx;
        }
        const int64_t i = r * cols + c;
        if (value != nullptr) {
          value[i] = loss;
        } else {
          losses[j] = loss;
        }
        if (need_gx) grad_input[i] = gx;
        if (need_gt) grad_target[i] = gt;
      }
      if (value == nullptr) {
        piece_sum += sum_in_lanes(losses, chunk);
      }
     }
    });
    partial[p] = piece_sum;
  });
  return sum_in_order(partial);
}

// The MSE over contiguous operands: plain unit-stride loops over restrict pointers, which the
// compiler vectorizes (the general pass above reads through strides and cannot).
template <typename T>
double mse_contiguous(const T* __restrict x, const T* __restrict target, int64_t n, T two_scale,
                      T* __restrict value, T* __restrict grad_input, T* __restrict grad_target) {
  const int pieces = num_pieces(n);
  std::vector<double> partial(pieces, 0.0);
  parallel_pieces(n, pieces, [&](int p, int64_t begin, int64_t end) {
    double piece_sum = 0;
    T squares[kLogitChunk];
    for (int64_t c0 = begin; c0 < end; c0 += kLogitChunk) {
      const int64_t chunk = std::min(kLogitChunk, end - c0);
      const T* xs = x + c0;
      const T* ts = target + c0;
      for (int64_t j = 0; j < chunk; ++j) {
        const T diff = xs[j] - ts[j];
        squares[j] = diff * diff;
      }
      if (value != nullptr) {
        std::copy(squares, squares + chunk, value + c0);
      } else {
        piece_sum += sum_in_lanes(squares, chunk);
      }
      if (grad_input != nullptr) {
        T* g = grad_input + c0;
        for (int64_t j = 0; j < chunk; ++j) {
          g[j] = two_scale * (xs[j] - ts[j]);
        }
      }
      if (grad_target != nullptr) {
        T* g = grad_target + c0;
        for (int64_t j = 0; j < chunk; ++j) {
          g[j] = two_scale * (ts[j] - xs[j]);
        }
      }
    }
    partial[p] = piece_sum;
  });
  return sum_in_order(partial);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pointwise_loss_fwd(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& pos_weight, int64_t loss, int64_t reduction,
    bool need_grad_input, bool need_grad_target) {
  check_2d("input", input);
  check_shape("target", target, input.sizes());
  TORCH_CHECK(loss == static_cast<int64_t>(Loss::bce_with_logits) ||
                  loss == static_cast<int64_t>(Loss::mse),
              "fastgan_cpu: unknown loss code ", loss);
  TORCH_CHECK(0 <= reduction && reduction <= static_cast<int64_t>(Reduction::sum),
              "fastgan_cpu: unknown reduction code ", reduction);
  at::ScalarType out_dtype = at::result_type(input, target);
  for (const auto* extra : {&weight, &pos_weight}) {
    if (extra->has_value()) {
      check_shape(extra == &weight ? "weight" : "pos_weight", **extra, input.sizes());
      out_dtype = at::promote_types(out_dtype, (*extra)->scalar_type());
    }
  }
  const at::ScalarType acc = out_dtype == at::kDouble ? at::kDouble : at::kFloat;
  const bool is_bce = static_cast<Loss>(loss) == Loss::bce_with_logits;
  const bool reduce = static_cast<Reduction>(reduction) != Reduction::none;
  const int64_t rows = input.size(0);
  const int64_t cols = input.size(1);
  // The mean of nothing is NaN, as in torch.
  const double mean_scale = input.numel() > 0 ? 1.0 / static_cast<double>(input.numel())
                                              : std::numeric_limits<double>::quiet_NaN();
  const double reduce_scale =
      static_cast<Reduction>(reduction) == Reduction::mean ? mean_scale : 1.0;

  // Operands already in the accumulation type are read in place; others are converted once.
  // The MSE ignores weight and pos_weight, as the PyTorch path does.
  at::Tensor x = to_dtype_keep_broadcast(input, acc);
  at::Tensor t = to_dtype_keep_broadcast(target, acc);
  at::Tensor w =
      is_bce && weight.has_value() ? to_dtype_keep_broadcast(*weight, acc) : at::Tensor();
  at::Tensor pw =
      is_bce && pos_weight.has_value() ? to_dtype_keep_broadcast(*pos_weight, acc) : at::Tensor();
  // All operands contiguous: walk them as one long row, so (batch, 1) logits are long runs
  // rather than a row segment per element.
  const auto contiguous = [](const at::Tensor& o) { return !o.defined() || o.is_contiguous(); };
  const bool flat = contiguous(x) && contiguous(t) && contiguous(w) && contiguous(pw);
  if (flat) {
    for (at::Tensor* o : {&x, &t, &w, &pw}) {
      if (o->defined()) *o = o->view({1, rows * cols});
    }
  }

  // Results are computed in the accumulation type and cast afterwards where their dtype differs.
  const auto acc_options = input.options().dtype(acc);
  at::Tensor value = reduce ? at::Tensor() : at::empty({rows, cols}, acc_options);
  at::Tensor grad_input = need_grad_input ? at::empty({rows, cols}, acc_options) : at::Tensor();
  at::Tensor grad_target =
      need_grad_target ? at::empty({rows, cols}, acc_options) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(acc, "pointwise_loss_fwd", [&] {
    const auto ptr = [](at::Tensor& out) {
      return out.defined() ? out.data_ptr<scalar_t>() : nullptr;
    };
    double total;
    if (!is_bce && flat) {
      total = mse_contiguous<scalar_t>(x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
                                       rows * cols, static_cast<scalar_t>(2.0 * reduce_scale),
                                       ptr(value), ptr(grad_input), ptr(grad_target));
    } else {
      const Operand<scalar_t> xo(x), to(t), wo(w), pwo(pw);
      const auto pass = is_bce ? loss_pass<Loss::bce_with_logits, scalar_t>
                               : loss_pass<Loss::mse, scalar_t>;
      total = pass(xo, to, wo, pwo, x.size(0), x.size(1), reduce_scale, ptr(value),
                   ptr(grad_input), ptr(grad_target));
    }
    if (reduce) {
      value = at::scalar_tensor(total * reduce_scale, acc_options);
    }
  });
  return {value.to(out_dtype),
          need_grad_input ? grad_input.to(input.scalar_type()) : empty_result(input),
          need_grad_target ? grad_target.to(target.scalar_type()) : empty_result(target)};
}

// ---------------------------------------------------------------------------------------------
// gan_loss_fwd

// mean BCE-with-logits of the 1-D logits x against a constant target, and (when grad is not null)
// its gradient (sigmoid(x) - target) / n written contiguously in x's dtype.
template <typename scalar_t>
double mean_bce(const at::Tensor& x, double target, scalar_t* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = x.numel();
  const scalar_t* data = x.const_data_ptr<scalar_t>();
  const int64_t stride = x.stride(0);
  const acc_t t = static_cast<acc_t>(target);
  const acc_t grad_scale = static_cast<acc_t>(1.0 / static_cast<double>(n));
  const int pieces = num_pieces(n);
  std::vector<double> partial(pieces, 0.0);
  parallel_pieces(n, pieces, [&](int p, int64_t begin, int64_t end) {
    double sum = 0;
    acc_t xs[kLogitChunk], es[kLogitChunk], softplus[kLogitChunk], losses[kLogitChunk];
    for (int64_t i0 = begin; i0 < end; i0 += kLogitChunk) {
      const int64_t chunk = std::min(kLogitChunk, end - i0);
      for (int64_t j = 0; j < chunk; ++j) {
        xs[j] = static_cast<acc_t>(data[(i0 + j) * stride]);
      }
      logit_exp_terms(xs, chunk, es, softplus);
      for (int64_t j = 0; j < chunk; ++j) {
        const Logit<acc_t> logit{xs[j], es[j], softplus[j]};
        losses[j] = (acc_t(1) - t) * logit.x - logit.log_sigmoid();
        if (grad != nullptr) {
          grad[i0 + j] = static_cast<scalar_t>((logit.sigmoid() - t) * grad_scale);
        }
      }
      sum += sum_in_lanes(losses, chunk);
    }
    partial[p] = sum;
  });
  return sum_in_order(partial) / static_cast<double>(n);  // 0 / 0 = NaN for empty logits
}

// Adds mean BCE(x, target) to loss; returns the gradient, or an empty tensor if not needed.
at::Tensor add_mean_bce(const at::Tensor& x, double target, bool need_grad, double& loss) {
  TORCH_CHECK(x.dim() == 1, "fastgan_cpu: GAN logits must be 1-D, got ", x.dim(), "-D");
  at::Tensor grad = need_grad ? at::empty({x.numel()}, x.options()) : empty_result(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gan_loss_fwd", [&] {
    loss += mean_bce<scalar_t>(x, target, need_grad ? grad.data_ptr<scalar_t>() : nullptr);
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_fwd(const at::Tensor& a, double target_a,
                                                            const std::optional<at::Tensor>& b,
                                                            double target_b, bool need_grad_a,
                                                            bool need_grad_b) {
  double loss = 0.0;
  at::Tensor grad_a = add_mean_bce(a, target_a, need_grad_a, loss);
  at::Tensor grad_b = empty_result(a);
  at::ScalarType out_dtype = a.scalar_type();
  if (b.has_value()) {
    grad_b = add_mean_bce(*b, target_b, need_grad_b, loss);
    out_dtype = at::promote_types(out_dtype, b->scalar_type());
  }
  return {at::scalar_tensor(loss, a.options().dtype(out_dtype)), grad_a, grad_b};
}

// ---------------------------------------------------------------------------------------------
// Autograd in C++: what fastgan.ops calls in eager mode on CPU tensors. The backward runs here
// too, so a training step pays no Python per op in the backward (a Python autograd.Function
// costs ~17 us a call, more than a batch-64 layer's kernels).

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The backward reuses results saved by the forward, which are not differentiable functions of
// the inputs: refuse a second derivative rather than return a wrong one.
void forbid_double_backward(const char* op) {
  TORCH_CHECK(!at::GradMode::is_enabled(), "fastgan.ops.", op,
              ": double backward (create_graph=True) is not supported");
}

// (..., features) -> (rows, features), a view when the strides allow it.
at::Tensor as_2d(const at::Tensor& t) {
  const int64_t cols = t.size(-1);
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) {
    rows *= t.size(d);
  }
  return t.dim() == 2 ? t : t.reshape({rows, cols});
}

at::Tensor grad_or_undefined(bool needed, const at::Tensor& grad) {
  return needed ? grad : at::Tensor();
}

struct FusedDense : public torch::autograd::Function<FusedDense> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t activation,
                            double negative_slope) {
    const Act act = static_cast<Act>(activation);
    auto [out, preact] = dense_fwd(as_2d(x), weight, bias, activation, negative_slope,
                                   act == Act::gelu);
    std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
    out_shape.back() = weight.size(0);
    out = out.view(out_shape);
    // act' comes from the output (relu, leaky_relu, tanh, sigmoid), the pre-activation
    // (gelu) or nothing (none).
    const at::Tensor saved = act == Act::gelu ? preact : act == Act::none ? at::Tensor() : out;
    ctx->save_for_backward({x, weight, saved});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["negative_slope"] = negative_slope;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    forbid_double_backward("fused_dense");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const bool need_dx = ctx->needs_input_grad(0);
    const bool need_dw = ctx->needs_input_grad(1);
    // needs_input_grad counts tensor inputs only: bias is the third when it is there.
    const bool need_db = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    const at::Tensor grad_2d = as_2d(grads[0]);
    auto [dx, dw, db] = dense_bwd(grad_2d, as_2d(x), weight,
                                  saved[2].defined() ? as_2d(saved[2]) : grad_2d,
                                  ctx->saved_data["activation"].toInt(),
                                  ctx->saved_data["negative_slope"].toDouble(), need_dx, need_dw,
                                  need_db);
    return {grad_or_undefined(need_dx, need_dx ? dx.view(x.sizes()) : dx),
            grad_or_undefined(need_dw, dw), grad_or_undefined(need_db, db), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor fused_dense(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, int64_t activation,
                       double negative_slope) {
  if (static_cast<Act>(activation) == Act::none) {
    // Nothing to fuse: ATen's linear is the same GEMM without an autograd node of ours.
    return at::linear(x, weight, bias);
  }
  return FusedDense::apply(x, weight, bias, activation, negative_slope);
}

// A loss whose gradients were computed by its forward pass: the backward scales them. The usual
// loss.backward() passes a gradient of exactly 1, and then the saved gradient is the answer as it
// is, with no pass over it (reading a CPU scalar costs no device sync).
at::Tensor scale_saved_grad(const at::Tensor& grad_loss, const at::Tensor& saved_grad) {
  if (grad_loss.numel() == 1 && grad_loss.item<double>() == 1.0) {
    return saved_grad;
  }
  return (grad_loss * saved_grad).to(saved_grad.scalar_type());
}

bool grad_needed(const at::Tensor& t) { return t.requires_grad() && at::GradMode::is_enabled(); }

struct GanLoss : public torch::autograd::Function<GanLoss> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, double target_a,
                            const std::optional<at::Tensor>& b, double target_b, bool need_a,
                            bool need_b) {
    const std::optional<at::Tensor> b_1d =
        b.has_value() ? std::optional<at::Tensor>(b->reshape({-1})) : std::nullopt;
    auto [loss, grad_a, grad_b] =
        gan_loss_fwd(a.reshape({-1}), target_a, b_1d, target_b, need_a, need_b && b.has_value());
    ctx->save_for_backward({need_a ? grad_a.view(a.sizes()) : at::Tensor(),
                            need_b ? grad_b.view(b->sizes()) : at::Tensor()});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    forbid_double_backward("gan_loss");
    const auto saved = ctx->get_saved_variables();
    const auto scaled = [&](const at::Tensor& g) {
      return g.defined() ? scale_saved_grad(grads[0], g) : at::Tensor();
    };
    return {scaled(saved[0]), at::Tensor(), scaled(saved[1]), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor gan_loss(const at::Tensor& a, double target_a, const std::optional<at::Tensor>& b,
                    double target_b) {
  const bool need_b = b.has_value() && grad_needed(*b);
  return GanLoss::apply(a, target_a, b, target_b, grad_needed(a), need_b);
}

struct PointwiseLoss : public torch::autograd::Function<PointwiseLoss> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& target,
                            const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& pos_weight, int64_t loss,
                            int64_t reduction, bool need_input, bool need_target) {
    const auto shape = input.sizes();
    const int64_t cols = input.dim() > 0 ? input.size(-1) : 1;
    int64_t rows = 1;
    for (int64_t d = 0; d + 1 < input.dim(); ++d) {
      rows *= input.size(d);
    }
    // (rows, cols) views where strides allow; broadcast operands keep their zero strides.
    const auto as_rows = [&](const at::Tensor& t) { return t.expand(shape).reshape({rows, cols}); };
    const auto as_rows_opt = [&](const std::optional<at::Tensor>& t) {
      return t.has_value() ? std::optional<at::Tensor>(as_rows(*t)) : std::nullopt;
    };
    auto [value, grad_input, grad_target] =
        pointwise_loss_fwd(as_rows(input), as_rows(target), as_rows_opt(weight),
                           as_rows_opt(pos_weight), loss, reduction, need_input, need_target);
    ctx->save_for_backward({need_input ? grad_input.view(shape) : at::Tensor(),
                            need_target ? grad_target.view(shape) : at::Tensor()});
    return static_cast<Reduction>(reduction) == Reduction::none ? value.view(shape) : value;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    forbid_double_backward("pointwise_loss");
    const auto saved = ctx->get_saved_variables();
    const auto scaled = [&](const at::Tensor& g) {
      return g.defined() ? scale_saved_grad(grads[0], g) : at::Tensor();
    };
    return {scaled(saved[0]), scaled(saved[1]), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor pointwise_loss(const at::Tensor& input, const at::Tensor& target,
                          const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& pos_weight, int64_t loss,
                          int64_t reduction) {
  return PointwiseLoss::apply(input, target, weight, pos_weight, loss, reduction,
                              grad_needed(input), grad_needed(target));
}

}  // namespace

TORCH_LIBRARY(fastgan_cpu, m) {
  m.def(
      "dense_fwd(Tensor x, Tensor weight, Tensor? bias, int activation, float negative_slope, "
      "bool save_preact) -> (Tensor, Tensor)");
  m.def(
      "dense_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor saved, int activation, "
      "float negative_slope, bool need_dx, bool need_dw, bool need_db) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "pointwise_loss_fwd(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "int loss, int reduction, bool need_grad_input, bool need_grad_target) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "gan_loss_fwd(Tensor a, float target_a, Tensor? b, float target_b, bool need_grad_a, "
      "bool need_grad_b) -> (Tensor, Tensor, Tensor)");
  // Differentiable versions for eager mode: autograd runs in C++.
  m.def(
      "fused_dense(Tensor x, Tensor weight, Tensor? bias, int activation, float negative_slope) "
      "-> Tensor");
  m.def(
      "pointwise_loss(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, int loss, "
      "int reduction) -> Tensor");
  m.def("gan_loss(Tensor a, float target_a, Tensor? b, float target_b) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) {
  m.impl("dense_fwd", &dense_fwd);
  m.impl("dense_bwd", &dense_bwd);
  m.impl("pointwise_loss_fwd", &pointwise_loss_fwd);
  m.impl("gan_loss_fwd", &gan_loss_fwd);
}

// CompositeImplicitAutograd: autograd sees the C++ autograd.Function above, on any key.
TORCH_LIBRARY_IMPL(fastgan_cpu, CompositeImplicitAutograd, m) {
  m.impl("fused_dense", &fused_dense);
  m.impl("pointwise_loss", &pointwise_loss);
  m.impl("gan_loss", &gan_loss);
}
