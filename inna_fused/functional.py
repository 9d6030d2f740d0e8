"""Functional INNA: `inna(...)` updates lists of params and their phase and step tensors in place.

The state is the phase w = (α − 1/β)·θ + ψ/β (ψ is the paper's auxiliary variable; see
`inna_fused.conversions`). Eq. (12) of the paper is then exactly, with v the gradient and
γ_k = lr / (k + 1)^decay_power,

    θ_{k+1} = θ_k − γ_k (w_k + β v_k)
    w_{k+1} = (1 − α γ_k) w_k + (1 − αβ) γ_k v_k

(coupled weight decay adds wd·θ_k to θ's step and wd·θ_k/β to w's gradient term; decoupled weight
decay adds (1 − αβ)γ_k·wd·θ_k/β to w, except on the first step, then scales θ by 1 − γ_k·wd). On
the first step w₀ = (1 − β)v₀ (psi_init="paper") or 0 ("zero"); the old contents are never read.
w is gradient-sized (nothing cancels), so it may be stored in bfloat16. Stores to float16/bfloat16
params and bfloat16 phases round stochastically (unbiased) when `stochastic_rounding`, with the
deterministic bits of `inna_fused.rounding`.

Layering (as in torch.optim): the `INNA` class gathers lists from its param groups and state and
calls `inna()`; `inna()` validates everything, groups tensors by (device, param dtype, phase dtype)
and runs one of three implementations on each group:

- "fused":   the compiled multi-tensor kernel (csrc/), one call per group;
- "foreach": torch._foreach_* ops (a few passes over memory, temporaries per step);
- "loop":    a Python loop over params, one tensor at a time (what INNA users ran before).
  "reference" is accepted as another name for "loop" (the name older versions used). The paper's
  literal eq. (12) in ψ lives in `inna_fused.reference`, the oracle of the tests.

All three compute the same coefficients in the same precision (float32 for 16- and 32-bit params,
float64 for float64 params) and draw the same rounding bits; they agree bit for bit wherever the
arithmetic is exact and otherwise to rounding (the kernels contract multiply-adds).

Validation happens for every tensor of every group before the first write: a bad input anywhere
raises and leaves all params, phases and steps untouched.
"""
from __future__ import annotations

import bisect
import sys
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _ops
from ._contract import (PARAM_DTYPES, SIXTEEN_BIT, STEP_DTYPES, allowed_phase_dtypes,
                        check_hyperparameters, check_rounding, default_phase_dtype, dtype_names,
                        grad_factor, step_size)
from .rounding import (element_indices, phase_bits, random_bits, round_stochastic, rounding_key,
                       sq_random_bits, theta_bits)

IMPLS = ("fused", "foreach", "loop", "reference")


def _span(t: Tensor) -> tuple[int, int]:
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def _overlaps_itself(t: Tensor) -> bool:
    """What at::has_internal_overlap calls certain: a size > 1 dimension of stride 0 (expand())."""
    return any(stride == 0 and size > 1 for size, stride in zip(t.shape, t.stride()))


def check_tensors(params: Sequence[Tensor], grads: Sequence[Tensor], phases: Sequence[Tensor],
                  steps: Sequence[Tensor], *, fused: bool = False, name: str = "INNA") -> None:
    """Check every tensor of a call (the compiled op repeats these checks in C++).

    Step counts live on their param's device, or on the CPU unless `fused` (the compiled op
    reads them on the device). `name` starts the messages (INNA or INNAprop).
    """
    n = len(params)
    if not (len(grads) == len(phases) == len(steps) == n):
        raise ValueError(f"{name}: lists must have equal lengths, got params={n} "
                         f"grads={len(grads)} phases={len(phases)} steps={len(steps)}")
    compiling = torch.compiler.is_compiling()
    written, read = [], []
    for i, (p, g, phase, step) in enumerate(zip(params, grads, phases, steps)):
        for list_name, t in (("params", p), ("grads", g), ("phases", phase), ("steps", step)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}: {list_name}[{i}] is {type(t).__name__}, not a Tensor")
        if p.dtype not in PARAM_DTYPES:
            hint = " (complex params are updated through torch.view_as_real)" if p.is_complex() else ""
            raise TypeError(f"{name}: params[{i}] has dtype {p.dtype}; supported are "
                            f"{dtype_names(PARAM_DTYPES)}{hint}")
        if p.layout != torch.strided:
            raise TypeError(f"{name}: params[{i}] has layout {p.layout}; only strided params")
        if g.is_sparse or g.layout != torch.strided:
            raise TypeError(f"{name}: grads[{i}] is sparse; {name} does not support sparse "
                            "gradients")
        if g.dtype != p.dtype:
            raise TypeError(f"{name}: grads[{i}] has dtype {g.dtype} but its param has {p.dtype}")
        if g.device != p.device:
            raise ValueError(f"{name}: grads[{i}] is on {g.device} but its param is on {p.device}")
        if g.shape != p.shape:
            raise ValueError(f"{name}: grads[{i}] has shape {tuple(g.shape)} but its param has "
                             f"shape {tuple(p.shape)}")
        if phase.layout != torch.strided:
            raise TypeError(f"{name}: phases[{i}] has layout {phase.layout}; the phase must be "
                            "strided")
        allowed = allowed_phase_dtypes(p.dtype)
        if phase.dtype not in allowed:
            raise TypeError(f"{name}: phases[{i}] has dtype {phase.dtype} but a {p.dtype} param needs "
                            f"a {' or '.join(str(d) for d in allowed)} phase")
        if phase.device != p.device or phase.shape != p.shape:
            raise ValueError(f"{name}: phases[{i}] ({tuple(phase.shape)} on {phase.device}) "
                             f"does not match its param ({tuple(p.shape)} on {p.device})")
        if step.numel() != 1 or step.dtype not in STEP_DTYPES:
            raise TypeError(f"{name}: steps[{i}] must be a one-element "
                            f"{dtype_names(STEP_DTYPES, 'or')} tensor, "
                            f"got {step.dtype} of shape {tuple(step.shape)}")
        if step.device != p.device and (fused or step.device.type != "cpu"):
            where = "its param's device" if fused else "its param's device or the CPU"
            raise ValueError(f"{name}: steps[{i}] is on {step.device} but must be on {where} "
                             f"({p.device})")
        if compiling:
            continue
        if p.numel() > 0:
            for list_name, t in (("params", p), ("phases", phase)):
                if _overlaps_itself(t):
                    raise ValueError(f"{name}: {list_name}[{i}] has internally overlapping memory "
                                     "(e.g. expand()); the step would write one element twice")
            written += [(*_span(p), f"params[{i}]"), (*_span(phase), f"phases[{i}]")]
            read.append((*_span(g), f"grads[{i}]"))
        written.append((*_span(step), f"steps[{i}]"))
    _check_no_overlap(written, read, name)


def _check_no_overlap(written, read, name: str = "INNA") -> None:
    written.sort()
    for (lo0, hi0, a), (lo1, hi1, b) in zip(written, written[1:]):
        if lo1 < hi0:
            raise ValueError(f"{name}: {a} and {b} overlap in memory; every param, phase and step "
                             "must own its memory")
    starts = [w[0] for w in written]
    for lo, hi, who in read:
        j = bisect.bisect_right(starts, lo) - 1  # last written span starting at or before lo
        for w in written[max(j, 0):j + 2]:
            if w[0] < hi and lo < w[1]:
                raise ValueError(f"{name}: {who} and {w[2]} overlap in memory; a tensor the step "
                                 "reads must not alias one it writes")


def _real_views(tensors: Sequence[Tensor]) -> Sequence[Tensor]:
    if not any(t.is_complex() for t in tensors):
        return tensors  # the common case: no new list per step
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


def _local_tensors(tensors: Sequence[Tensor]) -> Sequence[Tensor]:
    """DTensors (FSDP2's fully_shard, tensor parallelism) as their local shards.

    INNA is element-wise, so each rank updates the shard it holds: a param, its grad and its phase
    (created by empty_like of the param) share one placement, hence one local shape. The local
    tensor shares memory with the DTensor, so in-place updates land in it.
    """
    # No DTensor can exist before its module is imported; importing it here would cost time.
    dtensor_module = sys.modules.get("torch.distributed.tensor")
    if dtensor_module is None:
        return tensors
    return [t.to_local() if isinstance(t, dtensor_module.DTensor) else t for t in tensors]


def _group_tensors(params, grads, phases, steps) -> dict:
    """{(device, param dtype, phase dtype): [params, grads, phases, steps]}. The fused op takes one
    device, one param dtype and one phase dtype per call. Plain traceable Python (device and dtypes
    are static while torch.compile traces)."""
    if not torch.compiler.is_compiling():
        dtype, device, phase_dtype = params[0].dtype, params[0].device, phases[0].dtype
        # The common case, one device and one dtype each, without building new lists.
        if (all(p.dtype is dtype for p in params) and all(s.dtype is phase_dtype for s in phases)
                and len({p.get_device() for p in params}) == 1):
            return {(device, dtype, phase_dtype): [params, grads, phases, steps]}
    groups: dict = {}
    for p, g, phase, step in zip(params, grads, phases, steps):
        group = groups.setdefault((p.device, p.dtype, phase.dtype), [[], [], [], []])
        for group_list, t in zip(group, (p, g, phase, step)):
            group_list.append(t)
    return groups


def inna(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    phases: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: Union[float, Tensor],
    alpha: float,
    beta: float,
    decay_power: float = 0.0,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    psi_init: str = "zero",
    maximize: bool = False,
    stochastic_rounding: bool = True,
    seed: int = 0,
    impl: str = "fused",
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """One INNA step on lists of tensors, in place on `params`, `phases` and `steps`.

    steps[i] holds k, the steps params[i] has taken; where it is 0 the phase is initialised in the
    same pass (its old contents are never read). phases[i] is float32 (float64 for a float64
    param) or bfloat16. With `stochastic_rounding`, float16/bfloat16 params and bfloat16 phases
    are stored with unbiased stochastic rounding whose bits depend only on (seed, k, numel,
    element index); otherwise they round to nearest. Complex params are updated as real views
    (their phase is complex too). `grad_scale` and `found_inf` come from torch.amp.GradScaler:
    grads are divided by grad_scale, and a non-zero found_inf makes the call a no-op.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    check_hyperparameters(lr, alpha, beta, decay_power, weight_decay, psi_init)
    check_rounding(stochastic_rounding, seed)
    if not (len(grads) == len(phases) == len(steps) == len(params)):
        raise ValueError(f"INNA: lists must have equal lengths, got params={len(params)} "
                         f"grads={len(grads)} phases={len(phases)} steps={len(steps)}")
    if not params:
        return
    try:
        params, grads = _local_tensors(params), _local_tensors(grads)
        phases = _local_tensors(phases)
        params, grads, phases = _real_views(params), _real_views(grads), _real_views(phases)
        groups = _group_tensors(params, grads, phases, steps)
    except (AttributeError, RuntimeError):
        # A non-tensor entry or mismatched tensors: name the culprit rather than a torch error.
        check_tensors(params, grads, phases, steps, fused=impl == "fused")
        raise
    for device, _, _ in groups:
        if device.type == "meta":  # FakeTensors (torch.compile) report their fake device instead
            raise RuntimeError("INNA: the params are on the meta device, which holds no data: "
                               "materialise them (e.g. module.to_empty(device=...)) first")
    # The fused op validates its own call, so one group is all-or-nothing by itself; with several
    # groups every group is checked before the first one is written.
    if impl != "fused" or len(groups) > 1:
        check_tensors(params, grads, phases, steps, fused=impl == "fused")
    if impl == "fused":
        for device, _, _ in groups:
            if not _ops.kernel_available(device.type):
                raise RuntimeError(f"INNA fused path on {device}: {_ops.unavailable_reason(device.type)}")
            if isinstance(lr, Tensor) and lr.device.type != "cpu" and lr.device != device:
                raise ValueError(f"INNA: lr is a tensor on {lr.device} but some params are on "
                                 f"{device}; the fused kernel reads lr on the CPU or the params' "
                                 "device")
    hyper = dict(alpha=alpha, beta=beta, decay_power=decay_power, weight_decay=weight_decay,
                 decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                 stochastic_rounding=stochastic_rounding, seed=seed)
    run = {"fused": _fused_inna, "foreach": _foreach_inna, "loop": _loop_inna,
           "reference": _loop_inna}[impl]
    for (device, _, _), (p, g, s, k) in groups.items():
        run(p, g, s, k, lr=lr, psi_init=psi_init, **hyper,
            grad_scale=None if grad_scale is None else grad_scale.to(device, non_blocking=True),
            found_inf=None if found_inf is None else found_inf.to(device, non_blocking=True))


def step_plain_fused(params, grads, phases, steps, device, kwargs, grad_scale=None,
                     found_inf=None) -> None:
    """The fused op on lists that INNA.step has already found to be one plain group (one device,
    one param dtype, one phase dtype; no DTensor, no complex) with validated hyper-parameters:
    `kwargs` are the op's keyword arguments. The op itself checks every tensor before writing.
    It is called unboxed (inna_fused._C.fused_inna_direct) when every tensor is a plain one and no
    torch function or dispatch mode is active, else through torch.ops."""
    if grad_scale is not None:
        grad_scale = grad_scale.to(device, non_blocking=True)
    if found_inf is not None:
        found_inf = found_inf.to(device, non_blocking=True)
    lr = kwargs["lr"]
    if _DIRECT is not None and _DIRECT(
            params, grads, phases, steps, lr,
            (kwargs["alpha"], kwargs["beta"], kwargs["decay_power"], kwargs["weight_decay"],
             kwargs["decoupled_weight_decay"], kwargs["paper_init"], kwargs["maximize"],
             kwargs["stochastic_rounding"], kwargs["seed"]), grad_scale, found_inf):
        return
    op = _OP_TENSOR_LR if isinstance(lr, Tensor) else _OP
    op(params, grads, phases, steps, **kwargs, grad_scale=grad_scale, found_inf=found_inf)


_DIRECT = None
if _ops.load_error() is None:
    _OP = torch.ops.inna_fused.fused_inna_.default
    _OP_TENSOR_LR = torch.ops.inna_fused.fused_inna_.tensor_lr
    _DIRECT = getattr(_ops._C, "fused_inna_direct", None)  # absent from older builds


def _fused_inna(params, grads, phases, steps, *, lr, psi_init, grad_scale, found_inf, **hyper):
    kwargs = dict(hyper, paper_init=psi_init == "paper", grad_scale=grad_scale,
                  found_inf=found_inf)
    # Unboxed when eager, under no_grad (as in INNA.step) and on plain tensor lists; else torch.ops.
    # The op borrows the lists' tensors with the GIL released: it gets its own lists.
    if (_DIRECT is not None and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and _DIRECT(
                list(params), list(grads), list(phases), list(steps),
                lr if isinstance(lr, Tensor) else float(lr),
                (hyper["alpha"], hyper["beta"], hyper["decay_power"], hyper["weight_decay"],
                 hyper["decoupled_weight_decay"], kwargs["paper_init"], hyper["maximize"],
                 hyper["stochastic_rounding"], hyper["seed"]), grad_scale, found_inf)):
        return
    if isinstance(lr, Tensor):
        torch.ops.inna_fused.fused_inna_.tensor_lr(params, grads, phases, steps, lr=lr, **kwargs)
    else:
        torch.ops.inna_fused.fused_inna_(params, grads, phases, steps, lr=float(lr), **kwargs)


def _host_scalars(lr, grad_scale, found_inf, maximize):
    """lr, the gradient factor (None: use the gradient as it is) and the skip flag as Python
    numbers (the non-fused paths sync)."""
    skip = found_inf is not None and bool(found_inf.item() != 0)
    return float(lr), grad_factor(grad_scale, maximize), skip


def _coefficients(gamma: float, alpha: float, beta: float, weight_decay: float) -> dict:
    """The per-tensor coefficients of csrc/inna_math.h (make_coeffs), in double precision; the
    torch ops round them to the arithmetic's dtype as the kernels do."""
    return dict(
        gamma=gamma,
        decay=1.0 - gamma * weight_decay,
        wd_to_phase=(1.0 - alpha * beta) * gamma * weight_decay / beta,
        phase_decay=1.0 - alpha * gamma,
        phase_gain=(1.0 - alpha * beta) * gamma,
    )


def _store(dst: Tensor, value: Tensor, r16: Optional[Tensor]) -> None:
    """Write `value` (float32 or float64) into `dst`: 16-bit `dst` take float32 values, rounded
    stochastically with the 16 random bits per element `r16` when given, to nearest otherwise."""
    if dst.dtype in SIXTEEN_BIT:
        value = value.to(torch.float32)
        if r16 is not None:
            value = round_stochastic(value, dst.dtype, r16)
    dst.copy_(value)


def _stores(params, phases, grads, thetas, new_phases, ks, stochastic, seed, exp_avg_sqs=None,
            new_sqs=None) -> None:
    """Write back the new θ and phases (and INNAprop's exp_avg_sqs) computed in copies. One hash
    per element serves θ and the phase, as in the kernels: its high 16 bits round θ, its low 16
    bits the phase; a bfloat16 exp_avg_sq takes the bits of `sq_random_bits`."""
    if exp_avg_sqs is None:
        exp_avg_sqs = new_sqs = [None] * len(params)
    for p, phase, g, theta, new_phase, k, v, new_v in zip(params, phases, grads, thetas,
                                                          new_phases, ks, exp_avg_sqs, new_sqs):
        def rounds(dst, value):
            return (stochastic and value is not dst and dst.dtype in SIXTEEN_BIT
                    and dst.numel() > 0)
        round_theta, round_phase = rounds(p, theta), rounds(phase, new_phase)
        round_sq = v is not None and rounds(v, new_v)
        if round_theta or round_phase or round_sq:  # one word per element serves all three
            key = rounding_key(seed, k, p.numel())
            index = element_indices(p, g, phase, *([] if v is None else [v]))
            bits = random_bits(key, index)
        if theta is not p:
            _store(p, theta, theta_bits(bits) if round_theta else None)
        if new_phase is not phase:
            _store(phase, new_phase, phase_bits(bits) if round_phase else None)
        if v is not None and new_v is not v:
            _store(v, new_v, sq_random_bits(key, index, p.dtype in SIXTEEN_BIT, bits)
                   if round_sq else None)


def _loop_inna(params, grads, phases, steps, *, lr, alpha, beta, decay_power, weight_decay,
               decoupled_weight_decay, psi_init, maximize, stochastic_rounding, seed, grad_scale,
               found_inf):
    """The phase-form update one tensor at a time, written as csrc/inna_math.h writes it."""
    lr, grad_factor, skip = _host_scalars(lr, grad_scale, found_inf, maximize)
    if skip:
        return
    coupled = weight_decay != 0 and not decoupled_weight_decay
    decoupled = weight_decay != 0 and decoupled_weight_decay
    for p, g, phase, step in zip(params, grads, phases, steps):
        k = int(step.item())
        c = _coefficients(step_size(lr, k, decay_power), alpha, beta, weight_decay)
        compute = default_phase_dtype(p.dtype)
        theta = p.detach().to(compute)
        v = g.detach().to(compute)
        if grad_factor is not None:
            v = v * grad_factor
        w = None if k == 0 else phase.to(compute)
        if decoupled:
            if k != 0:
                w = w + c["wd_to_phase"] * theta
            theta = theta * c["decay"]
        if k == 0:
            w = v * (1.0 - beta) if psi_init == "paper" else torch.zeros_like(v)
        theta_step = w + beta * v
        drive = v
        if coupled:
            theta_step = theta_step + weight_decay * theta
            drive = v + (weight_decay / beta) * theta
        new_phase = c["phase_gain"] * drive + c["phase_decay"] * w
        new_theta = theta - c["gamma"] * theta_step
        _stores([p], [phase], [g], [new_theta], [new_phase], [k], stochastic_rounding, seed)
        step.add_(1)


def _foreach_inna(params, grads, phases, steps, *, lr, alpha, beta, decay_power, weight_decay,
                  decoupled_weight_decay, psi_init, maximize, stochastic_rounding, seed,
                  grad_scale, found_inf):
    """The phase-form update with torch._foreach_* ops over one (device, param dtype, phase
    dtype) group."""
    lr, grad_factor, skip = _host_scalars(lr, grad_scale, found_inf, maximize)
    if skip or not params:
        return
    ks = [int(s.item()) for s in steps]
    coeffs = [_coefficients(step_size(lr, k, decay_power), alpha, beta, weight_decay) for k in ks]
    compute = default_phase_dtype(params[0].dtype)
    theta = [p.to(compute) for p in params] if params[0].dtype != compute else list(params)
    w = [s.to(compute) for s in phases] if phases[0].dtype != compute else list(phases)
    v = [g.to(compute) for g in grads] if grads[0].dtype != compute else list(grads)
    if grad_factor is not None:
        v = torch._foreach_mul(v, grad_factor)
    first = [i for i, k in enumerate(ks) if k == 0]
    later = [i for i, k in enumerate(ks) if k != 0]
    if decoupled_weight_decay and weight_decay != 0:
        if later:
            decay_terms = torch._foreach_mul([theta[i] for i in later],
                                             [coeffs[i]["wd_to_phase"] for i in later])
            torch._foreach_add_([w[i] for i in later], decay_terms)
        torch._foreach_mul_(theta, [c["decay"] for c in coeffs])
    if first:
        first_phases = [w[i] for i in first]
        if psi_init == "paper":
            initial = torch._foreach_mul([v[i] for i in first], 1.0 - beta)
            torch._foreach_copy_(first_phases, initial)
        else:
            torch._foreach_zero_(first_phases)
    theta_step = torch._foreach_add(w, v, alpha=beta)
    drive = v
    if weight_decay != 0 and not decoupled_weight_decay:
        torch._foreach_add_(theta_step, theta, alpha=weight_decay)
        drive = torch._foreach_add(v, theta, alpha=weight_decay / beta)
    torch._foreach_mul_(w, [c["phase_decay"] for c in coeffs])
    torch._foreach_add_(w, torch._foreach_mul(drive, [c["phase_gain"] for c in coeffs]))
    torch._foreach_mul_(theta_step, [c["gamma"] for c in coeffs])
    torch._foreach_sub_(theta, theta_step)
    _stores(params, phases, grads, theta, w, ks, stochastic_rounding, seed)
    torch._foreach_add_(steps, 1)
