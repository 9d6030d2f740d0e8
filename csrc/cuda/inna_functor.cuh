// inna_functor.cuh — INNA's functor for the generic multi-tensor engine (multi_tensor_apply.cuh):
// its kernel arguments (InnaScalars), the work of one thread of one block, and the host-side
// translation of the op's lists and hyper-parameters. Host and device code; the arithmetic is
// inna_math.h, the per-tensor scalars (γ_k, gradient factor, flags) contract.h.
//
// What the functor adds to the engine's contract (after run_fused_inna's validation, inna_op.h):
//   - lists: (params, grads, phases), Depth 3, in the op's order; one param dtype and one phase
//     dtype per call (contract.h); the arithmetic in contract::opmath_t of the param dtype;
//   - lr (when a tensor on the params' device), grad_scale and found_inf are 1-element floating
//     tensors read in the kernel, never on the host, so the step can be captured in a CUDA graph;
//   - 16-bit stores (θ of float16/bfloat16 params, a bfloat16 phase) round stochastically when
//     stochastic_rounding is set, with the counter-based bits of inna_math.h keyed by (seed, k,
//     numel) and indexed by the element's position in its tensor (one 32-bit hash per element:
//     high half for θ, low half for the phase): the bits never depend on the chunking or the
//     thread, so results equal the CPU kernel's bit for bit.
//
// Memory access. When θ and g of a chunk are 16-byte aligned and the phase is aligned to its pack
// (the same element count: 4 to 32 bytes), every thread moves kILP vectors of 16 bytes of θ and
// of g (and the matching phase) per iteration, adjacent threads on adjacent vectors; the last
// count % kVec elements go through the scalar path. Otherwise (views at odd offsets) the
// whole chunk takes the scalar path, still kILP independent elements in flight per thread.
#pragma once

#include "../contract.h"
#include "../inna_math.h"
#include "multi_tensor_apply.cuh"

#include <cmath>
#include <cstdint>
#include <type_traits>

#if !defined(__CUDA_ARCH__)
#include "../inna_op.h"
#endif

namespace inna_fused {
namespace mta {

static_assert((int64_t(1) << 32) % kChunk == 0,
              "a chunk must not straddle a multiple of 2^32 elements (one rounding salt per chunk)");

// The lists of an INNA launch, in the op's order.
enum InnaList : int { kParams = 0, kGrads = 1, kPhases = 2, kInnaDepth = 3 };

template <int Capacity>
using InnaMeta = LaunchMeta<kInnaDepth, Capacity>;

// Everything but the tensor lists, passed by value to every launch (104 bytes).
struct InnaScalars {
  double lr;            // used when lr_tensor.kind == kNoScalar (a Python float, or a CPU tensor)
  double alpha, beta, decay_power, weight_decay;
  ScalarRef lr_tensor, grad_scale, found_inf;
  int64_t seed;         // of the stochastic rounding's random bits
  InnaFlags flags;      // the per-call flags (first_step is set per tensor in the kernel)
  bool maximize, stochastic_rounding;
};

static_assert(sizeof(InnaScalars) == 104, "InnaScalars layout changed: recheck the argument budget");
static_assert(fits_kernel_arguments<kInnaDepth, InnaScalars>(),
              "INNA's launch metadata must fit the kernel-argument budgets");

// Independent 16-byte accesses (or scalars) per stream a thread keeps in flight: 64 bytes of θ per
// iteration for float32, 32 for the others, whose wider phase (16-bit params with a float32 phase)
// or double coefficients need the registers; with two 512-thread blocks per multiprocessor that is
// still several times the bytes in flight that saturate HBM.
template <typename scalar_t>
C10_HOST_DEVICE constexpr int ilp_for() {
  return sizeof(scalar_t) == 4 ? 4 : 2;
}

// The work of thread `thread` of block `block` (of `block_size` threads) of a main launch: the
// update of its share of one chunk. Every quantity that depends on the tensor (k, γ_k, the flags,
// the rounding keys) is computed by each thread from the metadata, so the function needs no shared
// memory and the emulation can run threads one after another. scalar_t is the param dtype, phase_t
// the phase's (opmath_t or c10::BFloat16). Returns the path taken (for the emulation's tests).
template <typename scalar_t, typename phase_t, typename Meta>
C10_HOST_DEVICE INNA_INLINE int32_t inna_block_thread(int64_t block, int thread, int block_size,
                                                      const Meta& meta, const InnaScalars& s) {
  static_assert(Meta::kDepth == kInnaDepth, "INNA launches carry params, grads and phases");
  using opmath_t = contract::opmath_t<scalar_t>;
  static_assert(std::is_same_v<phase_t, opmath_t> || std::is_same_v<phase_t, c10::BFloat16>,
                "the phase is stored in the opmath type or in bfloat16");
  constexpr int kVec = 16 / sizeof(scalar_t);  // elements per 16-byte access of θ and g
  constexpr int kILP = ilp_for<scalar_t>();

  if (skip_call(s.found_inf)) return kSkipped;
  const BlockWork work = locate_block(meta, block);
  const int32_t t = work.tensor;

  // The per-tensor scalars from contract.h, as in the CPU kernel.
  const double k = read_step(meta.step[t]);
  const double lr = s.lr_tensor.kind != kNoScalar ? read_scalar(s.lr_tensor) : s.lr;
  const double gamma = contract::step_size(lr, k, s.decay_power);
  const bool has_grad_scale = s.grad_scale.kind != kNoScalar;
  const double grad_factor = contract::grad_factor(
      has_grad_scale, has_grad_scale ? read_scalar(s.grad_scale) : 1.0, s.maximize);
  InnaFlags flags = s.flags;
  flags.first_step = k == 0.0;
  const InnaCoeffs<opmath_t> c =
      make_coeffs<opmath_t, double>(gamma, s.alpha, s.beta, s.weight_decay, grad_factor);

  // The rounding key depends on the tensor and the step only; an element's bits on its index in
  // the whole tensor (work.start + i), so any chunking draws the same bits. A chunk (kChunk-aligned,
  // 2^16 elements) never straddles a multiple of 2^32, so the high half of the index, and with it
  // the salt, is the same for the whole chunk: random_bits(key, index) is then one mix32.
  const bool sr_theta = contract::rounds_stochastically<scalar_t>(s.stochastic_rounding);
  const bool sr_phase = contract::rounds_stochastically<phase_t>(s.stochastic_rounding);
  const bool sr_any = sr_theta || sr_phase;
  const uint64_t first = static_cast<uint64_t>(work.start);
  const uint32_t salt =
      sr_any ? rounding_salt(rounding_key(static_cast<uint64_t>(s.seed), static_cast<uint64_t>(k),
                                          static_cast<uint64_t>(meta.numel[t])),
                             first)
             : 0u;

  scalar_t* theta = static_cast<scalar_t*>(meta.ptr[kParams][t]) + work.start;
  phase_t* phase = static_cast<phase_t*>(meta.ptr[kPhases][t]) + work.start;
  const scalar_t* grad = static_cast<const scalar_t*>(meta.ptr[kGrads][t]) + work.start;
  const int32_t count = static_cast<int32_t>(work.count);
  const int32_t stride = block_size * kILP;

  // The update of one element from its loaded values; stores the rounded results in th and ps.
  auto update = [&](scalar_t& th, phase_t& ps, scalar_t gr, int32_t i) {
    opmath_t x = static_cast<opmath_t>(th);
    opmath_t w = flags.first_step ? opmath_t(0) : static_cast<opmath_t>(ps);
    inna_update(x, w, static_cast<opmath_t>(gr), c, flags);
    const uint32_t bits = sr_any ? mix32(static_cast<uint32_t>(first + i) ^ salt) : 0u;
    th = round_store<scalar_t>(x, sr_theta, theta_bits(bits));
    ps = round_store<phase_t>(w, sr_phase, phase_bits(bits));
  };

  using PhasePack = Pack<phase_t, kVec>;
  if (aligned_to<16>(theta) && aligned_to<16>(grad) && aligned_to<alignof(PhasePack)>(phase)) {
    const int32_t nvec = count / kVec;
    for (int32_t base = 0; base < nvec; base += stride) {
      Pack<scalar_t, kVec> th[kILP] = {};
      Pack<scalar_t, kVec> gr[kILP] = {};
      PhasePack ps[kILP] = {};
      // All loads first: kILP independent accesses per stream in flight. The first step never
      // reads the phase: its contents are undefined until this pass initialises them.
      INNA_UNROLL
      for (int j = 0; j < kILP; ++j) {
        const int32_t v = base + thread + j * block_size;
        if (v < nvec) {
          th[j] = load_pack<scalar_t, kVec>(theta + int64_t(v) * kVec);
          gr[j] = load_pack<scalar_t, kVec>(grad + int64_t(v) * kVec);
          if (!flags.first_step) ps[j] = load_pack<phase_t, kVec>(phase + int64_t(v) * kVec);
        }
      }
      INNA_UNROLL
      for (int j = 0; j < kILP; ++j) {
        const int32_t v = base + thread + j * block_size;
        if (v < nvec) {
          INNA_UNROLL
          for (int e = 0; e < kVec; ++e) {
            update(th[j].val[e], ps[j].val[e], gr[j].val[e], v * kVec + e);
          }
          store_pack<scalar_t, kVec>(theta + int64_t(v) * kVec, th[j]);
          store_pack<phase_t, kVec>(phase + int64_t(v) * kVec, ps[j]);
        }
      }
    }
    for (int32_t i = nvec * kVec + thread; i < count; i += block_size) {
      scalar_t th = theta[i];
      phase_t ps = flags.first_step ? phase_t(0) : phase[i];
      update(th, ps, grad[i], i);
      theta[i] = th;
      phase[i] = ps;
    }
    return kVectorPath;
  }

  for (int32_t base = 0; base < count; base += stride) {
    scalar_t th[kILP] = {};
    scalar_t gr[kILP] = {};
    phase_t ps[kILP] = {};
    INNA_UNROLL
    for (int j = 0; j < kILP; ++j) {
      const int32_t i = base + thread + j * block_size;
      if (i < count) {
        th[j] = theta[i];
        gr[j] = grad[i];
        if (!flags.first_step) ps[j] = phase[i];
      }
    }
    INNA_UNROLL
    for (int j = 0; j < kILP; ++j) {
      const int32_t i = base + thread + j * block_size;
      if (i < count) {
        update(th[j], ps[j], gr[j], i);
        theta[i] = th[j];
        phase[i] = ps[j];
      }
    }
  }
  return kScalarPath;
}

// The functor the engine's kernel and emulation run.
template <typename scalar_t, typename phase_t>
struct InnaFunctor {
  template <typename Meta>
  static C10_HOST_DEVICE INNA_INLINE int32_t block_thread(int64_t block, int thread,
                                                          int block_size, const Meta& meta,
                                                          const InnaScalars& s) {
    return inna_block_thread<scalar_t, phase_t>(block, thread, block_size, meta, s);
  }
  static C10_HOST_DEVICE INNA_INLINE ScalarRef found_inf(const InnaScalars& s) {
    return s.found_inf;
  }
};

#if !defined(__CUDA_ARCH__)
// ---------------------------------------------------------------------------------------------
// Host side: the op's lists and hyper-parameters as the engine's entries and INNA's arguments.

// The scalar arguments.
inline InnaScalars make_scalars(const InnaHyper& h, const at::Device& device) {
  InnaScalars s{};
  fill_common_scalars(s, h, device);
  s.alpha = h.alpha;
  s.beta = h.beta;
  s.decay_power = h.decay_power;
  s.weight_decay = h.weight_decay;
  s.flags = call_flags(h);
  return s;
}

// The engine's entries of the op's lists (params, grads, phases), and the late steps.
inline void collect_inna_entries(const InnaLists& lists,
                                 std::vector<TensorEntry<kInnaDepth>>& entries,
                                 std::vector<TaggedStep>& late_steps) {
  collect_entries<kInnaDepth>({&lists.params, &lists.grads, &lists.phases}, lists.steps, entries,
                              late_steps);
}

#endif  // !defined(__CUDA_ARCH__)

}  // namespace mta
}  // namespace inna_fused
