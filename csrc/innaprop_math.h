// innaprop_math.h — the INNAprop update (Bolte et al. 2024) for one element (or one SIMD vector of
// elements), in the cancellation-free phase form of INNA (inna_math.h).
//
// Per element, with t = k + 1, γ = lr, λ = weight_decay and g the (unscaled, sign-corrected)
// gradient:
//   v_sq ← σ·v_sq + (1 − σ)·g²        (first step: v_sq ← (1 − σ)·g², the old v_sq is never read)
//   u = g / (sqrt(v_sq) / sqrt(1 − σ^t) + ε)
//   then INNA's phase update with v = u: w = 0 on the first step (never read), decoupled decay
//   w ← w + (1 − αβ)γλ·θ/β, θ ← (1 − γλ)·θ on EVERY step (the first included: the authors'
//   ψ₀ = (1 − αβ)θ₀ is taken before θ decays), then
//   θ ← θ − γ·(w + β·u),  w ← (1 − αγ)·w + (1 − αβ)γ·u.
// The INNA part is inna_update() itself, called with first_step = false (the caller zeroes w on
// the first step) and scale_grad = false (u is already built from the scaled gradient).
//
// T is the opmath type (a scalar or at::vec::Vectorized); every multiply-add is an explicit fmadd
// and sqrt/division are the correctly rounded IEEE operations on every backend, so the CPU kernel
// and the CUDA functor agree bit for bit.
#pragma once

#include "inna_math.h"

#include <cmath>

namespace inna_fused {

// sqrt, correctly rounded: at::vec::Vectorized through its member (the template), scalars below.
template <typename V>
INNA_MATH_INLINE V prop_sqrt(const V& x) {
  return x.sqrt();
}
C10_HOST_DEVICE inline float prop_sqrt(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}
C10_HOST_DEVICE inline double prop_sqrt(double x) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}

// Per-tensor coefficients of the second-moment part, broadcast to T.
template <typename T>
struct InnapropCoeffs {
  T sigma;             // σ
  T one_minus_sigma;   // 1 − σ
  T bias_sqrt;         // sqrt(1 − σ^t)
  T eps;               // ε
  T grad_factor;       // ±1/grad_scale
};

template <typename T, typename Scalar>
C10_HOST_DEVICE INNA_MATH_INLINE InnapropCoeffs<T> make_innaprop_coeffs(Scalar sigma,
                                                                        Scalar bias_sqrt,
                                                                        Scalar eps,
                                                                        Scalar grad_factor) {
  InnapropCoeffs<T> c;
  c.sigma = T(sigma);
  c.one_minus_sigma = T(Scalar(1) - sigma);
  c.bias_sqrt = T(bias_sqrt);
  c.eps = T(eps);
  c.grad_factor = T(grad_factor);
  return c;
}

// The INNA flags INNAprop runs inna_update() with: no first-step init (w is zeroed by the caller),
// no gradient scaling (u is built from the scaled gradient), decoupled decay when λ ≠ 0.
C10_HOST_DEVICE inline InnaFlags innaprop_inna_flags(double weight_decay) {
  InnaFlags f{};
  f.first_step = false;
  f.paper_init = false;
  f.scale_grad = false;
  f.decoupled_wd = weight_decay != 0.0;
  f.coupled_wd = false;
  return f;
}

// The update. θ, w (phase) and v_sq are read and written in place (w and v_sq are not read on the
// first step); `grad` is the raw gradient. `c` are INNA's coefficients (make_coeffs with γ = lr).
template <typename T>
C10_HOST_DEVICE INNA_MATH_INLINE void innaprop_update(T& theta, T& phase, T& exp_avg_sq, T grad,
                                                      const InnapropCoeffs<T>& p,
                                                      const InnaCoeffs<T>& c, const InnaFlags& f,
                                                      bool first_step, bool scale_grad) {
  const T g = scale_grad ? grad * p.grad_factor : grad;
  const T fresh = p.one_minus_sigma * (g * g);
  exp_avg_sq = first_step ? fresh : fmadd(p.sigma, exp_avg_sq, fresh);
  const T denom = prop_sqrt(exp_avg_sq) / p.bias_sqrt + p.eps;
  const T u = g / denom;
  if (first_step) phase = c.zero;
  inna_update(theta, phase, u, c, f);
}

}  // namespace inna_fused
