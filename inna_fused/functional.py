"""Functional INNA: `inna(...)` updates lists of params and their ψ and step tensors in place.

Layering (as in torch.optim): the `INNA` class gathers lists from its param groups and state and
calls `inna()`; `inna()` validates everything, groups tensors by (device, dtype) and runs one of
three implementations on each group:

- "fused":     the compiled multi-tensor kernel (csrc/), one call per group;
- "foreach":   torch._foreach_* ops (a few passes over memory, temporaries per step);
- "reference": a Python loop over `reference.inna_reference_` (eq. (12), one tensor at a time).

Validation happens for every tensor of every group before the first write: a bad input anywhere
raises and leaves all params, ψ and steps untouched.
"""
from __future__ import annotations

import bisect
import math
import sys
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _ops
from .reference import PSI_INITS, inna_reference_, psi_dtype, step_size

IMPLS = ("fused", "foreach", "reference")
_PARAM_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_hyperparameters(lr, alpha, beta, decay_power, weight_decay, psi_init) -> None:
    """Raise ValueError naming the first invalid hyper-parameter."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr as a tensor must have one element, got shape {tuple(lr.shape)}")
        if not lr.is_floating_point():
            raise TypeError(f"lr as a tensor must be floating point, got {lr.dtype}")
        if lr.device.type == "cpu" and not torch.compiler.is_compiling():
            lr_value = float(lr)
            if not (math.isfinite(lr_value) and lr_value >= 0):
                raise ValueError(f"Invalid lr: {lr_value} (need finite lr >= 0)")
    elif not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"Invalid lr: {lr} (need finite lr >= 0)")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"Invalid alpha: {alpha} (need finite alpha > 0)")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"Invalid beta: {beta} (need finite beta > 0)")
    if not (math.isfinite(decay_power) and decay_power >= 0):
        raise ValueError(f"Invalid decaypower: {decay_power} (need finite decaypower >= 0)")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"Invalid weight_decay: {weight_decay} (need finite weight_decay >= 0)")
    if psi_init not in PSI_INITS:
        raise ValueError(f"Invalid psi_init: {psi_init!r} (choose one of {PSI_INITS})")


def _span(t: Tensor) -> tuple[int, int]:
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def _overlaps_itself(t: Tensor) -> bool:
    """What at::has_internal_overlap calls certain: a size > 1 dimension of stride 0 (expand())."""
    return any(stride == 0 and size > 1 for size, stride in zip(t.shape, t.stride()))


def check_tensors(params: Sequence[Tensor], grads: Sequence[Tensor], psis: Sequence[Tensor],
                  steps: Sequence[Tensor], *, fused: bool = False) -> None:
    """Check every tensor of a call (the compiled op repeats these checks in C++).

    Step counts live on their param's device, or on the CPU unless `fused` (the compiled op
    reads them on the device).
    """
    n = len(params)
    if not (len(grads) == len(psis) == len(steps) == n):
        raise ValueError(f"INNA: lists must have equal lengths, got params={n} grads={len(grads)} "
                         f"psis={len(psis)} steps={len(steps)}")
    compiling = torch.compiler.is_compiling()
    written, read = [], []
    for i, (p, g, psi, step) in enumerate(zip(params, grads, psis, steps)):
        for list_name, t in (("params", p), ("grads", g), ("psis", psi), ("steps", step)):
            if not isinstance(t, Tensor):
                raise TypeError(f"INNA: {list_name}[{i}] is {type(t).__name__}, not a Tensor")
        if p.dtype not in _PARAM_DTYPES:
            hint = " (complex params are updated through torch.view_as_real)" if p.is_complex() else ""
            raise TypeError(f"INNA: params[{i}] has dtype {p.dtype}; supported are float32, "
                            f"float64, float16 and bfloat16{hint}")
        if p.layout != torch.strided:
            raise TypeError(f"INNA: params[{i}] has layout {p.layout}; only strided params")
        if g.is_sparse or g.layout != torch.strided:
            raise TypeError(f"INNA: grads[{i}] is sparse; INNA does not support sparse gradients")
        if g.dtype != p.dtype:
            raise TypeError(f"INNA: grads[{i}] has dtype {g.dtype} but its param has {p.dtype}")
        if g.device != p.device:
            raise ValueError(f"INNA: grads[{i}] is on {g.device} but its param is on {p.device}")
        if g.shape != p.shape:
            raise ValueError(f"INNA: grads[{i}] has shape {tuple(g.shape)} but its param has "
                             f"shape {tuple(p.shape)}")
        if psi.layout != torch.strided:
            raise TypeError(f"INNA: psis[{i}] has layout {psi.layout}; psi must be strided")
        if psi.dtype != psi_dtype(p.dtype):
            raise TypeError(f"INNA: psis[{i}] has dtype {psi.dtype} but a {p.dtype} param needs "
                            f"a {psi_dtype(p.dtype)} psi")
        if psi.device != p.device or psi.shape != p.shape:
            raise ValueError(f"INNA: psis[{i}] ({tuple(psi.shape)} on {psi.device}) does not "
                             f"match its param ({tuple(p.shape)} on {p.device})")
        # float16/bfloat16 counts stop growing at 2048/256 steps, so only float32/float64 count.
        if step.numel() != 1 or step.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"INNA: steps[{i}] must be a one-element float32 or float64 tensor, "
                            f"got {step.dtype} of shape {tuple(step.shape)}")
        if step.device != p.device and (fused or step.device.type != "cpu"):
            where = "its param's device" if fused else "its param's device or the CPU"
            raise ValueError(f"INNA: steps[{i}] is on {step.device} but must be on {where} "
                             f"({p.device})")
        if compiling:
            continue
        if p.numel() > 0:
            for list_name, t in (("params", p), ("psis", psi)):
                if _overlaps_itself(t):
                    raise ValueError(f"INNA: {list_name}[{i}] has internally overlapping memory "
                                     "(e.g. expand()); the step would write one element twice")
            written += [(*_span(p), f"params[{i}]"), (*_span(psi), f"psis[{i}]")]
            read.append((*_span(g), f"grads[{i}]"))
        written.append((*_span(step), f"steps[{i}]"))
    _check_no_overlap(written, read)


def _check_no_overlap(written, read) -> None:
    written.sort()
    for (lo0, hi0, a), (lo1, hi1, b) in zip(written, written[1:]):
        if lo1 < hi0:
            raise ValueError(f"INNA: {a} and {b} overlap in memory; every param, psi and step "
                             "must own its memory")
    starts = [w[0] for w in written]
    for lo, hi, who in read:
        j = bisect.bisect_right(starts, lo) - 1  # last written span starting at or before lo
        for w in written[max(j, 0):j + 2]:
            if w[0] < hi and lo < w[1]:
                raise ValueError(f"INNA: {who} and {w[2]} overlap in memory; a tensor the step "
                                 "reads must not alias one it writes")


def _real_views(tensors: Sequence[Tensor]) -> Sequence[Tensor]:
    if not any(t.is_complex() for t in tensors):
        return tensors  # the common case: no new list per step
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


def _local_tensors(tensors: Sequence[Tensor]) -> Sequence[Tensor]:
    """DTensors (FSDP2's fully_shard, tensor parallelism) as their local shards.

    INNA is element-wise, so each rank updates the shard it holds: a param, its grad and its ψ
    (created by empty_like of the param) share one placement, hence one local shape. The local
    tensor shares memory with the DTensor, so in-place updates land in it.
    """
    # No DTensor can exist before its module is imported; importing it here would cost time.
    dtensor_module = sys.modules.get("torch.distributed.tensor")
    if dtensor_module is None:
        return tensors
    return [t.to_local() if isinstance(t, dtensor_module.DTensor) else t for t in tensors]


def _group_by_device_and_dtype(lists: list[list[Tensor]]) -> dict:
    """{(device, dtype): (lists of that group, indices)}, like torch.optim's helper. Under
    torch.compile that helper returns one ungrouped (None, None) entry (it leaves grouping to
    inductor), but the fused op needs one device and dtype per call: group here, in traceable
    Python (device and dtype are static while tracing)."""
    if not torch.compiler.is_compiling():
        params = lists[0]
        dtype, device = params[0].dtype, params[0].device
        # The common case, one device and one dtype, in a quarter of the time torch's helper
        # takes (3.6 µs per tensor; measured on 10,000 tensors).
        if all(p.dtype is dtype for p in params) and len({p.get_device() for p in params}) == 1:
            return {(device, dtype): (lists, range(len(params)))}
        return torch.optim.Optimizer._group_tensors_by_device_and_dtype(lists)
    groups: dict = {}
    for i, p in enumerate(lists[0]):
        group_lists, indices = groups.setdefault((p.device, p.dtype), ([[] for _ in lists], []))
        for group_list, tensors in zip(group_lists, lists):
            group_list.append(tensors[i])
        indices.append(i)
    return groups


def inna(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    psis: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: Union[float, Tensor],
    alpha: float,
    beta: float,
    decay_power: float = 0.0,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    psi_init: str = "paper",
    maximize: bool = False,
    impl: str = "fused",
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """One INNA step on lists of tensors, in place on `params`, `psis` and `steps`.

    steps[i] holds k, the steps params[i] has taken; ψ is initialised (in the same pass) where it
    is 0. Complex params are updated as real views (their ψ is complex too). `grad_scale` and
    `found_inf` come from torch.amp.GradScaler: grads are divided by grad_scale, and a non-zero
    found_inf makes the call a no-op.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    check_hyperparameters(lr, alpha, beta, decay_power, weight_decay, psi_init)
    if not (len(grads) == len(psis) == len(steps) == len(params)):
        raise ValueError(f"INNA: lists must have equal lengths, got params={len(params)} "
                         f"grads={len(grads)} psis={len(psis)} steps={len(steps)}")
    if not params:
        return  # torch's grouping rejects empty lists
    try:
        params, grads, psis = _local_tensors(params), _local_tensors(grads), _local_tensors(psis)
        params, grads, psis = _real_views(params), _real_views(grads), _real_views(psis)
        groups = _group_by_device_and_dtype([params, grads, psis, steps])
    except (AttributeError, RuntimeError):
        # A non-tensor entry or mismatched tensors: name the culprit rather than torch's grouping.
        check_tensors(params, grads, psis, steps, fused=impl == "fused")
        raise
    # The fused op validates its own call, so one group is all-or-nothing by itself; with several
    # groups every group is checked before the first one is written.
    if impl != "fused" or len(groups) > 1:
        check_tensors(params, grads, psis, steps, fused=impl == "fused")
    if impl == "fused":
        for (device, _), ((p, g, s, k), _) in groups.items():
            if not _ops.kernel_available(device.type):
                raise RuntimeError(f"INNA fused path on {device}: {_ops.unavailable_reason(device.type)}")
            if isinstance(lr, Tensor) and lr.device.type != "cpu" and lr.device != device:
                raise ValueError(f"INNA: lr is a tensor on {lr.device} but some params are on "
                                 f"{device}; the fused kernel reads lr on the CPU or the params' "
                                 "device")
    hyper = dict(alpha=alpha, beta=beta, decay_power=decay_power, weight_decay=weight_decay,
                 decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    run = {"fused": _fused_inna, "foreach": _foreach_inna, "reference": _reference_inna}[impl]
    for (device, _), ((p, g, s, k), _) in groups.items():
        run(p, g, s, k, lr=lr, psi_init=psi_init, **hyper,
            grad_scale=None if grad_scale is None else grad_scale.to(device, non_blocking=True),
            found_inf=None if found_inf is None else found_inf.to(device, non_blocking=True))


def _fused_inna(params, grads, psis, steps, *, lr, psi_init, grad_scale, found_inf, **hyper):
    kwargs = dict(hyper, paper_init=psi_init == "paper", grad_scale=grad_scale,
                  found_inf=found_inf)
    if isinstance(lr, Tensor):
        torch.ops.inna_fused.fused_inna_.tensor_lr(params, psis, grads, steps, lr=lr, **kwargs)
    else:
        torch.ops.inna_fused.fused_inna_(params, psis, grads, steps, lr=float(lr), **kwargs)


def _host_scalars(lr, grad_scale, found_inf):
    """lr, the gradient factor and the skip flag as Python numbers (the non-fused paths sync)."""
    skip = found_inf is not None and bool(found_inf.item() != 0)
    lr = float(lr)
    inv_scale = None
    if grad_scale is not None:
        # Same rounding as torch.amp.GradScaler.unscale_: a float32 reciprocal.
        inv_scale = grad_scale.double().reciprocal().float().item()
    return lr, inv_scale, skip


def _reference_inna(params, grads, psis, steps, *, lr, psi_init, grad_scale, found_inf,
                    **hyper):
    lr, inv_scale, skip = _host_scalars(lr, grad_scale, found_inf)
    if skip:
        return
    for p, g, psi, step in zip(params, grads, psis, steps):
        if inv_scale is not None:
            g = g * inv_scale
        inna_reference_(p, psi, g, int(step.item()), lr=lr, psi_init=psi_init, **hyper)
        step.add_(1)


def _foreach_inna(params, grads, psis, steps, *, lr, alpha, beta, decay_power, weight_decay,
                  decoupled_weight_decay, psi_init, maximize, grad_scale, found_inf):
    lr, inv_scale, skip = _host_scalars(lr, grad_scale, found_inf)
    if skip or not params:
        return
    ks = [float(s.item()) for s in steps]
    gammas = [step_size(lr, k, decay_power) for k in ks]
    compute = psi_dtype(params[0].dtype)
    upcast = params[0].dtype != compute
    theta = [p.to(compute) for p in params] if upcast else list(params)
    v = [g.to(compute) for g in grads] if upcast else list(grads)
    if inv_scale is not None or maximize:
        factor = (inv_scale if inv_scale is not None else 1.0) * (-1.0 if maximize else 1.0)
        v = torch._foreach_mul(v, factor)
    if decoupled_weight_decay and weight_decay != 0:
        torch._foreach_mul_(theta, [1 - gm * weight_decay for gm in gammas])
    first = [i for i, k in enumerate(ks) if k == 0]
    if first:
        psi0 = torch._foreach_mul([theta[i] for i in first], 1 - alpha * beta)
        if psi_init == "paper":
            torch._foreach_add_(psi0, [v[i] for i in first], alpha=-(beta * beta - beta))
        torch._foreach_copy_([psis[i] for i in first], psi0)
    phase = torch._foreach_mul(theta, alpha - 1 / beta)
    torch._foreach_add_(phase, psis, alpha=1 / beta)
    theta_step = torch._foreach_add(phase, v, alpha=beta)
    if weight_decay != 0 and not decoupled_weight_decay:
        torch._foreach_add_(theta_step, theta, alpha=weight_decay)
    torch._foreach_mul_(phase, gammas)
    torch._foreach_sub_(psis, phase)
    torch._foreach_mul_(theta_step, gammas)
    torch._foreach_sub_(theta, theta_step)
    if upcast:
        torch._foreach_copy_(params, theta)
    torch._foreach_add_(steps, 1)
