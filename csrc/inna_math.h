// inna_math.h — the INNA update for one element (or one SIMD vector of elements).
//
// This is the only place the arithmetic of eq. (12) of Castera et al. (JMLR 2021) is written in
// C++. The CPU kernel instantiates it with at::vec::Vectorized<opmath_t>, the CUDA kernel with
// float/double, the libtorch transcription tests compare against it.
//
// Per element, with v the (unscaled, sign-corrected) gradient and γ the step size:
//   decoupled weight decay:  θ ← θ·(1 − γ·wd)
//   first step only:         ψ ← (1 − αβ)·θ − (β² − β)·v      (psi_init="paper")
//                            ψ ← (1 − αβ)·θ                    (psi_init="zero", authors' code)
//   phase = (α − 1/β)·θ + ψ/β
//   ψ ← ψ − γ·phase
//   θ ← θ − γ·(phase + β·v [+ wd·θ if coupled weight decay])
// Both updates read the OLD θ and ψ (explicit Euler).
//
// Precision: T is the "opmath" type — float for float16/bfloat16/float32 params, double for
// float64. (α − 1/β)·θ and ψ/β nearly cancel for the usual β = 0.1, so ψ and this arithmetic must
// never run in a 16-bit type.
#pragma once

#include <c10/macros/Macros.h>

namespace inna_fused {

// Per-tensor switches. They are uniform over a tensor, so the branches below never diverge.
struct InnaFlags {
  bool first_step;      // ψ is initialised in this pass (its old contents are never read)
  bool paper_init;      // ψ₀ includes the gradient term
  bool scale_grad;      // v = g·grad_factor (grad unscaling and/or maximize)
  bool decoupled_wd;    // θ ← θ·(1 − γ·wd) before the update
  bool coupled_wd;      // + wd·θ in θ's step (authors' convention)
};

// Per-tensor coefficients, already broadcast to T (a scalar or a SIMD vector).
template <typename T>
struct InnaCoeffs {
  T gamma;        // γ_k = lr / (k + 1)^decay_power
  T theta_coef;   // α − 1/β
  T inv_beta;     // 1/β
  T beta;         // β
  T grad_factor;  // ±1/grad_scale  (− when maximizing)
  T weight_decay; // wd (coupled)
  T decay;        // 1 − γ·wd (decoupled)
  T psi0_theta;   // 1 − αβ
  T psi0_grad;    // β² − β
};

// Build the coefficients in opmath precision from the double-precision hyper-parameters.
template <typename T, typename Scalar>
C10_HOST_DEVICE inline InnaCoeffs<T> make_coeffs(
    Scalar gamma, Scalar alpha, Scalar beta, Scalar weight_decay, Scalar grad_factor) {
  InnaCoeffs<T> c;
  c.gamma = T(gamma);
  c.theta_coef = T(alpha - Scalar(1) / beta);
  c.inv_beta = T(Scalar(1) / beta);
  c.beta = T(beta);
  c.grad_factor = T(grad_factor);
  c.weight_decay = T(weight_decay);
  c.decay = T(Scalar(1) - gamma * weight_decay);
  c.psi0_theta = T(Scalar(1) - alpha * beta);
  c.psi0_grad = T(beta * beta - beta);
  return c;
}

// The update. θ and ψ are read and written in place; `grad` is the raw gradient.
template <typename T>
C10_HOST_DEVICE inline void inna_update(T& theta, T& psi, T grad, const InnaCoeffs<T>& c,
                                        const InnaFlags& f) {
  T v = f.scale_grad ? grad * c.grad_factor : grad;
  if (f.decoupled_wd) {
    theta = theta * c.decay;
  }
  if (f.first_step) {
    psi = f.paper_init ? c.psi0_theta * theta - c.psi0_grad * v : c.psi0_theta * theta;
  }
  T phase = c.theta_coef * theta + c.inv_beta * psi;
  T theta_step = phase + c.beta * v;
  if (f.coupled_wd) {
    theta_step = theta_step + c.weight_decay * theta;
  }
  psi = psi - c.gamma * phase;
  theta = theta - c.gamma * theta_step;
}

}  // namespace inna_fused
