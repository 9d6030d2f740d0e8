"""Seeded fuzzing of the C++ entry point torch.ops.inna_fused.fused_inna_, bypassing the Python
checks: random list lengths, sizes (0, 0-dim, around SIMD widths and the CPU chunk), dtypes,
layouts and hyper-parameters, with one defect injected in some cases. Every call must either
raise a clean error and leave every buffer as it was, or succeed and match the reference — and
never write outside its views (each view sits between poisoned margins).

INNA_FUZZ_CASES sets the number of cases (default 300); the AddressSanitizer run in
docs/RELIABILITY.md uses the same file.
"""
import contextlib
import math
import os
import random

import pytest
import torch

from inna_fused.functional import inna
from inna_fused._contract import default_phase_dtype

from conftest import requires_cpu_kernel
from reliability_helpers import (GRAD_LAYOUTS, LAYOUTS, GuardedView, assert_matches, error_bounds,
                                 rounding_slack)

CHUNK = 1 << 15  # csrc/cpu/list_split.h kUnit
CASES = int(os.environ.get("INNA_FUZZ_CASES", "300"))
CLEAN_ERRORS = (ValueError, TypeError, RuntimeError)
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SIZES = [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100]
RARE_SIZES = [CHUNK - 1, CHUNK + 1]


def random_shape(rng):
    r = rng.random()
    if r < 0.1:
        return ()
    if r < 0.115:
        return (rng.choice(RARE_SIZES),)
    if r < 0.6:
        return (rng.choice(SIZES),)
    return tuple(rng.choice(SIZES[:8]) for _ in range(rng.randint(2, 3)))


def random_hyper(rng):
    return dict(lr=rng.choice([0.0, 1e-3, 0.1, 0.7]), alpha=rng.choice([0.05, 0.5, 1.3, 2.5]),
                beta=rng.choice([0.01, 0.1, 0.5, 1.0]),
                decay_power=rng.choice([0.0, 0.25, 0.5]),
                weight_decay=rng.choice([0.0, 1e-4, 0.05]),
                decoupled_weight_decay=rng.random() < 0.5, paper_init=rng.random() < 0.5,
                maximize=rng.random() < 0.3, stochastic_rounding=rng.random() < 0.7,
                seed=rng.randrange(-(1 << 40), 1 << 40))


def fresh_entry(dtype, shape, rng_seed, phase_dtype=None):
    """A valid (param, grad, phase, step) with numel > 0 when the shape says so."""
    gen = torch.Generator().manual_seed(rng_seed)
    param, grad, phase = (torch.randn(shape, generator=gen) for _ in range(3))
    return (param.to(dtype), grad.to(dtype), phase.to(phase_dtype or default_phase_dtype(dtype)),
            torch.tensor(1.0))


def _nonempty(case, rng, at_least=1):
    """Index of an entry with elements; adds entries so that there are `at_least` of them."""
    while len(case["params"]) < at_least or not any(p.numel() for p in case["params"]):
        for key, t in zip(("params", "grads", "phases", "steps"),
                          fresh_entry(case["dtype"], (5,), rng.randrange(1 << 16),
                                      case["phase_dtype"])):
            case[key].append(t)
    return rng.choice([i for i, p in enumerate(case["params"]) if p.numel()])


def _other_entry(case, i):
    return next(j for j in range(len(case["params"])) if j != i)


def _replace(key, make):
    def inject(case, rng):
        i = _nonempty(case, rng)
        case[key][i] = make(case[key][i])
    return inject


def _set_entry(case, i, param, grad, phase):
    case["params"][i], case["grads"][i], case["phases"][i] = param, grad, phase


def _param_expanded(case, rng):
    i = _nonempty(case, rng)
    _, grad, phase, _ = fresh_entry(case["dtype"], (4,), 0, case["phase_dtype"])
    _set_entry(case, i, torch.zeros(1, dtype=case["dtype"]).expand(4), grad, phase)


def _params_alias(case, rng):
    i = _nonempty(case, rng, at_least=2)
    j = _other_entry(case, i)
    _set_entry(case, j, case["params"][i], case["grads"][i], case["phases"][i].clone())


def _step_shared(case, rng):
    i = _nonempty(case, rng, at_least=2)
    case["steps"][_other_entry(case, i)] = case["steps"][i]


def _mixed_dtypes(case, rng):
    _nonempty(case, rng, at_least=2)
    other = torch.float64 if case["dtype"] != torch.float64 else torch.float32
    _set_entry(case, len(case["params"]) - 1, *fresh_entry(other, (3,), 1)[:3])


def _list_length(case, rng):
    _nonempty(case, rng)
    case[rng.choice(["grads", "phases", "steps"])].pop()


def _hyper(key, values):
    def inject(case, rng):
        # The op returns before checking scalar arguments when the lists are empty.
        _nonempty(case, rng)
        case["hyper"][key] = rng.choice(values)
    return inject


NON_FINITE = [math.nan, math.inf, -math.inf]
# (name, inject(case, rng)): each makes the call invalid.
DEFECTS = [
    ("grad-dtype", _replace("grads", lambda t: t.to(
        torch.float32 if t.dtype == torch.float64 else torch.float64))),
    ("phase-dtype", _replace("phases", lambda t: t.to(torch.float16))),
    ("param-int", _replace("params", lambda t: torch.zeros(t.shape, dtype=torch.int32))),
    ("param-complex", _replace("params", lambda t: torch.zeros(t.shape, dtype=torch.complex64))),
    ("grad-shape", _replace("grads", lambda t: torch.zeros(t.shape + (2,), dtype=t.dtype))),
    ("phase-shape", _replace("phases", lambda t: torch.zeros((t.numel() + 1,), dtype=t.dtype))),
    ("grad-sparse", _replace("grads", lambda t: t.to_sparse())),
    ("phase-sparse", _replace("phases", lambda t: t.to_sparse())),
    ("grad-meta", _replace("grads", lambda t: torch.empty_like(t, device="meta"))),
    ("step-meta", _replace("steps", lambda t: torch.empty_like(t, device="meta"))),
    ("step-int", _replace("steps", lambda t: torch.tensor(1, dtype=torch.int64))),
    ("step-shape", _replace("steps", lambda t: torch.zeros(3))),
    ("step-shared", _step_shared),
    ("param-expanded", _param_expanded),
    ("params-alias", _params_alias),
    ("grad-is-param", lambda case, rng: case["grads"].__setitem__(
        i := _nonempty(case, rng), case["params"][i])),
    ("phase-is-param", lambda case, rng: case["phases"].__setitem__(
        i := _nonempty(case, rng), case["params"][i])),
    ("mixed-dtypes", _mixed_dtypes),
    ("list-length", _list_length),
    ("lr", _hyper("lr", [-1.0, *NON_FINITE])),
    ("alpha", _hyper("alpha", [0.0, -0.5, *NON_FINITE])),
    ("beta", _hyper("beta", [0.0, -0.5, *NON_FINITE])),
    ("decay_power", _hyper("decay_power", [-1.0, *NON_FINITE])),
    ("weight_decay", _hyper("weight_decay", [-1e-3, *NON_FINITE])),
    ("lr-tensor", _hyper("lr", [torch.tensor(math.nan), torch.tensor(-1.0), torch.ones(2),
                                torch.tensor(1)])),
    ("grad-scale", _hyper("grad_scale", [torch.ones(2), torch.tensor(2),
                                         torch.empty((), device="meta")])),
    ("found-inf", _hyper("found_inf", [torch.ones(3), torch.tensor(True)])),
]


def make_case(seed):
    """A valid random call, then (in about a third of the cases) one defect."""
    rng = random.Random(seed)
    dtype = rng.choice(DTYPES)
    phase_dtype = rng.choice([default_phase_dtype(dtype), torch.bfloat16])  # one phase dtype per call
    gen = torch.Generator().manual_seed(seed)
    case = dict(dtype=dtype, phase_dtype=phase_dtype, params=[], grads=[], phases=[], steps=[],
                guarded=[], hyper=random_hyper(rng))
    for _ in range(rng.choice([0, 1, 1, 2, 3, 5, 8, 12])):
        shape, k = random_shape(rng), rng.choice([0, 0, 1, 4])
        p = GuardedView(shape, dtype, rng.choice(LAYOUTS), gen)
        g = GuardedView(shape, dtype, rng.choice(GRAD_LAYOUTS), gen)
        phase = GuardedView(shape, phase_dtype, rng.choice(LAYOUTS), gen)
        if k == 0:
            phase.view.fill_(math.nan)  # the first step must never read the phase
            phase.before = phase.buffer.clone()
        step = torch.tensor(float(k), dtype=rng.choice([torch.float32, torch.float64]))
        case["guarded"] += [p, g, phase]
        for key, t in zip(("params", "grads", "phases", "steps"),
                          (p.view, g.view, phase.view, step)):
            case[key].append(t)
    if rng.random() < 0.3:
        case["hyper"]["lr"] = torch.tensor(case["hyper"]["lr"])
    if rng.random() < 0.3:
        case["hyper"]["grad_scale"] = torch.tensor(rng.choice([1.0, 0.5, 4096.0]))
        case["hyper"]["found_inf"] = torch.tensor(rng.choice([0.0, 0.0, 1.0]))
    case["defect"] = None
    if rng.random() < 0.35:
        case["defect"], inject = rng.choice(DEFECTS)
        inject(case, rng)
    return case


def call_op(case):
    hyper = dict(case["hyper"])
    op = torch.ops.inna_fused.fused_inna_
    if isinstance(hyper["lr"], torch.Tensor):
        op = op.tensor_lr
    op(case["params"], case["grads"], case["phases"], case["steps"], **hyper)


def reference_result(case):
    """The reference step on contiguous copies of the (valid) call."""
    hyper = dict(case["hyper"])
    hyper["psi_init"] = "paper" if hyper.pop("paper_init") else "zero"
    params = [p.clone() for p in case["params"]]
    phases = [s.clone() for s in case["phases"]]
    steps = [k.clone() for k in case["steps"]]
    inna(params, [g.clone() for g in case["grads"]], phases, steps, impl="reference", **hyper)
    return params, phases, steps


def all_memory(case):
    """Every strided CPU tensor the call could write, and every guarded buffer, by value."""
    tensors = [t for key in ("params", "phases", "steps") for t in case[key]
               if t.layout == torch.strided and t.device.type == "cpu"]
    return tensors + [g.buffer for g in case["guarded"]]


def describe(case):
    shapes = [(tuple(p.shape), str(p.dtype).replace("torch.", ""), tuple(p.stride()))
              for p in case["params"]]
    return f"defect={case['defect']} entries={shapes} hyper={case['hyper']}"


def bounds_before_the_call(case):
    """error_bounds for every entry, from the inputs (the call overwrites them)."""
    hyper = case["hyper"]
    factor = (-1.0 if hyper["maximize"] else 1.0)
    if "grad_scale" in hyper:
        factor /= float(hyper["grad_scale"])
    return [error_bounds(p, g, phase, float(k), lr=float(hyper["lr"]), alpha=hyper["alpha"],
                         beta=hyper["beta"], decay_power=hyper["decay_power"],
                         weight_decay=hyper["weight_decay"],
                         psi_init="paper" if hyper["paper_init"] else "zero", grad_factor=factor)
            for p, g, phase, k in zip(case["params"], case["grads"], case["phases"], case["steps"])]


@contextlib.contextmanager
def threads(count):
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@requires_cpu_kernel
@pytest.mark.parametrize("block", range(10), ids=lambda b: f"block{b}")
def test_fuzz_fused_op(block):
    # Cases and checks run on one thread (hundreds of tiny ops are much faster without waking the
    # thread pool each time); the op itself runs with the default thread count.
    default_threads = torch.get_num_threads()
    with threads(1):
        for seed in range(block, CASES, 10):
            run_case(seed, default_threads)


def run_case(seed, op_threads):
    case = make_case(seed)
    before = [t.clone() for t in all_memory(case)]
    if case["defect"] is not None:
        with pytest.raises(CLEAN_ERRORS), threads(op_threads):
            call_op(case)
        for i, (b, a) in enumerate(zip(before, all_memory(case))):
            assert torch.equal(b.nan_to_num(), a.nan_to_num()) and torch.equal(
                b.isnan(), a.isnan()), f"seed {seed}: memory {i} changed; {describe(case)}"
        return
    if not case["params"] and not any(isinstance(v, torch.Tensor)
                                      for v in case["hyper"].values()):
        # No tensor argument at all: the dispatcher cannot pick a device (nothing to write).
        with pytest.raises(NotImplementedError):
            call_op(case)
        return
    expected_params, expected_phases, expected_steps = reference_result(case)
    bounds = bounds_before_the_call(case)
    with threads(op_threads):
        call_op(case)
    for i, guarded in enumerate(case["guarded"]):
        assert guarded.untouched_outside(), f"seed {seed}: wrote outside view {i}"
    for i, (p, phase, (theta_bound, phase_bound)) in enumerate(
            zip(case["params"], case["phases"], bounds)):
        what = f"seed {seed} entry {i}; {describe(case)}"
        assert_matches(p, expected_params[i],
                       theta_bound + rounding_slack(expected_params[i], p.dtype),
                       f"param {what}")
        if p.numel():
            assert_matches(phase, expected_phases[i],
                           phase_bound + rounding_slack(expected_phases[i], phase.dtype),
                           f"phase {what}")
        assert float(case["steps"][i]) == float(expected_steps[i]), f"step {what}"
