"""`INNA`, a torch.optim.Optimizer: a drop-in superset of the authors' class."""
from __future__ import annotations

import math
import operator
import warnings
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from . import _ops
from .conversions import phase_to_psi, psi_to_phase
from ._contract import (COMPLEX_DTYPES, PARAM_DTYPES, STEP_DTYPE, STEP_DTYPES,
                        check_hyperparameters, check_rounding, check_state_dtype, dtype_names,
                        phase_dtype_for, valid_lr)
from .functional import inna, step_plain_fused

__all__ = ["INNA"]

_warned_fallback = False

# Group keys that state_dicts of the authors' class (or older versions) may lack.
_LOADED_GROUP_DEFAULTS = dict(psi_init="zero", decoupled_weight_decay=False, maximize=False,
                              foreach=None, fused=None, capturable=False, decaypower=0.0,
                              weight_decay=0.0, state_dtype=None, stochastic_rounding=True,
                              seed=0)
# Group keys that a loaded state_dict may lack (the authors' class, older versions of this one):
# this optimizer's own values fill them in, so that e.g. a ψ checkpoint loaded into an optimizer
# built with state_dtype=torch.bfloat16 keeps a bfloat16 phase.
_STORAGE_KEYS = ("state_dtype", "stochastic_rounding", "seed")


_FUSED_DTYPES = PARAM_DTYPES + COMPLEX_DTYPES


def _fused_devices() -> list[str]:
    return [d for d in ("cpu", "cuda") if _ops.kernel_available(d)]


def _fused_param_error(p: Tensor, where: str) -> RuntimeError:
    """torch.optim's error for `fused=True` with a param the fused kernel cannot take, then which
    param and why."""
    if p.dtype not in _FUSED_DTYPES:
        why = f"INNA's fused kernel takes {dtype_names(_FUSED_DTYPES)} params"
    else:
        why = _ops.unavailable_reason(p.device.type)
    return RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                        f"supported devices: {_fused_devices()} but {p.dtype} and "
                        f"{p.device.type} (INNA: {where}: {why})")


def _meta_param_error(group_index: int, param_index: int, p: Tensor,
                      name: str = "INNA") -> RuntimeError:
    return RuntimeError(
        f"{name}.step(): param {param_index} of param group {group_index} (shape "
        f"{tuple(p.shape)}) is on the meta device, which holds no data: materialise the model "
        "(e.g. model.to_empty(device=...), then initialise its weights) before stepping. "
        "to_empty() keeps the Parameter objects that the optimizer holds only under "
        "torch.__future__.set_swap_module_params_on_conversion(True); otherwise construct the "
        "optimizer after to_empty()")


def _warn_fallback_once(device_type: str) -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(f"INNA: no fused kernel for {device_type}, using the slower foreach path: "
                      f"{_ops.unavailable_reason(device_type)}", RuntimeWarning, stacklevel=3)


def choose_implementation(group: dict[str, Any], group_index: int, constructing: bool, *,
                          name: str, available, param_error, warn_fallback,
                          dtypes: tuple = _FUSED_DTYPES) -> str:
    """"fused", "foreach" or "loop" for one param group (INNA's and INNAprop's rule): `available`
    (device type -> bool) says where the optimizer's fused kernel runs, `param_error(p, where)`
    builds the error for `fused=True` with a param it cannot take, `warn_fallback(device type)`
    warns (once) when `fused=None` falls back to foreach. At construction, params on the meta
    device are skipped (checked when materialised); at a step they raise."""
    fused, foreach = group["fused"], group["foreach"]
    devices = {p.device.type for p in group["params"]}
    if "meta" in devices:
        if not constructing:
            i, p = next((i, p) for i, p in enumerate(group["params"]) if p.device.type == "meta")
            raise _meta_param_error(group_index, i, p, name)
        devices.discard("meta")
    if fused:
        if constructing:
            for i, p in enumerate(group["params"]):
                if p.device.type != "meta" and (p.dtype not in dtypes
                                                or not available(p.device.type)):
                    raise param_error(p, f"param {i} of param group {group_index}")
        else:
            for d in devices:
                if not available(d):
                    i, p = next((i, p) for i, p in enumerate(group["params"])
                                if p.device.type == d)
                    raise param_error(p, f"param {i} of param group {group_index}")
        return "fused"
    if fused is None and not foreach:
        if all(available(d) for d in devices):
            return "fused"
        if foreach is None:
            warn_fallback(next(d for d in devices if not available(d)))
            return "foreach"
    if group["capturable"]:
        raise ValueError(f"{name}: capturable=True needs the fused implementation")
    return "foreach" if foreach or foreach is None else "loop"


def check_saved_step(where: str, step) -> None:
    """A saved step count: a number or a one-element real tensor holding a whole number >= 0."""
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


def convert_loaded_state(st: dict, p: Tensor, group: dict[str, Any]) -> None:
    """Bring a param's state loaded from the authors' class (or an earlier version) to this
    package's form: an int step becomes a float32 tensor (moved to the param's device by the
    first fused step), a ψ becomes the phase (float64 conversion, in the group's state_dtype)."""
    if st and "step" in st and not torch.is_tensor(st["step"]):
        st["step"] = torch.tensor(float(st["step"]), dtype=STEP_DTYPE)
    if st and "psi" in st and "phase" not in st and torch.is_tensor(st["psi"]):
        st["phase"] = psi_to_phase(p, st.pop("psi"), group["alpha"], group["beta"],
                                   dtype=phase_dtype_for(p, group["state_dtype"]))


class INNA(Optimizer):
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
        check_hyperparameters(lr, alpha, beta, decaypower, weight_decay, psi_init)
        check_rounding(stochastic_rounding, seed)
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if capturable and fused is False:
            raise ValueError("INNA: capturable=True needs the fused implementation")
        defaults = dict(lr=lr, alpha=alpha, beta=beta, decaypower=decaypower,
                        weight_decay=weight_decay, psi_init=psi_init,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, fused=fused, capturable=capturable,
                        state_dtype=state_dtype, stochastic_rounding=stochastic_rounding,
                        seed=seed)
        super().__init__(params, defaults)
        # torch.amp.GradScaler hands grad_scale/found_inf to step() (every implementation honours them).
        self._step_supports_amp_scaling = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **param_group}
        check_hyperparameters(merged["lr"], merged["alpha"], merged["beta"], merged["decaypower"],
                              merged["weight_decay"], merged["psi_init"])
        check_rounding(merged["stochastic_rounding"], merged["seed"])
        self._plan = None
        super().add_param_group(param_group)
        added = self.param_groups[-1]
        try:
            check_state_dtype(added["state_dtype"], added["params"])
            # Raise/warn now rather than at the first step. Params on the meta device (a model
            # built for deferred initialisation) are checked when they are materialised.
            self._implementation(added, len(self.param_groups) - 1, constructing=True)
        except (ValueError, RuntimeError):
            self.param_groups.pop()  # torch's add_param_group has appended it: nothing added
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._plan = None
        for group in self.param_groups:
            # Groups saved by the authors' class lack the newer keys; its ψ convention is "zero"
            # (it matters for params that had no gradient yet when it saved).
            for key, value in _LOADED_GROUP_DEFAULTS.items():
                group.setdefault(key, value)
            for p in group["params"]:
                # The authors' class keeps an int step; an optimizer pickled by an earlier
                # version keeps the paper's ψ.
                convert_loaded_state(self.state.get(p), p, group)

    def _implementation(self, group: dict[str, Any], group_index: int = 0,
                        constructing: bool = False) -> str:
        return choose_implementation(group, group_index, constructing, name="INNA",
                                     available=_ops.kernel_available,
                                     param_error=_fused_param_error,
                                     warn_fallback=_warn_fallback_once)

    def _init_group(self, group, params, grads, phases, steps, on_device: bool) -> None:
        """Gather the lists for one group; create state lazily. The fused kernel reads step counts
        on the params' device, the other paths on the CPU."""
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.zeros((), dtype=STEP_DTYPE,
                                            device=p.device if on_device else "cpu")
                # Filled by the first step in the same pass (its contents are never read before).
                state["phase"] = torch.empty_like(p, dtype=phase_dtype_for(p, group["state_dtype"]),
                                                  memory_format=torch.preserve_format)
            elif on_device and state["step"].device != p.device:
                state["step"] = state["step"].to(p.device)
            phases.append(state["phase"])
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
            check_rounding(group["stochastic_rounding"], group["seed"])
            for grad in grads:
                if grad.layout != torch.strided:
                    raise TypeError(f"INNA: a param of param group {group_index} has a "
                                    f"{grad.layout} grad; INNA does not support sparse gradients")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's load_state_dict, plus:

        - every saved phase (or ψ) and step is checked against its param first: a bad checkpoint
          raises here, and nothing is loaded;
        - a state holding the paper's ``psi`` (the authors' checkpoints and this package's earlier
          versions) is converted to the phase w = (α − 1/β)θ + ψ/β in float64, with the loaded
          group's α and β and the param's current value;
        - the phase is stored in this optimizer's ``state_dtype`` (saved groups that lack
          ``state_dtype``, ``stochastic_rounding`` or ``seed`` take this optimizer's values), taken
          from the saved tensor rather than torch.optim's cast to the param's dtype; integer step
          tensors become float32.
        """
        state_dict = self._with_storage_keys(state_dict)
        saved = self._check_saved_state(state_dict)
        self._plan = None
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                if p not in saved:
                    continue
                key, value = saved[p]
                state = self.state[p]
                dtype = phase_dtype_for(p, group["state_dtype"])
                if key == "psi":
                    # __setstate__ (called by torch's load_state_dict) converted the ψ that torch
                    # had cast to the param's dtype; convert the saved one instead.
                    state.pop("psi", None)
                    state["phase"] = psi_to_phase(p, value.to(p.device), group["alpha"],
                                                  group["beta"], dtype=dtype)
                else:
                    state["phase"] = value.to(device=p.device, dtype=dtype)
                if state["step"].dtype not in STEP_DTYPES:
                    state["step"] = state["step"].to(STEP_DTYPE)  # e.g. an integer tensor

    def psi_state_dict(self) -> dict[str, Any]:
        """`state_dict()` with each param's phase w replaced by the paper's ψ = β·w − (αβ − 1)·θ
        (computed in float64, stored as float32, float64 for float64 params): the format of the
        authors' optimizer and of this package's earlier versions. `load_state_dict` reads it
        back."""
        state_dict = self.state_dict()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                st = state_dict["state"].get(index)
                if st is not None and "phase" in st:
                    st = dict(st)
                    st["psi"] = phase_to_psi(p, st.pop("phase"), group["alpha"], group["beta"])
                    state_dict["state"][index] = st
                index += 1
        return state_dict

    def _with_storage_keys(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """A shallow copy of state_dict whose groups hold every key of _STORAGE_KEYS (this
        optimizer's value where a saved group lacks one)."""
        saved_groups = state_dict.get("param_groups")
        if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups):
            return state_dict  # torch.optim's load_state_dict reports structural mismatches
        groups = [{**{k: g[k] for k in _STORAGE_KEYS}, **s} if isinstance(s, dict) else s
                  for s, g in zip(saved_groups, self.param_groups)]
        return {**state_dict, "param_groups": groups}

    def _check_saved_state(self, state_dict: dict[str, Any]) -> dict[Tensor, tuple[str, Tensor]]:
        """Validate the groups' storage options and the per-param state of a state_dict; return
        {param: ("phase" or "psi", saved tensor)}."""
        saved_groups = state_dict.get("param_groups")
        if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups) or any(
                not isinstance(s, dict) or len(s.get("params", ())) != len(g["params"])
                for s, g in zip(saved_groups, self.param_groups)):
            return {}  # torch.optim's load_state_dict reports structural mismatches
        for s, g in zip(saved_groups, self.param_groups):
            check_rounding(s["stochastic_rounding"], s["seed"])
            check_state_dtype(s["state_dtype"], g["params"])
        param_of = dict(zip((i for s in saved_groups for i in s["params"]),
                            (p for g in self.param_groups for p in g["params"])))
        saved = {}
        for key, st in state_dict.get("state", {}).items():
            p = param_of.get(key)
            if p is None or not st:
                continue
            where = f"INNA.load_state_dict: state of param {key} (shape {tuple(p.shape)})"
            state_key = "phase" if "phase" in st else "psi"
            if state_key not in st or "step" not in st:
                missing = "phase (or psi)" if state_key not in st else "step"
                raise ValueError(f"{where} lacks {missing}")
            value, step = st[state_key], st["step"]
            if not torch.is_tensor(value) or value.shape != p.shape:
                got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                raise ValueError(f"{where}: {state_key} must be a tensor of the param's shape, "
                                 f"got {got}")
            if value.is_complex() != p.is_complex() or not (value.is_floating_point()
                                                            or value.is_complex()):
                raise TypeError(f"{where}: {state_key} has dtype {value.dtype}, which cannot hold "
                                f"the state of a {p.dtype} param")
            check_saved_step(where, step)
            saved[p] = (state_key, value)
        return saved

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step. `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if self._plan is not None and not torch.compiler.is_compiling():
            if self._step_planned(grad_scale, found_inf):
                return loss
        # Gather every group before writing any, so that what is checked here (and the
        # implementation choice) fails before the first group moves.
        work = []
        for group_index, group in enumerate(self.param_groups):
            impl = self._implementation(group, group_index)
            params, grads, phases, steps = [], [], [], []
            self._init_group(group, params, grads, phases, steps, on_device=impl == "fused")
            if params:
                work.append((group, impl, params, grads, phases, steps))
        if len(work) > 1:
            self._check_groups_before_writes(work)
        for group, impl, params, grads, phases, steps in work:
            inna(params, grads, phases, steps, lr=group["lr"], alpha=group["alpha"],
                 beta=group["beta"], decay_power=group["decaypower"],
                 weight_decay=group["weight_decay"],
                 decoupled_weight_decay=group["decoupled_weight_decay"],
                 psi_init=group["psi_init"], maximize=group["maximize"],
                 stochastic_rounding=group["stochastic_rounding"], seed=group["seed"], impl=impl,
                 grad_scale=grad_scale, found_inf=found_inf)
        if not torch.compiler.is_compiling():
            self._plan = self._make_plan(work)
        return loss

    # -----------------------------------------------------------------------------------------
    # The planned step: what a full step found out (implementation, one device and dtype per
    # group, validated hyper-parameters) is kept, so that the next steps only gather grads and
    # state and call the op. Made only when every group runs fused on plain (not complex, not
    # DTensor) tensors of one device, param dtype and phase dtype, and has params with grads
    # (those without one are remembered); dropped by add_param_group, load_state_dict and
    # __setstate__, and rechecked every step (see _step_planned; bench/NOTES.md lists what
    # drops it).

    _plan = None

    def _make_plan(self, work) -> Optional[tuple]:
        if not work or len(work) != len(self.param_groups):
            return None
        plans = []
        for (group, impl, params, _, phases, _), g in zip(work, self.param_groups):
            if impl != "fused" or group is not g:
                return None
            p0, phase0 = params[0], phases[0]
            if type(p0) not in _PLAIN_TYPES or p0.is_complex():
                return None
            dtype, phase_dtype, index = p0.dtype, phase0.dtype, p0.get_device()
            for p, phase in zip(params, phases):
                if (type(p) not in _PLAIN_TYPES or p.dtype is not dtype
                        or p.get_device() != index or phase.dtype is not phase_dtype):
                    return None
            everyone = list(group["params"])
            # Params without a grad this step (frozen ones): the plan holds while they have none.
            without_grad = [p for p in everyone if p.grad is None]
            if len(without_grad) + len(params) != len(everyone):
                return None
            plans.append(_GroupPlan(group, everyone, params, without_grad, dtype, phase_dtype,
                                    index, p0.device))
        return self.state, len(self.state), plans

    def _step_planned(self, grad_scale, found_inf) -> bool:
        """One step on the plan; False (nothing written) when the plan no longer fits: the caller
        then takes the full path, which validates everything and makes a new plan."""
        state, state_len, plans = self._plan
        groups = self.param_groups
        if state is not self.state or len(state) != state_len or len(plans) != len(groups):
            return False
        several = len(plans) > 1
        calls = []
        for plan, g in zip(plans, groups):
            current = g["params"]
            if (plan.group is not g or len(current) != len(plan.everyone)
                    or not all(map(operator.is_, current, plan.everyone))
                    or not plan.same_hyper(g, check_lr_value=several)):
                return False
            for p in plan.without_grad:
                if p.grad is not None:
                    return False
            params = plan.params
            try:
                grads = [p.grad for p in params]
                states = [state[p] for p in params]
                phases = [st["phase"] for st in states]
                steps = [st["step"] for st in states]
            except KeyError:  # a state was removed by hand
                return False
            if several:
                # Each op call is all-or-nothing by itself; with several groups, what the full
                # path would handle differently (a grad gone, a dtype or device changed) has to
                # be seen before the first group is written.
                dtype, phase_dtype, index = plan.dtype, plan.phase_dtype, plan.index
                for p, grad, phase, k in zip(params, grads, phases, steps):
                    if (grad is None or grad.layout is not torch.strided or p.dtype is not dtype
                            or p.get_device() != index or phase.dtype is not phase_dtype
                            or k.get_device() != index):
                        return False
            calls.append((params, grads, phases, steps, plan.device, plan.kwargs))
        if not several:
            params, grads, phases, steps, device, kwargs = calls[0]
            try:
                step_plain_fused(params, grads, phases, steps, device, kwargs, grad_scale,
                                 found_inf)
            except Exception:
                # The op validates every tensor before its first write: nothing was written, and
                # the full path will either handle the change (a grad set to None, a new dtype)
                # or raise the error with its full message.
                return False
            return True
        for params, grads, phases, steps, device, kwargs in calls:
            step_plain_fused(params, grads, phases, steps, device, kwargs, grad_scale, found_inf)
        return True


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
# Group entries a plan depends on, lr apart (LR schedulers change it every step).
_HYPER_KEYS = ("alpha", "beta", "decaypower", "weight_decay", "psi_init", "decoupled_weight_decay",
               "maximize", "stochastic_rounding", "seed", "fused", "foreach", "capturable",
               "state_dtype")


def _hyper_key(group: dict[str, Any]) -> tuple:
    return tuple([group.get(k) for k in _HYPER_KEYS])


def _same_values(a: tuple, b: tuple) -> bool:
    for x, y in zip(a, b):
        if x is not y and (type(x) is not type(y) or isinstance(x, Tensor) or x != y):
            return False
    return True


class _GroupPlan:
    """What a full step found out about one param group (see INNA._make_plan)."""

    __slots__ = ("group", "everyone", "params", "without_grad", "dtype", "phase_dtype", "index",
                 "device", "key", "lr", "kwargs")

    def __init__(self, group, everyone, params, without_grad, dtype, phase_dtype, index, device):
        self.group, self.everyone, self.params = group, everyone, params
        self.without_grad = without_grad
        self.dtype, self.phase_dtype, self.index, self.device = dtype, phase_dtype, index, device
        self.key = _hyper_key(group)
        self.lr = group["lr"]
        self.kwargs = _op_kwargs(group)

    def same_hyper(self, group: dict[str, Any], check_lr_value: bool) -> bool:
        """Whether the group's hyper-parameters are those of the plan (validated when it was
        made). A new float lr (an LR scheduler's) is validated here and taken over; a tensor lr
        must be the same tensor (the op checks its value on every call; with several groups it
        is checked here, before the first group is written)."""
        if not _same_values(self.key, _hyper_key(group)):
            return False
        lr = group["lr"]
        if lr is not self.lr:
            if type(lr) not in (float, int) or not valid_lr(lr):
                return False  # a tensor in place of a number, or an invalid value
            self.lr = lr
            self.kwargs = {**self.kwargs, "lr": float(lr)}
        elif check_lr_value and isinstance(lr, Tensor) and lr.device.type == "cpu":
            if not valid_lr(float(lr)):
                return False
        return True


def _op_kwargs(group: dict[str, Any]) -> dict[str, Any]:
    lr = group["lr"]
    return dict(lr=lr if isinstance(lr, Tensor) else float(lr), alpha=group["alpha"],
                beta=group["beta"], decay_power=group["decaypower"],
                weight_decay=group["weight_decay"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                paper_init=group["psi_init"] == "paper", maximize=group["maximize"],
                stochastic_rounding=group["stochastic_rounding"], seed=group["seed"])
