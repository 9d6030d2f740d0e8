"""Functional INNAprop: `innaprop(...)` updates lists of params and their phase, exp_avg_sq and
step tensors in place.

INNAprop (Bolte, Boustany, Pauwels, Purica 2024) is INNA with an RMSprop-preconditioned gradient.
The authors keep ψ; this package keeps the phase w with ψ = (1 − αβ)θ + β·w (w₀ = 0), in which
their step t = k + 1 reads exactly, cancellation-free (γ = lr, λ = weight_decay):

    v ← σv + (1 − σ)g²;  d = √v/√(1 − σ^t) + ε;  u = g/d
    if λ ≠ 0: w ← w + (1 − αβ)γλθ/β,  θ ← (1 − γλ)θ
    θ ← θ − γ(w + βu);  w ← (1 − αγ)w + (1 − αβ)γu

exp_avg_sq (v) has the phase's dtype: float32 (float64 for float64 params) or bfloat16. θ of
16-bit params and bfloat16 phases round stochastically with INNA's bits (`inna_fused.rounding`,
keyed by (seed, k, numel); θ the high 16 bits, the phase the low 16 bits), a bfloat16 v with
the bits of `inna_fused.rounding.sq_random_bits`. Checks, grouping and stores reuse
`inna_fused.functional`'s helpers.

Implementations: "fused" (torch.ops.inna_fused.fused_innaprop_, when the compiled extension has
it for the device), "foreach", "loop".
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _ops
from ._contract import (check_innaprop_hyperparameters, check_rounding, default_phase_dtype,
                        innaprop_bias_correction)
from .functional import (_host_scalars, _local_tensors, _overlaps_itself, _span,
                         _check_no_overlap, _stores, check_tensors)

IMPLS = ("fused", "foreach", "loop")
OP_NAME = _ops.INNAPROP_OP_NAME


def fused_available(device_type: str) -> bool:
    """Whether the fused INNAprop op has a kernel for this device type."""
    return _ops.op_kernel_available(OP_NAME, device_type)


def fused_unavailable_reason(device_type: str) -> str:
    return _ops.op_unavailable_reason(OP_NAME, device_type)


def check_exp_avg_sqs(params: Sequence[Tensor], exp_avg_sqs: Sequence[Tensor], phases, grads,
                      steps) -> None:
    """exp_avg_sq: the param's shape and device, its phase's dtype, owning its memory; plus no
    overlap with any other written or read tensor (the phases are already checked)."""
    if len(exp_avg_sqs) != len(params):
        raise ValueError(f"INNAprop: lists must have equal lengths, got params={len(params)} "
                         f"exp_avg_sqs={len(exp_avg_sqs)}")
    compiling = torch.compiler.is_compiling()
    written, read = [], []
    for i, (p, v) in enumerate(zip(params, exp_avg_sqs)):
        if not isinstance(v, Tensor):
            raise TypeError(f"INNAprop: exp_avg_sqs[{i}] is {type(v).__name__}, not a Tensor")
        need = phases[i].dtype
        if v.dtype != need or v.layout != torch.strided:
            raise TypeError(f"INNAprop: exp_avg_sqs[{i}] has dtype {v.dtype} (layout {v.layout}) "
                            f"but its phase is {need}; exp_avg_sq takes the phase's dtype and is "
                            "strided")
        if v.device != p.device or v.shape != p.shape:
            raise ValueError(f"INNAprop: exp_avg_sqs[{i}] ({tuple(v.shape)} on {v.device}) does "
                             f"not match its param ({tuple(p.shape)} on {p.device})")
        if compiling or p.numel() == 0:
            continue
        if _overlaps_itself(v):
            raise ValueError(f"INNAprop: exp_avg_sqs[{i}] has internally overlapping memory")
        written += [(*_span(p), f"params[{i}]"), (*_span(phases[i]), f"phases[{i}]"),
                    (*_span(v), f"exp_avg_sqs[{i}]")]
        read.append((*_span(grads[i]), f"grads[{i}]"))
    if not compiling:
        written += [(*_span(s), f"steps[{i}]") for i, s in enumerate(steps)]
        _check_no_overlap(written, read, "INNAprop")


def _group(params, grads, phases, exp_avg_sqs, steps) -> dict:
    """{(device, param dtype, phase dtype): [params, grads, phases, exp_avg_sqs, steps]}."""
    groups: dict = {}
    for t in zip(params, grads, phases, exp_avg_sqs, steps):
        group = groups.setdefault((t[0].device, t[0].dtype, t[2].dtype), [[], [], [], [], []])
        for group_list, x in zip(group, t):
            group_list.append(x)
    return groups


def innaprop(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    phases: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: Union[float, Tensor] = 1e-3,
    alpha: float = 0.1,
    beta: float = 0.9,
    sigma: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    maximize: bool = False,
    stochastic_rounding: bool = True,
    seed: int = 0,
    impl: str = "foreach",
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """One INNAprop step on lists of tensors, in place on params, phases, exp_avg_sqs and steps.

    steps[i] holds k, the steps params[i] has taken; where it is 0, the phase and exp_avg_sq are
    initialised (to 0) in the same pass and their old contents are never read. Every tensor of
    every group is checked before the first write. `grad_scale`/`found_inf` as in `inna()`.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    check_innaprop_hyperparameters(lr, alpha, beta, sigma, eps, weight_decay)
    check_rounding(stochastic_rounding, seed)
    n = len(params)
    if not (len(grads) == len(phases) == len(exp_avg_sqs) == len(steps) == n):
        raise ValueError(f"INNAprop: lists must have equal lengths, got params={n} "
                         f"grads={len(grads)} phases={len(phases)} "
                         f"exp_avg_sqs={len(exp_avg_sqs)} steps={len(steps)}")
    if not params:
        return
    params, grads = _local_tensors(params), _local_tensors(grads)
    phases, exp_avg_sqs = _local_tensors(phases), _local_tensors(exp_avg_sqs)
    for i, p in enumerate(params):
        if isinstance(p, Tensor) and p.is_complex():
            raise TypeError(f"INNAprop: params[{i}] is complex ({p.dtype}); INNAprop takes real "
                            "params (pass torch.view_as_real views)")
    check_tensors(params, grads, phases, steps, fused=impl == "fused", name="INNAprop")
    check_exp_avg_sqs(params, exp_avg_sqs, phases, grads, steps)
    groups = _group(params, grads, phases, exp_avg_sqs, steps)
    for device, _, _ in groups:
        if device.type == "meta":
            raise RuntimeError("INNAprop: the params are on the meta device, which holds no data: "
                               "materialise them first")
        if impl == "fused" and not fused_available(device.type):
            raise RuntimeError(f"INNAprop fused path on {device}: "
                               f"{fused_unavailable_reason(device.type)}")
    run = {"fused": _fused_innaprop, "foreach": _foreach_innaprop, "loop": _loop_innaprop}[impl]
    for (device, _, _), lists in groups.items():
        run(*lists, lr=lr, alpha=alpha, beta=beta, sigma=sigma, eps=eps,
            weight_decay=weight_decay, maximize=maximize,
            stochastic_rounding=stochastic_rounding, seed=seed,
            grad_scale=None if grad_scale is None else grad_scale.to(device, non_blocking=True),
            found_inf=None if found_inf is None else found_inf.to(device, non_blocking=True))


def _fused_innaprop(params, grads, phases, exp_avg_sqs, steps, *, lr, **kwargs):
    lr = lr if isinstance(lr, Tensor) else float(lr)
    # Unboxed when eager, under no_grad (as in INNAprop.step) and on plain tensor lists; else
    # torch.ops. The op borrows the lists' tensors with the GIL released: it gets its own lists.
    if (_DIRECT is not None and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and _DIRECT(list(params), list(grads), list(phases), list(exp_avg_sqs), list(steps),
                        lr, _direct_scalars(kwargs), kwargs["grad_scale"], kwargs["found_inf"])):
        return
    op = torch.ops.inna_fused.fused_innaprop_
    if isinstance(lr, Tensor):
        op.tensor_lr(params, grads, phases, exp_avg_sqs, steps, lr=lr, **kwargs)
    else:
        op(params, grads, phases, exp_avg_sqs, steps, lr=lr, **kwargs)


def _direct_scalars(kwargs) -> tuple:
    """The scalars tuple of inna_fused._C.fused_innaprop_direct."""
    return (kwargs["alpha"], kwargs["beta"], kwargs["sigma"], kwargs["eps"],
            kwargs["weight_decay"], kwargs["maximize"], kwargs["stochastic_rounding"],
            kwargs["seed"])


def step_plain_fused(params, grads, phases, exp_avg_sqs, steps, device, kwargs, grad_scale=None,
                     found_inf=None) -> None:
    """The fused op on lists that INNAprop.step has already found to be one plain group (one
    device, one param dtype, one phase dtype; no DTensor) with validated hyper-parameters:
    `kwargs` are the op's keyword arguments. The op itself checks every tensor before writing.
    Called unboxed when every tensor is a plain one and no torch function or dispatch mode is
    active, else through torch.ops."""
    if grad_scale is not None:
        grad_scale = grad_scale.to(device, non_blocking=True)
    if found_inf is not None:
        found_inf = found_inf.to(device, non_blocking=True)
    lr = kwargs["lr"]
    if _DIRECT is not None and _DIRECT(params, grads, phases, exp_avg_sqs, steps, lr,
                                       _direct_scalars(kwargs), grad_scale, found_inf):
        return
    op = torch.ops.inna_fused.fused_innaprop_
    op = op.tensor_lr if isinstance(lr, Tensor) else op.default
    op(params, grads, phases, exp_avg_sqs, steps, **kwargs, grad_scale=grad_scale,
       found_inf=found_inf)


_DIRECT = None
if _ops.load_error() is None:
    _DIRECT = getattr(_ops._C, "fused_innaprop_direct", None)  # absent from older builds


def _coefficients(lr: float, k: int, alpha, beta, sigma, weight_decay) -> dict:
    """Per-tensor coefficients in double precision (the torch ops round them to the arithmetic's
    dtype)."""
    return dict(
        gamma=lr,
        bias=innaprop_bias_correction(sigma, k),
        decay=1.0 - lr * weight_decay,
        wd_to_phase=(1.0 - alpha * beta) * lr * weight_decay / beta,
        phase_decay=1.0 - alpha * lr,
        phase_gain=(1.0 - alpha * beta) * lr,
    )


def _loop_innaprop(params, grads, phases, exp_avg_sqs, steps, *, lr, alpha, beta, sigma, eps,
                   weight_decay, maximize, stochastic_rounding, seed, grad_scale, found_inf):
    """The phase-form update one tensor at a time (the same ops as the foreach path)."""
    lr, factor, skip = _host_scalars(lr, grad_scale, found_inf, maximize)
    if skip:
        return
    for p, g, phase, v, step in zip(params, grads, phases, exp_avg_sqs, steps):
        k = int(step.item())
        c = _coefficients(lr, k, alpha, beta, sigma, weight_decay)
        compute = default_phase_dtype(p.dtype)
        theta = p.detach().to(compute)
        grad = g.detach().to(compute)
        if factor is not None:
            grad = grad * factor
        w = torch.zeros_like(theta) if k == 0 else phase.to(compute)
        if v.dtype == compute:  # updated in place
            new_v = v.zero_() if k == 0 else v
        else:  # bfloat16: in a compute copy, stored (rounded) with θ and the phase
            new_v = torch.zeros_like(theta) if k == 0 else v.to(compute)
        new_v.mul_(sigma).addcmul_(grad, grad, value=1.0 - sigma)
        d = new_v.sqrt().div_(c["bias"]).add_(eps)
        u = grad / d
        if weight_decay != 0:
            w = w + theta * c["wd_to_phase"]
            theta = theta * c["decay"]
        theta_step = w.add(u, alpha=beta)
        new_w = w * c["phase_decay"]
        new_w = new_w + u * c["phase_gain"]
        new_theta = theta - theta_step * c["gamma"]
        _stores([p], [phase], [g], [new_theta], [new_w], [k], stochastic_rounding, seed, [v],
                [new_v])
        step.add_(1)


def _foreach_innaprop(params, grads, phases, exp_avg_sqs, steps, *, lr, alpha, beta, sigma, eps,
                      weight_decay, maximize, stochastic_rounding, seed, grad_scale, found_inf):
    """The phase-form update with torch._foreach_* ops over one (device, param dtype, phase dtype)
    group."""
    lr, factor, skip = _host_scalars(lr, grad_scale, found_inf, maximize)
    if skip or not params:
        return
    ks = [int(s.item()) for s in steps]
    coeffs = [_coefficients(lr, k, alpha, beta, sigma, weight_decay) for k in ks]
    compute = default_phase_dtype(params[0].dtype)
    theta = [p.detach().to(compute) for p in params]  # copies (or the params themselves)
    if params[0].dtype == compute:
        theta = [p.detach().clone() for p in params]
    grad = [g.detach().to(compute) for g in grads]
    if factor is not None:
        grad = torch._foreach_mul(grad, factor)
    w = [torch.zeros_like(t) if k == 0 else s.to(compute, copy=True)
         for t, s, k in zip(theta, phases, ks)]
    if exp_avg_sqs[0].dtype == compute:  # updated in place
        new_v = exp_avg_sqs
        first = [exp_avg_sqs[i] for i, k in enumerate(ks) if k == 0]
        if first:
            torch._foreach_zero_(first)
    else:  # bfloat16 (the group's phase dtype): compute copies, stored with θ and the phase
        new_v = [torch.zeros_like(t) if k == 0 else s.to(compute)
                 for t, s, k in zip(theta, exp_avg_sqs, ks)]
    torch._foreach_mul_(new_v, sigma)
    torch._foreach_addcmul_(new_v, grad, grad, value=1.0 - sigma)
    d = torch._foreach_sqrt(new_v)
    torch._foreach_div_(d, [c["bias"] for c in coeffs])
    torch._foreach_add_(d, eps)
    u = torch._foreach_div(grad, d)
    if weight_decay != 0:
        w = torch._foreach_add(w, torch._foreach_mul(theta, [c["wd_to_phase"] for c in coeffs]))
        theta = torch._foreach_mul(theta, [c["decay"] for c in coeffs])
    theta_step = torch._foreach_add(w, u, alpha=beta)
    new_w = torch._foreach_mul(w, [c["phase_decay"] for c in coeffs])
    new_w = torch._foreach_add(new_w, torch._foreach_mul(u, [c["phase_gain"] for c in coeffs]))
    new_theta = torch._foreach_sub(theta, torch._foreach_mul(theta_step,
                                                             [c["gamma"] for c in coeffs]))
    _stores(params, phases, grads, new_theta, new_w, ks, stochastic_rounding, seed, exp_avg_sqs,
            new_v)
    torch._foreach_add_(steps, 1)
