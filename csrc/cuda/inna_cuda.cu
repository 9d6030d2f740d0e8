// inna_cuda.cu — CUDA backend of inna_fused::fused_inna_: the INNA instantiations of the generic
// multi-tensor kernels and their launches.
//
// The launch plan (packing, block → (tensor, chunk) lookup, launch loop, step counts) is the
// generic multi_tensor_apply.cuh; the work of each thread is INNA's functor (inna_functor.cuh);
// both are shared with the CPU emulation that CI tests (testing/emulate.cpp). The launches are
// the generic launch.cuh's: current stream, no host synchronisation (a step can be captured in a
// CUDA graph). Includes stay light: no torch/extension.h, no ATen/cuda/CUDAContext.h.
#include "inna_functor.cuh"

// Host-only headers stay out of the device passes (see multi_tensor_apply.cuh); the kernels are
// instantiated explicitly below so that those passes need none of the host code.
#include "launch.cuh"  // the host side: launch_fused

#if !defined(__CUDA_ARCH__)
#include <torch/library.h>
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

void cuda_kernel(const InnaLists& lists, const InnaHyper& h) {
  mta::launch_fused<mta::InnaFunctor, mta::kInnaDepth>(lists, h, mta::make_scalars,
                                                       mta::collect_inna_entries);
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
