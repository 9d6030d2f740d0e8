// multi_tensor.cuh — multi-tensor apply for the fused INNA step: launch metadata, its host-side
// packing, and the work of one thread of one block. Host and device code.
//
// This header is compiled twice: by nvcc for the CUDA kernel (inna_cuda.cu) and by the host C++
// compiler for the CPU emulation of that kernel (inna_emulate.cpp), which runs the SAME packing
// and the SAME per-thread block function over an emulated grid, so that CI without a GPU tests
// everything but the launch itself.
//
// Contract (after run_fused_inna's validation, inna_op.h):
//   - one param dtype per call: float32, float64, float16 or bfloat16; grads of that dtype;
//   - one phase dtype per call: the opmath type (float32, float64 for float64 params) or bfloat16
//     for any param dtype; the arithmetic in float32 (float64 for float64 params);
//   - each entry's param, grad and phase are dense with one layout: three flat arrays of numel();
//   - steps[i] is a 1-element float32 or float64 tensor on the params' device holding k;
//   - lr (when a tensor on the params' device), grad_scale and found_inf are 1-element floating
//     tensors read in the kernel, never on the host, so the step can be captured in a CUDA graph;
//   - found_inf != 0: θ, the phase and the steps are left untouched;
//   - size-0 entries move no data but their step still advances;
//   - 16-bit stores (θ of float16/bfloat16 params, a bfloat16 phase) round stochastically when
//     stochastic_rounding is set, with the counter-based bits of inna_math.h keyed by (seed, k,
//     numel) and indexed by the element's position in its tensor (one 32-bit hash per element:
//     high half for θ, low half for the phase): the bits never depend on the chunking or the
//     thread, so results equal the CPU kernel's bit for bit.
//
// Work split. Every non-empty tensor is cut into chunks of kChunk elements; one block handles one
// chunk. A launch carries, in its kernel arguments, the addresses of up to Capacity tensors and the
// running chunk count after each of them (chunk_end); a block finds its tensor by binary search of
// chunk_end. The metadata therefore limits the tensors per launch, never the blocks: a launch
// covers all chunks of its tensors, and a new launch starts only when the metadata is full.
// Offsets are 64-bit (tensors beyond 2^31 elements); a chunk-local index fits in 32 bits.
//
// Two metadata sizes: kSmallCapacity tensors fit the classic 4 KB kernel-argument limit. Kernel
// arguments up to 32 KB need Volta or newer and a 12.1 driver; a CUDA >= 13 toolkit guarantees
// both (it builds for Turing or newer only and runs on 580+ drivers), so there a list of more
// tensors uses kLargeCapacity tensors per launch (inna_cuda.cu decides).
//
// Step counts. All blocks of a tensor must see the OLD k (γ_k and the first-step flag depend on
// it). A tensor of one chunk has one block: it bumps its own step after a block barrier, once all
// its threads have read k. Steps of multi-chunk and of empty tensors are bumped by a small kernel
// after the last main launch (stream order makes every main launch finish first).
//
// Memory access. When θ and g of a chunk are 16-byte aligned and the phase is aligned to its pack
// (the same element count: 4 to 32 bytes), every thread moves kILP vectors of 16 bytes of θ and
// of g (and the matching phase) per iteration, adjacent threads on adjacent vectors; the last
// count % kVec elements go through the scalar path. Otherwise (views at odd offsets) the
// whole chunk takes the scalar path, still kILP independent elements in flight per thread.
#pragma once

#include "../inna_math.h"

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

// The host half (packing, from at::Tensor lists) is hidden from nvcc's device passes, which then
// parse a few c10 headers instead of ATen's: most of the .cu build time is header parsing.
#if !defined(__CUDA_ARCH__)
#include "../inna_op.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <vector>
#endif

#if defined(__CUDACC__)
#define INNA_INLINE __forceinline__
#define INNA_UNROLL _Pragma("unroll")
#else
#define INNA_INLINE inline
#define INNA_UNROLL
#endif

namespace inna_fused {
namespace mta {

constexpr int64_t kChunk = int64_t(1) << 16;  // elements per block
constexpr int kBlockLarge = 512;              // threads per block when chunks are mostly full
constexpr int kBlockSmall = 128;              // ... when most tensors are far below one chunk
constexpr int kSmallCapacity = 88;            // tensors per launch, 4 KB of kernel arguments
constexpr int kLargeCapacity = 736;           // tensors per launch, 32 KB of kernel arguments
constexpr int kStepCapacity = 496;            // step pointers per step-increment launch
static_assert((int64_t(1) << 32) % kChunk == 0,
              "a chunk must not straddle a multiple of 2^32 elements (one rounding salt per chunk)");

// ---------------------------------------------------------------------------------------------
// Scalars read in the kernel.

enum ScalarKind : int32_t { kNoScalar = 0, kFloat32, kFloat64, kFloat16, kBFloat16 };

// A 1-element tensor the kernel reads (lr, grad_scale, found_inf), or none.
struct ScalarRef {
  const void* ptr;
  int32_t kind;
};

C10_HOST_DEVICE INNA_INLINE double read_scalar(const ScalarRef& r) {
  switch (r.kind) {
    case kFloat32: return static_cast<double>(*static_cast<const float*>(r.ptr));
    case kFloat64: return *static_cast<const double*>(r.ptr);
    case kFloat16: return static_cast<double>(static_cast<float>(*static_cast<const c10::Half*>(r.ptr)));
    case kBFloat16:
      return static_cast<double>(static_cast<float>(*static_cast<const c10::BFloat16*>(r.ptr)));
    default: return 0.0;
  }
}

// Step tensors are float32 or float64; the dtype rides in bit 0 of the address (both are at
// least 4-byte aligned), so one pointer per tensor is all the metadata a step needs.
using TaggedStep = uintptr_t;

C10_HOST_DEVICE INNA_INLINE double read_step(TaggedStep s) {
  return (s & 1) ? *reinterpret_cast<const double*>(s & ~TaggedStep(1))
                 : static_cast<double>(*reinterpret_cast<const float*>(s));
}

C10_HOST_DEVICE INNA_INLINE void increment_step(TaggedStep s) {
  if (s & 1) {
    *reinterpret_cast<double*>(s & ~TaggedStep(1)) += 1.0;
  } else {
    *reinterpret_cast<float*>(s) += 1.0f;
  }
}

// Everything but the tensor list, passed by value to every launch (104 bytes).
struct InnaScalars {
  double lr;            // used when lr_tensor.kind == kNoScalar (a Python float, or a CPU tensor)
  double alpha, beta, decay_power, weight_decay;
  ScalarRef lr_tensor, grad_scale, found_inf;
  int64_t seed;         // of the stochastic rounding's random bits
  bool paper_init, decoupled_wd, coupled_wd, maximize, stochastic_rounding;
};

// ---------------------------------------------------------------------------------------------
// Launch metadata: kernel arguments, so a captured CUDA graph keeps them and nothing has to be
// copied to the device before a launch.

template <int Capacity>
struct LaunchMeta {
  static constexpr int kCapacity = Capacity;
  void* param[Capacity];
  void* phase[Capacity];
  const void* grad[Capacity];
  TaggedStep step[Capacity];
  int64_t numel[Capacity];
  int32_t chunk_end[Capacity];  // chunks of tensors [0, t] of this launch (exclusive end of t)
  int32_t num_tensors;
};

struct StepMeta {
  TaggedStep step[kStepCapacity];
  int32_t count;
};

static_assert(sizeof(InnaScalars) == 104, "InnaScalars layout changed: recheck the argument budget");
static_assert(sizeof(LaunchMeta<kSmallCapacity>) + sizeof(InnaScalars) <= 4096,
              "small launch metadata must fit the 4 KB kernel-argument limit");
static_assert(sizeof(LaunchMeta<kLargeCapacity>) + sizeof(InnaScalars) <= 32764,
              "large launch metadata must fit the 32 KB kernel-argument limit");
static_assert(sizeof(StepMeta) + sizeof(InnaScalars) <= 4096,
              "step metadata must fit the 4 KB kernel-argument limit");

// Which tensor and which elements a block works on.
struct BlockWork {
  int32_t tensor;
  int64_t start;  // first element of the chunk inside the tensor
  int64_t count;  // elements in the chunk (kChunk except for a tensor's last chunk)
};

template <typename Meta>
C10_HOST_DEVICE INNA_INLINE BlockWork locate_block(const Meta& meta, int64_t block) {
  // First tensor whose chunk_end exceeds the block index.
  int32_t lo = 0, hi = meta.num_tensors - 1;
  while (lo < hi) {
    const int32_t mid = (lo + hi) / 2;
    if (meta.chunk_end[mid] > block) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  const int64_t first_chunk = lo == 0 ? 0 : meta.chunk_end[lo - 1];
  const int64_t start = (block - first_chunk) * kChunk;
  const int64_t remaining = meta.numel[lo] - start;
  return {lo, start, remaining < kChunk ? remaining : kChunk};
}

// ---------------------------------------------------------------------------------------------
// Per-thread work.

template <typename T> struct OpMath { using type = T; };
template <> struct OpMath<c10::Half> { using type = float; };
template <> struct OpMath<c10::BFloat16> { using type = float; };

// Independent 16-byte accesses (or scalars) per stream a thread keeps in flight: 64 bytes of θ per
// iteration for float32, 32 for the others, whose wider phase (16-bit params with a float32 phase)
// or double coefficients need the registers; with two 512-thread blocks per multiprocessor that is
// still several times the bytes in flight that saturate HBM.
template <typename scalar_t>
C10_HOST_DEVICE constexpr int ilp_for() {
  return sizeof(scalar_t) == 4 ? 4 : 2;
}

// N elements moved as one access, aligned to its size up to 16 bytes: nvcc emits one load/store of
// that width (two 128-bit ones for the 32-byte float32 phase packs of 16-bit params; 4 or 8 bytes
// for the bfloat16 phase packs of float64/float32 params). The host compiler sees a plain copy.
template <typename T, int N>
constexpr size_t pack_alignment() {
  return sizeof(T) * N >= 16 ? 16 : sizeof(T) * N;
}

template <typename T, int N>
struct alignas(pack_alignment<T, N>()) Pack {
  T val[N];
};

template <typename T, int N>
C10_HOST_DEVICE INNA_INLINE Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <typename T, int N>
C10_HOST_DEVICE INNA_INLINE void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

template <size_t kAlign>
C10_HOST_DEVICE INNA_INLINE bool aligned_to(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & (kAlign - 1)) == 0;
}

enum BlockPath : int32_t { kSkipped = 0, kVectorPath = 1, kScalarPath = 2 };

// Whether this call's steps are skipped (AMP found an inf/NaN in the grads).
C10_HOST_DEVICE INNA_INLINE bool skip_step(const InnaScalars& s) {
  return s.found_inf.kind != kNoScalar && read_scalar(s.found_inf) != 0.0;
}

// The work of thread `thread` of block `block` (of `block_size` threads) of a main launch: the
// update of its share of one chunk. Every quantity that depends on the tensor (k, γ_k, the flags,
// the rounding keys) is computed by each thread from the metadata, so the function needs no shared
// memory and the emulation can run threads one after another. scalar_t is the param dtype, phase_t
// the phase's (opmath_t or c10::BFloat16). Returns the path taken (for the emulation's tests).
template <typename scalar_t, typename phase_t, typename Meta>
C10_HOST_DEVICE INNA_INLINE int32_t inna_block_thread(int64_t block, int thread, int block_size,
                                                      const Meta& meta, const InnaScalars& s) {
  using opmath_t = typename OpMath<scalar_t>::type;
  static_assert(std::is_same_v<phase_t, opmath_t> || std::is_same_v<phase_t, c10::BFloat16>,
                "the phase is stored in the opmath type or in bfloat16");
  constexpr int kVec = 16 / sizeof(scalar_t);  // elements per 16-byte access of θ and g
  constexpr int kILP = ilp_for<scalar_t>();
  constexpr bool kTheta16 = sizeof(scalar_t) == 2;
  constexpr bool kPhase16 = std::is_same_v<phase_t, c10::BFloat16>;

  if (skip_step(s)) return kSkipped;
  const BlockWork work = locate_block(meta, block);
  const int32_t t = work.tensor;

  // Same formulas, in the same precision, as the CPU kernel (inna_cpu.cpp).
  const double k = read_step(meta.step[t]);
  const double lr = s.lr_tensor.kind != kNoScalar ? read_scalar(s.lr_tensor) : s.lr;
  const double gamma = s.decay_power == 0.0 ? lr : lr / pow(k + 1.0, s.decay_power);
  double grad_factor = 1.0;
  if (s.grad_scale.kind != kNoScalar) {
    // torch.amp.GradScaler.unscale_ rounds the reciprocal of the scale to float32.
    grad_factor = static_cast<float>(1.0 / read_scalar(s.grad_scale));
  }
  if (s.maximize) grad_factor = -grad_factor;
  InnaFlags flags{};
  flags.first_step = k == 0.0;
  flags.paper_init = s.paper_init;
  flags.scale_grad = s.grad_scale.kind != kNoScalar || s.maximize;
  flags.decoupled_wd = s.decoupled_wd;
  flags.coupled_wd = s.coupled_wd;
  const InnaCoeffs<opmath_t> c =
      make_coeffs<opmath_t, double>(gamma, s.alpha, s.beta, s.weight_decay, grad_factor);

  // The rounding key depends on the tensor and the step only; an element's bits on its index in
  // the whole tensor (work.start + i), so any chunking draws the same bits. A chunk (kChunk-aligned,
  // 2^16 elements) never straddles a multiple of 2^32, so the high half of the index, and with it
  // the salt, is the same for the whole chunk: random_bits(key, index) is then one mix32.
  const bool sr_theta = kTheta16 && s.stochastic_rounding;
  const bool sr_phase = kPhase16 && s.stochastic_rounding;
  const bool sr_any = sr_theta || sr_phase;
  const uint64_t first = static_cast<uint64_t>(work.start);
  const uint32_t salt =
      sr_any ? rounding_salt(rounding_key(static_cast<uint64_t>(s.seed), static_cast<uint64_t>(k),
                                          static_cast<uint64_t>(meta.numel[t])),
                             first)
             : 0u;

  scalar_t* theta = static_cast<scalar_t*>(meta.param[t]) + work.start;
  phase_t* phase = static_cast<phase_t*>(meta.phase[t]) + work.start;
  const scalar_t* grad = static_cast<const scalar_t*>(meta.grad[t]) + work.start;
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

// Whether the main launch advances a tensor's step (else the step-increment launch does).
C10_HOST_DEVICE INNA_INLINE bool step_advanced_in_block(int64_t numel) {
  return numel > 0 && numel <= kChunk;
}

// After a block barrier: a tensor of a single chunk has exactly this block, whose threads have
// all read k by now, so its thread 0 advances the step.
template <typename Meta>
C10_HOST_DEVICE INNA_INLINE void inna_block_finish(int64_t block, int thread, const Meta& meta,
                                                   const InnaScalars& s) {
  if (thread != 0 || skip_step(s)) return;
  const BlockWork work = locate_block(meta, block);
  if (step_advanced_in_block(meta.numel[work.tensor])) increment_step(meta.step[work.tensor]);
}

// One thread of a step-increment launch.
C10_HOST_DEVICE INNA_INLINE void step_increment_thread(int64_t index, const StepMeta& meta,
                                                       const InnaScalars& s) {
  if (index < meta.count && !skip_step(s)) increment_step(meta.step[index]);
}

#if !defined(__CUDA_ARCH__)
// ---------------------------------------------------------------------------------------------
// Host side: from the op's lists to launches. Shared by the CUDA launcher and the emulation.

struct TensorEntry {
  void* param;
  void* phase;
  const void* grad;
  TaggedStep step;
  int64_t numel;
};

// What a call launched (returned by the emulation so tests can check the packing).
struct LaunchStats {
  int64_t main_launches = 0;
  int64_t large_launches = 0;  // main launches that used the 32 KB metadata
  int64_t step_launches = 0;
  int64_t blocks = 0;
  int64_t small_block_launches = 0;  // main launches run with kBlockSmall threads per block
};

inline int64_t chunks_of(int64_t numel) { return (numel + kChunk - 1) / kChunk; }

inline ScalarKind scalar_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kFloat32;
    case at::kDouble: return kFloat64;
    case at::kHalf: return kFloat16;
    case at::kBFloat16: return kBFloat16;
    default: TORCH_CHECK(false, "inna_fused: unsupported scalar tensor dtype ", t);
  }
}

inline ScalarRef scalar_ref(const std::optional<at::Tensor>& t) {
  if (!t) return {nullptr, kNoScalar};
  return {t->const_data_ptr(), scalar_kind(t->scalar_type())};
}

inline TaggedStep tag_step(const at::Tensor& step) {
  const auto address = reinterpret_cast<uintptr_t>(step.data_ptr());
  return step.scalar_type() == at::kDouble ? (address | 1) : address;
}

// The scalar arguments. lr given as a tensor on the params' device is read in the kernel; a CPU
// lr tensor is read here (no device synchronisation involved).
inline InnaScalars make_scalars(const InnaHyper& h, const at::Device& device) {
  InnaScalars s{};
  s.lr = h.lr;
  s.lr_tensor = {nullptr, kNoScalar};
  if (h.lr_tensor) {
    if (h.lr_tensor->device() == device) {
      s.lr_tensor = scalar_ref(h.lr_tensor);
    } else {
      s.lr = h.lr_tensor->item<double>();
    }
  }
  s.alpha = h.alpha;
  s.beta = h.beta;
  s.decay_power = h.decay_power;
  s.weight_decay = h.weight_decay;
  s.grad_scale = scalar_ref(h.grad_scale);
  s.found_inf = scalar_ref(h.found_inf);
  s.paper_init = h.paper_init;
  s.decoupled_wd = h.decoupled_weight_decay && h.weight_decay != 0.0;
  s.coupled_wd = !h.decoupled_weight_decay && h.weight_decay != 0.0;
  s.maximize = h.maximize;
  s.seed = h.seed;
  s.stochastic_rounding = h.stochastic_rounding;
  return s;
}

// Threads per block for a launch: small tensors leave most threads of a 512-thread block idle and
// fewer of those blocks fit on a multiprocessor at once.
inline int block_size_for(int64_t elements, int64_t blocks) {
  return elements >= blocks * (kChunk / 8) ? kBlockLarge : kBlockSmall;
}

// Fill `meta` with entries [first, first + count); returns the number of blocks (chunks).
template <int Capacity>
int64_t fill_meta(LaunchMeta<Capacity>& meta, const TensorEntry* first, int count) {
  int64_t chunks = 0;
  for (int i = 0; i < count; ++i) {
    const TensorEntry& e = first[i];
    meta.param[i] = e.param;
    meta.phase[i] = e.phase;
    meta.grad[i] = e.grad;
    meta.step[i] = e.step;
    meta.numel[i] = e.numel;
    chunks += chunks_of(e.numel);
    meta.chunk_end[i] = static_cast<int32_t>(chunks);
  }
  meta.num_tensors = count;
  return chunks;
}

// Split the non-empty tensors into launches and hand each launch's metadata to `launch_main`
// (a callable taking (const LaunchMeta<C>&, int64_t blocks, int block_size) for either capacity),
// then the steps that no main launch advances to `launch_steps` (taking (const StepMeta&)).
// `late_steps`: steps of multi-chunk and of empty tensors. kLargeMetadata: whether launches of
// more than kSmallCapacity tensors may use the 32 KB metadata (a compile-time switch so that a
// toolkit without large kernel arguments never instantiates such a kernel).
template <bool kLargeMetadata, typename MainLaunch, typename StepLaunch>
LaunchStats launch_all(const std::vector<TensorEntry>& entries,
                       const std::vector<TaggedStep>& late_steps, MainLaunch&& launch_main,
                       StepLaunch&& launch_steps) {
  LaunchStats stats;
  constexpr int capacity = kLargeMetadata ? kLargeCapacity : kSmallCapacity;
  constexpr int64_t kMaxBlocks = std::numeric_limits<int32_t>::max();
  size_t begin = 0;
  while (begin < entries.size()) {
    // Take tensors while the metadata has room and the grid stays within 2^31 - 1 blocks.
    size_t end = begin;
    int64_t blocks = 0, elements = 0;
    while (end < entries.size() && end - begin < static_cast<size_t>(capacity)) {
      const int64_t more = chunks_of(entries[end].numel);
      TORCH_CHECK(more <= kMaxBlocks, "inna_fused: a tensor of ", entries[end].numel,
                  " elements exceeds the kernel's grid limit");
      if (blocks + more > kMaxBlocks) break;
      blocks += more;
      elements += entries[end].numel;
      ++end;
    }
    const int count = static_cast<int>(end - begin);
    const int block_size = block_size_for(elements, blocks);
    if (count <= kSmallCapacity) {
      LaunchMeta<kSmallCapacity> meta;
      fill_meta(meta, entries.data() + begin, count);
      launch_main(meta, blocks, block_size);
    } else if constexpr (kLargeMetadata) {
      auto meta = std::make_unique<LaunchMeta<kLargeCapacity>>();  // 32 KB: not on the stack
      fill_meta(*meta, entries.data() + begin, count);
      launch_main(*meta, blocks, block_size);
      ++stats.large_launches;
    }
    ++stats.main_launches;
    stats.blocks += blocks;
    stats.small_block_launches += block_size == kBlockSmall;
    begin = end;
  }
  for (size_t i = 0; i < late_steps.size(); i += kStepCapacity) {
    StepMeta meta;
    meta.count = static_cast<int32_t>(std::min<size_t>(kStepCapacity, late_steps.size() - i));
    std::copy_n(late_steps.begin() + i, meta.count, meta.step);
    launch_steps(meta);
    ++stats.step_launches;
  }
  return stats;
}

// From the op's lists: the non-empty tensors, and the steps the main launches do not advance.
inline void collect_entries(const InnaLists& lists, std::vector<TensorEntry>& entries,
                            std::vector<TaggedStep>& late_steps) {
  const size_t n = lists.params.size();
  entries.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = lists.params[i].numel();
    const TaggedStep step = tag_step(lists.steps[i]);
    if (numel > 0) {
      entries.push_back({lists.params[i].data_ptr(), lists.phases[i].data_ptr(),
                         lists.grads[i].const_data_ptr(), step, numel});
    }
    if (!step_advanced_in_block(numel)) late_steps.push_back(step);
  }
}

#endif  // !defined(__CUDA_ARCH__)

}  // namespace mta
}  // namespace inna_fused
