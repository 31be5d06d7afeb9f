// Branch-free exp and log for the soft-min, written so that GCC/Clang vectorise a
// loop over batch lanes (libm calls would block that). Only the ranges the soft-min
// needs are covered, which keeps them short and exact enough for float64 tests:
//   exp_nonpos(x): x <= 0 (also -inf), relative error ~1 ulp, 0 below the
//                  smallest normal number.
//   log_1_3(z):    z in [1, 3] (a sum of three exps whose largest term is 1).
#pragma once

#include <cstdint>
#include <cstring>

namespace tap_fast {
namespace sdtw {
namespace lane {

#define SDTW_ALWAYS_INLINE inline __attribute__((always_inline))

template <typename T>
struct Bits;
template <>
struct Bits<float> {
  using I = int32_t;
  static constexpr int kMantissa = 23;
  static constexpr int kBias = 127;
};
template <>
struct Bits<double> {
  using I = int64_t;
  static constexpr int kMantissa = 52;
  static constexpr int kBias = 1023;
};

template <typename To, typename From>
SDTW_ALWAYS_INLINE To bit_cast(From v) {
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

// exp(r) on |r| <= ln2/2 by Taylor/Horner; degree chosen for < 1 ulp truncation.
SDTW_ALWAYS_INLINE float exp_poly(float r) {
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  return p * r + 1.0f;
}
SDTW_ALWAYS_INLINE double exp_poly(double r) {
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  return p * r + 1.0;
}

template <typename T>
struct ExpConst;
template <>
struct ExpConst<float> {
  static constexpr float kMin = -87.0f;  // exp(-87) ~ 1.6e-38, still normal
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693359375f;  // Cody-Waite split of ln 2
  static constexpr float kLn2Lo = -2.12194440e-4f;
  static constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: rounds to integer
};
template <>
struct ExpConst<double> {
  static constexpr double kMin = -708.0;
  static constexpr double kLog2e = 1.4426950408889634074;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01;
  static constexpr double kLn2Lo = 1.90821492927058770002e-10;
  static constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52
};

template <typename T>
SDTW_ALWAYS_INLINE T exp_nonpos(T x) {
  using C = ExpConst<T>;
  using I = typename Bits<T>::I;
  const bool underflow = x < C::kMin;  // also true for -inf
  const T xc = underflow ? C::kMin : x;
  const T t = xc * C::kLog2e + C::kMagic;  // n = round(x / ln2) sits in t's low bits
  const T n = t - C::kMagic;
  T r = xc - n * C::kLn2Hi;
  r = r - n * C::kLn2Lo;
  const I ni = bit_cast<I>(t) - bit_cast<I>(C::kMagic);
  const T scale = bit_cast<T>(static_cast<I>((ni + Bits<T>::kBias) << Bits<T>::kMantissa));
  const T y = exp_poly(r) * scale;
  return underflow ? T(0) : y;
}

// log(z) for z in [1, 3]: z = 2^e * w with w in [0.707, 1.5], then
// log w = 2 atanh(f), f = (w - 1) / (w + 1), |f| <= 0.2, as an odd series in f.
SDTW_ALWAYS_INLINE float log_series(float f2) {
  float p = 1.0f / 11.0f;
  p = p * f2 + 1.0f / 9.0f;
  p = p * f2 + 1.0f / 7.0f;
  p = p * f2 + 1.0f / 5.0f;
  p = p * f2 + 1.0f / 3.0f;
  return p * f2 + 1.0f;
}
SDTW_ALWAYS_INLINE double log_series(double f2) {
  double p = 1.0 / 25.0;
  p = p * f2 + 1.0 / 23.0;
  p = p * f2 + 1.0 / 21.0;
  p = p * f2 + 1.0 / 19.0;
  p = p * f2 + 1.0 / 17.0;
  p = p * f2 + 1.0 / 15.0;
  p = p * f2 + 1.0 / 13.0;
  p = p * f2 + 1.0 / 11.0;
  p = p * f2 + 1.0 / 9.0;
  p = p * f2 + 1.0 / 7.0;
  p = p * f2 + 1.0 / 5.0;
  p = p * f2 + 1.0 / 3.0;
  return p * f2 + 1.0;
}

template <typename T>
SDTW_ALWAYS_INLINE T log_1_3(T z) {
  const bool big = z > T(1.4142135623730951);
  const T w = big ? z * T(0.5) : z;
  const T f = (w - T(1)) / (w + T(1));
  const T lg = T(2) * f * log_series(f * f);
  return big ? lg + T(0.69314718055994530942) : lg;
}

}  // namespace lane
}  // namespace sdtw
}  // namespace tap_fast
