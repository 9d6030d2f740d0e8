"""Seeded fuzzing of the C++ entry points torch.ops.inna_fused.fused_inna_ and fused_innaprop_,
bypassing the Python checks: random list lengths, sizes (0, 0-dim, around SIMD widths and the CPU
chunk), dtypes, layouts and hyper-parameters, with one defect injected in some cases. Every call
must either raise a clean error and leave every buffer as it was, or succeed and match the
reference — and never write outside its views (each view sits between poisoned margins).

INNA's reference is `impl="reference"` (the phase form written out in Python); INNAprop's is its
foreach path (`innaprop_functional.innaprop(..., impl="foreach")`), which differs from the kernel
only in the order of roundings.

INNA_FUZZ_CASES sets the number of cases per op (default 300); the AddressSanitizer run in
docs/RELIABILITY.md uses the same file.
"""
import contextlib
import math
import os
import random
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from inna_fused.functional import inna
from inna_fused.innaprop_functional import innaprop
from inna_fused._contract import default_phase_dtype

from conftest import requires_cpu_kernel
from reliability_helpers import (GRAD_LAYOUTS, LAYOUTS, GuardedView, assert_matches, error_bounds,
                                 innaprop_error_bounds, rounding_slack)

CHUNK = 1 << 15  # csrc/cpu/list_split.h kUnit
CASES = int(os.environ.get("INNA_FUZZ_CASES", "300"))
CLEAN_ERRORS = (ValueError, TypeError, RuntimeError)
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SIZES = [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100]
RARE_SIZES = [CHUNK - 1, CHUNK + 1]
INNA_LISTS = ("params", "grads", "phases", "steps")
INNAPROP_LISTS = ("params", "grads", "phases", "exp_avg_sqs", "steps")


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


def random_innaprop_hyper(rng):
    beta = rng.choice([0.1, 0.5, 0.9, 2.0])
    return dict(lr=beta * rng.choice([0.0, 0.01, 0.3, 0.999]),  # INNAprop needs lr < beta
                alpha=rng.choice([0.05, 0.5, 1.3, 2.5]), beta=beta,
                sigma=rng.choice([0.0, 0.5, 0.9, 0.999]), eps=rng.choice([0.0, 1e-8, 1e-3]),
                weight_decay=rng.choice([0.0, 1e-4, 0.05]),
                maximize=rng.random() < 0.3, stochastic_rounding=rng.random() < 0.7,
                seed=rng.randrange(-(1 << 40), 1 << 40))


def fresh_entry(dtype, shape, rng_seed, phase_dtype=None, exp_avg_sq=False):
    """A valid entry {list name: tensor} (with an exp_avg_sq for INNAprop), numel > 0 when the
    shape says so."""
    gen = torch.Generator().manual_seed(rng_seed)
    param, grad, phase = (torch.randn(shape, generator=gen) for _ in range(3))
    entry = dict(params=param.to(dtype), grads=grad.to(dtype),
                 phases=phase.to(phase_dtype or default_phase_dtype(dtype)),
                 steps=torch.tensor(1.0))
    if exp_avg_sq:  # in the phase's dtype
        entry["exp_avg_sqs"] = torch.randn(shape, generator=gen).abs().to(entry["phases"].dtype)
    return entry


def _fresh(case, shape, rng_seed, dtype=None):
    dtype = dtype or case["dtype"]
    return fresh_entry(dtype, shape, rng_seed, case["phase_dtype"] if dtype == case["dtype"]
                       else None, exp_avg_sq="exp_avg_sqs" in case["lists"])


def _nonempty(case, rng, at_least=1):
    """Index of an entry with elements; adds entries so that there are `at_least` of them."""
    while len(case["params"]) < at_least or not any(p.numel() for p in case["params"]):
        for key, t in _fresh(case, (5,), rng.randrange(1 << 16)).items():
            case[key].append(t)
    return rng.choice([i for i, p in enumerate(case["params"]) if p.numel()])


def _other_entry(case, i):
    return next(j for j in range(len(case["params"])) if j != i)


def _replace(key, make):
    def inject(case, rng):
        i = _nonempty(case, rng)
        case[key][i] = make(case[key][i])
    return inject


def _set_entry(case, i, entry):
    """Entry i's tensors (its step excepted) become `entry`'s."""
    for key, t in entry.items():
        if key != "steps":
            case[key][i] = t


def _expanded(key):
    """Entry i becomes a 4-element one whose `key` tensor is expand()ed from one element."""
    def inject(case, rng):
        i = _nonempty(case, rng)
        entry = _fresh(case, (4,), 0)
        entry[key] = torch.zeros(1, dtype=entry[key].dtype).expand(4)
        _set_entry(case, i, entry)
    return inject


def _params_alias(case, rng):
    i = _nonempty(case, rng, at_least=2)
    j = _other_entry(case, i)
    entry = {key: case[key][i] for key in ("params", "grads")}
    entry.update({key: case[key][i].clone() for key in case["lists"][2:-1]})  # the states
    _set_entry(case, j, entry)


def _step_shared(case, rng):
    i = _nonempty(case, rng, at_least=2)
    case["steps"][_other_entry(case, i)] = case["steps"][i]


def _mixed_dtypes(case, rng):
    _nonempty(case, rng, at_least=2)
    other = torch.float64 if case["dtype"] != torch.float64 else torch.float32
    _set_entry(case, len(case["params"]) - 1, _fresh(case, (3,), 1, dtype=other))


def _list_length(case, rng):
    _nonempty(case, rng)
    case[rng.choice([key for key in case["lists"] if key != "params"])].pop()


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
    ("param-expanded", _expanded("params")),
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


def _sq_overlaps(key):
    """exp_avg_sqs[i] and `key`[i] are views of one buffer: `key`[i] starts one of its elements
    in (at the start when there is one element, or when its dtype is the wider), so they overlap
    whatever the two dtypes."""
    def inject(case, rng):
        i = _nonempty(case, rng)
        shape, n = case["params"][i].shape, case["params"][i].numel()
        sq_dtype, dtype = case["exp_avg_sqs"][i].dtype, case[key][i].dtype
        wide = max(sq_dtype, dtype, key=lambda d: torch.finfo(d).bits)
        buffer = torch.zeros(n + 1, dtype=wide)  # room for n + 1 elements of either dtype
        case["exp_avg_sqs"][i] = buffer.view(sq_dtype)[:n].view(shape)
        start = 1 if n > 1 and torch.finfo(dtype).bits <= torch.finfo(sq_dtype).bits else 0
        case[key][i] = buffer.view(dtype)[start:start + n].view(shape)
    return inject


def _sqs_alias(case, rng):
    i = _nonempty(case, rng, at_least=2)
    entry = _fresh(case, case["params"][i].shape, rng.randrange(1 << 16))
    entry["exp_avg_sqs"] = case["exp_avg_sqs"][i]
    _set_entry(case, _other_entry(case, i), entry)


def _step_in_sq(case, rng):
    """A valid float32 step whose bytes overlap exp_avg_sqs[i]'s first element."""
    i = _nonempty(case, rng)
    sq = case["exp_avg_sqs"][i]
    if sq.dtype == torch.bfloat16:  # a float32 over that element and a 2-byte neighbour
        step = torch.empty((), dtype=torch.float32)
        step.set_(sq.untyped_storage(), sq.storage_offset() * 2 // 4, ())
    else:  # float32 or float64: a valid step dtype
        step = sq.as_strided((), (), sq.storage_offset())
    case["steps"][rng.randrange(len(case["steps"]))] = step


def _lr_not_below_beta(case, rng):
    _nonempty(case, rng)
    lr = case["hyper"]["beta"] * rng.choice([1.0, 1.5])
    # A float64 tensor: float32 could round beta below itself.
    case["hyper"]["lr"] = torch.tensor(lr, dtype=torch.float64) if rng.random() < 0.5 else lr


def _other_opmath(t):
    return t.to(torch.float32 if t.dtype == torch.float64 else torch.float64)


# INNA's defects but decay_power (INNAprop has none), and INNAprop's own.
INNAPROP_DEFECTS = [d for d in DEFECTS if d[0] != "decay_power"] + [
    ("sq-dtype", _replace("exp_avg_sqs", _other_opmath)),
    # exp_avg_sq takes the phase's dtype: bfloat16 beside a float32/float64 phase and vice versa.
    ("sq-not-phase-dtype", _replace("exp_avg_sqs", lambda t: t.to(
        torch.float32 if t.dtype == torch.bfloat16 else torch.bfloat16))),
    ("sq-float16", _replace("exp_avg_sqs", lambda t: t.to(torch.float16))),
    ("sq-int", _replace("exp_avg_sqs", lambda t: torch.zeros(t.shape, dtype=torch.int32))),
    ("sq-shape", _replace("exp_avg_sqs", lambda t: torch.zeros(t.shape + (1,), dtype=t.dtype))),
    ("sq-sparse", _replace("exp_avg_sqs", lambda t: t.to_sparse())),
    ("sq-meta", _replace("exp_avg_sqs", lambda t: torch.empty_like(t, device="meta"))),
    ("sq-expanded", _expanded("exp_avg_sqs")),
    ("sq-overlaps-param", _sq_overlaps("params")),
    ("sq-overlaps-phase", _sq_overlaps("phases")),
    ("sq-overlaps-grad", _sq_overlaps("grads")),
    ("sq-is-param", lambda case, rng: case["exp_avg_sqs"].__setitem__(
        i := _nonempty(case, rng), case["params"][i])),
    ("sqs-alias", _sqs_alias),
    ("step-in-sq", _step_in_sq),
    ("step-float16", _replace("steps", lambda t: t.to(torch.float16))),
    ("lr-not-below-beta", _lr_not_below_beta),
    ("sigma", _hyper("sigma", [1.0, -0.25, 1.5, *NON_FINITE])),
    ("eps", _hyper("eps", [-1e-8, -1.0, *NON_FINITE])),
]


def inna_reference(case):
    """The reference step on contiguous copies of the (valid) call."""
    hyper = dict(case["hyper"])
    hyper["psi_init"] = "paper" if hyper.pop("paper_init") else "zero"
    state = {key: [t.clone() for t in case[key]] for key in ("params", "phases", "steps")}
    inna(state["params"], [g.clone() for g in case["grads"]], state["phases"], state["steps"],
         impl="reference", **hyper)
    return state


def innaprop_reference(case):
    """INNAprop's foreach step on copies of the (valid) call."""
    lists = {key: [t.clone() for t in case[key]] for key in INNAPROP_LISTS}
    innaprop(*lists.values(), impl="foreach", **case["hyper"])
    return lists


def _grad_factor(hyper):
    factor = (-1.0 if hyper["maximize"] else 1.0)
    if "grad_scale" in hyper:
        factor /= float(hyper["grad_scale"])
    return factor


def inna_bounds(case):
    """error_bounds for every entry, {list: bound}, from the inputs (the call overwrites them)."""
    hyper = case["hyper"]
    return [dict(zip(("params", "phases"), error_bounds(
        p, g, phase, float(k), lr=float(hyper["lr"]), alpha=hyper["alpha"], beta=hyper["beta"],
        decay_power=hyper["decay_power"], weight_decay=hyper["weight_decay"],
        psi_init="paper" if hyper["paper_init"] else "zero", grad_factor=_grad_factor(hyper))))
        for p, g, phase, k in zip(case["params"], case["grads"], case["phases"], case["steps"])]


def innaprop_bounds(case):
    hyper = case["hyper"]
    return [dict(zip(("params", "phases", "exp_avg_sqs"), innaprop_error_bounds(
        p, g, phase, sq, float(k), lr=float(hyper["lr"]), alpha=hyper["alpha"],
        beta=hyper["beta"], sigma=hyper["sigma"], eps=hyper["eps"],
        weight_decay=hyper["weight_decay"], grad_factor=_grad_factor(hyper))))
        for p, g, phase, sq, k in zip(*(case[key] for key in INNAPROP_LISTS))]


@dataclass(frozen=True)
class Algorithm:
    op: str  # the name under torch.ops.inna_fused
    lists: tuple  # the op's list arguments, in order
    random_hyper: Callable
    defects: list
    reference: Callable  # case -> {list: tensors after a step}
    bounds: Callable  # case -> [{list: per-element bound}] per entry


ALGORITHMS = {
    "inna": Algorithm("fused_inna_", INNA_LISTS, random_hyper, DEFECTS, inna_reference,
                      inna_bounds),
    "innaprop": Algorithm("fused_innaprop_", INNAPROP_LISTS, random_innaprop_hyper,
                          INNAPROP_DEFECTS, innaprop_reference, innaprop_bounds),
}


def make_case(seed, algorithm="inna"):
    """A valid random call, then (in about a third of the cases) one defect."""
    algo = ALGORITHMS[algorithm]
    prop = "exp_avg_sqs" in algo.lists
    rng = random.Random(seed)
    dtype = rng.choice(DTYPES)
    phase_dtype = rng.choice([default_phase_dtype(dtype), torch.bfloat16])  # one phase dtype per call
    gen = torch.Generator().manual_seed(seed)
    case = dict(algorithm=algorithm, lists=algo.lists, dtype=dtype, phase_dtype=phase_dtype,
                guarded=[], hyper=algo.random_hyper(rng), **{key: [] for key in algo.lists})
    for _ in range(rng.choice([0, 1, 1, 2, 3, 5, 8, 12])):
        shape, k = random_shape(rng), rng.choice([0, 0, 1, 4])
        p = GuardedView(shape, dtype, rng.choice(LAYOUTS), gen)
        g = GuardedView(shape, dtype, rng.choice(GRAD_LAYOUTS), gen)
        phase = GuardedView(shape, phase_dtype, rng.choice(LAYOUTS), gen)
        states = [phase]
        if prop:
            sq = GuardedView(shape, phase_dtype, rng.choice(LAYOUTS), gen)  # the phase's dtype
            sq.view.abs_()  # a second moment
            sq.before = sq.buffer.clone()
            states.append(sq)
        if k == 0:
            for state in states:
                state.view.fill_(math.nan)  # the first step must never read the state
                state.before = state.buffer.clone()
        step = torch.tensor(float(k), dtype=rng.choice([torch.float32, torch.float64]))
        case["guarded"] += [p, g, *states]
        for key, t in zip(algo.lists, (p.view, g.view, *(s.view for s in states), step)):
            case[key].append(t)
    if rng.random() < 0.3:
        case["hyper"]["lr"] = torch.tensor(case["hyper"]["lr"])
    if rng.random() < 0.3:
        case["hyper"]["grad_scale"] = torch.tensor(rng.choice([1.0, 0.5, 4096.0]))
        case["hyper"]["found_inf"] = torch.tensor(rng.choice([0.0, 0.0, 1.0]))
    case["defect"] = None
    if rng.random() < 0.35:
        case["defect"], inject = rng.choice(algo.defects)
        inject(case, rng)
    return case


def call_op(case):
    hyper = dict(case["hyper"])
    op = getattr(torch.ops.inna_fused, ALGORITHMS[case["algorithm"]].op)
    if isinstance(hyper["lr"], torch.Tensor):
        op = op.tensor_lr
    op(*(case[key] for key in case["lists"]), **hyper)


def all_memory(case):
    """Every strided CPU tensor the call could write, and every guarded buffer, by value."""
    tensors = [t for key in case["lists"] if key != "grads" for t in case[key]
               if t.layout == torch.strided and t.device.type == "cpu"]
    return tensors + [g.buffer for g in case["guarded"]]


def describe(case):
    shapes = [(tuple(p.shape), str(p.dtype).replace("torch.", ""), tuple(p.stride()))
              for p in case["params"]]
    return f"defect={case['defect']} entries={shapes} hyper={case['hyper']}"


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
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_fuzz_fused_op(algorithm, block):
    # Cases and checks run on one thread (hundreds of tiny ops are much faster without waking the
    # thread pool each time); the op itself runs with the default thread count.
    default_threads = torch.get_num_threads()
    with threads(1):
        for seed in range(block, CASES, 10):
            run_case(seed, default_threads, algorithm)


def run_case(seed, op_threads, algorithm="inna"):
    case = make_case(seed, algorithm)
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
    algo = ALGORITHMS[algorithm]
    expected = algo.reference(case)
    bounds = algo.bounds(case)
    with threads(op_threads):
        call_op(case)
    for i, guarded in enumerate(case["guarded"]):
        assert guarded.untouched_outside(), f"seed {seed}: wrote outside view {i}"
    for i, bound in enumerate(bounds):
        what = f"seed {seed} entry {i}; {describe(case)}"
        for key, entry_bound in bound.items():
            if key != "params" and not case["params"][i].numel():
                continue  # a state with no elements: nothing to compare
            actual, want = case[key][i], expected[key][i]
            assert_matches(actual, want, entry_bound + rounding_slack(want, actual.dtype),
                           f"{key[:-1]} {what}")
        assert float(case["steps"][i]) == float(expected["steps"][i]), f"step {what}"


@requires_cpu_kernel
@pytest.mark.parametrize("arg", ["lr", "grad_scale", "found_inf"])
def test_innaprop_stray_meta_scalar_raises(arg):
    """Found by the fuzz (seed 365): a meta lr/grad_scale/found_inf among CPU lists dispatches to
    the op's fake impl, which once returned without a word (the step silently skipped); it now
    checks their devices as INNA's does (inna_fused._ops._check_fake_lists)."""
    entry = fresh_entry(torch.float32, (5,), 0, exp_avg_sq=True)
    case = dict(algorithm="innaprop", lists=INNAPROP_LISTS, defect=f"{arg}-meta",
                hyper=random_innaprop_hyper(random.Random(0)),
                **{key: [t] for key, t in entry.items()})
    case["hyper"][arg] = torch.empty((), device="meta")
    with pytest.raises(CLEAN_ERRORS):
        call_op(case)
