// cpu/innaprop_cpu.cpp — CPU backend of inna_fused::fused_innaprop_: INNAprop's per-element SIMD
// update (innaprop_math.h) over the spans of the generic work split (list_split.h), with the
// shared SIMD loads, stores and rounding of simd_io.h. Same structure and the same guarantees as
// inna_cpu.cpp (which see): full blocks and a partial tail run the same per-lane IEEE operations,
// the rounding's bits depend on the element's index only, so results are bitwise identical for
// any thread count. exp_avg_sq has the phase's dtype: in bfloat16 it rounds like the phase, with
// the bits inna_math.h gives it; on the first step neither the phase nor exp_avg_sq is read.
#include "simd_io.h"

#include "../contract.h"
#include "../inna_math.h"
#include "../innaprop_math.h"
#include "../inna_op.h"
#include "list_split.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

namespace inna_fused {
namespace {

using at::vec::Vectorized;
using cpu::BitsHalf;
using cpu::block_random_bits;
using cpu::kBlock;
using cpu::load_block;
using cpu::prefetch_ahead;
using cpu::store_block;

struct Entry {
  void* param;
  void* phase;
  void* exp_avg_sq;
  const void* grad;
  double bias_sqrt;  // sqrt(1 − σ^(k+1))
  bool first_step;
  uint64_t rounding_key;
  uint64_t sq_rounding_key;
};

template <typename scalar_t, typename phase_t>
void update_span(const Entry& entry, int64_t first, int64_t n,
                 const InnaCoeffs<Vectorized<contract::opmath_t<scalar_t>>>& c,
                 const InnapropCoeffs<Vectorized<contract::opmath_t<scalar_t>>>& pc,
                 const InnaFlags& f, bool scale_grad, bool sr_theta, bool sr_phase) {
  using opmath_t = contract::opmath_t<scalar_t>;
  using Vec = Vectorized<opmath_t>;
  constexpr int64_t L = kBlock<opmath_t>;
  scalar_t* theta = static_cast<scalar_t*>(entry.param) + first;
  phase_t* phase = static_cast<phase_t*>(entry.phase) + first;
  phase_t* sq = static_cast<phase_t*>(entry.exp_avg_sq) + first;
  const scalar_t* grad = static_cast<const scalar_t*>(entry.grad) + first;
  const bool first_step = entry.first_step;
  auto update_block = [&](int64_t i, int64_t count, auto full) {
    constexpr bool kFull = decltype(full)::value;
    Vec th0, th1, g0, g1, w0(opmath_t(0)), w1(opmath_t(0)), s0(opmath_t(0)), s1(opmath_t(0));
    load_block<kFull, opmath_t>(theta + i, count, th0, th1);
    load_block<kFull, opmath_t>(grad + i, count, g0, g1);
    if (!first_step) {
      load_block<kFull, opmath_t>(phase + i, count, w0, w1);
      load_block<kFull, opmath_t>(sq + i, count, s0, s1);
    }
    innaprop_update(th0, w0, s0, g0, pc, c, f, first_step, scale_grad);
    innaprop_update(th1, w1, s1, g1, pc, c, f, first_step, scale_grad);
    alignas(64) uint32_t bits[L];
    if (sr_theta || sr_phase) {
      block_random_bits<L>(entry.rounding_key, static_cast<uint64_t>(first + i), bits);
    }
    store_block<kFull>(theta + i, count, th0, th1, sr_theta, bits, BitsHalf::kTheta);
    store_block<kFull>(phase + i, count, w0, w1, sr_phase, bits, BitsHalf::kPhase);
    // A bfloat16 exp_avg_sq (inna_math.h): θ's unused half of these bits, or with 16-bit
    // params the high half of a word of its own.
    if (sr_phase && sr_theta) {
      block_random_bits<L>(entry.sq_rounding_key, static_cast<uint64_t>(first + i), bits);
    }
    store_block<kFull>(sq + i, count, s0, s1, sr_phase, bits, BitsHalf::kTheta);
  };
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    prefetch_ahead<L>(theta + i);
    prefetch_ahead<L>(grad + i);
    prefetch_ahead<L>(phase + i);
    prefetch_ahead<L>(sq + i);
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
  const bool scale_grad = contract::scales_grad(h.grad_scale.has_value(), h.maximize);
  const InnaFlags flags = innaprop_inna_flags(h.weight_decay);
  const bool sr_theta = contract::rounds_stochastically<scalar_t>(h.stochastic_rounding);
  const bool sr_phase = contract::rounds_stochastically<phase_t>(h.stochastic_rounding);
  const auto seed = static_cast<uint64_t>(h.seed);
  // γ = lr on every step: one set of INNA coefficients for the call.
  const auto coeffs = make_coeffs<Vec, double>(lr, h.alpha, h.beta, h.weight_decay, 1.0);

  const size_t n = lists.params.size();
  std::vector<Entry> entries;
  entries.reserve(n);
  cpu::ListSplit split(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = lists.params[i];
    if (p.numel() == 0) continue;
    const double k = cpu::read_step(lists.steps[i]);
    const auto numel = static_cast<uint64_t>(p.numel());
    const uint64_t key = rounding_key(seed, static_cast<uint64_t>(k), numel);
    entries.push_back({p.data_ptr(), lists.phases[i].data_ptr(), lists.exp_avg_sqs[i].data_ptr(),
                       lists.grads[i].const_data_ptr(), contract::innaprop_bias_sqrt(h.sigma, k),
                       k == 0.0, key, sq_rounding_key(key)});
    split.add(p.numel());
  }

  split.parallel_for_spans([&](size_t e, int64_t first, int64_t count) {
    const Entry& entry = entries[e];
    const auto pc = make_innaprop_coeffs<Vec, double>(h.sigma, entry.bias_sqrt, h.eps, grad_factor);
    update_span<scalar_t, phase_t>(entry, first, count, coeffs, pc, flags, scale_grad, sr_theta,
                                   sr_phase);
  });

  for (const auto& step : lists.steps) cpu::increment_step(step);
}

void cpu_kernel(const InnaLists& lists, const InnaHyper& h) {
  dispatch_dtypes(lists, [&](auto p, auto s) {
    cpu_kernel_typed<typename decltype(p)::type, typename decltype(s)::type>(lists, h);
  });
}

}  // namespace
}  // namespace inna_fused

TORCH_LIBRARY_IMPL(inna_fused, CPU, m) {
  m.impl("fused_innaprop_", &inna_fused::fused_innaprop<inna_fused::cpu_kernel>);
  m.impl("fused_innaprop_.tensor_lr",
         &inna_fused::fused_innaprop_tensor_lr<inna_fused::cpu_kernel>);
}
