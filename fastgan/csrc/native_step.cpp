// The training iteration as one native call (fastgan/native.py drives it): the autoencoder step,
// and the GAN iteration (D's step, G's step with D frozen, Adam for each, the EMA of G), for
// fastgan's models: MLPs of fused linear layers whose first layer may add a label embedding's
// term (models.py's _Conditioned, PacGAN packing included).
//
// No autograd and no Python inside: each layer's forward is one GEMM into a buffer and one
// vectorized pass for the bias (and a conditioned layer's label term) and the activation; its
// backward is one pass for act' (with the bias gradient's column sums) and the GEMMs for the
// weight and input gradients. Each GEMM runs in ATen's at::mm or ATen's oneDNN matmul, whichever
// was faster for its shape when first timed (Gemms). Buffers are made on the first step at a
// batch size and reused after. Adam and the EMA are one pass over all parameters. fp32 only.
// The arithmetic follows the eager path's: torch's fused CPU Adam and lerp formulas.
//
// Under torch.profiler each piece shows up as a fastgan_native::* scope (dense_fwd, dense_bwd,
// mse_loss, gan_loss, adam), the GEMMs inside it (aten::mm, fastgan_native::onednn_gemm):
// fastgan/perf/trace.py reads them.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <type_traits>
#include <vector>

#include "vec_math.h"

namespace {

// Elementwise passes over fewer elements stay on the calling thread: waking the pool costs more.
constexpr int64_t kGrain = 32768;
constexpr int64_t kAdamChunk = 16384;  // elements per task of the Adam + EMA pass
constexpr int64_t kColumnBlock = 16;   // columns a thread of the bias-gradient pass owns, at least

enum Act : int64_t { kNone = 0, kRelu = 1, kLeakyRelu = 2, kTanh = 3, kSigmoid = 4 };

// Calls f(std::integral_constant<int64_t, A>{}) for activation `act`: each pass is compiled per
// activation, so no branch on it sits inside the vectorized loops.
template <typename F>
void dispatch_activation(int64_t act, F&& f) {
  switch (act) {
    case kRelu: return f(std::integral_constant<int64_t, kRelu>{});
    case kLeakyRelu: return f(std::integral_constant<int64_t, kLeakyRelu>{});
    case kTanh: return f(std::integral_constant<int64_t, kTanh>{});
    case kSigmoid: return f(std::integral_constant<int64_t, kSigmoid>{});
    default: return f(std::integral_constant<int64_t, kNone>{});
  }
}

template <int64_t A>
inline float activate(float z, float slope) {
  if constexpr (A == kRelu) {
    return z < 0.f ? 0.f : z;
  } else if constexpr (A == kLeakyRelu) {
    return z > 0.f ? z : z * slope;
  } else if constexpr (A == kTanh) {
    return fastgan_math::tanh(z);
  } else if constexpr (A == kSigmoid) {
    return fastgan_math::sigmoid(z);
  } else {
    return z;
  }
}

// d act / d z from the layer's output (leaky_relu's slope is >= 0, so the output's sign is z's).
template <int64_t A>
inline float activation_grad(float out, float slope) {
  if constexpr (A == kRelu) {
    return out > 0.f ? 1.f : 0.f;
  } else if constexpr (A == kLeakyRelu) {
    return out > 0.f ? 1.f : slope;
  } else if constexpr (A == kTanh) {
    return 1.f - out * out;
  } else if constexpr (A == kSigmoid) {
    return out * (1.f - out);
  } else {
    return 1.f;
  }
}

// The rows' labels for a conditioned first layer: packed row r, slot j has class
// labels[r * pack + j]; its label term is row labels[r * pack + j] of table j.
struct LabelRows {
  const int64_t* labels = nullptr;  // none: the layer has no label term
  int64_t pack = 1, classes = 0;
};

// z = act(z + bias [+ the label term]) row by row, in place. The label term of a conditioned
// first layer, e W_e^T, is read from per-class tables (table[j][label of slot j]) instead of
// computed by a GEMM whose inner dimension is the embedding's width (10), which runs at a
// tenth of the matmul peak. The bias is added here, not by the GEMM: ATen's addmm would copy
// it into the output first, a pass of its own; the sum rounds the same either way.
void add_bias_activate(at::Tensor& z, const at::Tensor& bias, int64_t act, float negative_slope,
                       const LabelRows& label_rows = {}, const at::Tensor& table = {}) {
  const int64_t rows = z.size(0), cols = z.size(1);
  float* zp = z.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const float* tp = label_rows.labels ? table.data_ptr<float>() : nullptr;
  dispatch_activation(act, [&](auto tag) {
    constexpr int64_t A = decltype(tag)::value;
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* zr = zp + r * cols;
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) {
          zr[c] += bp[c];
        }
        for (int64_t j = 0; tp && j < label_rows.pack; ++j) {
          const int64_t label = label_rows.labels[r * label_rows.pack + j];
          const float* t = tp + (j * label_rows.classes + label) * cols;
#pragma omp simd
          for (int64_t c = 0; c < cols; ++c) {
            zr[c] += t[c];
          }
        }
        if constexpr (A != kNone) {
#pragma omp simd
          for (int64_t c = 0; c < cols; ++c) {
            zr[c] = activate<A>(zr[c], negative_slope);
          }
        }
      }
    });
  });
}

// grad = grad * act'(out) in place, and, when bias_grad is defined, its column sums into it;
// with labels, also each class's column sums into class_sums (pack, classes, cols). Threads
// split the columns, so each sums its own columns over all rows in a fixed order: the result
// does not depend on the thread count.
void activation_backward(at::Tensor& grad, const at::Tensor& out, int64_t act,
                         float negative_slope, at::Tensor* bias_grad,
                         const LabelRows& label_rows = {}, at::Tensor* class_sums = nullptr) {
  if (act == kNone && bias_grad == nullptr && class_sums == nullptr) {
    return;
  }
  const int64_t rows = grad.size(0), cols = grad.size(1);
  float* gp = grad.data_ptr<float>();
  const float* op = out.data_ptr<float>();
  float* dbp = bias_grad ? bias_grad->data_ptr<float>() : nullptr;
  float* csp = nullptr;
  if (class_sums) {
    class_sums->zero_();
    csp = class_sums->data_ptr<float>();
  }
  const int64_t column_grain =
      std::max<int64_t>(kColumnBlock, kGrain / std::max<int64_t>(rows, 1));
  dispatch_activation(act, [&](auto tag) {
    constexpr int64_t A = decltype(tag)::value;
    at::parallel_for(0, cols, column_grain, [&](int64_t c0, int64_t c1) {
      constexpr int64_t kRowsPerPartial = 64;  // float partial sums over short runs of rows
      const int64_t width = c1 - c0;
      std::vector<float> total(width, 0.f), partial(width, 0.f);
      float* tp = total.data();
      float* pp = partial.data();
      for (int64_t r = 0; r < rows; ++r) {
        float* g = gp + r * cols + c0;
        const float* o = op + r * cols + c0;
        if constexpr (A != kNone) {
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) {
            g[c] *= activation_grad<A>(o[c], negative_slope);
          }
        }
        if (csp) {
          for (int64_t j = 0; j < label_rows.pack; ++j) {
            const int64_t label = label_rows.labels[r * label_rows.pack + j];
            float* s = csp + (j * label_rows.classes + label) * cols + c0;
#pragma omp simd
            for (int64_t c = 0; c < width; ++c) {
              s[c] += g[c];
            }
          }
        }
        if (dbp) {
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) {
            pp[c] += g[c];
          }
          if ((r + 1) % kRowsPerPartial == 0 || r + 1 == rows) {
#pragma omp simd
            for (int64_t c = 0; c < width; ++c) {
              tp[c] += pp[c];
              pp[c] = 0.f;
            }
          }
        }
      }
      if (dbp) {
        std::copy(total.begin(), total.end(), dbp + c0);
      }
    });
  });
}

// Sum of a fixed split of [0, n) into pieces, each piece's sum from body(begin, end) in double,
// added in piece order: deterministic for any thread count.
template <typename Body>
double sum_pieces(int64_t n, int64_t piece_size, const Body& body) {
  const int64_t pieces = std::max<int64_t>(1, (n + piece_size - 1) / piece_size);
  std::vector<double> partials(pieces, 0.0);
  at::parallel_for(0, pieces, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      partials[p] = body(p * piece_size, std::min(n, (p + 1) * piece_size));
    }
  });
  double total = 0;
  for (const double part : partials) {
    total += part;
  }
  return total;
}

// mean((input - target)^2), its gradient 2 (input - target) / numel into grad.
double mse(const at::Tensor& input, const at::Tensor& target, at::Tensor& grad) {
  RECORD_FUNCTION("fastgan_native::mse_loss", std::vector<c10::IValue>());
  const int64_t n = input.numel();
  const float* xp = input.data_ptr<float>();
  const float* tp = target.data_ptr<float>();
  float* gp = grad.data_ptr<float>();
  const float scale = 2.f / static_cast<float>(n);
  const double sum = sum_pieces(n, kGrain, [&](int64_t begin, int64_t end) {
    constexpr int kLanes = 16;  // running float sums, added in double at the end
    float lanes[kLanes] = {};
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) {
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) {
        const float d = xp[i + k] - tp[i + k];
        lanes[k] += d * d;
        gp[i + k] = scale * d;
      }
    }
    double piece = 0;
    for (; i < end; ++i) {
      const float d = xp[i] - tp[i];
      piece += d * d;
      gp[i] = scale * d;
    }
    for (const float lane : lanes) {
      piece += lane;
    }
    return piece;
  });
  return sum / static_cast<double>(n);
}

// mean BCE-with-logits(x, target) over n logits, with its gradient (sigmoid(x) - target) / n:
// fastgan's gan_loss op term for term (float math, the loss summed in double), so the logits'
// gradients are the torch engine's bits.
double mean_bce(const float* x, int64_t n, double target, float* grad) {
  RECORD_FUNCTION("fastgan_native::gan_loss", std::vector<c10::IValue>());
  const float t = static_cast<float>(target);
  const float grad_scale = static_cast<float>(1.0 / static_cast<double>(n));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = fastgan_math::exp_nonpositive(-std::abs(x[i]));
    const float log_sigmoid = std::min(x[i], 0.f) - fastgan_math::log1p_unit(e);
    sum += (1.f - t) * x[i] - log_sigmoid;
    grad[i] = ((x[i] >= 0.f ? 1.f : e) / (1.f + e) - t) * grad_scale;
  }
  return sum / static_cast<double>(n);
}

// Which library runs a GEMM: ATen's at::mm_out (MKL in torch's x86 builds) or ATen's oneDNN
// matmul (at::native::mkldnn_matmul, what ATen itself runs bf16 GEMMs with). Neither wins on
// every CPU and shape, so by default each shape is timed with both at its first use and the
// faster kept (GEMM_LIBRARIES in fastgan/backends/codes.py; fastgan/native.py caches the
// choices per CPU model, torch version and thread count).
enum GemmLibrary : int64_t { kGemmAuto = 0, kGemmAten = 1, kGemmOneDnn = 2 };

// Under kGemmAuto, GEMMs with fewer multiply-adds go to ATen: timing them costs more than
// either library saves.
constexpr int64_t kTimedGemmMacs = int64_t{1} << 20;
// oneDNN is kept only when it beats ATen by this factor: closer times are noise.
constexpr double kGemmMargin = 0.97;

// mkldnn_matmul is exported by libtorch_cpu but in no installed header: found at run time, so a
// torch without it (or whose CPU check refuses fp32, as on AVX2-only x86) runs ATen's GEMMs.
using MkldnnMatmul = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float,
                              float);
MkldnnMatmul find_mkldnn_matmul() {
  static const MkldnnMatmul found = [] {
    auto fn = reinterpret_cast<MkldnnMatmul>(
        dlsym(RTLD_DEFAULT, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff"));
    if (fn == nullptr) {
      return fn;
    }
    try {
      at::Tensor a = at::ones({17, 16}), b = at::ones({16, 18}), out = at::empty({17, 18});
      fn(a, b, out, 0.f, 1.f);
      return out.equal(at::full({17, 18}, 16.f)) ? fn : nullptr;
    } catch (const c10::Error&) {
      return static_cast<MkldnnMatmul>(nullptr);
    }
  }();
  return found;
}

class Gemms {
 public:
  int64_t policy = kGemmAuto;
  // (threads, m, k, n, a transposed, b transposed) -> kGemmAten or kGemmOneDnn
  std::map<std::array<int64_t, 6>, int64_t> choices;

  // out = a b, out contiguous, a and b contiguous or transposed views.
  void mm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
    if (library(out, a, b) == kGemmOneDnn) {
      RECORD_FUNCTION("fastgan_native::onednn_gemm", std::vector<c10::IValue>({a, b}));
      find_mkldnn_matmul()(a, b, out, 0.f, 1.f);
    } else {
      at::mm_out(out, a, b);
    }
  }

 private:
  int64_t library(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
    const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
    if (policy == kGemmAten || find_mkldnn_matmul() == nullptr) {
      return kGemmAten;
    }
    if (policy == kGemmOneDnn) {
      return kGemmOneDnn;
    }
    if (m * k * n < kTimedGemmMacs) {
      return kGemmAten;
    }
    const std::array<int64_t, 6> key{at::get_num_threads(), m, k, n, !a.is_contiguous(),
                                     !b.is_contiguous()};
    auto found = choices.find(key);
    if (found == choices.end()) {
      const double aten = best_seconds([&] { at::mm_out(out, a, b); });
      const double onednn = best_seconds([&] { find_mkldnn_matmul()(a, b, out, 0.f, 1.f); });
      found = choices.emplace(key, onednn < kGemmMargin * aten ? kGemmOneDnn : kGemmAten).first;
    }
    return found->second;
  }

  // The fastest of 3 timed runs, after one to warm up.
  template <typename F>
  static double best_seconds(const F& run) {
    run();
    double best = INFINITY;
    for (int i = 0; i < 3; ++i) {
      const auto start = std::chrono::steady_clock::now();
      run();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                          start).count());
    }
    return best;
  }
};

struct Layer {
  at::Tensor weight, bias, weight_grad, bias_grad;  // grads undefined for a frozen MLP
  int64_t activation;
  float negative_slope;
};

// One MLP's tensors at one number of input rows.
struct Buffers {
  at::Tensor input;                // what the first layer read (the caller's tensor)
  std::vector<at::Tensor> outs;    // each layer's output
  std::vector<at::Tensor> grads;   // dL/d(layer output), turned into dL/dz in place
  at::Tensor input_grad;           // dL/d(input), when asked for
};

struct Mlp {
  std::vector<Layer> layers;
  // The first layer's label term (undefined when unconditional): embed (classes, width) and
  // label_weight (first width, pack * width), with their gradients.
  at::Tensor embed, label_weight, embed_grad, label_weight_grad;
  // Per class and pack slot j, the label term's row: table[j] = embed W_e,j^T, with W_e,j the
  // columns of label_weight for slot j. table_grad holds dL/d(table), each class's column sums
  // of dL/dz. Both (pack, classes, first width); table_rows is table's GEMM output.
  at::Tensor table, table_rows, table_grad;
  int64_t pack = 1;
  bool trainable = false;
  Gemms* gemms = nullptr;              // the engine's, shared by its MLPs
  std::map<int64_t, Buffers> buffers;  // by the input's row count

  bool conditioned() const { return embed.defined(); }

  // The buffers for `rows` input rows; `final_out`, when given, is where the last layer writes
  // (a view into the consumer's buffer, which spares a copy).
  Buffers& at_rows(int64_t rows, const at::Tensor& like, const at::Tensor& final_out = {}) {
    auto found = buffers.find(rows);
    if (found != buffers.end()) {
      return found->second;
    }
    Buffers& b = buffers[rows];
    const int64_t packed = rows / pack;
    for (size_t i = 0; i < layers.size(); ++i) {
      const int64_t width = layers[i].weight.size(0);
      const bool last = i + 1 == layers.size();
      b.outs.push_back(last && final_out.defined() ? final_out.view({packed, width})
                                                   : at::empty({packed, width}, like.options()));
      b.grads.push_back(at::empty({packed, width}, like.options()));
    }
    return b;
  }

  // The labels of `rows` input rows, checked against the embedding's classes.
  LabelRows label_rows(const std::optional<at::Tensor>& labels, int64_t rows) const {
    TORCH_CHECK(labels.has_value(), "fastgan_native: a conditional model needs labels");
    TORCH_CHECK(labels->scalar_type() == at::kLong && labels->is_contiguous() &&
                    labels->numel() == rows,
                "fastgan_native: labels: expected ", rows, " contiguous int64 class indices");
    const int64_t classes = embed.size(0);
    const int64_t* lp = labels->data_ptr<int64_t>();
    const auto [low, high] = std::minmax_element(lp, lp + rows);
    TORCH_CHECK(rows == 0 || (*low >= 0 && *high < classes),
                "fastgan_native: labels: expected class indices in [0, ", classes, ")");
    return {lp, pack, classes};
  }

  // table[j][c] = embed[c] W_e,j^T: one GEMM into table_rows (classes, first width * pack),
  // whose column o * pack + j is table[j]'s column o.
  void fill_table() {
    const int64_t classes = embed.size(0), width = embed.size(1);
    const int64_t outs = label_weight.size(0);
    if (!table.defined()) {
      table_rows = at::empty({classes, outs * pack}, embed.options());
      table = pack == 1 ? table_rows.view({1, classes, outs})
                        : at::empty({pack, classes, outs}, embed.options());
    }
    at::mm_out(table_rows, embed, label_weight.view({outs * pack, width}).t());
    if (pack > 1) {
      table.copy_(table_rows.view({classes, outs, pack}).permute({2, 0, 1}));
    }
  }

  // The MLP on x (rows, features), packed `pack` rows to one; returns the last layer's output.
  const at::Tensor& forward(const at::Tensor& x, const std::optional<at::Tensor>& labels,
                            const at::Tensor& final_out = {}) {
    const int64_t rows = x.size(0);
    Buffers& b = at_rows(rows, x, final_out);
    b.input = x.view({rows / pack, -1});
    at::Tensor h = b.input;
    for (size_t i = 0; i < layers.size(); ++i) {
      RECORD_FUNCTION("fastgan_native::dense_fwd", std::vector<c10::IValue>());
      const Layer& layer = layers[i];
      at::Tensor& out = b.outs[i];
      gemms->mm(out, h, layer.weight.t());
      if (i == 0 && conditioned()) {
        const LabelRows label_rows_of_x = label_rows(labels, rows);
        fill_table();
        add_bias_activate(out, layer.bias, layer.activation, layer.negative_slope,
                          label_rows_of_x, table);
      } else {
        add_bias_activate(out, layer.bias, layer.activation, layer.negative_slope);
      }
      h = out;
    }
    return b.outs.back();
  }

  // dL/d(last output) is in buffers(rows).grads.back(): backpropagates it, writing the
  // parameters' gradients when param_grads, and dL/d(input) into input_grad when defined.
  void backward(int64_t rows, bool param_grads, const std::optional<at::Tensor>& labels,
                const at::Tensor& input_grad = {}) {
    Buffers& b = buffers.at(rows);
    TORCH_CHECK(!param_grads || trainable, "fastgan_native: gradients of a frozen MLP");
    for (int64_t i = static_cast<int64_t>(layers.size()) - 1; i >= 0; --i) {
      RECORD_FUNCTION("fastgan_native::dense_bwd", std::vector<c10::IValue>());
      Layer& layer = layers[i];
      at::Tensor& dz = b.grads[i];
      const bool label_grads = param_grads && i == 0 && conditioned();
      if (label_grads) {
        if (!table_grad.defined()) {
          table_grad = at::empty_like(table);
        }
        activation_backward(dz, b.outs[i], layer.activation, layer.negative_slope,
                            &layer.bias_grad, label_rows(labels, rows), &table_grad);
      } else {
        activation_backward(dz, b.outs[i], layer.activation, layer.negative_slope,
                            param_grads ? &layer.bias_grad : nullptr);
      }
      const at::Tensor& h = i == 0 ? b.input : b.outs[i - 1];
      if (param_grads) {
        gemms->mm(layer.weight_grad, dz.t(), h);
      }
      if (label_grads) {
        label_term_backward();
      }
      if (i > 0) {
        gemms->mm(b.grads[i - 1], dz, layer.weight);
      } else if (input_grad.defined()) {
        at::Tensor packed = input_grad.view({rows / pack, -1});
        gemms->mm(packed, dz, layer.weight);
      }
    }
  }

  // From dL/d(table): dL/dW_e,j = table_grad[j]^T embed, dL/d(embed) = sum_j table_grad[j] W_e,j.
  void label_term_backward() {
    const int64_t width = embed.size(1);
    for (int64_t j = 0; j < pack; ++j) {
      at::Tensor slot_weight = label_weight.narrow(1, j * width, width);
      at::Tensor slot_weight_grad = label_weight_grad.narrow(1, j * width, width);
      at::mm_out(slot_weight_grad, table_grad[j].t(), embed);
      if (j == 0) {
        at::mm_out(embed_grad, table_grad[j], slot_weight);
      } else {
        at::addmm_out(embed_grad, embed_grad, table_grad[j], slot_weight);
      }
    }
  }
};

// One optimizer's parameters and Adam state (torch.optim.Adam's tensors, updated in place), and
// optionally the EMA copies of its parameters.
struct Adam {
  std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps, ema;
  double lr, beta1, beta2, eps;
  at::Tensor ema_steps;  // GAN steps taken (0-dim float32)
  double ema_decay = 0;
  std::vector<std::array<int64_t, 3>> chunks;  // (tensor, begin, end): the pass's tasks
};

// ATen's lerp with a scalar weight w: self + w (end - self) for |w| < 0.5, else
// end - (end - self)(1 - w). The branch is on w alone, so it is taken once, outside the loops.
struct Lerp {
  bool small;
  float coeff;
  explicit Lerp(float w) : small(std::abs(w) < 0.5f), coeff(small ? w : w - 1.f) {}
  float operator()(float self, float end) const { return (small ? self : end) + coeff * (end - self); }
};

// torch's fused CPU Adam (no weight decay, amsgrad or maximize) on one range of one tensor, then
// ema = lerp(ema, param, ema_weight) when WithEma.
template <bool WithEma>
void adam_range(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, float* ema,
                int64_t n, double step_size, double bias_correction2_sqrt, double beta1,
                double beta2, double eps, float ema_weight) {
  const Lerp avg_lerp(static_cast<float>(1 - beta1)), ema_lerp(ema_weight);
  const float beta2_f = static_cast<float>(beta2), sq_weight = static_cast<float>(1 - beta2),
              bc2 = static_cast<float>(bias_correction2_sqrt), eps_f = static_cast<float>(eps),
              neg_step = static_cast<float>(-step_size);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i];
    const float avg = avg_lerp(exp_avg[i], g);
    const float sq = exp_avg_sq[i] * beta2_f + sq_weight * g * g;
    exp_avg[i] = avg;
    exp_avg_sq[i] = sq;
    const float denom = std::sqrt(sq) / bc2 + eps_f;
    const float p = param[i] + neg_step * avg / denom;
    param[i] = p;
    if constexpr (WithEma) {
      ema[i] = ema_lerp(ema[i], p);
    }
  }
}

void adam_step(Adam& a) {
  RECORD_FUNCTION("fastgan_native::adam", std::vector<c10::IValue>());
  std::vector<double> step_size(a.params.size()), bc2_sqrt(a.params.size());
  for (size_t k = 0; k < a.params.size(); ++k) {
    // the step counts are 0-dim float32 CPU tensors (checked in add_adam): no op dispatch
    float* count = a.steps[k].data_ptr<float>();
    *count += 1;
    const double step = *count;
    step_size[k] = a.lr / (1 - std::pow(a.beta1, step));
    bc2_sqrt[k] = std::sqrt(1 - std::pow(a.beta2, step));
  }
  float ema_weight = 0;
  if (!a.ema.empty()) {  // decay = min(ema_decay, (1 + t) / (10 + t)), in float32 as on the device
    float* steps = a.ema_steps.data_ptr<float>();
    const float t = *steps;
    const float decay = std::min((1.f + t) / (10.f + t), static_cast<float>(a.ema_decay));
    ema_weight = 1.f - decay;
    *steps += 1;
  }
  at::parallel_for(0, static_cast<int64_t>(a.chunks.size()), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const auto [k, begin, end] = a.chunks[c];
      float* param = a.params[k].data_ptr<float>() + begin;
      const float* grad = a.grads[k].data_ptr<float>() + begin;
      float* exp_avg = a.exp_avgs[k].data_ptr<float>() + begin;
      float* exp_avg_sq = a.exp_avg_sqs[k].data_ptr<float>() + begin;
      if (a.ema.empty()) {
        adam_range<false>(param, grad, exp_avg, exp_avg_sq, nullptr, end - begin, step_size[k],
                          bc2_sqrt[k], a.beta1, a.beta2, a.eps, ema_weight);
      } else {
        adam_range<true>(param, grad, exp_avg, exp_avg_sq, a.ema[k].data_ptr<float>() + begin,
                         end - begin, step_size[k], bc2_sqrt[k], a.beta1, a.beta2, a.eps,
                         ema_weight);
      }
    }
  });
}

void check_fp32_contiguous(const char* what, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "fastgan_native: ", what, ": expected contiguous float32 CPU tensors");
}

}  // namespace

// One phase's engine: its MLPs, optimizers and buffers. Python (fastgan/native.py) adds them
// once, then calls ae_step or gan_step every iteration.
class NativeEngine : public torch::CustomClassHolder {
 public:
  int64_t add_mlp(std::vector<at::Tensor> weights, std::vector<at::Tensor> biases,
                  std::vector<at::Tensor> weight_grads, std::vector<at::Tensor> bias_grads,
                  std::vector<int64_t> activations, std::vector<double> negative_slopes,
                  std::vector<at::Tensor> label_term, int64_t pack) {
    Mlp mlp;
    mlp.trainable = !weight_grads.empty();
    for (size_t i = 0; i < weights.size(); ++i) {
      check_fp32_contiguous("weights", weights[i]);
      check_fp32_contiguous("biases", biases[i]);
      TORCH_CHECK(activations[i] >= kNone && activations[i] <= kSigmoid,
                  "fastgan_native: unsupported activation code ", activations[i]);
      mlp.layers.push_back({weights[i], biases[i],
                            mlp.trainable ? weight_grads[i] : at::Tensor(),
                            mlp.trainable ? bias_grads[i] : at::Tensor(), activations[i],
                            static_cast<float>(negative_slopes[i])});
    }
    if (!label_term.empty()) {  // embed, label_weight[, embed_grad, label_weight_grad]
      mlp.embed = label_term[0];
      mlp.label_weight = label_term[1];
      if (mlp.trainable) {
        mlp.embed_grad = label_term[2];
        mlp.label_weight_grad = label_term[3];
      }
    }
    mlp.pack = pack;
    mlp.gemms = &gemms_;
    mlps_.push_back(std::move(mlp));
    return static_cast<int64_t>(mlps_.size()) - 1;
  }

  int64_t add_adam(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                   std::vector<at::Tensor> exp_avgs, std::vector<at::Tensor> exp_avg_sqs,
                   std::vector<at::Tensor> steps, double lr, double beta1, double beta2,
                   double eps) {
    Adam a{params, grads, exp_avgs, exp_avg_sqs, steps, {}, lr, beta1, beta2, eps};
    for (size_t k = 0; k < params.size(); ++k) {
      for (const auto& t : {params[k], grads[k], exp_avgs[k], exp_avg_sqs[k], steps[k]}) {
        check_fp32_contiguous("Adam tensors", t);
      }
      const int64_t n = params[k].numel();
      for (int64_t begin = 0; begin < n; begin += kAdamChunk) {
        a.chunks.push_back({static_cast<int64_t>(k), begin, std::min(n, begin + kAdamChunk)});
      }
    }
    adams_.push_back(std::move(a));
    return static_cast<int64_t>(adams_.size()) - 1;
  }

  // The EMA of optimizer `adam`'s parameters (ema[k] follows its params[k]), updated in its pass.
  void set_ema(int64_t adam, std::vector<at::Tensor> ema, at::Tensor ema_steps, double decay) {
    Adam& a = adams_.at(adam);
    TORCH_CHECK(ema.size() == a.params.size(), "fastgan_native: one EMA tensor per parameter");
    for (const auto& t : ema) {
      check_fp32_contiguous("EMA tensors", t);
    }
    check_fp32_contiguous("EMA step count", ema_steps);
    a.ema = std::move(ema);
    a.ema_steps = ema_steps;
    a.ema_decay = decay;
  }

  // latent-cgan: G's outputs are standardized latents, decoded as decoder(u * std + mean).
  void set_latent(at::Tensor mean, at::Tensor std) {
    latent_mean_ = mean;
    latent_std_ = std;
  }

  // How GEMMs pick their library (a GemmLibrary), and the choices timed so far: flat, 7 numbers
  // per shape (threads, m, k, n, a transposed, b transposed, library), as gemm_choices gives.
  void set_gemms(int64_t policy, std::vector<int64_t> choices) {
    TORCH_CHECK(policy >= kGemmAuto && policy <= kGemmOneDnn,
                "fastgan_native: unknown GEMM policy ", policy);
    TORCH_CHECK(choices.size() % 7 == 0, "fastgan_native: GEMM choices come 7 numbers each");
    gemms_.policy = policy;
    for (size_t i = 0; i < choices.size(); i += 7) {
      gemms_.choices[{choices[i], choices[i + 1], choices[i + 2], choices[i + 3],
                      choices[i + 4], choices[i + 5]}] = choices[i + 6];
    }
  }

  std::vector<int64_t> gemm_choices() const {
    std::vector<int64_t> flat;
    for (const auto& [key, library] : gemms_.choices) {
      flat.insert(flat.end(), key.begin(), key.end());
      flat.push_back(library);
    }
    return flat;
  }

  // How many shapes have a choice: the caller fetches gemm_choices only when this grows.
  int64_t gemm_choice_count() const { return static_cast<int64_t>(gemms_.choices.size()); }

  static bool onednn_available() { return find_mkldnn_matmul() != nullptr; }

  at::Tensor ae_step(int64_t encoder, int64_t decoder, int64_t adam, at::Tensor x) {
    check_fp32_contiguous("x", x);
    Mlp& enc = mlps_.at(encoder);
    Mlp& dec = mlps_.at(decoder);
    const int64_t rows = x.size(0);
    const at::Tensor& latent = enc.forward(x, std::nullopt);
    const at::Tensor& recon = dec.forward(latent, std::nullopt);
    const double loss = mse(recon, x, dec.buffers.at(rows).grads.back());
    dec.backward(rows, true, std::nullopt, enc.buffers.at(rows).grads.back());
    enc.backward(rows, true, std::nullopt);
    adam_step(adams_.at(adam));
    return at::scalar_tensor(loss, x.options());
  }

  // One GAN iteration; returns (D's loss, G's loss). decoder < 0: G makes data (cgan).
  at::Tensor gan_step(int64_t generator, int64_t decoder, int64_t discriminator, int64_t adam_d,
                      int64_t adam_g, at::Tensor real, std::optional<at::Tensor> real_labels,
                      at::Tensor noise_d, std::optional<at::Tensor> labels_d,
                      at::Tensor noise_g, std::optional<at::Tensor> labels_g,
                      double real_target) {
    check_fp32_contiguous("real", real);
    Mlp& d = mlps_.at(discriminator);
    const int64_t n = real.size(0);
    if (!d_input_.defined() || d_input_.size(0) != 2 * n) {
      d_input_ = at::empty({2 * n, real.size(1)}, real.options());
      d_labels_ = labels_d ? at::empty({2 * n}, labels_d->options()) : at::Tensor();
    }
    at::Tensor fake = d_input_.narrow(0, n, n);

    // D's step on [real; fake], fake made without gradients
    d_input_.narrow(0, 0, n).copy_(real);
    std::optional<at::Tensor> both_labels;
    if (labels_d) {
      d_labels_.narrow(0, 0, n).copy_(*real_labels);
      d_labels_.narrow(0, n, n).copy_(*labels_d);
      both_labels = d_labels_;
    }
    generate(generator, decoder, noise_d, labels_d, fake);
    const at::Tensor& logits = d.forward(d_input_, both_labels);
    const int64_t half = logits.numel() / 2;
    float* grad = d.buffers.at(2 * n).grads.back().data_ptr<float>();
    const float* lp = logits.data_ptr<float>();
    const double d_loss = mean_bce(lp, half, real_target, grad) +
                          mean_bce(lp + half, half, 0.0, grad + half);
    d.backward(2 * n, true, both_labels);
    adam_step(adams_.at(adam_d));

    // G's step through the frozen D, then the EMA (in G's Adam pass)
    generate(generator, decoder, noise_g, labels_g, fake);
    const at::Tensor& g_logits = d.forward(fake, labels_g);
    const double g_loss = mean_bce(g_logits.data_ptr<float>(), g_logits.numel(), 1.0,
                                   d.buffers.at(n).grads.back().data_ptr<float>());
    Mlp& g = mlps_.at(generator);
    if (decoder < 0) {
      d.backward(n, false, labels_g, g.buffers.at(n).grads.back());
    } else {
      Mlp& dec = mlps_.at(decoder);
      Buffers& db = dec.buffers.at(n);
      if (!db.input_grad.defined()) {
        db.input_grad = at::empty_like(db.input);
      }
      d.backward(n, false, labels_g, db.grads.back());
      dec.backward(n, false, std::nullopt, db.input_grad);
      at::mul_out(g.buffers.at(n).grads.back(), db.input_grad, latent_std_);
    }
    g.backward(n, true, labels_g);
    adam_step(adams_.at(adam_g));
    return at::tensor({static_cast<float>(d_loss), static_cast<float>(g_loss)}, real.options());
  }

 private:
  // G's samples in data units into `out`: G's output, decoded in latent mode.
  void generate(int64_t generator, int64_t decoder, const at::Tensor& noise,
                const std::optional<at::Tensor>& labels, at::Tensor& out) {
    check_fp32_contiguous("noise", noise);
    Mlp& g = mlps_.at(generator);
    if (decoder < 0) {
      g.forward(noise, labels, out);
      return;
    }
    const at::Tensor& u = g.forward(noise, labels);
    if (!decoder_input_.defined() || decoder_input_.sizes() != u.sizes()) {
      decoder_input_ = at::empty_like(u);
    }
    at::addcmul_out(decoder_input_, latent_mean_, u, latent_std_);
    mlps_.at(decoder).forward(decoder_input_, std::nullopt, out);
  }

  Gemms gemms_;
  std::vector<Mlp> mlps_;
  std::vector<Adam> adams_;
  at::Tensor latent_mean_, latent_std_;
  at::Tensor d_input_, d_labels_, decoder_input_;
};

TORCH_LIBRARY(fastgan_native, m) {
  m.class_<NativeEngine>("Engine")
      .def(torch::init<>())
      .def("add_mlp", &NativeEngine::add_mlp)
      .def("add_adam", &NativeEngine::add_adam)
      .def("set_ema", &NativeEngine::set_ema)
      .def("set_latent", &NativeEngine::set_latent)
      .def("set_gemms", &NativeEngine::set_gemms)
      .def("gemm_choices", &NativeEngine::gemm_choices)
      .def("gemm_choice_count", &NativeEngine::gemm_choice_count)
      .def_static("onednn_available", &NativeEngine::onednn_available)
      .def("ae_step", &NativeEngine::ae_step)
      .def("gan_step", &NativeEngine::gan_step);
}
