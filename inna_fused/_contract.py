"""The rules of a call, once for Python (csrc/contract.h states the same rules for C++).

- which param dtypes the step takes, and which phase (state) dtypes go with each;
- the dtype of the arithmetic, which is also the default phase dtype;
- the `state_dtype` option of the `INNA` class;
- the dtype of the step counts;
- the hyper-parameter and rounding-option checks (with torch.optim's words where torch checks the
  same thing);
- the step size γ_k = lr / (k + 1)^decay_power;
- the gradient factor: 1/grad_scale rounded to float32 as torch.amp.GradScaler does, negated for
  `maximize`.

Used by the `INNA` class (optimizer.py), the list-level step (functional.py), the op's fake impl
(_ops.py) and ψ ↔ phase conversion (conversions.py). The oracle (reference.py) deliberately does
not use it. Changing a rule here changes it everywhere in Python.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Dtypes

#: Param (and grad) dtypes the step updates.
PARAM_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
#: Complex params are updated through torch.view_as_real (their phase is complex too).
COMPLEX_DTYPES = (torch.complex64, torch.complex128)
#: Stores of these dtypes round (stochastically when asked) from float32.
SIXTEEN_BIT = (torch.float16, torch.bfloat16)
#: The values of the `state_dtype` option besides None.
STATE_DTYPES = (torch.bfloat16, torch.float32, torch.float64)
#: Dtypes a step count tensor may have (float16/bfloat16 counts stop growing at 2048/256 steps).
STEP_DTYPES = (torch.float32, torch.float64)
#: The dtype of the step counts the `INNA` class creates.
STEP_DTYPE = torch.float32


def dtype_names(dtypes: Iterable[torch.dtype], last: str = "and") -> str:
    """'float32, float64 and bfloat16' for messages."""
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def default_phase_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """Dtype of the arithmetic, and of the phase unless `state_dtype` says otherwise: float32,
    float64 for float64 params."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def allowed_phase_dtypes(param_dtype: torch.dtype) -> tuple:
    """Phase dtypes the step takes with a param of `param_dtype`."""
    return (default_phase_dtype(param_dtype), torch.bfloat16)


def phase_dtype_for(p: Tensor, state_dtype: Optional[torch.dtype]) -> torch.dtype:
    """The dtype of a param's phase under the `state_dtype` option (already validated)."""
    if p.is_complex():
        return torch.complex128 if p.dtype == torch.complex128 else torch.complex64
    return default_phase_dtype(p.dtype) if state_dtype is None else state_dtype


def check_state_dtype(state_dtype, params) -> None:
    """Raise ValueError naming `state_dtype` when it cannot hold the phase of some param."""
    if state_dtype is None:
        return
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"INNA: invalid state_dtype={state_dtype!r} (choose None, torch.float32, "
                         "torch.bfloat16, or torch.float64 for float64 params)")
    for p in params:
        if p.is_complex():
            raise ValueError(f"INNA: state_dtype={state_dtype} is not supported for complex params "
                             f"(got a {p.dtype} param); leave state_dtype=None")
        if state_dtype not in allowed_phase_dtypes(p.dtype):
            if state_dtype == torch.float64:
                raise ValueError(f"INNA: state_dtype=torch.float64 needs float64 params, got a "
                                 f"{p.dtype} param")
            raise ValueError(f"INNA: state_dtype={state_dtype} would store the phase of a "
                             f"{p.dtype} param in less precision than its arithmetic; use None "
                             f"({dtype_names([default_phase_dtype(p.dtype)])}) or torch.bfloat16")


# ---------------------------------------------------------------------------------------------
# Hyper-parameters

PSI_INITS = ("paper", "zero")
SEED_RANGE = (-(2 ** 63), 2 ** 63)


def valid_lr(value: float) -> bool:
    """A float lr is valid when finite and >= 0."""
    return math.isfinite(value) and value >= 0


def _checked_lr(lr, name: str) -> Optional[float]:
    """torch.optim's checks of an lr tensor, then lr ≥ 0 (finite) where the value can be read
    here; returns that value, or None for an lr tensor on a device (or while compiling: the op
    checks it where it reads it)."""
    lr_value = lr
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Tensor lr must be 1-element ({name}: got shape {tuple(lr.shape)})")
        if not lr.is_floating_point():
            raise TypeError(f"lr as a tensor must be floating point, got {lr.dtype}")
        if lr.device.type != "cpu" or torch.compiler.is_compiling():
            return None
        lr_value = float(lr)
    if not valid_lr(lr_value):
        raise ValueError(f"Invalid learning rate: {lr_value} ({name} needs a finite lr >= 0)")
    return lr_value


def _check_alpha_beta(alpha, beta) -> None:
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"Invalid alpha: {alpha} (need finite alpha > 0)")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"Invalid beta: {beta} (need finite beta > 0)")


def _check_weight_decay(weight_decay, name: str) -> None:
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"Invalid weight_decay value: {weight_decay} ({name} needs a finite "
                         "weight_decay >= 0)")


def check_hyperparameters(lr, alpha, beta, decay_power, weight_decay, psi_init) -> None:
    """Raise ValueError naming the first invalid hyper-parameter (with torch.optim's words where
    torch's optimizers check the same thing)."""
    _checked_lr(lr, "INNA")
    _check_alpha_beta(alpha, beta)
    if not (math.isfinite(decay_power) and decay_power >= 0):
        raise ValueError(f"Invalid decaypower: {decay_power} (need finite decaypower >= 0)")
    _check_weight_decay(weight_decay, "INNA")
    if psi_init not in PSI_INITS:
        raise ValueError(f"Invalid psi_init: {psi_init!r} (choose one of {PSI_INITS})")


def check_rounding(stochastic_rounding, seed) -> None:
    """Raise naming `stochastic_rounding` or `seed` when it is not a bool / a 64-bit integer."""
    if not isinstance(stochastic_rounding, bool):
        raise TypeError(f"Invalid stochastic_rounding: {stochastic_rounding!r} (need a bool)")
    if isinstance(seed, bool) or not isinstance(seed, int) or not (
            SEED_RANGE[0] <= seed < SEED_RANGE[1]):
        raise ValueError(f"Invalid seed: {seed!r} (need an int in [-2**63, 2**63))")


# ---------------------------------------------------------------------------------------------
# Per-step scalars


def step_size(lr: float, k: float, decay_power: float) -> float:
    """γ_k = lr / (k + 1)^decay_power, k the steps the param has taken."""
    return lr if decay_power == 0 else lr / (k + 1.0) ** decay_power


def grad_factor(grad_scale: Optional[Tensor], maximize: bool) -> Optional[float]:
    """What the gradient is multiplied by, as a Python float (None: the gradient as it is):
    1/grad_scale with torch.amp.GradScaler.unscale_'s rounding (a float32 reciprocal), negated
    for `maximize`."""
    factor = None
    if grad_scale is not None:
        factor = grad_scale.double().reciprocal().float().item()
    if maximize:
        factor = -(1.0 if factor is None else factor)
    return factor


# ---------------------------------------------------------------------------------------------
# INNAprop (Bolte, Boustany, Pauwels, Purica 2024)


def check_innaprop_hyperparameters(lr, alpha, beta, sigma, eps, weight_decay) -> None:
    """Raise ValueError naming the first invalid INNAprop hyper-parameter (torch.optim's words for
    lr, eps and weight_decay). The authors require lr < beta (γ < β): their θ update divides by
    β − γ."""
    lr_value = _checked_lr(lr, "INNAprop")
    _check_alpha_beta(alpha, beta)
    if lr_value is not None and not lr_value < beta:
        raise ValueError(f"Invalid learning rate: {lr_value} (INNAprop needs lr < beta = {beta})")
    if not (math.isfinite(sigma) and 0 <= sigma < 1):
        raise ValueError(f"Invalid sigma value: {sigma} (need 0 <= sigma < 1)")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"Invalid epsilon value: {eps} (INNAprop needs a finite eps >= 0)")
    _check_weight_decay(weight_decay, "INNAprop")


def innaprop_bias_correction(sigma: float, k: int) -> float:
    """√(1 − σ^t) for step t = k + 1 (k the steps the param has taken)."""
    return math.sqrt(1.0 - sigma ** (k + 1))
