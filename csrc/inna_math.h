// inna_math.h — the INNA update for one element (or one SIMD vector of elements), and the
// deterministic stochastic rounding of its 16-bit stores.
//
// This is the only place the arithmetic of INNA (Castera et al., JMLR 2021, eq. 12) is written in
// C++. The CPU kernel instantiates it with at::vec::Vectorized<opmath_t>, the CUDA kernel with
// float/double; the libtorch tests compare against it.
//
// State: the phase w = (α − 1/β)·θ + ψ/β instead of the paper's ψ. Eq. (12) is then exactly
//     θ_{k+1} = θ_k − γ_k (w_k + β v_k)
//     w_{k+1} = (1 − α γ_k) w_k + (1 − αβ) γ_k v_k
// (expand w_{k+1} = (α − 1/β)θ_{k+1} + ψ_{k+1}/β with eq. (12) to check it). The literal eq. (12)
// forms w from (α − 1/β)θ and ψ/β, two terms of about ±10·θ for β = 0.1 that cancel to a
// gradient-sized result: it loses ~10·|θ|·eps, and with bfloat16 params it freezes training
// (the step falls below half an ulp of θ, θ does not move, so ψ and w do not either). Here w is
// gradient-sized, nothing cancels, θ's rounding never leaks into the state, and w can be stored in
// 16 bits.
//
// Per element, with v the (unscaled, sign-corrected) gradient and γ the step size:
//   decoupled weight decay:  w ← w + (1 − αβ)γ·wd·θ/β   (not on the first step), then θ ← θ(1 − γ·wd)
//   first step only:         w ← (1 − β)·v   (psi_init="paper": ψ₀ = (1 − αβ)θ₀ − (β² − β)v₀)
//                            w ← 0           (psi_init="zero":  ψ₀ = (1 − αβ)θ₀, authors' code)
//   coupled weight decay:    θ's step gets + wd·θ, w's gradient term becomes v + wd·θ/β
//   θ ← θ − γ·(w + β·v [+ wd·θ])
//   w ← (1 − αγ)·w + (1 − αβ)γ·(v [+ wd·θ/β])
// Both updates read the OLD θ and w (explicit Euler).
//
// Precision: T is the "opmath" type — float for float16/bfloat16/float32 params, double for
// float64. Every multiply-add is an explicit fused multiply-add (fmadd below) and the sources are
// compiled with -ffp-contract=off, so the compiler never decides where to contract: a full SIMD
// vector, a partial one and the CUDA kernel's scalar code perform the same IEEE operations, which
// makes results independent of how work is split among threads.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// The update is a few dozen vector instructions; it must be inlined into the memory loops that call
// it (the CPU kernel's block loop, the CUDA functor). When GCC once chose to call it out of line
// instead, the bfloat16-state step slowed from 5.4 to 8.2 ms per 2^24 elements (vectors passed
// through memory).
#if defined(__CUDACC__)
#define INNA_MATH_INLINE __forceinline__
#else
#define INNA_MATH_INLINE inline __attribute__((always_inline))
#endif

namespace inna_fused {

// a·b + c with one rounding. The Vectorized overload lives in cpu/inna_cpu.cpp (at::vec::fmadd).
C10_HOST_DEVICE inline float fmadd(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

C10_HOST_DEVICE inline double fmadd(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// Per-tensor switches. They are uniform over a tensor, so the branches below never diverge.
struct InnaFlags {
  bool first_step;      // w is initialised in this pass (its old contents are never read)
  bool paper_init;      // w₀ = (1 − β)v₀ rather than 0
  bool scale_grad;      // v = g·grad_factor (grad unscaling and/or maximize)
  bool decoupled_wd;    // θ ← θ·(1 − γ·wd) before the update
  bool coupled_wd;      // + wd·θ in θ's step (authors' convention)
};

// Per-tensor coefficients, already broadcast to T (a scalar or a SIMD vector).
template <typename T>
struct InnaCoeffs {
  T gamma;         // γ_k = lr / (k + 1)^decay_power
  T neg_gamma;     // −γ_k
  T beta;          // β
  T grad_factor;   // ±1/grad_scale  (− when maximizing)
  T weight_decay;  // wd (coupled)
  T wd_over_beta;  // wd/β (coupled: w's gradient term is v + wd·θ/β)
  T decay;         // 1 − γ·wd (decoupled)
  T wd_to_phase;   // (1 − αβ)γ·wd/β (decoupled: what the decay of θ adds to w)
  T phase_decay;   // 1 − αγ
  T phase_gain;    // (1 − αβ)γ
  T init_gain;     // 1 − β (paper init: w₀ = (1 − β)v₀)
  T zero;          // 0 (zero init: w₀ = 0)
};

// Build the coefficients in opmath precision from the double-precision hyper-parameters.
template <typename T, typename Scalar>
C10_HOST_DEVICE INNA_MATH_INLINE InnaCoeffs<T> make_coeffs(
    Scalar gamma, Scalar alpha, Scalar beta, Scalar weight_decay, Scalar grad_factor) {
  InnaCoeffs<T> c;
  c.gamma = T(gamma);
  c.neg_gamma = T(-gamma);
  c.beta = T(beta);
  c.grad_factor = T(grad_factor);
  c.weight_decay = T(weight_decay);
  c.wd_over_beta = T(weight_decay / beta);
  c.decay = T(Scalar(1) - gamma * weight_decay);
  c.wd_to_phase = T((Scalar(1) - alpha * beta) * gamma * weight_decay / beta);
  c.phase_decay = T(Scalar(1) - alpha * gamma);
  c.phase_gain = T((Scalar(1) - alpha * beta) * gamma);
  c.init_gain = T(Scalar(1) - beta);
  c.zero = T(Scalar(0));
  return c;
}

// The update. θ and w (the phase) are read and written in place; `grad` is the raw gradient.
template <typename T>
C10_HOST_DEVICE INNA_MATH_INLINE void inna_update(T& theta, T& phase, T grad, const InnaCoeffs<T>& c,
                                        const InnaFlags& f) {
  const T v = f.scale_grad ? grad * c.grad_factor : grad;
  if (f.decoupled_wd) {
    if (!f.first_step) phase = fmadd(c.wd_to_phase, theta, phase);
    theta = theta * c.decay;
  }
  if (f.first_step) {
    phase = f.paper_init ? c.init_gain * v : c.zero;
  }
  T theta_step = fmadd(c.beta, v, phase);    // w + β·v
  T drive = v;                               // w's gradient term
  if (f.coupled_wd) {
    theta_step = fmadd(c.weight_decay, theta, theta_step);
    drive = fmadd(c.wd_over_beta, theta, v);
  }
  phase = fmadd(c.phase_gain, drive, c.phase_decay * phase);
  theta = fmadd(c.neg_gamma, theta_step, theta);
}

// ---------------------------------------------------------------------------------------------
// Deterministic stochastic rounding.
//
// A 16-bit store (θ of a float16/bfloat16 param, a bfloat16 phase) rounds its float32 value to
// one of its two 16-bit neighbours, up with probability equal to the distance from the lower one
// in units of their gap (resolution 2^-16): unbiased, so updates far below half an ulp still move
// θ on average. The random bits are a counter-based hash of (seed, step k, numel, element index):
// the same element draws the same bits on every run, for any thread count, on the CPU and the
// CUDA kernel, in the foreach and loop paths (inna_fused/rounding.py re-implements these
// functions bit for bit), and on every data-parallel replica. One 32-bit hash per element serves
// both stores: its high 16 bits round θ, its low 16 bits round the phase. INNAprop's bfloat16
// second moment (exp_avg_sq) takes 16 more bits (inna_fused/rounding.py: sq_random_bits): the
// high half of that same word when θ does not round stochastically (float32/float64 params leave
// it unused), else theta_bits(random_bits(sq_rounding_key(key), index)), the high half of a
// second word under a key of its own. (The second hash costs the CPU kernel ~14% of a
// float32-param step with bfloat16 state; one word per pair of elements, tried instead, was no
// faster.)

C10_HOST_DEVICE inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// One key per (tensor, step); computed once per tensor per call.
C10_HOST_DEVICE inline uint64_t rounding_key(uint64_t seed, uint64_t step, uint64_t numel) {
  return splitmix64(splitmix64(splitmix64(seed) ^ step) ^ numel);
}

// The key of the exp_avg_sq words, from the (tensor, step) key.
C10_HOST_DEVICE inline uint64_t sq_rounding_key(uint64_t key) {
  return splitmix64(key ^ 0xD1B54A32D192ED03ull);
}

// A 32-bit integer hash with good avalanche (a bijection of the 32-bit integers).
C10_HOST_DEVICE inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// The part of an element's hash input that depends on the high half of its index (constant over
// the first 2^32 elements of a tensor, so a SIMD or CUDA loop computes it once).
C10_HOST_DEVICE inline uint32_t rounding_salt(uint64_t key, uint64_t index) {
  return static_cast<uint32_t>(key) ^
         mix32(static_cast<uint32_t>(index >> 32) ^ static_cast<uint32_t>(key >> 32));
}

// 32 random bits for element `index` of a tensor under `key`.
C10_HOST_DEVICE inline uint32_t random_bits(uint64_t key, uint64_t index) {
  return mix32(static_cast<uint32_t>(index) ^ rounding_salt(key, index));
}

C10_HOST_DEVICE inline uint32_t theta_bits(uint32_t bits) { return bits >> 16; }
C10_HOST_DEVICE inline uint32_t phase_bits(uint32_t bits) { return bits & 0xFFFFu; }

C10_HOST_DEVICE inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

// bfloat16 keeps the top 16 bits of a float32: adding 16 random bits (r16 < 2^16) below them and
// truncating rounds the magnitude up with probability (dropped bits)/2^16. An infinity keeps its
// bits (its low mantissa is 0, so nothing carries); a value beyond the largest finite bfloat16 may
// round to infinity, as round-to-nearest does; NaN rounds to nearest (0x7FC0).
C10_HOST_DEVICE inline c10::BFloat16 round_stochastic_bf16(float x, uint32_t r16) {
  if (x != x) return c10::BFloat16(x);
  return c10::BFloat16(static_cast<uint16_t>((float_bits(x) + r16) >> 16),
                       c10::BFloat16::from_bits());
}

// float16 has fewer exponent bits (subnormals below 2^-14), so work with the two neighbours:
// lo, the float16 of largest magnitude ≤ |x|, and hi, the next one up. Round up iff
// u·(hi − lo) < |x| − lo for u = r16·2^-16 ∈ [0, 1). Every operand is exact (the gap is a power of
// two, |x| − lo is exact by Sterbenz), so this decision is the same on every device.
C10_HOST_DEVICE inline c10::Half round_stochastic_half(float x, uint32_t r16) {
  const c10::Half nearest(x);
  const float nearest_f = static_cast<float>(nearest);
  if (!(std::fabs(x) < 65504.0f) || nearest_f == x) return nearest;  // exact, overflow, inf, NaN
  const float ax = std::fabs(x);
  const uint16_t sign = nearest.x & 0x8000u;
  uint16_t lo = nearest.x & 0x7FFFu;
  if (std::fabs(nearest_f) > ax) --lo;  // nearest rounded up in magnitude
  const uint16_t hi = lo + 1;           // ≤ 0x7BFF: |x| < 65504
  const float lo_f = static_cast<float>(c10::Half(lo, c10::Half::from_bits()));
  const float hi_f = static_cast<float>(c10::Half(hi, c10::Half::from_bits()));
  const float u = static_cast<float>(r16) * 1.52587890625e-5f;  // 2^-16
  const uint16_t mag = u * (hi_f - lo_f) < ax - lo_f ? hi : lo;
  return c10::Half(static_cast<uint16_t>(sign | mag), c10::Half::from_bits());
}

// Store an opmath value into a param or state element: stochastic rounding with the 16 random
// bits r16 for 16-bit destinations when asked, round to nearest otherwise.
template <typename dst_t, typename T>
C10_HOST_DEVICE inline dst_t round_store(T x, bool stochastic, uint32_t r16) {
  if constexpr (std::is_same_v<dst_t, c10::BFloat16>) {
    if (stochastic) return round_stochastic_bf16(static_cast<float>(x), r16);
  } else if constexpr (std::is_same_v<dst_t, c10::Half>) {
    if (stochastic) return round_stochastic_half(static_cast<float>(x), r16);
  }
  return static_cast<dst_t>(x);
}

}  // namespace inna_fused
