// inna_cpu.cpp — CPU backend of inna_fused::fused_inna_: memory movement only, the math and the
// rounding are inna_math.h.
//
// Contract (after run_fused_inna's validation): one param dtype per call (float32, float64,
// float16, bfloat16); grads of the param dtype; one phase dtype per call: the opmath type
// (float32, float64 for float64 params) or bfloat16; each entry's param, grad and phase share one
// dense layout and are walked as flat arrays; size-0 entries move no data but their step still
// advances. The first step never reads the phase (it is initialised in the same pass).
//
// Work split: the list's elements, laid end to end, are cut into units of kChunk elements and
// at::parallel_for runs over the units, so a list of many small tensors parallelises like one
// large tensor and every thread gets the same number of elements. A unit may span several
// tensors or start mid-tensor, at any offset modulo the SIMD width. Results do not depend on it:
// every block of elements, full or partial, goes through the one `update_block` call site; the
// math uses explicit fused multiply-adds and the file is compiled with -ffp-contract=off, so no
// lane's arithmetic depends on its position; and the stochastic rounding's random bits are a
// function of the element's index in its tensor, not of the thread. Results are bitwise identical
// for any number of threads.

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
#include <cstring>
#include <tuple>
#include <type_traits>

namespace inna_fused {
namespace {

using at::vec::Vectorized;

constexpr int64_t kChunk = 1 << 15;  // elements per work unit

// One flat entry of the list with its per-tensor scalars.
struct Entry {
  void* param;
  void* phase;
  const void* grad;
  int64_t numel;
  double gamma;
  bool first_step;
  uint64_t theta_key, phase_key;  // stochastic rounding keys (inna_math.h)
};

// A block is two SIMD vectors of opmath_t: 16 elements for float, 8 for double. 16 is also the
// width of one Vectorized<BFloat16/Half>, so 16-bit data converts in one step.
template <typename opmath_t>
constexpr int64_t kBlock = 2 * Vectorized<opmath_t>::size();

// Load `count` (≤ kBlock) elements of `src` as two opmath vectors; lanes past `count` are 0.
template <typename opmath_t, typename src_t>
inline void load_block(const src_t* src, int64_t count, Vectorized<opmath_t>& a,
                       Vectorized<opmath_t>& b) {
  using Vec = Vectorized<opmath_t>;
  constexpr int64_t H = Vec::size();
  if constexpr (std::is_same_v<src_t, opmath_t>) {
    a = Vec::loadu(src, std::min(count, H));
    b = count > H ? Vec::loadu(src + H, count - H) : Vec(opmath_t(0));
  } else if constexpr (std::is_same_v<opmath_t, float>) {  // 16-bit data, float arithmetic
    std::tie(a, b) = at::vec::convert_to_float<src_t>(Vectorized<src_t>::loadu(src, count));
  } else {  // a bfloat16 phase of a float64 param
    opmath_t buf[kBlock<opmath_t>] = {};
    for (int64_t j = 0; j < count; ++j) buf[j] = static_cast<opmath_t>(src[j]);
    a = Vec::loadu(buf);
    b = Vec::loadu(buf + H);
  }
}

// Store the first `count` lanes of (a, b) into `dst`: stochastically rounded when asked (16-bit
// destinations), else rounded to nearest. `index` is the element's index in its tensor.
template <typename dst_t, typename opmath_t>
inline void store_block(dst_t* dst, int64_t count, const Vectorized<opmath_t>& a,
                        const Vectorized<opmath_t>& b, bool stochastic, uint64_t key,
                        uint64_t index) {
  using Vec = Vectorized<opmath_t>;
  constexpr int64_t H = Vec::size();
  constexpr int64_t L = kBlock<opmath_t>;
  if constexpr (std::is_same_v<dst_t, opmath_t>) {
    a.store(dst, std::min(count, H));
    if (count > H) b.store(dst + H, count - H);
  } else {
    if constexpr (std::is_same_v<opmath_t, float>) {
      if (!stochastic) {
        at::vec::convert_from_float<dst_t>(a, b).store(dst, count);
        return;
      }
    }
    opmath_t buf[L];
    a.store(buf);
    b.store(buf + H);
    dst_t out[L];
    // A fixed trip count over the whole block lets the compiler vectorise the hash.
    for (int64_t j = 0; j < L; ++j) {
      out[j] = round_store<dst_t>(buf[j], stochastic, key, index + static_cast<uint64_t>(j));
    }
    std::memcpy(dst, out, count * sizeof(dst_t));
  }
}

// The update of `n` consecutive elements of one tensor, starting at element `first` of it.
template <typename scalar_t, typename phase_t>
void update_span(const Entry& entry, int64_t first, int64_t n,
                 const InnaCoeffs<Vectorized<at::opmath_type<scalar_t>>>& c, const InnaFlags& f,
                 bool sr_theta, bool sr_phase) {
  using opmath_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<opmath_t>;
  constexpr int64_t L = kBlock<opmath_t>;
  scalar_t* theta = static_cast<scalar_t*>(entry.param) + first;
  phase_t* phase = static_cast<phase_t*>(entry.phase) + first;
  const scalar_t* grad = static_cast<const scalar_t*>(entry.grad) + first;
  auto update_block = [&](int64_t i, int64_t count) {
    Vec th0, th1, g0, g1, w0(opmath_t(0)), w1(opmath_t(0));
    load_block<opmath_t>(theta + i, count, th0, th1);
    load_block<opmath_t>(grad + i, count, g0, g1);
    if (!f.first_step) load_block<opmath_t>(phase + i, count, w0, w1);
    inna_update(th0, w0, g0, c, f);
    inna_update(th1, w1, g1, c, f);
    const auto index = static_cast<uint64_t>(first + i);
    store_block(theta + i, count, th0, th1, sr_theta, entry.theta_key, index);
    store_block(phase + i, count, w0, w1, sr_phase, entry.phase_key, index);
  };
  for (int64_t i = 0; i < n; i += L) update_block(i, std::min(L, n - i));
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

template <typename scalar_t, typename phase_t>
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
  constexpr bool kSixteenBitParam = sizeof(scalar_t) == 2;
  constexpr bool kSixteenBitPhase = sizeof(phase_t) == 2;
  const bool sr_theta = h.stochastic_rounding && kSixteenBitParam;
  const bool sr_phase = h.stochastic_rounding && kSixteenBitPhase;
  const auto seed = static_cast<uint64_t>(h.seed);

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
    const auto step = static_cast<uint64_t>(k);
    const auto numel = static_cast<uint64_t>(p.numel());
    entries.push_back({p.data_ptr(), lists.phases[i].data_ptr(), lists.grads[i].const_data_ptr(),
                       p.numel(), gamma, k == 0.0,
                       rounding_key(seed, step, numel, kThetaStream),
                       rounding_key(seed, step, numel, kPhaseStream)});
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
      update_span<scalar_t, phase_t>(entry, lo, hi - lo, coeffs, flags, sr_theta, sr_phase);
      pos = entry_start[e] + hi;
    }
  });

  for (const auto& step : lists.steps) increment_step(step);
}

void cpu_kernel(const InnaLists& lists, const InnaHyper& h) {
  const bool bf16_phase = lists.phases[0].scalar_type() == at::kBFloat16;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lists.params[0].scalar_type(),
                                  "inna_fused_cpu", [&] {
    if (bf16_phase) {
      cpu_kernel_typed<scalar_t, c10::BFloat16>(lists, h);
    } else {
      cpu_kernel_typed<scalar_t, at::opmath_type<scalar_t>>(lists, h);
    }
  });
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
