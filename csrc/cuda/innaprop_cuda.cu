// innaprop_cuda.cu — CUDA backend of inna_fused::fused_innaprop_: the INNAprop instantiations of
// the generic multi-tensor kernels (multi_tensor_apply.cuh) with INNAprop's functor
// (innaprop_functor.cuh), and their launches. As inna_cuda.cu: current stream, no host
// synchronisation, light includes.
#include "innaprop_functor.cuh"

#include "launch.cuh"

#if !defined(__CUDA_ARCH__)
#include <torch/library.h>
#endif

namespace inna_fused {
namespace mta {

#define INNAPROP_INSTANTIATE(scalar_t, phase_t, capacity)                                     \
  template __global__ void                                                                   \
  multi_tensor_kernel<InnapropFunctor<scalar_t, phase_t>, InnapropMeta<capacity>,            \
                      InnapropScalars>(const INNA_GRID_CONSTANT InnapropMeta<capacity>,      \
                                       const InnapropScalars);
#define INNAPROP_INSTANTIATE_SMALL(ctype, name, python_name)                                 \
  INNAPROP_INSTANTIATE(ctype, contract::opmath_t<ctype>, small_capacity<kInnapropDepth>())   \
  INNAPROP_INSTANTIATE(ctype, contract::LowPrecisionState, small_capacity<kInnapropDepth>())
#define INNAPROP_INSTANTIATE_LARGE(ctype, name, python_name)                                 \
  INNAPROP_INSTANTIATE(ctype, contract::opmath_t<ctype>, large_capacity<kInnapropDepth>())   \
  INNAPROP_INSTANTIATE(ctype, contract::LowPrecisionState, large_capacity<kInnapropDepth>())
INNA_FOR_EACH_PARAM_TYPE(INNAPROP_INSTANTIATE_SMALL)
#if INNA_LARGE_METADATA
INNA_FOR_EACH_PARAM_TYPE(INNAPROP_INSTANTIATE_LARGE)
#endif

}  // namespace mta

#if !defined(__CUDA_ARCH__)
namespace {

void cuda_kernel(const InnaLists& lists, const InnaHyper& h) {
  mta::launch_fused<mta::InnapropFunctor, mta::kInnapropDepth>(
      lists, h, mta::make_innaprop_scalars, mta::collect_innaprop_entries);
}

}  // namespace
#endif  // !defined(__CUDA_ARCH__)

}  // namespace inna_fused

#if !defined(__CUDA_ARCH__)
TORCH_LIBRARY_IMPL(inna_fused, CUDA, m) {
  m.impl("fused_innaprop_", &inna_fused::fused_innaprop<inna_fused::cuda_kernel>);
  m.impl("fused_innaprop_.tensor_lr",
         &inna_fused::fused_innaprop_tensor_lr<inna_fused::cuda_kernel>);
}
#endif
