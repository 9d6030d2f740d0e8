// innaprop_functor.cuh — INNAprop's functor for the generic multi-tensor engine
// (multi_tensor_apply.cuh), on the pattern of inna_functor.cuh (which see for the memory-access
// and rounding notes): its kernel arguments, the work of one thread of one block, and the
// host-side translation of the op's lists. Host and device code; the arithmetic is
// innaprop_math.h (INNA's phase update fed with the RMSprop-scaled gradient), the per-tensor
// scalars contract.h.
//
// Lists: (params, grads, phases, exp_avg_sqs), Depth 4, in the op's order. exp_avg_sq has the
// phase's dtype; on the first step neither it nor the phase is read. The rounding bits (θ: high
// half, phase: low half) are INNA's, a bfloat16 exp_avg_sq's those of inna_math.h, so results
// equal the CPU kernel's bit for bit.
#pragma once

#include "../contract.h"
#include "../inna_math.h"
#include "../innaprop_math.h"
#include "multi_tensor_apply.cuh"

#include <cstdint>
#include <type_traits>

#if !defined(__CUDA_ARCH__)
#include "../inna_op.h"
#endif

namespace inna_fused {
namespace mta {

enum InnapropList : int {
  kPropParams = 0,
  kPropGrads = 1,
  kPropPhases = 2,
  kPropExpAvgSqs = 3,
  kInnapropDepth = 4
};

template <int Capacity>
using InnapropMeta = LaunchMeta<kInnapropDepth, Capacity>;

struct InnapropScalars {
  double lr;  // used when lr_tensor.kind == kNoScalar
  double alpha, beta, sigma, eps, weight_decay;
  ScalarRef lr_tensor, grad_scale, found_inf;
  int64_t seed;
  bool maximize, stochastic_rounding;
};

static_assert(sizeof(InnapropScalars) <= 128, "InnapropScalars: recheck the argument budget");
static_assert(fits_kernel_arguments<kInnapropDepth, InnapropScalars>(),
              "INNAprop's launch metadata must fit the kernel-argument budgets");

template <typename scalar_t, typename phase_t, typename Meta>
C10_HOST_DEVICE INNA_INLINE int32_t innaprop_block_thread(int64_t block, int thread,
                                                          int block_size, const Meta& meta,
                                                          const InnapropScalars& s) {
  static_assert(Meta::kDepth == kInnapropDepth, "INNAprop launches carry four lists");
  using opmath_t = contract::opmath_t<scalar_t>;
  static_assert(std::is_same_v<phase_t, opmath_t> || std::is_same_v<phase_t, c10::BFloat16>,
                "the phase is stored in the opmath type or in bfloat16");
  constexpr int kVec = 16 / sizeof(scalar_t);
  constexpr int kILP = 2;

  if (skip_call(s.found_inf)) return kSkipped;
  const BlockWork work = locate_block(meta, block);
  const int32_t t = work.tensor;

  const double k = read_step(meta.step[t]);
  const double lr = s.lr_tensor.kind != kNoScalar ? read_scalar(s.lr_tensor) : s.lr;
  const bool has_grad_scale = s.grad_scale.kind != kNoScalar;
  const double grad_factor = contract::grad_factor(
      has_grad_scale, has_grad_scale ? read_scalar(s.grad_scale) : 1.0, s.maximize);
  const bool scale_grad = contract::scales_grad(has_grad_scale, s.maximize);
  const bool first_step = k == 0.0;
  const InnaFlags flags = innaprop_inna_flags(s.weight_decay);
  const InnaCoeffs<opmath_t> c =
      make_coeffs<opmath_t, double>(lr, s.alpha, s.beta, s.weight_decay, 1.0);
  const InnapropCoeffs<opmath_t> pc = make_innaprop_coeffs<opmath_t, double>(
      s.sigma, contract::innaprop_bias_sqrt(s.sigma, k), s.eps, grad_factor);

  const bool sr_theta = contract::rounds_stochastically<scalar_t>(s.stochastic_rounding);
  const bool sr_phase = contract::rounds_stochastically<phase_t>(s.stochastic_rounding);
  const bool sr_any = sr_theta || sr_phase;
  const uint64_t first = static_cast<uint64_t>(work.start);
  const uint64_t key = sr_any ? rounding_key(static_cast<uint64_t>(s.seed),
                                             static_cast<uint64_t>(k),
                                             static_cast<uint64_t>(meta.numel[t]))
                              : 0u;
  const uint32_t salt = sr_any ? rounding_salt(key, first) : 0u;
  // A bfloat16 exp_avg_sq rounds like the phase (sr_phase), with inna_math.h's bits: θ's half
  // of the element's word, or with 16-bit params (sr_theta) a word under sq_rounding_key.
  const uint32_t sq_salt = sr_phase && sr_theta ? rounding_salt(sq_rounding_key(key), first) : 0u;

  scalar_t* theta = static_cast<scalar_t*>(meta.ptr[kPropParams][t]) + work.start;
  phase_t* phase = static_cast<phase_t*>(meta.ptr[kPropPhases][t]) + work.start;
  phase_t* sq = static_cast<phase_t*>(meta.ptr[kPropExpAvgSqs][t]) + work.start;
  const scalar_t* grad = static_cast<const scalar_t*>(meta.ptr[kPropGrads][t]) + work.start;
  const int32_t count = static_cast<int32_t>(work.count);
  const int32_t stride = block_size * kILP;

  auto update = [&](scalar_t& th, phase_t& ps, phase_t& v, scalar_t gr, int32_t i) {
    opmath_t x = static_cast<opmath_t>(th);
    opmath_t w = first_step ? opmath_t(0) : static_cast<opmath_t>(ps);
    opmath_t vs = first_step ? opmath_t(0) : static_cast<opmath_t>(v);
    innaprop_update(x, w, vs, static_cast<opmath_t>(gr), pc, c, flags, first_step, scale_grad);
    const uint32_t index = static_cast<uint32_t>(first + i);
    const uint32_t bits = sr_any ? mix32(index ^ salt) : 0u;
    th = round_store<scalar_t>(x, sr_theta, theta_bits(bits));
    ps = round_store<phase_t>(w, sr_phase, phase_bits(bits));
    const uint32_t sq_bits = !sr_phase ? 0u
                             : sr_theta ? theta_bits(mix32(index ^ sq_salt)) : theta_bits(bits);
    v = round_store<phase_t>(vs, sr_phase, sq_bits);
  };

  using PhasePack = Pack<phase_t, kVec>;
  if (aligned_to<16>(theta) && aligned_to<16>(grad) && aligned_to<alignof(PhasePack)>(phase) &&
      aligned_to<alignof(PhasePack)>(sq)) {
    const int32_t nvec = count / kVec;
    for (int32_t base = 0; base < nvec; base += stride) {
      Pack<scalar_t, kVec> th[kILP] = {};
      Pack<scalar_t, kVec> gr[kILP] = {};
      PhasePack ps[kILP] = {};
      PhasePack vs[kILP] = {};
      INNA_UNROLL
      for (int j = 0; j < kILP; ++j) {
        const int32_t v = base + thread + j * block_size;
        if (v < nvec) {
          th[j] = load_pack<scalar_t, kVec>(theta + int64_t(v) * kVec);
          gr[j] = load_pack<scalar_t, kVec>(grad + int64_t(v) * kVec);
          if (!first_step) {
            ps[j] = load_pack<phase_t, kVec>(phase + int64_t(v) * kVec);
            vs[j] = load_pack<phase_t, kVec>(sq + int64_t(v) * kVec);
          }
        }
      }
      INNA_UNROLL
      for (int j = 0; j < kILP; ++j) {
        const int32_t v = base + thread + j * block_size;
        if (v < nvec) {
          INNA_UNROLL
          for (int e = 0; e < kVec; ++e) {
            update(th[j].val[e], ps[j].val[e], vs[j].val[e], gr[j].val[e], v * kVec + e);
          }
          store_pack<scalar_t, kVec>(theta + int64_t(v) * kVec, th[j]);
          store_pack<phase_t, kVec>(phase + int64_t(v) * kVec, ps[j]);
          store_pack<phase_t, kVec>(sq + int64_t(v) * kVec, vs[j]);
        }
      }
    }
    for (int32_t i = nvec * kVec + thread; i < count; i += block_size) {
      scalar_t th = theta[i];
      phase_t ps = first_step ? phase_t(0) : phase[i];
      phase_t v = first_step ? phase_t(0) : sq[i];
      update(th, ps, v, grad[i], i);
      theta[i] = th;
      phase[i] = ps;
      sq[i] = v;
    }
    return kVectorPath;
  }

  for (int32_t base = 0; base < count; base += stride) {
    scalar_t th[kILP] = {};
    scalar_t gr[kILP] = {};
    phase_t ps[kILP] = {};
    phase_t vs[kILP] = {};
    INNA_UNROLL
    for (int j = 0; j < kILP; ++j) {
      const int32_t i = base + thread + j * block_size;
      if (i < count) {
        th[j] = theta[i];
        gr[j] = grad[i];
        if (!first_step) {
          ps[j] = phase[i];
          vs[j] = sq[i];
        }
      }
    }
    INNA_UNROLL
    for (int j = 0; j < kILP; ++j) {
      const int32_t i = base + thread + j * block_size;
      if (i < count) {
        update(th[j], ps[j], vs[j], gr[j], i);
        theta[i] = th[j];
        phase[i] = ps[j];
        sq[i] = vs[j];
      }
    }
  }
  return kScalarPath;
}

template <typename scalar_t, typename phase_t>
struct InnapropFunctor {
  template <typename Meta>
  static C10_HOST_DEVICE INNA_INLINE int32_t block_thread(int64_t block, int thread,
                                                          int block_size, const Meta& meta,
                                                          const InnapropScalars& s) {
    return innaprop_block_thread<scalar_t, phase_t>(block, thread, block_size, meta, s);
  }
  static C10_HOST_DEVICE INNA_INLINE ScalarRef found_inf(const InnapropScalars& s) {
    return s.found_inf;
  }
};

#if !defined(__CUDA_ARCH__)
inline InnapropScalars make_innaprop_scalars(const InnaHyper& h, const at::Device& device) {
  InnapropScalars s{};
  fill_common_scalars(s, h, device);
  s.alpha = h.alpha;
  s.beta = h.beta;
  s.sigma = h.sigma;
  s.eps = h.eps;
  s.weight_decay = h.weight_decay;
  return s;
}

inline void collect_innaprop_entries(const InnaLists& lists,
                                     std::vector<TensorEntry<kInnapropDepth>>& entries,
                                     std::vector<TaggedStep>& late_steps) {
  collect_entries<kInnapropDepth>(
      {&lists.params, &lists.grads, &lists.phases, &lists.exp_avg_sqs}, lists.steps, entries,
      late_steps);
}
#endif  // !defined(__CUDA_ARCH__)

}  // namespace mta
}  // namespace inna_fused
