// Float math for loops the compiler vectorizes (#pragma omp simd), on any x86 host it is built
// for (-march=native: AVX2 or AVX-512). No branches and no library calls: glibc's expf, tanhf and
// logf are one call per element, and ATen's at::vec::Vectorized outside ATen's own per-capability
// build is its generic version, whose exp and tanh call the scalar std:: functions lane by lane.
// Each function is within a few ulp of the correctly rounded result.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fastgan_math {

// exp(y) for y <= 0: 2^n exp(r), y = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite split of ln2),
// and a degree-6 polynomial for exp(r) (Cephes' expf coefficients).
inline float exp_nonpositive(float y) {
  const float yc = std::max(y, -87.0f);
  // Round to nearest by adding and removing 1.5 * 2^23 (std::floor would stop GCC from
  // vectorizing without -ffast-math).
  const float n = (yc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = yc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  // 2^n built in the exponent bits; a bit cast, not memcpy, keeps the loop vectorizable.
  const float scale = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
  const float out = y < -87.0f ? 0.0f : er * scale;  // below: under 1.6e-38, and -inf
  return y != y ? y : out;                           // NaN stays NaN
}

inline double exp_nonpositive(double y) { return std::exp(y); }

// log1p(e) for e in [0, 1] = 2 atanh(s), s = e / (2 + e) <= 1/3: an odd series in s, no
// cancellation near 0.
inline float log1p_unit(float e) {
  const float s = e / (2.0f + e);
  const float z = s * s;
  float p = 1.0f / 15;
  p = p * z + 1.0f / 13;
  p = p * z + 1.0f / 11;
  p = p * z + 1.0f / 9;
  p = p * z + 1.0f / 7;
  p = p * z + 1.0f / 5;
  p = p * z + 1.0f / 3;
  return 2.0f * s * (p * z + 1.0f);
}

// log1p(e) for e in [0, 1] through log, which glibc computes several times faster than log1p:
// u - 1 is exact and e / (u - 1) corrects the rounding of u = 1 + e (Goldberg, 1991).
inline double log1p_unit(double e) {
  const double u = 1.0 + e;
  return u == 1.0 ? e : std::log(u) * (e / (u - 1.0));
}

// 1 / (1 + exp(-x)) through exp(-|x|), which never overflows.
template <typename T>
inline T sigmoid(T x) {
  const T e = exp_nonpositive(-std::abs(x));
  return (x >= T(0) ? T(1) : e) / (T(1) + e);
}

// tanh: Cephes' tanhf polynomial below |x| = 0.625, where 1 - exp(-2|x|) would cancel, and
// (1 - e) / (1 + e) with e = exp(-2|x|) above it; ±inf give ±1, NaN stays NaN.
inline float tanh(float x) {
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = x + x * z * p;
  const float e = exp_nonpositive(-2.0f * std::abs(x));
  const float large = std::copysign((1.0f - e) / (1.0f + e), x);
  return std::abs(x) < 0.625f ? small : large;
}

inline double tanh(double x) { return std::tanh(x); }

}  // namespace fastgan_math
