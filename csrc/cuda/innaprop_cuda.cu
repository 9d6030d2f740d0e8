// innaprop_cuda.cu — CUDA backend of inna_fused::fused_innaprop_: the INNAprop instantiations of
// the generic multi-tensor kernels (multi_tensor_apply.cuh) with INNAprop's functor
// (innaprop_functor.cuh), and their launches. As inna_cuda.cu: current stream, no host
// synchronisation, light includes.
#include "innaprop_functor.cuh"

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

using namespace mta;

template <typename scalar_t, typename phase_t>
void launch_typed(const InnaLists& lists, const InnapropScalars& scalars, cudaStream_t stream) {
  std::vector<TensorEntry<kInnapropDepth>> entries;
  std::vector<TaggedStep> late_steps;
  collect_innaprop_entries(lists, entries, late_steps);
  launch_all<bool(INNA_LARGE_METADATA)>(
      entries, late_steps,
      [&](const auto& meta, int64_t blocks, int block_size) {
        using Meta = std::decay_t<decltype(meta)>;
        multi_tensor_kernel<InnapropFunctor<scalar_t, phase_t>, Meta, InnapropScalars>
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
  const InnapropScalars scalars = make_innaprop_scalars(h, device);
  dispatch_dtypes(lists, [&](auto p, auto s) {
    launch_typed<typename decltype(p)::type, typename decltype(s)::type>(lists, scalars, stream);
  });
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
