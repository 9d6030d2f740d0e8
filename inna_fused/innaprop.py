"""`INNAprop`, a torch.optim.Optimizer: the authors' INNAprop with this package's phase state,
low-precision storage and stochastic rounding. The step, the checkpoint and the planned-step
logic it shares with INNA live in `inna_fused._base`."""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from ._base import FusedListOptimizer
from ._contract import (PARAM_DTYPES, check_innaprop_hyperparameters, check_rounding,
                        check_state_dtype, phase_dtype_for, valid_lr)
from .innaprop_functional import (fused_available, fused_unavailable_reason, innaprop,
                                  step_plain_fused)

__all__ = ["INNAprop"]


class INNAprop(FusedListOptimizer):
    r"""INNAprop: INNA with RMSprop scaling (Bolte, Boustany, Pauwels, Purica 2024).

    The authors keep ψ; this class keeps the phase w with ψ = (1 − αβ)θ + β·w (w₀ = 0, i.e. the
    authors' ψ₀ = (1 − αβ)θ₀), in which their step t reads exactly (γ = lr, λ = weight_decay):

    .. math::
        v &\leftarrow \sigma v + (1 - \sigma) g^2, \quad
        d = \sqrt{v}/\sqrt{1 - \sigma^t} + \varepsilon, \quad u = g/d \\
        w &\leftarrow w + (1 - \alpha\beta)\gamma\lambda\theta/\beta, \quad
        \theta \leftarrow (1 - \gamma\lambda)\theta \\
        \theta &\leftarrow \theta - \gamma(w + \beta u), \quad
        w \leftarrow (1 - \alpha\gamma) w + (1 - \alpha\beta)\gamma u

    Args:
        params: parameters or param groups.
        lr: γ, a float or a one-element tensor; 0 ≤ lr < beta (the authors' requirement).
        alpha, beta: INNA's damping coefficients α > 0, β > 0.
        sigma: RMSprop's decay σ ∈ [0, 1) of the squared-gradient average.
        eps: ε ≥ 0 added to the denominator.
        weight_decay: decoupled weight decay λ ≥ 0 (θ ← (1 − γλ)θ before the update).
        maximize: maximize the objective instead of minimizing it.
        state_dtype: dtype of the state, phase and ``exp_avg_sq`` (None: float32, float64 for
            float64 params; ``torch.bfloat16`` for any param: 4 bytes of state per param, both
            tensors rounded stochastically with ``stochastic_rounding``).
        stochastic_rounding, seed: as for :class:`inna_fused.INNA` (16-bit params and bfloat16
            phases round stochastically with reproducible bits).
        foreach, fused, capturable: implementation choice, as for :class:`inna_fused.INNA`.
            The fused INNAprop kernel is used when the compiled extension has it.

    State per parameter: ``phase`` (w) and ``exp_avg_sq`` (v), both in ``state_dtype``, and
    ``step`` (a float32 tensor). ``load_state_dict`` also accepts the authors' state (``psi``, ``exp_avg_sq``, int
    ``step``), converting ψ in float64; ``psi_state_dict()`` saves in that format.
    """

    def __init__(
        self,
        params,
        lr: Union[float, Tensor] = 1e-3,
        alpha: float = 0.1,
        beta: float = 0.9,
        sigma: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
        capturable: bool = False,
        state_dtype: Optional[torch.dtype] = None,
        stochastic_rounding: bool = True,
        seed: int = 0,
    ):
        defaults = dict(lr=lr, alpha=alpha, beta=beta, sigma=sigma, eps=eps,
                        weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        fused=fused, capturable=capturable, state_dtype=state_dtype,
                        stochastic_rounding=stochastic_rounding, seed=seed)
        super().__init__(params, defaults)

    _name = "INNAprop"
    _state_keys = ("phase", "exp_avg_sq")
    # Group keys that the authors' state_dicts lack: a loaded group takes this optimizer's values.
    _loaded_group_defaults = dict(maximize=False, foreach=None, fused=None, capturable=False,
                                  state_dtype=None, stochastic_rounding=True, seed=0)
    _storage_keys = tuple(_loaded_group_defaults)
    _hyper_keys = ("alpha", "beta", "sigma", "eps", "weight_decay", "maximize",
                   "stochastic_rounding", "seed", "fused", "foreach", "capturable", "state_dtype")
    _psi_int_steps = True  # the authors' format

    def _check_group(self, group: dict[str, Any]) -> None:
        check_innaprop_hyperparameters(group["lr"], group["alpha"], group["beta"], group["sigma"],
                                       group["eps"], group["weight_decay"])
        check_rounding(group["stochastic_rounding"], group["seed"])

    @staticmethod
    def _lr_ok(lr: float, group: dict[str, Any]) -> bool:
        return valid_lr(lr) and lr < group["beta"]

    def _check_new_params(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            if p.is_complex():
                raise ValueError(f"INNAprop: complex params are not supported (got a {p.dtype} "
                                 "param); pass torch.view_as_real views")

    def _check_saved_group(self, saved: dict[str, Any], group: dict[str, Any]) -> None:
        missing = [k for k in ("lr", "alpha", "beta", "sigma", "eps", "weight_decay")
                   if k not in saved]
        if missing:
            raise ValueError(f"INNAprop.load_state_dict: a saved param group lacks {missing}")
        self._check_group(saved)
        check_state_dtype(saved["state_dtype"], group["params"])

    _fused_dtypes = PARAM_DTYPES
    _kernel_available = staticmethod(fused_available)
    _kernel_unavailable_reason = staticmethod(fused_unavailable_reason)

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        dtype = phase_dtype_for(p, group["state_dtype"])
        return {key: torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
                for key in self._state_keys}

    # The op's and the functional API's keyword arguments, lr apart.
    _op_keys = ("alpha", "beta", "sigma", "eps", "weight_decay", "maximize",
                "stochastic_rounding", "seed")

    def _run(self, group, impl, lists, grad_scale, found_inf) -> None:
        innaprop(*lists, lr=group["lr"], **{k: group[k] for k in self._op_keys}, impl=impl,
                 grad_scale=grad_scale, found_inf=found_inf)

    @staticmethod
    def _run_planned(lists, device, kwargs, grad_scale, found_inf) -> None:
        step_plain_fused(*lists, device, kwargs, grad_scale, found_inf)
