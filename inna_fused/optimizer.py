"""`INNA`, a torch.optim.Optimizer: a drop-in superset of the authors' class. The step, the
checkpoint and the planned-step logic it shares with INNAprop live in `inna_fused._base`."""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from . import _ops
from ._base import FusedListOptimizer
from ._contract import (COMPLEX_DTYPES, PARAM_DTYPES, check_hyperparameters, check_rounding,
                        check_state_dtype, phase_dtype_for)
from .functional import inna, step_plain_fused

__all__ = ["INNA"]

_FUSED_DTYPES = PARAM_DTYPES + COMPLEX_DTYPES


class INNA(FusedListOptimizer):
    r"""Inertial Newton Algorithm (Castera, Bolte, Févotte, Pauwels, JMLR 2021).

    The paper's eq. (12) keeps an auxiliary buffer ψ. This class keeps the equivalent *phase*

    .. math::
        w = (\alpha - 1/\beta)\,\theta + \psi/\beta
        \qquad\Longleftrightarrow\qquad
        \psi = \beta w - (\alpha\beta - 1)\,\theta,

    in which eq. (12) reads exactly, for each parameter θ with gradient v,

    .. math::
        \gamma_k &= \mathrm{lr} / (k+1)^{q} \\
        \theta_{k+1} &= \theta_k - \gamma_k\,(w_k + \beta v_k) \\
        w_{k+1} &= (1 - \alpha\gamma_k)\,w_k + (1 - \alpha\beta)\,\gamma_k\,v_k

    with k the number of steps this parameter has taken and q = ``decaypower``. w is
    gradient-sized, so unlike ψ it is not the difference of two nearly equal θ-sized terms: the
    float32 trajectory stays close to the exact one, w can be stored in bfloat16, and bfloat16
    params keep training. On the first step w is initialised: ``psi_init="zero"`` (the default)
    gives w₀ = 0, i.e. ψ₀ = (1−αβ)θ₀ (the authors' PyTorch code, and INNAprop's);
    ``psi_init="paper"`` gives w₀ = (1 − β)v₀, i.e. ψ₀ = (1−αβ)θ₀ − (β²−β)v₀ (Sec. 5.2.1 of the
    paper: the first step is one SGD step).

    Args:
        params: parameters or param groups.
        lr: γ₀, a float or a one-element tensor (a tensor avoids recompiles and allows CUDA graphs).
        alpha, beta: the damping coefficients α > 0 (viscous) and β > 0 (Newtonian).
        decaypower: q ≥ 0 in γ_k = lr/(k+1)^q (0: constant, e.g. driven by an LR scheduler;
            combining both is allowed: the scheduler sets lr, the decay applies on top).
        weight_decay: coupled (authors' convention: θ's step gets + wd·θ_k and w's gradient term
            becomes v + wd·θ_k/β) unless ``decoupled_weight_decay=True`` (θ ← θ(1 − γ_k·wd)
            before the update, ψ untouched, i.e. w gains (1 − αβ)γ_k·wd·θ_k/β).
        psi_init: ``"zero"`` (default) or ``"paper"``. Caveat on ``"paper"``: its ψ₀ starts θ
            with velocity −∇J(θ₀), which decays at rate αγ per step and so carries θ about
            (1 − β)/α·‖∇J(θ₀)‖ whatever the lr: on ‖W·x + b‖² (W 10×5, random) the loss after
            20 steps with the other defaults ends above where it started in 11 of 20 seeds (8 of
            20 at lr=0.01), in none with ``"zero"``. Use it to reproduce the paper's Sec. 5.2.1.
        maximize: maximize the objective instead of minimizing it.
        state_dtype: dtype of the phase. None (default): float32, float64 for float64 params.
            ``torch.bfloat16`` (any param dtype) halves the optimizer state; ``torch.float32``
            (16- and 32-bit params); ``torch.float64`` (float64 params only).
        stochastic_rounding: store float16/bfloat16 params and bfloat16 phases with unbiased
            stochastic rounding (default True); False rounds to nearest. The random bits are a hash
            of (seed, step, numel, element index): runs are reproducible and identical on every
            implementation, device, thread count and data-parallel replica.
        seed: the seed of those bits (an int).
        foreach, fused: implementation choice. ``fused=None`` (default) uses the compiled kernel
            when it serves the params' devices, else the foreach path with a one-time warning;
            ``fused=True`` requires the kernel; ``fused=False, foreach=False`` runs the
            per-parameter loop.
        capturable: keep step counts on the params' device so that a step can be captured in a
            CUDA graph (fused path only).

    State per parameter: ``phase`` (the w above, in ``state_dtype``) and ``step`` (a float32
    tensor). ``load_state_dict`` also accepts the paper's state ``psi`` (the authors' checkpoints
    and this package's earlier versions) and converts it in float64; ``psi_state_dict()`` saves
    in that format.
    """

    def __init__(
        self,
        params,
        lr: Union[float, Tensor] = 0.1,
        alpha: float = 0.5,
        beta: float = 0.1,
        decaypower: float = 0.0,
        weight_decay: float = 0.0,
        *,
        psi_init: str = "zero",
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
        capturable: bool = False,
        state_dtype: Optional[torch.dtype] = None,
        stochastic_rounding: bool = True,
        seed: int = 0,
    ):
        defaults = dict(lr=lr, alpha=alpha, beta=beta, decaypower=decaypower,
                        weight_decay=weight_decay, psi_init=psi_init,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, fused=fused, capturable=capturable,
                        state_dtype=state_dtype, stochastic_rounding=stochastic_rounding,
                        seed=seed)
        super().__init__(params, defaults)

    _name = "INNA"
    _state_keys = ("phase",)
    # Group keys that state_dicts of the authors' class (or older versions) may lack. Its ψ
    # convention is "zero" (it matters for params that had no gradient yet when it saved).
    _loaded_group_defaults = dict(psi_init="zero", decoupled_weight_decay=False, maximize=False,
                                  foreach=None, fused=None, capturable=False, decaypower=0.0,
                                  weight_decay=0.0, state_dtype=None, stochastic_rounding=True,
                                  seed=0)
    # A ψ checkpoint loaded into an optimizer built with state_dtype=torch.bfloat16 keeps a
    # bfloat16 phase.
    _storage_keys = ("state_dtype", "stochastic_rounding", "seed")
    _hyper_keys = ("alpha", "beta", "decaypower", "weight_decay", "psi_init",
                   "decoupled_weight_decay", "maximize", "stochastic_rounding", "seed", "fused",
                   "foreach", "capturable", "state_dtype")

    def _check_group(self, group: dict[str, Any]) -> None:
        check_hyperparameters(group["lr"], group["alpha"], group["beta"], group["decaypower"],
                              group["weight_decay"], group["psi_init"])
        check_rounding(group["stochastic_rounding"], group["seed"])

    def _check_saved_group(self, saved: dict[str, Any], group: dict[str, Any]) -> None:
        check_rounding(saved["stochastic_rounding"], saved["seed"])
        check_state_dtype(saved["state_dtype"], group["params"])

    _fused_dtypes = _FUSED_DTYPES
    _kernel_available = staticmethod(_ops.kernel_available)
    _kernel_unavailable_reason = staticmethod(_ops.unavailable_reason)

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"phase": torch.empty_like(p, dtype=phase_dtype_for(p, group["state_dtype"]),
                                          memory_format=torch.preserve_format)}

    def _run(self, group, impl, lists, grad_scale, found_inf) -> None:
        inna(*lists, lr=group["lr"], alpha=group["alpha"], beta=group["beta"],
             decay_power=group["decaypower"], weight_decay=group["weight_decay"],
             decoupled_weight_decay=group["decoupled_weight_decay"], psi_init=group["psi_init"],
             maximize=group["maximize"], stochastic_rounding=group["stochastic_rounding"],
             seed=group["seed"], impl=impl, grad_scale=grad_scale, found_inf=found_inf)

    _op_keys = ("alpha", "beta", "weight_decay", "decoupled_weight_decay", "maximize",
                "stochastic_rounding", "seed")

    def _op_kwargs(self, group: dict[str, Any]) -> dict[str, Any]:
        return {**super()._op_kwargs(group), "decay_power": group["decaypower"],
                "paper_init": group["psi_init"] == "paper"}

    @staticmethod
    def _run_planned(lists, device, kwargs, grad_scale, found_inf) -> None:
        step_plain_fused(*lists, device, kwargs, grad_scale, found_inf)
