// launch.cuh — the host side of every fused op's CUDA backend: run an optimizer's functor over
// the op's lists with the generic engine (multi_tensor_apply.cuh), on the current stream of the
// params' device. No host synchronisation anywhere (lr, steps, grad_scale and found_inf are read
// by the kernels), so a step can be captured in a CUDA graph. For .cu files only (it launches
// kernels); the emulation (testing/emulate.cpp) runs the same plan through launch_all itself.
#pragma once

#include "multi_tensor_apply.cuh"

#if !defined(__CUDA_ARCH__)
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>
#include <vector>

#include "../inna_op.h"

namespace inna_fused {
namespace mta {

// One fused step over `lists`: `Functor<param type, phase type>` is the per-thread work,
// `make_scalars(h, device)` its scalar arguments, `collect(lists, entries, late_steps)` the
// engine's entries of the lists it reads and writes (Depth of them per tensor).
template <template <typename, typename> class Functor, int Depth, typename MakeScalars,
          typename Collect>
void launch_fused(const InnaLists& lists, const InnaHyper& h, MakeScalars make_scalars,
                  Collect collect) {
  const at::Device device = lists.params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const auto scalars = make_scalars(h, device);
  using Scalars = std::decay_t<decltype(scalars)>;
  std::vector<TensorEntry<Depth>> entries;
  std::vector<TaggedStep> late_steps;
  collect(lists, entries, late_steps);
  dispatch_dtypes(lists, [&](auto p, auto s) {
    using F = Functor<typename decltype(p)::type, typename decltype(s)::type>;
    launch_all<bool(INNA_LARGE_METADATA)>(
        entries, late_steps,
        [&](const auto& meta, int64_t blocks, int block_size) {
          using Meta = std::decay_t<decltype(meta)>;
          multi_tensor_kernel<F, Meta, Scalars>
              <<<static_cast<unsigned>(blocks), block_size, 0, stream>>>(meta, scalars);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        },
        [&](const StepMeta& meta) {
          step_increment_kernel<<<1, step_launch_threads(meta.count), 0, stream>>>(
              meta, scalars.found_inf);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  });
}

}  // namespace mta
}  // namespace inna_fused
#endif  // !defined(__CUDA_ARCH__)
