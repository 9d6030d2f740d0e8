"""What `INNA` and `INNAprop` share: a torch.optim.Optimizer whose step is one fused multi-tensor
op per param group (with foreach and per-parameter fallbacks), the phase state and its ψ
checkpoints, and the planned step.

A subclass says what differs (see `FusedListOptimizer`): its name, the per-param state tensors
the op updates besides θ (``("phase",)`` for INNA, ``("phase", "exp_avg_sq")`` for INNAprop), how
a group is validated, how new state is made, and the functions that run a step (the list-level
functional API, and the fused op on a planned step).
"""
from __future__ import annotations

import math
import operator
import warnings
from typing import Any, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from ._contract import (STEP_DTYPE, STEP_DTYPES, check_state_dtype, dtype_names, phase_dtype_for,
                        valid_lr)
from .conversions import phase_to_psi, psi_to_phase

__all__ = ["FusedListOptimizer", "check_saved_step", "convert_loaded_state"]


def _meta_param_error(group_index: int, param_index: int, p: Tensor, name: str) -> RuntimeError:
    return RuntimeError(
        f"{name}.step(): param {param_index} of param group {group_index} (shape "
        f"{tuple(p.shape)}) is on the meta device, which holds no data: materialise the model "
        "(e.g. model.to_empty(device=...), then initialise its weights) before stepping. "
        "to_empty() keeps the Parameter objects that the optimizer holds only under "
        "torch.__future__.set_swap_module_params_on_conversion(True); otherwise construct the "
        "optimizer after to_empty()")


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
    """Bring a param's state loaded from the authors' classes (or an earlier version) to this
    package's form: an int step becomes a float32 tensor (moved to the param's device by the
    first fused step), a ψ becomes the phase (float64 conversion, in the group's state_dtype)."""
    if st and "step" in st and not torch.is_tensor(st["step"]):
        st["step"] = torch.tensor(float(st["step"]), dtype=STEP_DTYPE)
    if st and "psi" in st and "phase" not in st and torch.is_tensor(st["psi"]):
        st["phase"] = psi_to_phase(p, st.pop("psi"), group["alpha"], group["beta"],
                                   dtype=phase_dtype_for(p, group["state_dtype"]))


class FusedListOptimizer(Optimizer):
    """Base of INNA and INNAprop. Subclasses set the class attributes and implement the hooks
    below; the step, checkpoint and plan logic is here, once.

    Lists handed to the step functions, in the op's order: ``[params, grads, *states, steps]``
    with ``states`` one list per name of ``_state_keys``.
    """

    _name: str = ""
    # Per-param state tensors the op updates besides θ, in the op's list order. The first is the
    # phase (saved as the authors' ψ by psi_state_dict); the others are kept in the opmath dtype.
    _state_keys: tuple = ("phase",)
    # Group entries a loaded state_dict may lack, with the values they then take ...
    _loaded_group_defaults: dict = {}
    # ... except these, which take this optimizer's own values (how its state is stored).
    _storage_keys: tuple = ()
    # Group entries a plan depends on, lr apart (LR schedulers change it every step).
    _hyper_keys: tuple = ()
    # Whether psi_state_dict saves int steps (the authors' class does).
    _psi_int_steps = False
    _plan = None

    @staticmethod
    def _lr_ok(lr: float, group: dict[str, Any]) -> bool:
        """Whether a float lr is valid for the group (a planned step takes a scheduler's new lr
        without revalidating the whole group)."""
        return valid_lr(lr)

    # -- hooks -----------------------------------------------------------------------------------

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise if a group's hyper-parameters are invalid."""
        raise NotImplementedError

    def _check_new_params(self, group: dict[str, Any]) -> None:
        """Raise if a group being added holds params this optimizer cannot take."""

    def _check_saved_group(self, saved: dict[str, Any], group: dict[str, Any]) -> None:
        """Raise if a saved group (with _loaded_group_defaults filled in) cannot be loaded into
        `group`."""
        raise NotImplementedError

    # Where the fused op runs and what it takes.
    _fused_dtypes: tuple = ()

    @staticmethod
    def _kernel_available(device_type: str) -> bool:
        """Whether the optimizer's fused op has a kernel for this device type."""
        raise NotImplementedError

    @staticmethod
    def _kernel_unavailable_reason(device_type: str) -> str:
        raise NotImplementedError

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The state tensors (each name of _state_keys) of a param about to take its first step.
        The op initialises them when step = 0: their contents are never read."""
        raise NotImplementedError

    def _run(self, group: dict[str, Any], impl: str, lists: list, grad_scale, found_inf) -> None:
        """One step of one group through the functional API."""
        raise NotImplementedError

    # Group entries the op takes under the same names (lr apart).
    _op_keys: tuple = ()

    def _op_kwargs(self, group: dict[str, Any]) -> dict[str, Any]:
        """The fused op's keyword arguments for a group (a float or tensor lr under "lr")."""
        lr = group["lr"]
        kwargs = {k: group[k] for k in self._op_keys}
        kwargs["lr"] = lr if isinstance(lr, Tensor) else float(lr)
        return kwargs

    @staticmethod
    def _run_planned(lists: list, device: torch.device, kwargs: dict, grad_scale,
                     found_inf) -> None:
        """The fused op on the lists of a planned group."""
        raise NotImplementedError

    def __init__(self, params, defaults: dict[str, Any]):
        """`defaults`: the subclass's hyper-parameters plus foreach, fused, capturable,
        state_dtype, stochastic_rounding and seed; checked here before torch.optim's init."""
        self._check_group(defaults)
        if defaults["fused"] and defaults["foreach"]:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if defaults["capturable"] and defaults["fused"] is False:
            raise ValueError(f"{self._name}: capturable=True needs the fused implementation")
        super().__init__(params, defaults)
        # torch.amp.GradScaler hands grad_scale/found_inf to step() (every implementation honours
        # them).
        self._step_supports_amp_scaling = True

    # -- param groups ----------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._check_group({**self.defaults, **param_group})
        self._plan = None
        super().add_param_group(param_group)
        added = self.param_groups[-1]
        try:
            self._check_new_params(added)
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
            # Groups saved by the authors' classes (or earlier versions) lack the newer keys.
            for key, value in self._loaded_group_defaults.items():
                group.setdefault(key, value)
            for p in group["params"]:
                convert_loaded_state(self.state.get(p), p, group)

    # -- implementation choice -------------------------------------------------------------------

    _warned_fallback = False  # per class: set on the subclass by its first fallback warning

    def _implementation(self, group: dict[str, Any], group_index: int = 0,
                        constructing: bool = False) -> str:
        """"fused", "foreach" or "loop" for one param group. `fused=True` requires the fused
        kernel for every param (torch.optim's error otherwise); `fused=None` uses it where it
        serves every device, else falls back to foreach with a one-time warning. At construction,
        params on the meta device are skipped (checked when materialised); at a step they
        raise."""
        fused, foreach = group["fused"], group["foreach"]
        available = self._kernel_available
        devices = {p.device.type for p in group["params"]}
        if "meta" in devices:
            if not constructing:
                i, p = next((i, p) for i, p in enumerate(group["params"])
                            if p.device.type == "meta")
                raise _meta_param_error(group_index, i, p, self._name)
            devices.discard("meta")
        if fused:
            if constructing:
                for i, p in enumerate(group["params"]):
                    if p.device.type != "meta" and (p.dtype not in self._fused_dtypes
                                                    or not available(p.device.type)):
                        raise self._fused_param_error(p, f"param {i} of param group "
                                                         f"{group_index}")
            else:
                for d in devices:
                    if not available(d):
                        i, p = next((i, p) for i, p in enumerate(group["params"])
                                    if p.device.type == d)
                        raise self._fused_param_error(p, f"param {i} of param group "
                                                         f"{group_index}")
            return "fused"
        if fused is None and not foreach:
            if all(available(d) for d in devices):
                return "fused"
            if foreach is None:
                self._warn_fallback_once(next(d for d in devices if not available(d)))
                return "foreach"
        if group["capturable"]:
            raise ValueError(f"{self._name}: capturable=True needs the fused implementation")
        return "foreach" if foreach or foreach is None else "loop"

    def _fused_param_error(self, p: Tensor, where: str) -> RuntimeError:
        """torch.optim's error for `fused=True` with a param the fused kernel cannot take, then
        which param and why."""
        if p.dtype not in self._fused_dtypes:
            why = f"{self._name}'s fused kernel takes {dtype_names(self._fused_dtypes)} params"
        else:
            why = self._kernel_unavailable_reason(p.device.type)
        devices = [d for d in ("cpu", "cuda") if self._kernel_available(d)]
        return RuntimeError("`fused=True` requires all the params to be floating point Tensors "
                            f"of supported devices: {devices} but {p.dtype} and "
                            f"{p.device.type} ({self._name}: {where}: {why})")

    def _warn_fallback_once(self, device_type: str) -> None:
        cls = type(self)
        if not cls._warned_fallback:
            cls._warned_fallback = True
            warnings.warn(f"{self._name}: no fused kernel for {device_type}, using the slower "
                          f"foreach path: {self._kernel_unavailable_reason(device_type)}",
                          RuntimeWarning, stacklevel=2)

    # -- the step --------------------------------------------------------------------------------

    def _init_group(self, group: dict[str, Any], params, grads, *lists, on_device: bool) -> None:
        """Gather the lists of one group (`lists`: one per state key, then the steps); create state
        lazily. The fused kernel reads step counts on the params' device, the other paths on the
        CPU. (Flat list arguments: torch.compile runs a method of this name eagerly and wraps the
        lists it fills.)"""
        *state_lists, steps = lists
        keys = self._state_keys
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.zeros((), dtype=STEP_DTYPE,
                                            device=p.device if on_device else "cpu")
                state.update(self._new_state(p, group))
            elif on_device and state["step"].device != p.device:
                state["step"] = state["step"].to(p.device)
            for out, key in zip(state_lists, keys):
                out.append(state[key])
            steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step. `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # torch.amp.GradScaler hands grad_scale/found_inf to step() (every implementation honours
        # them).
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
            lists = [[] for _ in range(3 + len(self._state_keys))]
            self._init_group(group, *lists, on_device=impl == "fused")
            if lists[0]:
                work.append((group, impl, lists))
        if len(work) > 1:
            self._check_groups_before_writes(work)
        for group, impl, lists in work:
            self._run(group, impl, lists, grad_scale, found_inf)
        if not torch.compiler.is_compiling():
            self._plan = self._make_plan(work)
        return loss

    def _check_groups_before_writes(self, work) -> None:
        """With several param groups, each op call is all-or-nothing on its own; check here, for
        every group, what fails in normal use (hyper-parameters changed after construction, sparse
        grads), so that a step either moves all groups or none. Cheap: the full per-tensor checks
        run inside each call (in C++ for the fused path)."""
        for group_index, (group, _, lists) in enumerate(work):
            self._check_group(group)
            for grad in lists[1]:
                if grad.layout != torch.strided:
                    raise TypeError(f"{self._name}: a param of param group {group_index} has a "
                                    f"{grad.layout} grad; {self._name} does not support sparse "
                                    "gradients")

    # -- checkpoints -----------------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's load_state_dict, plus:

        - every saved state is checked against its param first: a bad checkpoint raises here, and
          nothing is loaded;
        - a state holding the authors' ``psi`` (their checkpoints and this package's earlier
          versions) is converted to the phase in float64, with the loaded group's α and β and the
          param's current value;
        - the state tensors (phase, and INNAprop's exp_avg_sq) are stored in this optimizer's
          ``state_dtype`` (saved groups that lack the storage options take this optimizer's
          values), copied from the saved tensors rather than torch.optim's cast to the param's
          dtype; integer steps become float32 tensors.
        """
        state_dict = self._with_storage_keys(state_dict)
        saved = self._check_saved_state(state_dict)
        self._plan = None
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                if p not in saved:
                    continue
                key, values = saved[p]
                state = self.state[p]
                dtype = phase_dtype_for(p, group["state_dtype"])
                # __setstate__ (called by torch's load_state_dict) converted the ψ that torch
                # had cast to the param's dtype; convert the saved one instead.
                state.pop("psi", None)
                if key == "psi":
                    state["phase"] = psi_to_phase(p, values[0].to(p.device), group["alpha"],
                                                  group["beta"], dtype=dtype)
                else:  # a copy: the saved tensor may be another optimizer's live state
                    state["phase"] = values[0].to(device=p.device, dtype=dtype, copy=True)
                for name, value in zip(self._state_keys[1:], values[1:]):
                    state[name] = value.to(device=p.device, dtype=dtype, copy=True)
                if state["step"].dtype not in STEP_DTYPES:
                    state["step"] = state["step"].to(STEP_DTYPE)  # e.g. an integer tensor

    def psi_state_dict(self) -> dict[str, Any]:
        """`state_dict()` in the authors' format: each phase w replaced by their ψ (computed in
        float64, stored as float32, float64 for float64 params; see `inna_fused.phase_to_psi`),
        the other state tensors (INNAprop's exp_avg_sq) in that dtype too, whatever the
        state_dtype. `load_state_dict` reads it back."""
        state_dict = self.state_dict()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                st = state_dict["state"].get(index)
                if st is not None and "phase" in st:
                    st = dict(st)
                    st["psi"] = phase_to_psi(p, st.pop("phase"), group["alpha"], group["beta"])
                    for name in self._state_keys[1:]:
                        st[name] = st[name].to(st["psi"].dtype)
                    if self._psi_int_steps:
                        st["step"] = int(st["step"])
                    state_dict["state"][index] = st
                index += 1
        return state_dict

    def _with_storage_keys(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """A shallow copy of state_dict whose groups hold every key of _storage_keys (this
        optimizer's value where a saved group lacks one)."""
        saved_groups = state_dict.get("param_groups")
        if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups):
            return state_dict  # torch.optim's load_state_dict reports structural mismatches
        groups = [{**{k: g[k] for k in self._storage_keys}, **s} if isinstance(s, dict) else s
                  for s, g in zip(saved_groups, self.param_groups)]
        return {**state_dict, "param_groups": groups}

    def _check_saved_state(self, state_dict: dict[str, Any]) -> dict:
        """Validate the saved groups and per-param states; return {param: ("phase" or "psi",
        [the saved phase or ψ, then the other state tensors])}."""
        saved_groups = state_dict.get("param_groups")
        if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups) or any(
                not isinstance(s, dict) or len(s.get("params", ())) != len(g["params"])
                for s, g in zip(saved_groups, self.param_groups)):
            return {}  # torch.optim's load_state_dict reports structural mismatches
        for s, g in zip(saved_groups, self.param_groups):
            self._check_saved_group({**self._loaded_group_defaults, **s}, g)
        param_of = dict(zip((i for s in saved_groups for i in s["params"]),
                            (p for g in self.param_groups for p in g["params"])))
        saved = {}
        for key, st in state_dict.get("state", {}).items():
            p = param_of.get(key)
            if p is None or not st:
                continue
            where = f"{self._name}.load_state_dict: state of param {key} (shape {tuple(p.shape)})"
            names = ("phase" if "phase" in st else "psi",) + self._state_keys[1:]
            for needed in names + ("step",):
                if needed not in st:
                    what = "phase (or psi)" if needed in ("phase", "psi") else needed
                    raise ValueError(f"{where} lacks {what}")
            for name in names:
                value = st[name]
                if not torch.is_tensor(value) or value.shape != p.shape:
                    got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                    raise ValueError(f"{where}: {name} must be a tensor of the param's shape, "
                                     f"got {got}")
                if value.is_complex() != p.is_complex() or not (value.is_floating_point()
                                                                or value.is_complex()):
                    raise TypeError(f"{where}: {name} has dtype {value.dtype}, which cannot "
                                    f"hold the state of a {p.dtype} param")
            check_saved_step(where, st["step"])
            saved[p] = (names[0], [st[name] for name in names])
        return saved

    # -- the planned step ------------------------------------------------------------------------
    # What a full step found out (implementation, one device and dtype per group, validated
    # hyper-parameters) is kept, so that the next steps only gather grads and state and call the
    # op. Made only when every group runs fused on plain (not complex, not DTensor) tensors of
    # one device, param dtype and state dtypes, and has params with grads (those without one are
    # remembered); dropped by add_param_group, load_state_dict and __setstate__, and rechecked
    # every step (see _step_planned; bench/NOTES.md lists what drops it).

    def _make_plan(self, work) -> Optional[tuple]:
        if not work or len(work) != len(self.param_groups):
            return None
        plans = []
        for (group, impl, lists), g in zip(work, self.param_groups):
            if impl != "fused" or group is not g:
                return None
            params, state_lists = lists[0], lists[2:-1]
            p0 = params[0]
            if type(p0) not in _PLAIN_TYPES or p0.is_complex():
                return None
            dtype, index = p0.dtype, p0.get_device()
            state_dtypes = tuple(s[0].dtype for s in state_lists)
            for i, p in enumerate(params):
                if type(p) not in _PLAIN_TYPES or p.dtype is not dtype or p.get_device() != index:
                    return None
                for s, d in zip(state_lists, state_dtypes):
                    if s[i].dtype is not d:
                        return None
            everyone = list(group["params"])
            # Params without a grad this step (frozen ones): the plan holds while they have none.
            without_grad = [p for p in everyone if p.grad is None]
            if len(without_grad) + len(params) != len(everyone):
                return None
            plans.append(_GroupPlan(group, everyone, params, without_grad, dtype, state_dtypes,
                                    index, p0.device, self._hyper_keys,
                                    self._op_kwargs(group), self._lr_ok))
        return self.state, len(self.state), plans

    def _step_planned(self, grad_scale, found_inf) -> bool:
        """One step on the plan; False (nothing written) when the plan no longer fits: the caller
        then takes the full path, which validates everything and makes a new plan."""
        state, state_len, plans = self._plan
        groups = self.param_groups
        if state is not self.state or len(state) != state_len or len(plans) != len(groups):
            return False
        several = len(plans) > 1
        keys = self._state_keys
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
                state_lists = [[st[k] for st in states] for k in keys]
                steps = [st["step"] for st in states]
            except KeyError:  # a state was removed by hand
                return False
            if several and not plan.still_fits(params, grads, state_lists, steps):
                # Each op call is all-or-nothing by itself; with several groups, what the full
                # path would handle differently (a grad gone, a dtype or device changed) has to
                # be seen before the first group is written.
                return False
            calls.append(([params, grads, *state_lists, steps], plan.device, plan.kwargs))
        if not several:
            lists, device, kwargs = calls[0]
            try:
                self._run_planned(lists, device, kwargs, grad_scale, found_inf)
            except Exception:
                # The op validates every tensor before its first write: nothing was written, and
                # the full path will either handle the change (a grad set to None, a new dtype)
                # or raise the error with its full message.
                return False
            return True
        for lists, device, kwargs in calls:
            self._run_planned(lists, device, kwargs, grad_scale, found_inf)
        return True


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def _same_values(a: tuple, b: tuple) -> bool:
    for x, y in zip(a, b):
        if x is not y and (type(x) is not type(y) or isinstance(x, Tensor) or x != y):
            return False
    return True


class _GroupPlan:
    """What a full step found out about one param group (see FusedListOptimizer._make_plan)."""

    __slots__ = ("group", "everyone", "params", "without_grad", "dtype", "state_dtypes", "index",
                 "device", "hyper_keys", "key", "lr", "kwargs", "lr_ok")

    def __init__(self, group, everyone, params, without_grad, dtype, state_dtypes, index, device,
                 hyper_keys, kwargs, lr_ok):
        self.group, self.everyone, self.params = group, everyone, params
        self.without_grad = without_grad
        self.dtype, self.state_dtypes, self.index, self.device = dtype, state_dtypes, index, device
        self.hyper_keys = hyper_keys
        self.key = self._hyper_key(group)
        self.lr = group["lr"]
        self.kwargs = kwargs
        self.lr_ok = lr_ok

    def _hyper_key(self, group: dict[str, Any]) -> tuple:
        return tuple([group.get(k) for k in self.hyper_keys])

    def same_hyper(self, group: dict[str, Any], check_lr_value: bool) -> bool:
        """Whether the group's hyper-parameters are those of the plan (validated when it was
        made). A new float lr (an LR scheduler's) is validated here and taken over; a tensor lr
        must be the same tensor (the op checks its value on every call; with several groups it
        is checked here, before the first group is written)."""
        if not _same_values(self.key, self._hyper_key(group)):
            return False
        lr = group["lr"]
        if lr is not self.lr:
            if type(lr) not in (float, int) or not self.lr_ok(lr, group):
                return False  # a tensor in place of a number, or an invalid value
            self.lr = lr
            self.kwargs = {**self.kwargs, "lr": float(lr)}
        elif check_lr_value and isinstance(lr, Tensor) and lr.device.type == "cpu":
            if not self.lr_ok(float(lr), group):
                return False
        return True

    def still_fits(self, params, grads, state_lists, steps) -> bool:
        """Whether the gathered tensors still have the plan's dtypes and device (checked with
        several groups, before the first is written)."""
        dtype, index = self.dtype, self.index
        for i, (p, grad, k) in enumerate(zip(params, grads, steps)):
            if (grad is None or grad.layout is not torch.strided or p.dtype is not dtype
                    or p.get_device() != index or k.get_device() != index):
                return False
            for s, d in zip(state_lists, self.state_dtypes):
                if s[i].dtype is not d:
                    return False
        return True
