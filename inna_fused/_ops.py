"""The compiled op: loading it, asking the dispatcher which devices it serves, its fake impl.

The op is `torch.ops.inna_fused.fused_inna_` (schema in csrc/op_schema.cpp). If the extension cannot
be imported, `import inna_fused` still works: `load_error()` says why, and the optimizer runs the
pure-PyTorch paths (a warning says so once, `fused=True` raises). Setting the environment variable
INNA_FUSED_DISABLE_NATIVE=1 skips loading it on purpose.
"""
from __future__ import annotations

import os

import torch

from ._contract import PARAM_DTYPES, allowed_phase_dtypes, dtype_names

BUILD_COMMAND = "pip install --no-build-isolation .  (from the inna_fused source tree, after torch)"
OP_NAME = "inna_fused::fused_inna_"
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}

_C = None
_LOAD_ERROR: str | None = None
if os.environ.get("INNA_FUSED_DISABLE_NATIVE", "0") == "1":
    _LOAD_ERROR = "disabled by INNA_FUSED_DISABLE_NATIVE=1"
else:
    try:
        from . import _C  # noqa: F401  (registers the op with the dispatcher)
    except ImportError as e:  # not built, or built against another torch
        _LOAD_ERROR = f"{type(e).__name__}: {e}"


def load_error() -> str | None:
    """Why the compiled extension is not loaded, or None if it is."""
    return _LOAD_ERROR


def _has_kernel(device_type: str) -> bool:
    key = _DISPATCH_KEYS[device_type]
    return _C is not None and torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, key)


# Asked once, at import (the extension registers all its kernels when it loads): a plain dict
# lookup is something torch.compile can trace, the dispatcher query is not.
_KERNEL_AVAILABLE = {device_type: _has_kernel(device_type) for device_type in _DISPATCH_KEYS}


INNAPROP_OP_NAME = "inna_fused::fused_innaprop_"


def _op_exists(op_name: str) -> bool:
    if _C is None:
        return False
    try:
        torch._C._dispatch_find_schema_or_throw(op_name, "")
    except RuntimeError:
        return False
    return True


def _op_has_kernel(op_name: str, device_type: str) -> bool:
    if not _op_exists(op_name):
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op_name, _DISPATCH_KEYS[device_type])
    except RuntimeError:
        return False


# {op name: {device type: has a kernel}}, asked once at import (traceable dict lookups).
_OP_KERNEL_AVAILABLE = {name: {d: _op_has_kernel(name, d) for d in _DISPATCH_KEYS}
                        for name in (OP_NAME, INNAPROP_OP_NAME)}


def op_available(op_name: str) -> bool:
    """True when the compiled extension registers `op_name` (e.g. INNAPROP_OP_NAME)."""
    return any(_OP_KERNEL_AVAILABLE.get(op_name, {}).values()) or (
        op_name in _OP_KERNEL_AVAILABLE and _op_exists(op_name))


def op_kernel_available(op_name: str, device_type: str) -> bool:
    """True when the op `op_name` has a kernel for this device type."""
    return _OP_KERNEL_AVAILABLE.get(op_name, {}).get(device_type, False)


def op_unavailable_reason(op_name: str, device_type: str) -> str:
    if _C is None:
        why = f"the compiled extension inna_fused._C could not be loaded ({_LOAD_ERROR})"
    elif not _op_exists(op_name):
        why = f"inna_fused._C has no op {op_name} (this build predates it)"
    else:
        why = f"inna_fused._C was built without a {device_type} kernel for {op_name}"
    return f"{why}. Build it with: {BUILD_COMMAND}"


def kernel_available(device_type: str) -> bool:
    """True when the fused op has a kernel for this device type (asked of the dispatcher)."""
    return _KERNEL_AVAILABLE.get(device_type, False)


def unavailable_reason(device_type: str) -> str:
    if _C is None:
        why = f"the compiled extension inna_fused._C could not be loaded ({_LOAD_ERROR})"
    else:
        why = f"inna_fused._C was built without a {device_type} kernel"
    return f"{why}. Build it with: {BUILD_COMMAND}"


def build_info() -> dict:
    """What was compiled: used by `python -m inna_fused info`."""
    return {
        "loaded": _C is not None,
        "load_error": _LOAD_ERROR,
        "cpu_kernel": kernel_available("cpu"),
        "cuda_kernel": kernel_available("cuda"),
        "innaprop_cpu_kernel": op_kernel_available(INNAPROP_OP_NAME, "cpu"),
        "innaprop_cuda_kernel": op_kernel_available(INNAPROP_OP_NAME, "cuda"),
        "cuda_compiled": bool(_C is not None and _C.cuda_compiled()),
        "cpu_simd": _C.cpu_simd_level() if _C is not None else None,
    }


def _check_fake_lists(name, lists: dict, lr, grad_scale, found_inf) -> None:
    """The fake impls' checks, shared by both ops: shape- and device-level only (the real ops
    validate values and memory). `lists` maps list names to tensor lists, "params" first. The
    device check also stops a call that mixes real tensors with a stray meta tensor (in a list,
    or as lr, grad_scale or found_inf): dispatch sends such a call to the fake impl, and
    returning would silently skip the step."""
    params, phases = lists["params"], lists["phases"]
    n = len(params)
    torch._check(all(len(tensors) == n for tensors in lists.values()),
                 lambda: f"{name}: lists must have equal lengths")
    if n == 0:
        return
    device = params[0].device
    for list_name, tensors in lists.items():
        for i, t in enumerate(tensors):
            torch._check_value(
                t.device == device,
                lambda: f"{name}: {list_name}[{i}] is on {t.device} but params[0] is on {device}")
            if list_name not in ("params", "steps"):
                torch._check(t.shape == params[i].shape,
                             lambda: f"{name}: {list_name}[{i}] shape differs from params[{i}]")
    for arg_name, t in (("lr", lr), ("grad_scale", grad_scale), ("found_inf", found_inf)):
        if isinstance(t, torch.Tensor):
            cpu_allowed = arg_name == "lr"  # as in the ops: a CPU lr serves any device
            torch._check_value(
                t.device == device or (cpu_allowed and t.device.type == "cpu"),
                lambda: f"{name}: {arg_name} is on {t.device} but params are on {device}")
    for i, (p, phase) in enumerate(zip(params, phases)):
        torch._check_type(
            p.dtype in PARAM_DTYPES,
            lambda: f"{name}: params[{i}] has dtype {p.dtype}; supported are "
                    f"{dtype_names(PARAM_DTYPES)}")
        torch._check_type(
            phase.dtype in allowed_phase_dtypes(p.dtype),
            lambda: f"{name}: phases[{i}] has dtype {phase.dtype}, which cannot hold the phase "
                    f"of a {p.dtype} param")


def _fake_fused_inna(params, grads, phases, steps, *, lr, alpha, beta, decay_power, weight_decay,
                     decoupled_weight_decay, paper_init, maximize, stochastic_rounding=True,
                     seed=0, grad_scale=None, found_inf=None):
    _check_fake_lists("inna_fused::fused_inna_",
                      {"params": params, "phases": phases, "grads": grads, "steps": steps},
                      lr, grad_scale, found_inf)


if _C is not None:
    torch.library.register_fake(OP_NAME)(_fake_fused_inna)
    torch.library.register_fake(OP_NAME + ".tensor_lr")(_fake_fused_inna)


def _fake_fused_innaprop(params, grads, phases, exp_avg_sqs, steps, *, lr, alpha, beta, sigma, eps,
                         weight_decay, maximize, stochastic_rounding=True, seed=0, grad_scale=None,
                         found_inf=None):
    _check_fake_lists(INNAPROP_OP_NAME, {"params": params, "grads": grads, "phases": phases,
                                         "exp_avg_sqs": exp_avg_sqs, "steps": steps},
                      lr, grad_scale, found_inf)


if op_available(INNAPROP_OP_NAME):
    torch.library.register_fake(INNAPROP_OP_NAME)(_fake_fused_innaprop)
    torch.library.register_fake(INNAPROP_OP_NAME + ".tensor_lr")(_fake_fused_innaprop)
