"""Nothing lost, nothing silently wrong: all-or-nothing validation, NaN/Inf propagation, bitwise
determinism across thread counts, and bitwise resumption from a state_dict.

Bad input is injected into the middle of a long list of mixed sizes; every entry point (the op,
functional.inna with each implementation, the INNA class) must raise a clean ValueError/TypeError/
RuntimeError naming the culprit and leave every param, phase and step exactly as it was.
"""
import io
import math

import pytest
import torch

from inna_fused import INNA
from inna_fused.functional import inna
from inna_fused._contract import default_phase_dtype

from conftest import DTYPE_IDS, impl_kwargs, impl_params, requires_cpu_kernel
from reliability_helpers import assert_matches, error_bounds, phase_step_reference, rounding_slack

CHUNK = 1 << 15  # csrc/cpu/list_split.h kUnit
N = 50           # entries per call
BAD = 25         # where the bad entry goes; BAD + 1 is its same-shaped neighbour
CLEAN_ERRORS = (ValueError, TypeError, RuntimeError)
OP_HYPER = dict(lr=0.1, alpha=0.5, beta=0.1, decay_power=0.25, weight_decay=0.01,
                decoupled_weight_decay=False, paper_init=True, maximize=False)
# psi_init="paper": at k=0 the phase is then built from the gradient (w₀ = (1 − β)v₀), so
# non-finite and extreme gradients reach it on the first step too.
FUNC_HYPER = dict(lr=0.1, alpha=0.5, beta=0.1, decay_power=0.25, weight_decay=0.01,
                  psi_init="paper")


# ------------------------------------------------------------------------------------------------
# Building long lists and checking that nothing moved

def entry_shape(i):
    """Mixed sizes and ranks (including size 0); entries BAD and BAD + 1 are both (12,)."""
    if i in (BAD, BAD + 1):
        return (12,)
    size = [0, 1, 3, 8, 17, 64, 255, 1000, 33, 5][i % 10]
    return (size,) if i % 3 else (2, size)


def make_lists(n=N, dtype_of=lambda i: torch.float32, seed=0):
    """Params (some transposed views), grads, phases and steps (a mix of first and later steps)."""
    gen = torch.Generator().manual_seed(seed)
    params, grads, phases, steps = [], [], [], []
    for i in range(n):
        dtype = dtype_of(i)
        shape = entry_shape(i)
        if len(shape) == 2 and i % 4 == 0:  # a transposed (non-contiguous) param and grad
            p = torch.randn(shape[::-1], generator=gen, dtype=torch.float64).to(dtype).t()
            g = torch.randn(shape[::-1], generator=gen, dtype=torch.float64).to(dtype).t()
        else:
            p = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        params.append(p)
        grads.append(g)
        phases.append(torch.randn(shape, generator=gen, dtype=torch.float64).to(default_phase_dtype(dtype)))
        steps.append(torch.tensor(float(i % 3)))
    return dict(params=params, grads=grads, phases=phases, steps=steps)


def written_tensors(lists):
    return [t for key in ("params", "phases", "steps") for t in lists[key]
            if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type == "cpu"]


def snapshot(lists):
    return [t.clone() for t in written_tensors(lists)]


def assert_unchanged(lists, before):
    after = written_tensors(lists)
    assert len(after) == len(before)
    for i, (b, a) in enumerate(zip(before, after)):
        assert torch.equal(a, b), f"written tensor {i} changed although the call raised"


def call_op(lists, **overrides):
    hyper = dict(OP_HYPER, **overrides)
    op = torch.ops.inna_fused.fused_inna_
    if isinstance(hyper["lr"], torch.Tensor):
        op = op.tensor_lr
    op(lists["params"], lists["grads"], lists["phases"], lists["steps"], **hyper)


def call_functional(impl):
    def call(lists, **overrides):
        hyper = dict(FUNC_HYPER, **overrides)
        inna(lists["params"], lists["grads"], lists["phases"], lists["steps"], impl=impl, **hyper)
    return call


# ------------------------------------------------------------------------------------------------
# Bad tensors, each injected at entry BAD

def _set(key, make):
    def mutate(lists):
        lists[key][BAD] = make(lists, lists[key][BAD])
    return mutate


def _other_float(t):
    return t.float() if t.dtype == torch.float64 else t.double()


def _overlapping_params(lists):
    buffer = torch.randn(18)
    lists["params"][BAD], lists["params"][BAD + 1] = buffer[:12], buffer[6:]


def _complex_param(lists):
    lists["params"][BAD] = torch.randn(12, dtype=torch.complex64)
    lists["grads"][BAD] = torch.randn(12, dtype=torch.complex64)


def _int_param(lists):
    lists["params"][BAD] = torch.ones(12, dtype=torch.int64)
    lists["grads"][BAD] = torch.ones(12, dtype=torch.int64)


# (name, mutate(lists), expected exception types). Valid for the op and for functional.inna.
BAD_TENSORS = [
    ("grad-sparse", _set("grads", lambda L, g: g.to_sparse()), TypeError),
    ("grad-shape", _set("grads", lambda L, g: g.reshape(3, 4)), ValueError),
    ("grad-dtype", _set("grads", lambda L, g: _other_float(g)), TypeError),
    ("grad-device", _set("grads", lambda L, g: torch.empty_like(g, device="meta")), ValueError),
    ("grad-none", _set("grads", lambda L, g: None), (TypeError, RuntimeError)),
    ("grad-aliases-its-param", _set("grads", lambda L, g: L["params"][BAD]), ValueError),
    ("grad-aliases-other-param", _set("grads", lambda L, g: L["params"][BAD + 1]), ValueError),
    ("grad-aliases-phase", _set("grads", lambda L, g: L["phases"][BAD + 1]), ValueError),
    ("phase-shape", _set("phases", lambda L, s: s[:-1]), ValueError),
    ("phase-dtype", _set("phases", lambda L, s: _other_float(s)), TypeError),
    ("phase-float16", _set("phases", lambda L, s: s.half()), TypeError),
    ("phase-device", _set("phases", lambda L, s: torch.empty_like(s, device="meta")), ValueError),
    ("phase-sparse", _set("phases", lambda L, s: s.to_sparse()), TypeError),
    ("phase-expanded", _set("phases", lambda L, s: torch.zeros(1).expand(12)), ValueError),
    ("phase-aliases-its-param", _set("phases", lambda L, s: L["params"][BAD]), ValueError),
    ("phase-aliases-other-phase", _set("phases", lambda L, s: L["phases"][BAD + 1]), ValueError),
    ("step-shared", _set("steps", lambda L, k: L["steps"][BAD + 1]), ValueError),
    ("step-int", _set("steps", lambda L, k: torch.tensor(1)), TypeError),
    ("step-float16", _set("steps", lambda L, k: torch.tensor(1.0, dtype=torch.float16)),
     TypeError),
    ("step-two-elements", _set("steps", lambda L, k: torch.ones(2)), (TypeError, ValueError)),
    ("step-device", _set("steps", lambda L, k: torch.empty_like(k, device="meta")), ValueError),
    ("param-expanded", _set("params", lambda L, p: torch.zeros(1).expand(12)), ValueError),
    ("param-int", _int_param, TypeError),
    ("param-complex-with-real-phase", _complex_param, (TypeError, ValueError)),
    ("params-overlap", _overlapping_params, ValueError),
]

ENTRY_POINTS = [pytest.param(call_op, id="op", marks=requires_cpu_kernel)] + [
    pytest.param(call_functional(impl), id=f"inna-{impl}",
                 marks=[requires_cpu_kernel] if impl == "fused" else [])
    for impl in ("fused", "foreach", "reference")]


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("name,mutate,error", BAD_TENSORS, ids=[c[0] for c in BAD_TENSORS])
def test_bad_tensor_in_middle_of_long_list_changes_nothing(call, name, mutate, error):
    lists = make_lists()
    mutate(lists)
    before = snapshot(lists)
    with pytest.raises(error) as info:
        call(lists)
    if name not in ("grad-none",):  # the op's schema binding names the argument, not the index
        assert f"[{BAD}]" in str(info.value) or f"[{BAD + 1}]" in str(info.value), info.value
    assert_unchanged(lists, before)


@requires_cpu_kernel
def test_op_rejects_mixed_param_dtypes_in_one_call():
    lists = make_lists()
    p = lists["params"][BAD]
    lists["params"][BAD], lists["grads"][BAD] = p.double(), lists["grads"][BAD].double()
    lists["phases"][BAD] = lists["phases"][BAD].double()
    before = snapshot(lists)
    with pytest.raises(TypeError, match=rf"params\[{BAD}\]"):
        call_op(lists)
    assert_unchanged(lists, before)


@pytest.mark.parametrize("call", ENTRY_POINTS)
def test_unequal_list_lengths_change_nothing(call):
    lists = make_lists()
    lists["grads"].pop()
    before = snapshot(lists)
    with pytest.raises(ValueError, match="equal lengths"):
        call(lists)
    assert_unchanged(lists, before)


@pytest.mark.parametrize("call", ENTRY_POINTS[1:])
def test_empty_lists_are_a_no_op(call):
    call(dict(params=[], grads=[], phases=[], steps=[]))


@requires_cpu_kernel
def test_op_with_empty_lists():
    empty = dict(params=[], grads=[], phases=[], steps=[])
    call_op(empty, lr=torch.tensor(0.1))  # the lr tensor gives the dispatcher a device
    # With no tensor at all the dispatcher has no device to pick: a clean error, nothing to write.
    with pytest.raises(NotImplementedError, match="no tensor arguments"):
        call_op(empty)


# ------------------------------------------------------------------------------------------------
# Bad hyper-parameters

NON_FINITE = [float("nan"), float("inf"), -float("inf")]
BAD_HYPER = ([("lr", v) for v in [-0.1, *NON_FINITE]]
             + [("alpha", v) for v in [0.0, -1.0, *NON_FINITE]]
             + [("beta", v) for v in [0.0, -1.0, *NON_FINITE]]
             + [("decay_power", v) for v in [-0.5, *NON_FINITE]]
             + [("weight_decay", v) for v in [-1e-4, *NON_FINITE]])
BAD_LR_TENSORS = [("lr-tensor-nan", torch.tensor(float("nan")), ValueError),
                  ("lr-tensor-inf", torch.tensor(float("inf")), ValueError),
                  ("lr-tensor-negative", torch.tensor(-1.0), ValueError),
                  ("lr-tensor-two-elements", torch.tensor([0.1, 0.1]), ValueError),
                  ("lr-tensor-int", torch.tensor(1), TypeError)]


def hyper_id(case):
    key, value = case
    return f"{key}=tensor({value.item()})" if isinstance(value, torch.Tensor) else f"{key}={value}"


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("key,value", BAD_HYPER, ids=[hyper_id(c) for c in BAD_HYPER])
def test_bad_hyperparameter_changes_nothing(call, key, value):
    lists = make_lists()
    before = snapshot(lists)
    with pytest.raises(ValueError, match=key.replace("_", "_?")):
        call(lists, **{key: value})
    assert_unchanged(lists, before)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("name,lr,error", BAD_LR_TENSORS, ids=[c[0] for c in BAD_LR_TENSORS])
def test_bad_lr_tensor_changes_nothing(call, name, lr, error):
    lists = make_lists()
    before = snapshot(lists)
    with pytest.raises(error, match="lr"):
        call(lists, lr=lr)
    assert_unchanged(lists, before)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("arg", ["grad_scale", "found_inf"])
def test_bad_amp_tensor_changes_nothing(call, arg):
    lists = make_lists()
    before = snapshot(lists)
    with pytest.raises(CLEAN_ERRORS):
        call(lists, **{arg: torch.ones(2)})
    assert_unchanged(lists, before)


# ------------------------------------------------------------------------------------------------
# Several dtype groups in one functional call: all groups are checked before the first write

MIXED_DTYPE_CASES = [c for c in BAD_TENSORS if c[0] in {
    "grad-sparse", "grad-shape", "phase-dtype", "phase-aliases-its-param", "phase-expanded",
    "step-int", "step-float16", "step-shared", "param-expanded", "grad-aliases-its-param"}]


def _dtype_alternating(bad_dtype):
    other = torch.float64 if bad_dtype == torch.float32 else torch.float32
    return lambda i: bad_dtype if i in (BAD, BAD + 1) or i % 2 else other


@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("bad_dtype", [torch.float32, torch.float64], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("name,mutate,error", MIXED_DTYPE_CASES,
                         ids=[c[0] for c in MIXED_DTYPE_CASES])
def test_bad_entry_in_either_dtype_group_changes_no_group(impl, bad_dtype, name, mutate, error):
    # Torch's grouping does not promise an order, so the bad entry goes in each group in turn:
    # one of the two placements puts it in the group that runs second.
    lists = make_lists(dtype_of=_dtype_alternating(bad_dtype))
    if name in ("phase-expanded", "param-expanded"):
        lists = _retype_expanded(lists, name, bad_dtype)
    else:
        mutate(lists)
    before = snapshot(lists)
    with pytest.raises(error):
        call_functional(impl)(lists)
    assert_unchanged(lists, before)


def _retype_expanded(lists, name, dtype):
    key = "phases" if name == "phase-expanded" else "params"
    target = default_phase_dtype(dtype) if key == "phases" else dtype
    lists[key][BAD] = torch.zeros(1, dtype=target).expand(12)
    return lists


# ------------------------------------------------------------------------------------------------
# The INNA class: one good step (state exists), then an odd state or input

def make_optimizer(impl, groups=1, dtype=torch.float32):
    lists = make_lists(dtype_of=lambda i: dtype)
    params = [torch.nn.Parameter(p.clone()) for p in lists["params"]]
    if groups == 1:
        opt = INNA(params, lr=0.05, decaypower=0.25, weight_decay=0.01, **impl_kwargs(impl))
    else:
        half = len(params) // 2
        opt = INNA([{"params": params[:half]}, {"params": params[half:], "lr": 0.02}], lr=0.05,
                   decaypower=0.25, **impl_kwargs(impl))
    for p, g in zip(params, lists["grads"]):
        p.grad = g.clone()
    opt.step()
    return opt, params


def optimizer_snapshot(opt, params):
    tensors = [p.detach() for p in params]
    for p in params:
        tensors += [opt.state[p]["phase"], opt.state[p]["step"]]
    tensors = [t for t in tensors if t.device.type == "cpu"]
    return [t.clone() for t in tensors], tensors


def _state(opt, params, i):
    return opt.state[params[i]]


CLASS_BAD_STATES = {
    "grad-sparse": (lambda o, P: setattr(P[BAD], "grad", P[BAD].grad.to_sparse()), TypeError),
    "grad-aliases-its-param": (lambda o, P: setattr(P[BAD], "grad", P[BAD].detach()), ValueError),
    "phase-shape": (lambda o, P: _state(o, P, BAD).update(phase=torch.zeros(11)), ValueError),
    "phase-dtype": (lambda o, P: _state(o, P, BAD).update(
        phase=torch.zeros(12, dtype=torch.float64)), TypeError),
    "phase-float16": (lambda o, P: _state(o, P, BAD).update(
        phase=torch.zeros(12, dtype=torch.float16)), TypeError),
    "phase-device": (lambda o, P: _state(o, P, BAD).update(phase=torch.empty(12, device="meta")),
                     ValueError),
    "phase-aliases-its-param": (lambda o, P: _state(o, P, BAD).update(phase=P[BAD].detach()),
                                ValueError),
    "phase-aliases-other-phase": (lambda o, P: _state(o, P, BAD).update(
        phase=_state(o, P, BAD + 1)["phase"]), ValueError),
    "step-shared": (lambda o, P: _state(o, P, BAD).update(step=_state(o, P, BAD + 1)["step"]),
                    ValueError),
    "step-int": (lambda o, P: _state(o, P, BAD).update(step=torch.tensor(1)), TypeError),
}


@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("name", list(CLASS_BAD_STATES))
def test_optimizer_bad_state_or_grad_changes_nothing(impl, name):
    opt, params = make_optimizer(impl)
    for p in params:
        p.grad = torch.randn_like(p)
    mutate, error = CLASS_BAD_STATES[name]
    mutate(opt, params)
    before, live = optimizer_snapshot(opt, params)
    with pytest.raises(error, match=rf"\[{BAD}\]|\[{BAD + 1}\]|sparse"):
        opt.step()
    assert all(torch.equal(b, a) for b, a in zip(before, live))


@pytest.mark.parametrize("impl", impl_params())
def test_optimizer_overlapping_params_raise_before_writing(impl):
    buffer = torch.randn(18)
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(10)]
    params[5] = torch.nn.Parameter(buffer[:12])
    params[6] = torch.nn.Parameter(buffer[6:])
    opt = INNA(params, lr=0.05, **impl_kwargs(impl))
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="overlap"):
        opt.step()
    assert all(torch.equal(b, p.detach()) for b, p in zip(before, params))


CLASS_BAD_HYPER = [("lr", float("nan")), ("lr", -1.0), ("lr", torch.tensor(float("nan"))),
                   ("beta", 0.0), ("alpha", float("inf")), ("decaypower", float("nan")),
                   ("weight_decay", -1.0)]


@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("key,value", CLASS_BAD_HYPER,
                         ids=[hyper_id(c) for c in CLASS_BAD_HYPER])
def test_optimizer_bad_hyperparameter_in_second_group_moves_no_group(impl, key, value):
    opt, params = make_optimizer(impl, groups=2)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.param_groups[1][key] = value  # e.g. a scheduler or user code gone wrong mid-run
    before, live = optimizer_snapshot(opt, params)
    with pytest.raises(ValueError, match=key):
        opt.step()
    assert all(torch.equal(b, a) for b, a in zip(before, live))


@pytest.mark.parametrize("impl", impl_params())
def test_optimizer_sparse_grad_in_second_group_moves_no_group(impl):
    opt, params = make_optimizer(impl, groups=2)
    for p in params:
        p.grad = torch.randn_like(p)
    params[-1].grad = params[-1].grad.to_sparse()
    before, live = optimizer_snapshot(opt, params)
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    assert all(torch.equal(b, a) for b, a in zip(before, live))


# ------------------------------------------------------------------------------------------------
# load_state_dict: a bad checkpoint fails there, clearly, and loads nothing

def _saved(opt):
    return opt.state_dict()


def _with_entry(sd, **entry):
    sd = {"state": {k: dict(v) for k, v in sd["state"].items()},
          "param_groups": sd["param_groups"]}
    sd["state"][BAD] = {**sd["state"][BAD], **entry}
    for key, value in list(sd["state"][BAD].items()):
        if value is None:
            del sd["state"][BAD][key]
    return sd


BAD_CHECKPOINTS = {
    "phase-missing": (dict(phase=None), ValueError),
    "old-format-psi-shape": (dict(phase=None, psi=torch.zeros(11)), ValueError),
    "old-format-psi-int": (dict(phase=None, psi=torch.zeros(12, dtype=torch.int64)), TypeError),
    "step-missing": (dict(step=None), ValueError),
    "phase-shape": (dict(phase=torch.zeros(11)), ValueError),
    "phase-not-a-tensor": (dict(phase=[0.0] * 12), ValueError),
    "phase-int": (dict(phase=torch.zeros(12, dtype=torch.int64)), TypeError),
    "phase-complex-for-real-param": (dict(phase=torch.zeros(12, dtype=torch.complex64)), TypeError),
    "step-negative": (dict(step=torch.tensor(-1.0)), ValueError),
    "step-nan": (dict(step=float("nan")), ValueError),
    "step-fractional": (dict(step=2.5), ValueError),
    "step-two-elements": (dict(step=torch.ones(2)), TypeError),
    "step-string": (dict(step="3"), TypeError),
}


@pytest.mark.parametrize("name", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_fails_at_load_and_loads_nothing(name):
    source, _ = make_optimizer("reference")
    entry, error = BAD_CHECKPOINTS[name]
    bad = _with_entry(_saved(source), **entry)
    opt, params = make_optimizer("reference")
    before, live = optimizer_snapshot(opt, params)
    groups_before = [dict(g, params=None) for g in opt.param_groups]
    with pytest.raises(error, match=f"param {BAD}"):
        opt.load_state_dict(bad)
    assert all(torch.equal(b, a) for b, a in zip(before, live))
    assert [dict(g, params=None) for g in opt.param_groups] == groups_before


def test_checkpoint_phase_and_step_are_converted_to_working_dtypes():
    source, _ = make_optimizer("reference")
    sd = _saved(source)
    sd = _with_entry(sd, phase=sd["state"][BAD]["phase"].double(), step=torch.tensor(1))
    opt, params = make_optimizer("reference")
    opt.load_state_dict(sd)
    state = opt.state[params[BAD]]
    assert state["phase"].dtype == torch.float32 and state["step"].dtype == torch.float32
    assert torch.equal(state["phase"],
                       source.state[source.param_groups[0]["params"][BAD]]["phase"])
    opt.step()  # and it steps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
def test_checkpoint_keeps_phase_float32_for_16bit_params(dtype):
    # torch.optim's load_state_dict casts state to the param's dtype; the phase must stay float32.
    opt, params = make_optimizer("reference", dtype=dtype)
    phases = [opt.state[p]["phase"].clone() for p in params]
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = INNA(params, **impl_kwargs("reference"))
    fresh.load_state_dict(torch.load(buffer))
    for p, phase in zip(params, phases):
        assert fresh.state[p]["phase"].dtype == torch.float32
        assert torch.equal(fresh.state[p]["phase"], phase)


# ------------------------------------------------------------------------------------------------
# NaN / Inf / denormals / huge values: as the phase-form reference step does

def run_one(impl, p, g, phase, k, **hyper):
    p, phase, step = p.clone(), phase.clone(), torch.tensor(float(k))
    inna([p], [g.clone()], [phase], [step], impl=impl, stochastic_rounding=False,
         **dict(FUNC_HYPER, **hyper))
    return p, phase


def reference_one(p, g, phase, k, **hyper):
    return phase_step_reference(p, g, phase, k, **dict(FUNC_HYPER, **hyper))


def assert_like_reference(actual, expected, inputs, dtype, what, exact_kind=True, k=0,
                          **hyper):
    theta_bound, phase_bound = error_bounds(*inputs, k, **dict(FUNC_HYPER, **hyper))
    for name, a, e, bound in zip(("param", "phase"), actual, expected,
                                 (theta_bound, phase_bound)):
        assert_matches(a, e, bound + rounding_slack(e, a.dtype), f"{name} {what}", exact_kind)


LOW = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("impl", impl_params(["fused", "foreach"]))
@pytest.mark.parametrize("dtype", LOW, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("k", [0, 3], ids=lambda k: f"k={k}")
def test_nan_inf_in_grad_propagate_like_reference(impl, dtype, k):
    gen = torch.Generator().manual_seed(3)
    n = 70  # > one SIMD vector, with a ragged tail
    p = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    g = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    phase = torch.randn(n, generator=gen, dtype=torch.float64).to(default_phase_dtype(dtype))
    for i, bad in zip([0, 5, 31, 32, 33, 68, 69], [math.nan, math.inf, -math.inf] * 3):
        g[i] = bad
    p[40], phase[50] = math.nan, math.inf  # non-finite state as well
    actual = run_one(impl, p, g, phase, k)
    expected = reference_one(p, g, phase, k)
    assert_like_reference(actual, expected, (p, g, phase), dtype, f"{impl} {dtype}", k=k)
    assert torch.isnan(actual[0][0]) and not torch.isfinite(actual[0][5])  # never zeroed


@pytest.mark.parametrize("impl", impl_params())
def test_found_inf_skips_the_step_and_nan_grads_do_not_leak(impl):
    lists = make_lists(n=8)
    lists["grads"][3][0] = math.nan
    before = snapshot(lists)
    call_functional(impl)(lists, grad_scale=torch.tensor(1024.0), found_inf=torch.tensor(1.0))
    assert_unchanged(lists, before)


HUGE = {torch.float32: 3e38, torch.bfloat16: 3e38, torch.float16: 6e4, torch.float64: 1.7e308}


@pytest.mark.parametrize("impl", impl_params(["fused", "foreach"]))
@pytest.mark.parametrize("dtype", LOW, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("k", [0, 3], ids=lambda k: f"k={k}")
def test_huge_and_denormal_values_like_reference(impl, dtype, k):
    big = HUGE[dtype]
    sub = torch.finfo(dtype).smallest_normal / 8  # a denormal of the param dtype
    phase_sub = torch.finfo(default_phase_dtype(dtype)).smallest_normal / 8
    values = [big, -big, big / 2, -big / 3, sub, -sub, 3 * sub, 0.0, 1.0, -2.5]
    p = torch.tensor(values * 4, dtype=torch.float64)
    g = torch.tensor(values[::-1] * 4, dtype=torch.float64)
    phase = torch.tensor(([phase_sub, -big, big * 0.95, 0.0, phase_sub, 1.0, -phase_sub, big, 2.0,
                           0.5] * 4), dtype=torch.float64)
    p, g, phase = p.to(dtype), g.to(dtype), phase.to(default_phase_dtype(dtype))
    actual = run_one(impl, p, g, phase, k, weight_decay=0.0)
    expected = reference_one(p, g, phase, k, weight_decay=0.0)
    # An intermediate that overflows is inf in one path and inf - inf = nan in the other,
    # depending on fused multiply-adds (docs/RELIABILITY.md): where it is non-finite must match.
    exact_kind = dtype == torch.float16  # float16 values cannot overflow the float32 arithmetic
    assert_like_reference(actual, expected, (p, g, phase), dtype, f"{impl} {dtype}", exact_kind,
                          k=k, weight_decay=0.0)
    # Denormal inputs are not flushed: where the reference keeps a non-zero, so does the kernel.
    assert torch.equal(actual[0] != 0, expected[0] != 0)


# ------------------------------------------------------------------------------------------------
# Determinism: bitwise identical for any thread count

DETERMINISM_SIZES = [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3, 0, 1, 5, 77] + [7, 300] * 20


def fused_steps(dtype, threads, steps=3):
    gen = torch.Generator().manual_seed(11)
    params = [torch.randn(n, generator=gen).to(dtype) for n in DETERMINISM_SIZES]
    phases = [torch.empty(n, dtype=default_phase_dtype(dtype)) for n in DETERMINISM_SIZES]
    counts = [torch.zeros(()) for _ in DETERMINISM_SIZES]
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k in range(steps):
            grads = [torch.randn(n, generator=gen).to(dtype) for n in DETERMINISM_SIZES]
            inna(params, grads, phases, counts, impl="fused", **FUNC_HYPER,
                 decoupled_weight_decay=k == 1)
    finally:
        torch.set_num_threads(saved)
    return params + phases


@requires_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=DTYPE_IDS.get)
def test_fused_cpu_is_bitwise_deterministic_across_runs_and_thread_counts(dtype):
    baseline = fused_steps(dtype, threads=1)
    for threads in (1, 2, 3, 4):
        result = fused_steps(dtype, threads)
        for i, (a, b) in enumerate(zip(result, baseline)):
            assert torch.equal(a, b), f"tensor {i} differs with {threads} threads"


# ------------------------------------------------------------------------------------------------
# Resumption: interrupted and resumed from a (serialised) state_dict == uninterrupted, bitwise

RESUME_SIZES = [10, 1, 0, 300, 33]


def train(impl, dtype, steps, start_params=None, state_dict=None, first=0):
    gen_init = torch.Generator().manual_seed(5)
    init = [torch.randn(n, generator=gen_init, dtype=torch.float64).to(dtype) for n in RESUME_SIZES]
    params = [torch.nn.Parameter((start_params or init)[i].clone()) for i in range(len(init))]
    opt = INNA([{"params": params[:2]}, {"params": params[2:], "lr": 0.03, "weight_decay": 0.01}],
               lr=0.05, decaypower=0.5, **impl_kwargs(impl))
    if state_dict is not None:
        opt.load_state_dict(state_dict)
    for k in range(first, steps):
        gen = torch.Generator().manual_seed(100 + k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
        opt.step()
    return params, opt


def serialised(opt):
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer)


@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("stop", [0, 1, 4], ids=lambda s: f"stop={s}")
def test_resumed_training_is_bitwise_identical(impl, dtype, stop):
    total = 6
    straight, straight_opt = train(impl, dtype, total)
    first_part, first_opt = train(impl, dtype, stop)
    resumed, resumed_opt = train(impl, dtype, total, start_params=[p.detach() for p in first_part],
                                 state_dict=serialised(first_opt), first=stop)
    for i, (a, b) in enumerate(zip(resumed, straight)):
        assert torch.equal(a.detach(), b.detach()), f"param {i} differs after resuming at {stop}"
        if b.numel() or straight_opt.state[b]:
            sa, sb = resumed_opt.state[a], straight_opt.state[b]
            assert torch.equal(sa["phase"], sb["phase"]), (
                f"phase {i} differs after resuming at {stop}")
            assert sa["phase"].dtype == default_phase_dtype(dtype)
            assert float(sa["step"]) == float(sb["step"]) == total
