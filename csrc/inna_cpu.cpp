// inna_cpu.cpp — CPU backend of inna_fused::fused_inna_: memory movement only, the math is
// inna_math.h.
//
// Contract (after run_fused_inna's validation): one param dtype per call (float32, float64,
// float16, bfloat16); grads of the param dtype; ψ in float32 (float64 for float64 params); each
// entry's param, grad and ψ share one dense layout and are walked as flat arrays; size-0 entries
// move no data but their step still advances.
//
// Work split: the list's elements, laid end to end, are cut into units of kChunk elements and
// at::parallel_for runs over the units, so a list of many small tensors parallelises like one
// large tensor and every thread gets the same number of elements. A unit may span several
// tensors or start mid-tensor; every element gets the same inna_update() whether it sits in a
// full or a partial SIMD vector, so results are bitwise identical for any number of threads.

// SIMD level: the vector types follow the flags the extension was compiled with (setup.py adds
// -mavx2 -mfma -mf16c on machines that have them). The private namespace name keeps these
// instantiations apart from libtorch's own.
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(CPU_CAPABILITY_AVX2)
#define CPU_CAPABILITY_AVX2
#endif
#define CPU_CAPABILITY inna_fused_simd

#include "inna_math.h"
#include "inna_op.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace inna_fused {
namespace {

using at::vec::Vectorized;

constexpr int64_t kChunk = 1 << 15;  // elements per work unit

// One flat entry of the list with its per-tensor scalars.
struct Entry {
  void* param;
  void* psi;
  const void* grad;
  int64_t numel;
  double gamma;
  bool first_step;
};

// Same-precision path: θ, g and ψ are all opmath_t (float32 or float64).
template <typename scalar_t>
void update_span_full(scalar_t* theta, scalar_t* psi, const scalar_t* grad, int64_t n,
                 const InnaCoeffs<Vectorized<scalar_t>>& c, const InnaFlags& f) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t W = Vec::size();
  auto one = [&](int64_t i, int64_t count) {
    Vec th = Vec::loadu(theta + i, count);
    Vec g = Vec::loadu(grad + i, count);
    Vec ps = f.first_step ? Vec(scalar_t(0)) : Vec::loadu(psi + i, count);
    inna_update(th, ps, g, c, f);
    th.store(theta + i, count);
    ps.store(psi + i, count);
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) one(i, W);
  if (i < n) one(i, n - i);
}

// Reduced-precision path: θ and g are float16/bfloat16, ψ and the arithmetic are float32.
template <typename scalar_t>
void update_span_reduced(scalar_t* theta, float* psi, const scalar_t* grad, int64_t n,
                 const InnaCoeffs<Vectorized<float>>& c, const InnaFlags& f) {
  using bVec = Vectorized<scalar_t>;
  using fVec = Vectorized<float>;
  constexpr int64_t W = bVec::size();  // == 2 * fVec::size()
  constexpr int64_t H = fVec::size();
  auto one = [&](int64_t i, int64_t count) {
    const int64_t lo = std::min(count, H), hi = count - lo;
    auto [th0, th1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(theta + i, count));
    auto [g0, g1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(grad + i, count));
    fVec ps0(0.0f), ps1(0.0f);
    if (!f.first_step) {
      ps0 = fVec::loadu(psi + i, lo);
      ps1 = fVec::loadu(psi + i + H, hi);
    }
    inna_update(th0, ps0, g0, c, f);
    inna_update(th1, ps1, g1, c, f);
    at::vec::convert_from_float<scalar_t>(th0, th1).store(theta + i, count);
    ps0.store(psi + i, lo);
    ps1.store(psi + i + H, hi);
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) one(i, W);
  if (i < n) one(i, n - i);
}

double read_scalar(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? *t.const_data_ptr<double>()
                                        : static_cast<double>(*t.const_data_ptr<float>());
}

void increment_step(const at::Tensor& t) {
  if (t.scalar_type() == at::kDouble) {
    *t.mutable_data_ptr<double>() += 1.0;
  } else {
    *t.mutable_data_ptr<float>() += 1.0f;
  }
}

template <typename scalar_t>
void cpu_kernel_typed(const InnaLists& lists, const InnaHyper& h) {
  using opmath_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<opmath_t>;

  if (h.found_inf && h.found_inf->item<double>() != 0.0) return;  // AMP: skip the whole step

  const double lr = h.lr_tensor ? h.lr_tensor->item<double>() : h.lr;
  double grad_factor = 1.0;
  if (h.grad_scale) {
    // Same rounding as torch.amp.GradScaler.unscale_: a float32 reciprocal of the scale.
    grad_factor = static_cast<float>(1.0 / h.grad_scale->item<double>());
  }
  if (h.maximize) grad_factor = -grad_factor;
  InnaFlags base_flags{};
  base_flags.paper_init = h.paper_init;
  base_flags.scale_grad = h.grad_scale.has_value() || h.maximize;
  base_flags.decoupled_wd = h.decoupled_weight_decay && h.weight_decay != 0.0;
  base_flags.coupled_wd = !h.decoupled_weight_decay && h.weight_decay != 0.0;

  // Flatten the list into entries and a prefix sum of their element counts: the list's elements
  // laid end to end.
  const size_t n = lists.params.size();
  std::vector<Entry> entries;
  std::vector<int64_t> entry_start;  // entry_start[e] = elements of entries [0, e)
  entries.reserve(n);
  entry_start.reserve(n);
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = lists.params[i];
    if (p.numel() == 0) continue;
    const double k = read_scalar(lists.steps[i]);
    const double gamma = h.decay_power == 0.0 ? lr : lr / std::pow(k + 1.0, h.decay_power);
    entries.push_back({p.data_ptr(), lists.psis[i].data_ptr(), lists.grads[i].const_data_ptr(),
                       p.numel(), gamma, k == 0.0});
    entry_start.push_back(total);
    total += p.numel();
  }

  // Work unit u covers elements [u * kChunk, (u + 1) * kChunk) of the concatenation, whatever
  // tensors they belong to: every unit but the last carries the same work, so the contiguous
  // unit ranges at::parallel_for hands each thread are balanced. (Per-tensor chunks were not: a
  // 64-element tensor counted as much as 32768 elements, and on ResNet-50's list one of two
  // threads got 10% more elements than the other.)
  const int64_t units = (total + kChunk - 1) / kChunk;
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    const int64_t first = begin * kChunk;
    const int64_t last = std::min(total, end * kChunk);  // exclusive
    // The entry holding element `first`: the last one that starts at or before it.
    size_t e = std::upper_bound(entry_start.begin(), entry_start.end(), first) -
               entry_start.begin() - 1;
    for (int64_t pos = first; pos < last; ++e) {
      const Entry& entry = entries[e];
      const int64_t lo = pos - entry_start[e];
      const int64_t hi = std::min(entry.numel, last - entry_start[e]);
      InnaFlags flags = base_flags;
      flags.first_step = entry.first_step;
      const auto coeffs = make_coeffs<Vec, double>(entry.gamma, h.alpha, h.beta, h.weight_decay,
                                                   grad_factor);
      auto* theta = static_cast<scalar_t*>(entry.param) + lo;
      auto* psi = static_cast<opmath_t*>(entry.psi) + lo;
      const auto* grad = static_cast<const scalar_t*>(entry.grad) + lo;
      if constexpr (std::is_same_v<scalar_t, opmath_t>) {
        update_span_full(theta, psi, grad, hi - lo, coeffs, flags);
      } else {
        update_span_reduced(theta, psi, grad, hi - lo, coeffs, flags);
      }
      pos = entry_start[e] + hi;
    }
  });

  for (const auto& step : lists.steps) increment_step(step);
}

void cpu_kernel(const InnaLists& lists, const InnaHyper& h) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lists.params[0].scalar_type(),
                                  "inna_fused_cpu", [&] { cpu_kernel_typed<scalar_t>(lists, h); });
}

}  // namespace

// Which SIMD instruction set the CPU kernel was compiled for (reported by `python -m inna_fused info`).
std::string cpu_simd_level() {
#if defined(CPU_CAPABILITY_AVX2)
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
