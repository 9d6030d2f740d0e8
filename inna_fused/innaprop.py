"""`INNAprop`, a torch.optim.Optimizer: the authors' INNAprop with this package's phase state,
low-precision storage and stochastic rounding."""
from __future__ import annotations

import warnings
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from ._contract import (PARAM_DTYPES, STEP_DTYPE, STEP_DTYPES, check_innaprop_hyperparameters,
                        check_rounding, check_state_dtype, default_phase_dtype, dtype_names,
                        phase_dtype_for)
from .conversions import phase_to_psi, psi_to_phase
from .innaprop_functional import fused_available, fused_unavailable_reason, innaprop
from .optimizer import check_saved_step, choose_implementation, convert_loaded_state

__all__ = ["INNAprop"]

_warned_fallback = False

# Group keys that the authors' state_dicts lack.
_LOADED_GROUP_DEFAULTS = dict(maximize=False, foreach=None, fused=None, capturable=False,
                              state_dtype=None, stochastic_rounding=True, seed=0)


def _fused_param_error(p: Tensor, where: str) -> RuntimeError:
    devices = [d for d in ("cpu", "cuda") if fused_available(d)]
    if p.dtype not in PARAM_DTYPES:
        why = f"INNAprop's fused kernel takes {dtype_names(PARAM_DTYPES)} params"
    else:
        why = fused_unavailable_reason(p.device.type)
    return RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                        f"supported devices: {devices} but {p.dtype} and {p.device.type} "
                        f"(INNAprop: {where}: {why})")


def _warn_fallback_once(device_type: str) -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(f"INNAprop: no fused kernel for {device_type}, using the slower foreach "
                      f"path: {fused_unavailable_reason(device_type)}", RuntimeWarning,
                      stacklevel=3)


class INNAprop(Optimizer):
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
        state_dtype: dtype of the phase (None: float32, float64 for float64 params;
            ``torch.bfloat16`` for any param). ``exp_avg_sq`` is always float32 (float64 for
            float64 params).
        stochastic_rounding, seed: as for :class:`inna_fused.INNA` (16-bit params and bfloat16
            phases round stochastically with reproducible bits).
        foreach, fused, capturable: implementation choice, as for :class:`inna_fused.INNA`.
            The fused INNAprop kernel is used when the compiled extension has it.

    State per parameter: ``phase`` (w, in ``state_dtype``), ``exp_avg_sq`` and ``step`` (a float32
    tensor). ``load_state_dict`` also accepts the authors' state (``psi``, ``exp_avg_sq``, int
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
        check_innaprop_hyperparameters(lr, alpha, beta, sigma, eps, weight_decay)
        check_rounding(stochastic_rounding, seed)
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if capturable and fused is False:
            raise ValueError("INNAprop: capturable=True needs the fused implementation")
        defaults = dict(lr=lr, alpha=alpha, beta=beta, sigma=sigma, eps=eps,
                        weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        fused=fused, capturable=capturable, state_dtype=state_dtype,
                        stochastic_rounding=stochastic_rounding, seed=seed)
        super().__init__(params, defaults)
        self._step_supports_amp_scaling = True

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        check_innaprop_hyperparameters(group["lr"], group["alpha"], group["beta"], group["sigma"],
                                       group["eps"], group["weight_decay"])
        check_rounding(group["stochastic_rounding"], group["seed"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)
        added = self.param_groups[-1]
        try:
            for p in added["params"]:
                if p.is_complex():
                    raise ValueError(f"INNAprop: complex params are not supported (got a "
                                     f"{p.dtype} param); pass torch.view_as_real views")
            check_state_dtype(added["state_dtype"], added["params"])
            self._implementation(added, len(self.param_groups) - 1, constructing=True)
        except (ValueError, RuntimeError):
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in _LOADED_GROUP_DEFAULTS.items():
                group.setdefault(key, value)
            for p in group["params"]:
                convert_loaded_state(self.state.get(p), p, group)

    def _implementation(self, group: dict[str, Any], group_index: int = 0,
                        constructing: bool = False) -> str:
        return choose_implementation(group, group_index, constructing, name="INNAprop",
                                     available=fused_available, param_error=_fused_param_error,
                                     warn_fallback=_warn_fallback_once, dtypes=PARAM_DTYPES)

    def _init_group(self, group, params, grads, phases, exp_avg_sqs, steps, on_device) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.zeros((), dtype=STEP_DTYPE,
                                            device=p.device if on_device else "cpu")
                state["phase"] = torch.zeros_like(p, dtype=phase_dtype_for(p, group["state_dtype"]),
                                                  memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=default_phase_dtype(p.dtype),
                                                       memory_format=torch.preserve_format)
            elif on_device and state["step"].device != p.device:
                state["step"] = state["step"].to(p.device)
            phases.append(state["phase"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step. `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        work = []
        for group_index, group in enumerate(self.param_groups):
            impl = self._implementation(group, group_index)
            lists = ([], [], [], [], [])
            self._init_group(group, *lists, on_device=impl == "fused")
            if lists[0]:
                work.append((group, impl, lists))
        if len(work) > 1:  # every group checked before the first one moves
            for group_index, (group, _, lists) in enumerate(work):
                self._check_group(group)
                for grad in lists[1]:
                    if grad.layout != torch.strided:
                        raise TypeError(f"INNAprop: a param of param group {group_index} has a "
                                        f"{grad.layout} grad; sparse gradients are not supported")
        for group, impl, lists in work:
            innaprop(*lists, lr=group["lr"], alpha=group["alpha"], beta=group["beta"],
                     sigma=group["sigma"], eps=group["eps"], weight_decay=group["weight_decay"],
                     maximize=group["maximize"], stochastic_rounding=group["stochastic_rounding"],
                     seed=group["seed"], impl=impl, grad_scale=grad_scale, found_inf=found_inf)
        return loss

    # -----------------------------------------------------------------------------------------
    # Checkpoints

    def _with_storage_keys(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """A shallow copy of state_dict whose groups hold every key of _LOADED_GROUP_DEFAULTS
        (this optimizer's value where a saved group, e.g. the authors', lacks one)."""
        saved_groups = state_dict.get("param_groups")
        if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups):
            return state_dict  # torch.optim's load_state_dict reports structural mismatches
        groups = [{**{k: g[k] for k in _LOADED_GROUP_DEFAULTS}, **s} if isinstance(s, dict) else s
                  for s, g in zip(saved_groups, self.param_groups)]
        return {**state_dict, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's load_state_dict, plus: every saved state is checked against its param
        first (a bad checkpoint raises and nothing is loaded); the authors' ``psi`` is converted
        to the phase in float64 with the saved group's α and β; the phase is stored in this
        optimizer's ``state_dtype`` and ``exp_avg_sq`` in float32 (float64 for float64 params),
        from the saved tensors rather than torch.optim's cast to the param's dtype; int steps
        become float32 tensors."""
        state_dict = self._with_storage_keys(state_dict)
        saved = self._check_saved_state(state_dict)
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                if p not in saved:
                    continue
                key, value, exp_avg_sq = saved[p]
                state = self.state[p]
                dtype = phase_dtype_for(p, group["state_dtype"])
                state.pop("psi", None)
                if key == "psi":
                    state["phase"] = psi_to_phase(p, value.to(p.device), group["alpha"],
                                                  group["beta"], dtype=dtype)
                else:
                    state["phase"] = value.to(device=p.device, dtype=dtype, copy=True)
                # A copy: the saved tensor may be another optimizer's live state.
                state["exp_avg_sq"] = exp_avg_sq.to(device=p.device,
                                                    dtype=default_phase_dtype(p.dtype), copy=True)
                if state["step"].dtype not in STEP_DTYPES:
                    state["step"] = state["step"].to(STEP_DTYPE)

    def psi_state_dict(self) -> dict[str, Any]:
        """`state_dict()` in the authors' format: each phase w replaced by ψ = (1 − αβ)θ + β·w
        (float64 arithmetic, stored as float32, float64 for float64 params) and int steps."""
        state_dict = self.state_dict()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                st = state_dict["state"].get(index)
                if st is not None and "phase" in st:
                    st = dict(st)
                    st["psi"] = phase_to_psi(p, st.pop("phase"), group["alpha"], group["beta"])
                    st["step"] = int(st["step"])
                    state_dict["state"][index] = st
                index += 1
        return state_dict

    def _check_saved_state(self, state_dict: dict[str, Any]) -> dict:
        """Validate the saved groups and per-param states; {param: (key, phase or ψ,
        exp_avg_sq)}."""
        saved_groups = state_dict.get("param_groups")
        if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups) or any(
                not isinstance(s, dict) or len(s.get("params", ())) != len(g["params"])
                for s, g in zip(saved_groups, self.param_groups)):
            return {}  # torch.optim's load_state_dict reports structural mismatches
        for s, g in zip(saved_groups, self.param_groups):
            merged = {**_LOADED_GROUP_DEFAULTS, **s}
            missing = [k for k in ("lr", "alpha", "beta", "sigma", "eps", "weight_decay")
                       if k not in merged]
            if missing:
                raise ValueError(f"INNAprop.load_state_dict: a saved param group lacks {missing}")
            self._check_group(merged)
            check_state_dtype(merged["state_dtype"], g["params"])
        param_of = dict(zip((i for s in saved_groups for i in s["params"]),
                            (p for g in self.param_groups for p in g["params"])))
        saved = {}
        for key, st in state_dict.get("state", {}).items():
            p = param_of.get(key)
            if p is None or not st:
                continue
            where = f"INNAprop.load_state_dict: state of param {key} (shape {tuple(p.shape)})"
            state_key = "phase" if "phase" in st else "psi"
            for needed in (state_key, "exp_avg_sq", "step"):
                if needed not in st:
                    what = "phase (or psi)" if needed in ("phase", "psi") else needed
                    raise ValueError(f"{where} lacks {what}")
            for name in (state_key, "exp_avg_sq"):
                value = st[name]
                if not torch.is_tensor(value) or value.shape != p.shape:
                    got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                    raise ValueError(f"{where}: {name} must be a tensor of the param's shape, "
                                     f"got {got}")
                if not value.is_floating_point():
                    raise TypeError(f"{where}: {name} has dtype {value.dtype}, which cannot hold "
                                    f"the state of a {p.dtype} param")
            step = st["step"]
            check_saved_step(where, step)
            saved[p] = (state_key, st[state_key], st["exp_avg_sq"])
        return saved
