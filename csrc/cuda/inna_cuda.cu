// inna_cuda.cu — CUDA backend of inna_fused::fused_inna_: the INNA instantiations of the generic
// multi-tensor kernels and their launches.
//
// The launch plan (packing, block → (tensor, chunk) lookup, launch loop, step counts) is the
// generic multi_tensor_apply.cuh; the work of each thread is INNA's functor (inna_functor.cuh);
// both are shared with the CPU emulation that CI tests (testing/emulate.cpp). This file only
// launches: on the current stream of the params' device, no host synchronisation anywhere (lr,
// steps, grad_scale and found_inf are read by the kernels), so a step can be captured in a CUDA
// graph. Includes stay light: no torch/extension.h, no ATen/cuda/CUDAContext.h.
#include "inna_functor.cuh"

// Host-only headers stay out of the device passes (see multi_tensor_apply.cuh); the kernels are
// instantiated explicitly below so that those passes need none of the host code.
#if !defined(__CUDA_ARCH__)
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>
#endif

namespace inna_fused {
namespace mta {

// Each param dtype (contract.h) with its two phase dtypes: the opmath type and bfloat16.
#define INNA_INSTANTIATE(scalar_t, phase_t, capacity)                                 \
  template __global__ void                                                           \
  multi_tensor_kernel<InnaFunctor<scalar_t, phase_t>, InnaMeta<capacity>, InnaScalars>( \
      const INNA_GRID_CONSTANT InnaMeta<capacity>, const InnaScalars);
#define INNA_INSTANTIATE_SMALL(ctype, name, python_name)             \
  INNA_INSTANTIATE(ctype, contract::opmath_t<ctype>, kSmallCapacity) \
  INNA_INSTANTIATE(ctype, contract::LowPrecisionState, kSmallCapacity)
#define INNA_INSTANTIATE_LARGE(ctype, name, python_name)             \
  INNA_INSTANTIATE(ctype, contract::opmath_t<ctype>, kLargeCapacity) \
  INNA_INSTANTIATE(ctype, contract::LowPrecisionState, kLargeCapacity)
INNA_FOR_EACH_PARAM_TYPE(INNA_INSTANTIATE_SMALL)
#if INNA_LARGE_METADATA
INNA_FOR_EACH_PARAM_TYPE(INNA_INSTANTIATE_LARGE)
#endif

}  // namespace mta

#if !defined(__CUDA_ARCH__)
namespace {

using namespace mta;

template <typename scalar_t, typename phase_t>
void launch_typed(const InnaLists& lists, const InnaScalars& scalars, cudaStream_t stream) {
  std::vector<TensorEntry<kInnaDepth>> entries;
  std::vector<TaggedStep> late_steps;
  collect_inna_entries(lists, entries, late_steps);
  launch_all<bool(INNA_LARGE_METADATA)>(
      entries, late_steps,
      [&](const auto& meta, int64_t blocks, int block_size) {
        using Meta = std::decay_t<decltype(meta)>;
        multi_tensor_kernel<InnaFunctor<scalar_t, phase_t>, Meta, InnaScalars>
            <<<static_cast<unsigned>(blocks), block_size, 0, stream>>>(meta, scalars);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      },
      [&](const StepMeta& meta) {
        step_increment_kernel<<<1, step_launch_threads(meta.count), 0, stream>>>(
            meta, scalars.found_inf);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

void cuda_kernel(const InnaLists& lists, const InnaHyper& h) {
  const at::Device device = lists.params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const InnaScalars scalars = make_scalars(h, device);
  dispatch_dtypes(lists, [&](auto p, auto s) {
    launch_typed<typename decltype(p)::type, typename decltype(s)::type>(lists, scalars, stream);
  });
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
