// multi_tensor_apply.cuh — the generic multi-tensor engine: one launch plan for any optimizer that
// updates Depth lists of equal-length tensors (param, grad, states...) elementwise, with torch's
// per-tensor step counts. It names no optimizer; an optimizer supplies a functor
// (inna_functor.cuh) and its scalar arguments. Host and device code.
//
// This header is compiled twice: by nvcc for the CUDA kernels (inna_cuda.cu) and by the host C++
// compiler for the CPU emulation of those kernels (testing/emulate.cpp), which runs the SAME
// packing, the SAME block → (tensor, chunk) lookup and the SAME functor over an emulated grid, so
// that CI without a GPU tests everything but the launch itself.
//
// Contract (as Apex's multi_tensor_apply.cuh):
//   - Lists. Entry i is Depth tensors of one numel (ptr[d][i], d = 0 for the param, then grad and
//     states in the op's list order) and a step tensor (1-element float32 or float64, holding k).
//     All tensors of a launch are on one device; each entry's tensors are dense with one layout, so
//     a functor walks them as flat arrays of numel() elements. Empty entries move no data.
//   - Work split. Every non-empty tensor is cut into chunks of kChunk elements; one block handles
//     one chunk. A launch carries, in its kernel arguments, the addresses of up to Capacity
//     entries and the running chunk count after each (chunk_end); a block finds its entry by
//     binary search of chunk_end (locate_block). The metadata limits the entries per launch, never
//     the blocks: a launch covers all chunks of its entries, and a new launch starts only when
//     the metadata is full or the grid would exceed 2^31 − 1 blocks.
//   - Capacity. kSmallCapacity entries fit the classic 4 KB kernel-argument limit. Kernel
//     arguments up to 32 KB need Volta or newer and a 12.1 driver; a CUDA >= 13 toolkit
//     guarantees both (it builds for Turing or newer only and runs on 580+ drivers), so there
//     (INNA_LARGE_METADATA) a list of more entries uses kLargeCapacity entries per launch.
//     Launches of more than 3 lists hold fewer entries (small_capacity, large_capacity).
//     fits_kernel_arguments() checks a functor's arguments against both budgets.
//   - 64-bit rules. Element offsets and numel are 64-bit (tensors beyond 2^31 elements); a
//     chunk-local index fits in 32 bits; a single tensor may have at most 2^31 − 1 chunks.
//   - Alignment. Pack<T, N> moves N elements as one access aligned to min(16, N·sizeof(T)) bytes;
//     a functor takes its vector path only when aligned_to() holds for every pointer of the chunk.
//   - Step counts. All blocks of a tensor must see the OLD k. A tensor of one chunk has one block:
//     it bumps its own step after a block barrier (block_finish), once all its threads have read
//     k. Steps of multi-chunk and of empty tensors are bumped by a step-increment launch after
//     the last main launch (stream order makes every main launch finish first).
//   - Skipping. When found_inf (a 1-element tensor read in the kernel) is non-zero, nothing is
//     written and no step advances: the functor returns at once and block_finish and the
//     step-increment launch skip too.
//   - Graph capture. Metadata travels as kernel arguments and scalars are read in the kernel:
//     nothing is copied to the device or read back before a launch.
//
// A functor is a type with
//   template <typename Meta> static C10_HOST_DEVICE int32_t block_thread(
//       int64_t block, int thread, int block_size, const Meta& meta, const Args& args);
//   static C10_HOST_DEVICE ScalarRef found_inf(const Args& args);
// block_thread is the work of one thread of one block; it must not use shared memory or
// barriers, so the emulation can run threads one after another.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstddef>
#include <cstdint>

// The host half (packing, from at::Tensor lists) is hidden from nvcc's device passes, which then
// parse a few c10 headers instead of ATen's: most of the .cu build time is header parsing.
#if !defined(__CUDA_ARCH__)
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <limits>
#include <memory>
#include <optional>
#include <vector>
#endif

#if defined(__CUDACC__)
#define INNA_INLINE __forceinline__
#define INNA_UNROLL _Pragma("unroll")
#else
#define INNA_INLINE inline
#define INNA_UNROLL
#endif

// Kernel arguments above 4 KB (see Capacity above): compiled only with a CUDA >= 13 toolkit.
#if defined(CUDART_VERSION) && CUDART_VERSION >= 13000
#define INNA_LARGE_METADATA 1
#define INNA_GRID_CONSTANT __grid_constant__
#else
#define INNA_LARGE_METADATA 0
#define INNA_GRID_CONSTANT
#endif

namespace inna_fused {
namespace mta {

constexpr int64_t kChunk = int64_t(1) << 16;  // elements per block
constexpr int kBlockLarge = 512;              // threads per block when chunks are mostly full
constexpr int kBlockSmall = 128;              // ... when most tensors are far below one chunk
constexpr int kSmallCapacity = 88;            // entries per launch, 4 KB of kernel arguments
constexpr int kLargeCapacity = 736;           // entries per launch, 32 KB of kernel arguments
constexpr int kStepCapacity = 496;            // step pointers per step-increment launch
constexpr size_t kSmallArgumentBytes = 4096;  // the kernel-argument budgets
constexpr size_t kLargeArgumentBytes = 32764;

// Entries per launch for Depth lists: the constants above for up to 3 lists (INNA's); for more,
// what fits a budget with 128 bytes left for the functor's arguments, a multiple of 8.
constexpr int capacity_for(size_t budget, int depth) {
  return static_cast<int>((budget - 128 - sizeof(int32_t)) /
                          (sizeof(void*) * depth + sizeof(uintptr_t) + sizeof(int64_t) +
                           sizeof(int32_t))) / 8 * 8;
}
template <int Depth>
constexpr int small_capacity() {
  return Depth <= 3 ? kSmallCapacity : capacity_for(kSmallArgumentBytes, Depth);
}
template <int Depth>
constexpr int large_capacity() {
  return Depth <= 3 ? kLargeCapacity : capacity_for(kLargeArgumentBytes, Depth);
}

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

// Whether a call is skipped (AMP found an inf/NaN in the grads).
C10_HOST_DEVICE INNA_INLINE bool skip_call(const ScalarRef& found_inf) {
  return found_inf.kind != kNoScalar && read_scalar(found_inf) != 0.0;
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

// ---------------------------------------------------------------------------------------------
// Launch metadata: kernel arguments, so a captured CUDA graph keeps them and nothing has to be
// copied to the device before a launch.

template <int Depth, int Capacity>
struct LaunchMeta {
  static constexpr int kDepth = Depth;
  static constexpr int kCapacity = Capacity;
  void* ptr[Depth][Capacity];   // ptr[d][t]: list d of entry t (0: the param)
  TaggedStep step[Capacity];
  int64_t numel[Capacity];
  int32_t chunk_end[Capacity];  // chunks of entries [0, t] of this launch (exclusive end of t)
  int32_t num_tensors;
};

struct StepMeta {
  TaggedStep step[kStepCapacity];
  int32_t count;
};

// Whether Depth lists with a functor's Args fit both kernel-argument budgets.
template <int Depth, typename Args>
constexpr bool fits_kernel_arguments() {
  return sizeof(LaunchMeta<Depth, small_capacity<Depth>()>) + sizeof(Args) <=
             kSmallArgumentBytes &&
         sizeof(LaunchMeta<Depth, large_capacity<Depth>()>) + sizeof(Args) <=
             kLargeArgumentBytes &&
         sizeof(StepMeta) + sizeof(ScalarRef) <= kSmallArgumentBytes;
}

// What a functor's block_thread did (the emulation counts it for the tests).
enum BlockPath : int32_t { kSkipped = 0, kVectorPath = 1, kScalarPath = 2 };

// Which entry and which elements a block works on.
struct BlockWork {
  int32_t tensor;
  int64_t start;  // first element of the chunk inside the tensor
  int64_t count;  // elements in the chunk (kChunk except for a tensor's last chunk)
};

template <typename Meta>
C10_HOST_DEVICE INNA_INLINE BlockWork locate_block(const Meta& meta, int64_t block) {
  // First entry whose chunk_end exceeds the block index.
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
// Memory access helpers for functors.

// N elements moved as one access, aligned to its size up to 16 bytes: nvcc emits one load/store of
// that width (two 128-bit ones for 32-byte packs; 4 or 8 bytes for small packs). The host
// compiler sees a plain copy.
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

// ---------------------------------------------------------------------------------------------
// Step counts.

// Whether the main launch advances a tensor's step (else the step-increment launch does).
C10_HOST_DEVICE INNA_INLINE bool step_advanced_in_block(int64_t numel) {
  return numel > 0 && numel <= kChunk;
}

// After a block barrier: a tensor of a single chunk has exactly this block, whose threads have
// all read k by now, so its thread 0 advances the step.
template <typename Meta>
C10_HOST_DEVICE INNA_INLINE void block_finish(int64_t block, int thread, const Meta& meta,
                                              const ScalarRef& found_inf) {
  if (thread != 0 || skip_call(found_inf)) return;
  const BlockWork work = locate_block(meta, block);
  if (step_advanced_in_block(meta.numel[work.tensor])) increment_step(meta.step[work.tensor]);
}

// One thread of a step-increment launch.
C10_HOST_DEVICE INNA_INLINE void step_increment_thread(int64_t index, const StepMeta& meta,
                                                       const ScalarRef& found_inf) {
  if (index < meta.count && !skip_call(found_inf)) increment_step(meta.step[index]);
}

// Threads of a step-increment launch of `count` steps (whole warps).
C10_HOST_DEVICE INNA_INLINE int step_launch_threads(int32_t count) { return (count + 31) / 32 * 32; }

#if defined(__CUDACC__)
// ---------------------------------------------------------------------------------------------
// The kernels. __grid_constant__: the metadata stays in the constant parameter bank, indexed in
// place rather than copied to per-thread local memory. A .cu instantiates them explicitly for its
// functors (its device passes see none of the host code that would instantiate them implicitly).

template <typename Functor, typename Meta, typename Args>
__global__ void __launch_bounds__(kBlockLarge, 2)
    multi_tensor_kernel(const INNA_GRID_CONSTANT Meta meta, const Args args) {
  Functor::block_thread(blockIdx.x, threadIdx.x, blockDim.x, meta, args);
  __syncthreads();  // every thread has read k before a single-chunk tensor's step moves
  block_finish(blockIdx.x, threadIdx.x, meta, Functor::found_inf(args));
}

// static: every .cu that launches it (one per optimizer) gets its own copy, no duplicate symbol.
static __global__ void step_increment_kernel(const INNA_GRID_CONSTANT StepMeta meta,
                                             const ScalarRef found_inf) {
  step_increment_thread(threadIdx.x, meta, found_inf);
}
#endif  // defined(__CUDACC__)

#if !defined(__CUDA_ARCH__)
// ---------------------------------------------------------------------------------------------
// Host side: from lists of tensors to launches. Shared by the CUDA launcher and the emulation.

template <int Depth>
struct TensorEntry {
  void* ptr[Depth];
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

// The scalar arguments every optimizer's functor takes, from its op's hyper-parameters (`Hyper`:
// lr, lr_tensor, grad_scale, found_inf, seed, maximize, stochastic_rounding). lr given as a tensor
// on the params' device is read in the kernel; a CPU lr tensor is read here (no device
// synchronisation involved).
template <typename Scalars, typename Hyper>
void fill_common_scalars(Scalars& s, const Hyper& h, const at::Device& device) {
  s.lr = h.lr;
  s.lr_tensor = {nullptr, kNoScalar};
  if (h.lr_tensor) {
    if (h.lr_tensor->device() == device) {
      s.lr_tensor = scalar_ref(h.lr_tensor);
    } else {
      s.lr = h.lr_tensor->template item<double>();
    }
  }
  s.grad_scale = scalar_ref(h.grad_scale);
  s.found_inf = scalar_ref(h.found_inf);
  s.seed = h.seed;
  s.maximize = h.maximize;
  s.stochastic_rounding = h.stochastic_rounding;
}

inline TaggedStep tag_step(const at::Tensor& step) {
  const auto address = reinterpret_cast<uintptr_t>(step.data_ptr());
  return step.scalar_type() == at::kDouble ? (address | 1) : address;
}

// Threads per block for a launch: small tensors leave most threads of a 512-thread block idle and
// fewer of those blocks fit on a multiprocessor at once.
inline int block_size_for(int64_t elements, int64_t blocks) {
  return elements >= blocks * (kChunk / 8) ? kBlockLarge : kBlockSmall;
}

// Fill `meta` with entries [first, first + count); returns the number of blocks (chunks).
template <int Depth, int Capacity>
int64_t fill_meta(LaunchMeta<Depth, Capacity>& meta, const TensorEntry<Depth>* first, int count) {
  int64_t chunks = 0;
  for (int i = 0; i < count; ++i) {
    const TensorEntry<Depth>& e = first[i];
    for (int d = 0; d < Depth; ++d) meta.ptr[d][i] = e.ptr[d];
    meta.step[i] = e.step;
    meta.numel[i] = e.numel;
    chunks += chunks_of(e.numel);
    meta.chunk_end[i] = static_cast<int32_t>(chunks);
  }
  meta.num_tensors = count;
  return chunks;
}

// The launch loop. Splits the non-empty entries into launches and hands each launch's metadata
// to `launch_main` (a callable taking (const LaunchMeta<Depth, C>&, int64_t blocks, int
// block_size) for either capacity), then the steps that no main launch advances to
// `launch_steps` (taking (const StepMeta&)). `late_steps`: steps of multi-chunk and of empty
// tensors. kLargeMetadata: whether launches of more than kSmallCapacity entries may use the
// 32 KB metadata (a compile-time switch so that a toolkit without large kernel arguments never
// instantiates such a kernel).
template <bool kLargeMetadata, int Depth, typename MainLaunch, typename StepLaunch>
LaunchStats launch_all(const std::vector<TensorEntry<Depth>>& entries,
                       const std::vector<TaggedStep>& late_steps, MainLaunch&& launch_main,
                       StepLaunch&& launch_steps) {
  LaunchStats stats;
  constexpr int kSmall = small_capacity<Depth>();
  constexpr int kLarge = large_capacity<Depth>();
  constexpr int capacity = kLargeMetadata ? kLarge : kSmall;
  constexpr int64_t kMaxBlocks = std::numeric_limits<int32_t>::max();
  size_t begin = 0;
  while (begin < entries.size()) {
    // Take entries while the metadata has room and the grid stays within 2^31 - 1 blocks.
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
    if (count <= kSmall) {
      LaunchMeta<Depth, kSmall> meta;
      fill_meta(meta, entries.data() + begin, count);
      launch_main(meta, blocks, block_size);
    } else if constexpr (kLargeMetadata) {
      // 32 KB: not on the stack
      auto meta = std::make_unique<LaunchMeta<Depth, kLarge>>();
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

// From Depth equal-length lists (list 0 gives numel) and their steps: the non-empty entries, and
// the steps the main launches do not advance.
template <int Depth>
void collect_entries(const std::array<const std::vector<at::Tensor>*, Depth>& lists,
                     const std::vector<at::Tensor>& steps,
                     std::vector<TensorEntry<Depth>>& entries,
                     std::vector<TaggedStep>& late_steps) {
  const size_t n = steps.size();
  entries.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = (*lists[0])[i].numel();
    const TaggedStep step = tag_step(steps[i]);
    if (numel > 0) {
      TensorEntry<Depth> e{};
      for (int d = 0; d < Depth; ++d) e.ptr[d] = (*lists[d])[i].data_ptr();
      e.step = step;
      e.numel = numel;
      entries.push_back(e);
    }
    if (!step_advanced_in_block(numel)) late_steps.push_back(step);
  }
}

// The emulated grid: for each block, every thread's share of the chunk, then (the block barrier)
// every thread's block_finish. `on_thread(block, thread, result)` sees each block_thread result.
template <typename Functor, typename Meta, typename Args, typename OnThread>
void emulate_main_launch(const Meta& meta, int64_t blocks, int block_size, const Args& args,
                         OnThread&& on_thread) {
  for (int64_t block = 0; block < blocks; ++block) {
    for (int thread = 0; thread < block_size; ++thread) {
      on_thread(block, thread, Functor::block_thread(block, thread, block_size, meta, args));
    }
    for (int thread = 0; thread < block_size; ++thread) {
      block_finish(block, thread, meta, Functor::found_inf(args));
    }
  }
}

inline void emulate_step_launch(const StepMeta& meta, const ScalarRef& found_inf) {
  const int threads = step_launch_threads(meta.count);
  for (int thread = 0; thread < threads; ++thread) step_increment_thread(thread, meta, found_inf);
}

#endif  // !defined(__CUDA_ARCH__)

}  // namespace mta
}  // namespace inna_fused
