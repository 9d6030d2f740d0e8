// cpu/inna_cpu.cpp — CPU backend of inna_fused::fused_inna_: INNA's per-element SIMD update over
// the spans of the generic work split (list_split.h); the math and the rounding are inna_math.h,
// the per-tensor scalars contract.h.
//
// Contract (after run_fused_inna's validation): one param dtype and one phase dtype per call
// (contract.h); grads of the param dtype; each entry's param, grad and phase share one dense
// layout and are walked as flat arrays; size-0 entries move no data but their step still
// advances. The first step never reads the phase (it is initialised in the same pass).
//
// A span of the work split may start mid-tensor, at any offset modulo the SIMD width. Results do
// not depend on it:
// the math uses explicit fused multiply-adds and the file is compiled with -ffp-contract=off, so
// a lane's arithmetic is the same IEEE operations whether its element sits in a full block or in
// a span's partial last block, in any lane; and the stochastic rounding's random bits are a
// function of the element's index in its tensor, not of the thread. Results are bitwise identical
// for any number of threads (tests/test_cpu_work_split.py splits at every offset of a block).

#include "simd_io.h"

#include "../contract.h"
#include "../inna_math.h"
#include "../inna_op.h"
#include "list_split.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>

namespace inna_fused {
namespace {

using at::vec::Vectorized;
using cpu::BitsHalf;
using cpu::block_random_bits;
using cpu::kBlock;
using cpu::load_block;
using cpu::prefetch_ahead;
using cpu::store_block;

// One flat entry of the list with its per-tensor scalars.
struct Entry {
  void* param;
  void* phase;
  const void* grad;
  int64_t numel;
  double gamma;
  bool first_step;
  uint64_t rounding_key;  // stochastic rounding (inna_math.h)
};

// The update of `n` consecutive elements of one tensor, starting at element `first` of it.
template <typename scalar_t, typename phase_t>
void update_span(const Entry& entry, int64_t first, int64_t n,
                 const InnaCoeffs<Vectorized<contract::opmath_t<scalar_t>>>& c, const InnaFlags& f,
                 bool sr_theta, bool sr_phase) {
  using opmath_t = contract::opmath_t<scalar_t>;
  using Vec = Vectorized<opmath_t>;
  constexpr int64_t L = kBlock<opmath_t>;
  scalar_t* theta = static_cast<scalar_t*>(entry.param) + first;
  phase_t* phase = static_cast<phase_t*>(entry.phase) + first;
  const scalar_t* grad = static_cast<const scalar_t*>(entry.grad) + first;
  auto update_block = [&](int64_t i, int64_t count, auto full) {
    constexpr bool kFull = decltype(full)::value;
    Vec th0, th1, g0, g1, w0(opmath_t(0)), w1(opmath_t(0));
    load_block<kFull, opmath_t>(theta + i, count, th0, th1);
    load_block<kFull, opmath_t>(grad + i, count, g0, g1);
    if (!f.first_step) load_block<kFull, opmath_t>(phase + i, count, w0, w1);
    inna_update(th0, w0, g0, c, f);
    inna_update(th1, w1, g1, c, f);
    alignas(64) uint32_t bits[L];  // the elements' random bits, when a store rounds with them
    if (sr_theta || sr_phase) {
      block_random_bits<L>(entry.rounding_key, static_cast<uint64_t>(first + i), bits);
    }
    store_block<kFull>(theta + i, count, th0, th1, sr_theta, bits, BitsHalf::kTheta);
    store_block<kFull>(phase + i, count, w0, w1, sr_phase, bits, BitsHalf::kPhase);
  };
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    prefetch_ahead<L>(theta + i);
    prefetch_ahead<L>(grad + i);
    prefetch_ahead<L>(phase + i);
    update_block(i, L, std::true_type{});
  }
  if (i < n) update_block(i, n - i, std::false_type{});
}

template <typename scalar_t, typename phase_t>
void cpu_kernel_typed(const InnaLists& lists, const InnaHyper& h) {
  using opmath_t = contract::opmath_t<scalar_t>;
  using Vec = Vectorized<opmath_t>;

  if (h.found_inf && h.found_inf->item<double>() != 0.0) return;  // AMP: skip the whole step

  const double lr = h.lr_tensor ? h.lr_tensor->item<double>() : h.lr;
  const double grad_factor = contract::grad_factor(
      h.grad_scale.has_value(), h.grad_scale ? h.grad_scale->item<double>() : 1.0, h.maximize);
  const InnaFlags base_flags = call_flags(h);
  const bool sr_theta = contract::rounds_stochastically<scalar_t>(h.stochastic_rounding);
  const bool sr_phase = contract::rounds_stochastically<phase_t>(h.stochastic_rounding);
  const auto seed = static_cast<uint64_t>(h.seed);

  // The list's non-empty entries, laid end to end (list_split.h), with their per-tensor scalars.
  const size_t n = lists.params.size();
  std::vector<Entry> entries;
  entries.reserve(n);
  cpu::ListSplit split(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = lists.params[i];
    if (p.numel() == 0) continue;
    const double k = cpu::read_step(lists.steps[i]);
    const double gamma = contract::step_size(lr, k, h.decay_power);
    const auto step = static_cast<uint64_t>(k);
    const auto numel = static_cast<uint64_t>(p.numel());
    entries.push_back({p.data_ptr(), lists.phases[i].data_ptr(), lists.grads[i].const_data_ptr(),
                       p.numel(), gamma, k == 0.0, rounding_key(seed, step, numel)});
    split.add(p.numel());
  }

  split.parallel_for_spans([&](size_t e, int64_t first, int64_t count) {
    const Entry& entry = entries[e];
    InnaFlags flags = base_flags;
    flags.first_step = entry.first_step;
    const auto coeffs =
        make_coeffs<Vec, double>(entry.gamma, h.alpha, h.beta, h.weight_decay, grad_factor);
    update_span<scalar_t, phase_t>(entry, first, count, coeffs, flags, sr_theta, sr_phase);
  });

  for (const auto& step : lists.steps) cpu::increment_step(step);
}

void cpu_kernel(const InnaLists& lists, const InnaHyper& h) {
  dispatch_dtypes(lists, [&](auto p, auto s) {
    cpu_kernel_typed<typename decltype(p)::type, typename decltype(s)::type>(lists, h);
  });
}

}  // namespace

// Which SIMD instruction set the CPU kernel was compiled for (reported by `python -m inna_fused info`).
std::string cpu_simd_level() {
#if defined(CPU_CAPABILITY_AVX512)
  return "AVX512(F,BW,VL,DQ)+FMA+F16C";
#elif defined(CPU_CAPABILITY_AVX2)
  return "AVX2+FMA+F16C";
#else
  return "baseline (compiler auto-vectorisation)";
#endif
}

}  // namespace inna_fused

TORCH_LIBRARY_IMPL(inna_fused, CPU, m) {
  m.impl("fused_inna_", &inna_fused::fused_inna<inna_fused::cpu_kernel>);
  m.impl("fused_inna_.tensor_lr", &inna_fused::fused_inna_tensor_lr<inna_fused::cpu_kernel>);
}
