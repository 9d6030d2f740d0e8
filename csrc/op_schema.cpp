// op_schema.cpp — the schema of the fused INNA op (TORCH_LIBRARY) and the Sparse keys' kernels.
// The op's validation is inna_op.cpp, each backend's kernel registers itself (cpu/, cuda/).
#include "inna_op.h"

#include <torch/library.h>

namespace inna_fused {
namespace {

// A sparse tensor anywhere in the call routes dispatch to a Sparse key; validation rejects it
// there with the culprit's name instead of the dispatcher's "no kernel" error.
void sparse_kernel(const InnaLists&, const InnaHyper&) {
  TORCH_CHECK_TYPE(false, "inna_fused: sparse tensors are not supported");
}

}  // namespace
}  // namespace inna_fused

TORCH_LIBRARY_IMPL(inna_fused, SparseCPU, m) {
  m.impl("fused_inna_", &inna_fused::fused_inna<inna_fused::sparse_kernel>);
  m.impl("fused_inna_.tensor_lr", &inna_fused::fused_inna_tensor_lr<inna_fused::sparse_kernel>);
  m.impl("fused_innaprop_", &inna_fused::fused_innaprop<inna_fused::sparse_kernel>);
  m.impl("fused_innaprop_.tensor_lr",
         &inna_fused::fused_innaprop_tensor_lr<inna_fused::sparse_kernel>);
}

TORCH_LIBRARY_IMPL(inna_fused, SparseCUDA, m) {
  m.impl("fused_inna_", &inna_fused::fused_inna<inna_fused::sparse_kernel>);
  m.impl("fused_inna_.tensor_lr", &inna_fused::fused_inna_tensor_lr<inna_fused::sparse_kernel>);
  m.impl("fused_innaprop_", &inna_fused::fused_innaprop<inna_fused::sparse_kernel>);
  m.impl("fused_innaprop_.tensor_lr",
         &inna_fused::fused_innaprop_tensor_lr<inna_fused::sparse_kernel>);
}

// The schema, PyTorch conventions: in-place list op with a trailing underscore, one alias set per
// mutated list, hyper-parameters keyword-only, returns nothing (like aten::_fused_adam_).
TORCH_LIBRARY(inna_fused, m) {
  m.def(
      "fused_inna_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] phases, Tensor(c!)[] steps, "
      "*, float lr, float alpha, float beta, float decay_power, float weight_decay, "
      "bool decoupled_weight_decay, bool paper_init, bool maximize, "
      "bool stochastic_rounding=True, int seed=0, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  m.def(
      "fused_inna_.tensor_lr(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] phases, "
      "Tensor(c!)[] steps, *, Tensor lr, float alpha, float beta, float decay_power, "
      "float weight_decay, bool decoupled_weight_decay, bool paper_init, bool maximize, "
      "bool stochastic_rounding=True, int seed=0, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  // INNAprop (Bolte et al. 2024): INNA's phase with an RMSprop-scaled gradient; γ = lr.
  m.def(
      "fused_innaprop_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] phases, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] steps, *, float lr, float alpha, float beta, "
      "float sigma, float eps, float weight_decay, bool maximize, "
      "bool stochastic_rounding=True, int seed=0, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  m.def(
      "fused_innaprop_.tensor_lr(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] phases, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] steps, *, Tensor lr, float alpha, float beta, "
      "float sigma, float eps, float weight_decay, bool maximize, "
      "bool stochastic_rounding=True, int seed=0, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
}
