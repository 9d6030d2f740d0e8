// inna_cuda.cu — CUDA backend of inna_fused::fused_inna_: the kernels and their launches.
//
// The packing of the lists into launches and the work of each thread are in multi_tensor.cuh
// (shared with the CPU emulation that CI tests); the arithmetic is inna_math.h. This file only
// launches: on the current stream of the params' device, no host synchronisation anywhere (lr,
// steps, grad_scale and found_inf are read by the kernels), so a step can be captured in a CUDA
// graph. Includes stay light: no torch/extension.h, no ATen/cuda/CUDAContext.h.
#include "multi_tensor.cuh"

// Host-only headers stay out of the device passes (see multi_tensor.cuh); the kernels are
// instantiated explicitly below so that those passes need none of the host code.
#if !defined(__CUDA_ARCH__)
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>
#endif

// Kernel arguments above 4 KB need CUDA >= 12.1, Volta or newer and a driver >= 12.1. A CUDA 13
// toolkit guarantees all three (it targets sm_75+ and needs a 580 driver), so the 32 KB metadata
// is compiled only there; older toolkits use 4 KB launches throughout.
#if defined(CUDART_VERSION) && CUDART_VERSION >= 13000
#define INNA_LARGE_METADATA 1
#define INNA_GRID_CONSTANT __grid_constant__
#else
#define INNA_LARGE_METADATA 0
#define INNA_GRID_CONSTANT
#endif

namespace inna_fused {
namespace mta {

// __grid_constant__: the metadata stays in the constant parameter bank, indexed in place rather
// than copied to per-thread local memory.
template <typename scalar_t, typename phase_t, typename Meta>
__global__ void __launch_bounds__(kBlockLarge, 2)
    inna_multi_tensor_kernel(const INNA_GRID_CONSTANT Meta meta, const InnaScalars scalars) {
  inna_block_thread<scalar_t, phase_t>(blockIdx.x, threadIdx.x, blockDim.x, meta, scalars);
  __syncthreads();  // every thread has read k before a single-chunk tensor's step moves
  inna_block_finish(blockIdx.x, threadIdx.x, meta, scalars);
}

__global__ void inna_step_increment_kernel(const INNA_GRID_CONSTANT StepMeta meta,
                                           const InnaScalars scalars) {
  step_increment_thread(threadIdx.x, meta, scalars);
}

// Each param dtype with its two phase dtypes: the opmath type and bfloat16.
#define INNA_INSTANTIATE(scalar_t, phase_t, capacity)                                        \
  template __global__ void inna_multi_tensor_kernel<scalar_t, phase_t, LaunchMeta<capacity>>( \
      const INNA_GRID_CONSTANT LaunchMeta<capacity>, const InnaScalars);
#define INNA_INSTANTIATE_ALL(capacity)                   \
  INNA_INSTANTIATE(float, float, capacity)               \
  INNA_INSTANTIATE(float, c10::BFloat16, capacity)       \
  INNA_INSTANTIATE(double, double, capacity)             \
  INNA_INSTANTIATE(double, c10::BFloat16, capacity)      \
  INNA_INSTANTIATE(c10::Half, float, capacity)           \
  INNA_INSTANTIATE(c10::Half, c10::BFloat16, capacity)   \
  INNA_INSTANTIATE(c10::BFloat16, float, capacity)       \
  INNA_INSTANTIATE(c10::BFloat16, c10::BFloat16, capacity)
INNA_INSTANTIATE_ALL(kSmallCapacity)
#if INNA_LARGE_METADATA
INNA_INSTANTIATE_ALL(kLargeCapacity)
#endif

}  // namespace mta

#if !defined(__CUDA_ARCH__)
namespace {

using namespace mta;

template <typename scalar_t, typename phase_t>
void launch_typed(const InnaLists& lists, const InnaScalars& scalars, cudaStream_t stream) {
  std::vector<TensorEntry> entries;
  std::vector<TaggedStep> late_steps;
  collect_entries(lists, entries, late_steps);
  launch_all<bool(INNA_LARGE_METADATA)>(
      entries, late_steps,
      [&](const auto& meta, int64_t blocks, int block_size) {
        using Meta = std::decay_t<decltype(meta)>;
        inna_multi_tensor_kernel<scalar_t, phase_t, Meta>
            <<<static_cast<unsigned>(blocks), block_size, 0, stream>>>(meta, scalars);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      },
      [&](const StepMeta& meta) {
        const int threads = (meta.count + 31) / 32 * 32;
        inna_step_increment_kernel<<<1, threads, 0, stream>>>(meta, scalars);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

// The phase is either in the opmath type or in bfloat16 (run_fused_inna checked which).
template <typename scalar_t>
void launch_phase(const InnaLists& lists, const InnaScalars& scalars, cudaStream_t stream) {
  if (lists.phases[0].scalar_type() == at::kBFloat16) {
    launch_typed<scalar_t, c10::BFloat16>(lists, scalars, stream);
  } else {
    launch_typed<scalar_t, typename OpMath<scalar_t>::type>(lists, scalars, stream);
  }
}

void cuda_kernel(const InnaLists& lists, const InnaHyper& h) {
  const at::Device device = lists.params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const InnaScalars scalars = make_scalars(h, device);
  switch (lists.params[0].scalar_type()) {
    case at::kFloat: launch_phase<float>(lists, scalars, stream); break;
    case at::kDouble: launch_phase<double>(lists, scalars, stream); break;
    case at::kHalf: launch_phase<c10::Half>(lists, scalars, stream); break;
    case at::kBFloat16: launch_phase<c10::BFloat16>(lists, scalars, stream); break;
    default: TORCH_CHECK(false, "inna_fused (CUDA): unsupported dtype ", lists.params[0].scalar_type());
  }
}

}  // namespace
#endif  // !defined(__CUDA_ARCH__)

}  // namespace inna_fused

#if !defined(__CUDA_ARCH__)
TORCH_LIBRARY_IMPL(inna_fused, CUDA, m) {
  m.impl("fused_inna_", &inna_fused::fused_inna<inna_fused::cuda_kernel>);
  m.impl("fused_inna_.tensor_lr", &inna_fused::fused_inna_tensor_lr<inna_fused::cuda_kernel>);
}
#endif
