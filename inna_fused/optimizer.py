"""`INNA`, a torch.optim.Optimizer: a drop-in superset of the authors' class."""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from . import _ops
from .functional import check_hyperparameters, inna
from .reference import psi_dtype

__all__ = ["INNA"]

_warned_fallback = False

# Group keys that state_dicts of the authors' class (or older versions) may lack.
_LOADED_GROUP_DEFAULTS = dict(psi_init="zero", decoupled_weight_decay=False, maximize=False,
                              foreach=None, fused=None, capturable=False, decaypower=0.0,
                              weight_decay=0.0)


def _warn_fallback_once(device_type: str) -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(f"INNA: no fused kernel for {device_type}, using the slower foreach path: "
                      f"{_ops.unavailable_reason(device_type)}", RuntimeWarning, stacklevel=3)


class INNA(Optimizer):
    r"""Inertial Newton Algorithm (Castera, Bolte, Févotte, Pauwels, JMLR 2021).

    For each parameter θ with gradient v and auxiliary buffer ψ, one step is (eq. 12)

    .. math::
        \gamma_k &= \mathrm{lr} / (k+1)^{q} \\
        \phi_k &= (\alpha - 1/\beta)\,\theta_k + \psi_k/\beta \\
        \psi_{k+1} &= \psi_k - \gamma_k\,\phi_k \\
        \theta_{k+1} &= \theta_k - \gamma_k\,(\phi_k + \beta v_k)

    with k the number of steps this parameter has taken and q = ``decaypower``. On the first step
    ψ is initialised: ``psi_init="paper"`` gives ψ₀ = (1−αβ)θ₀ − (β²−β)v₀ (the first step is then one
    SGD step), ``psi_init="zero"`` gives ψ₀ = (1−αβ)θ₀ (the authors' PyTorch code).

    Args:
        params: parameters or param groups.
        lr: γ₀, a float or a one-element tensor (a tensor avoids recompiles and allows CUDA graphs).
        alpha, beta: the damping coefficients α > 0 (viscous) and β > 0 (Newtonian).
        decaypower: q ≥ 0 in γ_k = lr/(k+1)^q (0: constant, e.g. driven by an LR scheduler;
            combining both is allowed: the scheduler sets lr, the decay applies on top).
        weight_decay: coupled (authors' convention: θ's step gets + wd·θ) unless
            ``decoupled_weight_decay=True`` (θ ← θ(1 − γ_k·wd) before the update).
        maximize: maximize the objective instead of minimizing it.
        foreach, fused: implementation choice. ``fused=None`` (default) uses the compiled kernel
            when it serves the params' devices, else the foreach path with a one-time warning;
            ``fused=True`` requires the kernel; ``fused=False, foreach=False`` runs the per-parameter
            reference loop.
        capturable: keep step counts on the params' device so that a step can be captured in a
            CUDA graph (fused path only).

    State per parameter: ``psi`` (float32 for 16-bit params) and ``step`` (a float32 tensor).
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
        psi_init: str = "paper",
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
        capturable: bool = False,
    ):
        check_hyperparameters(lr, alpha, beta, decaypower, weight_decay, psi_init)
        if fused and foreach:
            raise RuntimeError("INNA: `fused` and `foreach` cannot both be True")
        if capturable and fused is False:
            raise ValueError("INNA: capturable=True needs the fused implementation")
        defaults = dict(lr=lr, alpha=alpha, beta=beta, decaypower=decaypower,
                        weight_decay=weight_decay, psi_init=psi_init,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, fused=fused, capturable=capturable)
        super().__init__(params, defaults)
        # torch.amp.GradScaler hands grad_scale/found_inf to step() (every implementation honours them).
        self._step_supports_amp_scaling = True
        for group in self.param_groups:
            self._implementation(group)  # raise/warn now rather than at the first step

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **param_group}
        check_hyperparameters(merged["lr"], merged["alpha"], merged["beta"], merged["decaypower"],
                              merged["weight_decay"], merged["psi_init"])
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            # Groups saved by the authors' class lack the newer keys; its ψ convention is "zero"
            # (it matters for params that had no gradient yet when it saved).
            for key, value in _LOADED_GROUP_DEFAULTS.items():
                group.setdefault(key, value)
            for p in group["params"]:
                st = self.state.get(p)
                # The authors' class keeps an int step; ours is a float32 tensor (moved to the
                # param's device by the first fused step).
                if st and "step" in st and not torch.is_tensor(st["step"]):
                    st["step"] = torch.tensor(float(st["step"]), dtype=torch.float32)

    def _implementation(self, group: dict[str, Any]) -> str:
        fused, foreach = group["fused"], group["foreach"]
        devices = {p.device.type for p in group["params"]}
        if fused:
            for d in devices:
                if not _ops.kernel_available(d):
                    raise RuntimeError(f"INNA(fused=True): {_ops.unavailable_reason(d)}")
            return "fused"
        if fused is None and not foreach:
            if all(_ops.kernel_available(d) for d in devices):
                return "fused"
            if foreach is None:
                _warn_fallback_once(next(d for d in devices if not _ops.kernel_available(d)))
                return "foreach"
        if group["capturable"]:
            raise ValueError("INNA: capturable=True needs the fused implementation")
        return "foreach" if foreach or foreach is None else "reference"

    def _init_group(self, group, params, grads, psis, steps, on_device: bool) -> None:
        """Gather the lists for one group; create state lazily. The fused kernel reads step counts
        on the params' device, the other paths on the CPU."""
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.zeros((), dtype=torch.float32,
                                            device=p.device if on_device else "cpu")
                # Filled by the first step in the same pass (its contents are never read before).
                state["psi"] = torch.empty_like(p, dtype=self._psi_dtype_of(p),
                                                memory_format=torch.preserve_format)
            elif on_device and state["step"].device != p.device:
                state["step"] = state["step"].to(p.device)
            psis.append(state["psi"])
            steps.append(state["step"])

    @staticmethod
    def _check_groups_before_writes(work) -> None:
        """With several param groups, each inna() call is all-or-nothing on its own; check here, for
        every group, what fails in normal use (hyper-parameters changed after construction, sparse
        grads), so that a step either moves all groups or none. Cheap: the full per-tensor checks
        run inside each call (in C++ for the fused path)."""
        for group_index, (group, _, params, grads, _, _) in enumerate(work):
            check_hyperparameters(group["lr"], group["alpha"], group["beta"], group["decaypower"],
                                  group["weight_decay"], group["psi_init"])
            for grad in grads:
                if grad.layout != torch.strided:
                    raise TypeError(f"INNA: a param of param group {group_index} has a "
                                    f"{grad.layout} grad; INNA does not support sparse gradients")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's load_state_dict, plus: every saved ψ and step is checked against its
        param first (a bad checkpoint raises here, and nothing is loaded); ψ keeps its own
        precision and integer step tensors become float32."""
        saved_psis = self._check_saved_state(state_dict)
        super().load_state_dict(state_dict)
        for p, saved_psi in saved_psis.items():
            state = self.state[p]
            # torch.optim casts state to the param's dtype; ψ of a 16-bit param stays float32,
            # taken from the saved tensor so that no precision is lost on the way.
            state["psi"] = saved_psi.to(device=p.device, dtype=self._psi_dtype_of(p))
            if state["step"].dtype not in (torch.float32, torch.float64):
                state["step"] = state["step"].to(torch.float32)  # e.g. an integer tensor

    @staticmethod
    def _psi_dtype_of(p: Tensor) -> torch.dtype:
        if p.is_complex():
            return torch.complex128 if p.dtype == torch.complex128 else torch.complex64
        return psi_dtype(p.dtype)

    def _check_saved_state(self, state_dict: dict[str, Any]) -> dict[Tensor, Tensor]:
        """Validate the per-param state of a state_dict; return {param: saved ψ}."""
        saved_groups = state_dict.get("param_groups")
        if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups) or any(
                len(s.get("params", ())) != len(g["params"])
                for s, g in zip(saved_groups, self.param_groups)):
            return {}  # torch.optim's load_state_dict reports structural mismatches
        param_of = dict(zip((i for s in saved_groups for i in s["params"]),
                            (p for g in self.param_groups for p in g["params"])))
        saved_psis = {}
        for key, st in state_dict.get("state", {}).items():
            p = param_of.get(key)
            if p is None or not st:
                continue
            where = f"INNA.load_state_dict: state of param {key} (shape {tuple(p.shape)})"
            if "psi" not in st or "step" not in st:
                raise ValueError(f"{where} lacks {'psi' if 'psi' not in st else 'step'}")
            psi, step = st["psi"], st["step"]
            if not torch.is_tensor(psi) or psi.shape != p.shape:
                got = tuple(psi.shape) if torch.is_tensor(psi) else type(psi).__name__
                raise ValueError(f"{where}: psi must be a tensor of the param's shape, got {got}")
            if psi.is_complex() != p.is_complex() or not (psi.is_floating_point()
                                                          or psi.is_complex()):
                raise TypeError(f"{where}: psi has dtype {psi.dtype}, which cannot hold the state "
                                f"of a {p.dtype} param")
            if torch.is_tensor(step):
                if step.numel() != 1 or step.is_complex() or step.dtype == torch.bool:
                    raise TypeError(f"{where}: step must be a number or a one-element real "
                                    f"tensor, got {step.dtype} of shape {tuple(step.shape)}")
                step_value = float(step)
            elif isinstance(step, (int, float)) and not isinstance(step, bool):
                step_value = float(step)
            else:
                raise TypeError(f"{where}: step must be a number or a tensor, got "
                                f"{type(step).__name__}")
            if not (math.isfinite(step_value) and step_value >= 0 and step_value.is_integer()):
                raise ValueError(f"{where}: step must be a whole number >= 0, got {step_value}")
            saved_psis[p] = psi
        return saved_psis

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step. `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        # Gather every group before writing any, so that what is checked here (and the
        # implementation choice) fails before the first group moves.
        work = []
        for group in self.param_groups:
            impl = self._implementation(group)
            params, grads, psis, steps = [], [], [], []
            self._init_group(group, params, grads, psis, steps, on_device=impl == "fused")
            if params:
                work.append((group, impl, params, grads, psis, steps))
        if len(work) > 1:
            self._check_groups_before_writes(work)
        for group, impl, params, grads, psis, steps in work:
            inna(params, grads, psis, steps, lr=group["lr"], alpha=group["alpha"],
                 beta=group["beta"], decay_power=group["decaypower"],
                 weight_decay=group["weight_decay"],
                 decoupled_weight_decay=group["decoupled_weight_decay"],
                 psi_init=group["psi_init"], maximize=group["maximize"], impl=impl,
                 grad_scale=grad_scale, found_inf=found_inf)
        return loss
