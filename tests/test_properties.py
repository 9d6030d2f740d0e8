"""Property tests (hypothesis): fused and foreach against the reference on random lists of random
shapes (0-size and 0-dim included), dtypes, strided layouts (transposed, sliced with a step, at an
odd offset, expanded grads) and hyper-parameters; nothing outside the views is ever written."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inna_fused.functional import inna
from inna_fused._contract import default_phase_dtype

from conftest import impl_params
from reliability_helpers import (GRAD_LAYOUTS, LAYOUTS, GuardedView, assert_matches, error_bounds,
                                 rounding_slack)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                             suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.data_too_large])

shapes = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple) | st.sampled_from(
    [(37,), (4, 33), (1, 1, 65)])  # a few sizes past one SIMD vector, with ragged tails
entries = st.tuples(shapes, st.sampled_from(DTYPES), st.sampled_from(LAYOUTS),
                    st.sampled_from(GRAD_LAYOUTS), st.sampled_from(LAYOUTS),
                    st.sampled_from([0, 1, 6]))
hypers = st.fixed_dictionaries(dict(
    lr=st.floats(0.0, 1.0),
    alpha=st.floats(0.01, 3.0),
    beta=st.floats(0.01, 1.0),
    decay_power=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
    decoupled_weight_decay=st.booleans(),
    psi_init=st.sampled_from(["paper", "zero"]),
    maximize=st.booleans(),
    grad_scale=st.sampled_from([None, 1.0, 1024.0, 65536.0]),
))


def build(entry_specs, seed):
    gen = torch.Generator().manual_seed(seed)
    views = []
    for shape, dtype, p_layout, g_layout, phase_layout, k in entry_specs:
        p = GuardedView(shape, dtype, p_layout, gen)
        g = GuardedView(shape, dtype, g_layout, gen)
        phase = GuardedView(shape, default_phase_dtype(dtype), phase_layout, gen)
        if k == 0:
            phase.view.fill_(float("nan"))  # the first step must never read the phase
            phase.before = phase.buffer.clone()
        views.append((p, g, phase, k))
    return views


@pytest.mark.parametrize("impl", impl_params(["fused", "foreach"]))
@PROPERTY_SETTINGS
@given(entry_specs=st.lists(entries, min_size=1, max_size=5), hyper=hypers,
       seed=st.integers(0, 2**16))
def test_matches_reference_on_random_lists_layouts_and_hyperparameters(impl, entry_specs, hyper,
                                                                      seed):
    views = build(entry_specs, seed)
    grad_scale = hyper.pop("grad_scale")
    scale_kwargs = {} if grad_scale is None else dict(grad_scale=torch.tensor(grad_scale),
                                                      found_inf=torch.tensor(0.0))
    # The oracle runs the reference on contiguous copies taken before the step.
    copies = [(p.view.clone(), g.view.clone(), phase.view.clone(), torch.tensor(float(k)))
              for p, g, phase, k in views]
    ref_params = [c[0].clone() for c in copies]
    ref_phases = [c[2].clone() for c in copies]
    ref_steps = [c[3].clone() for c in copies]
    inna(ref_params, [c[1] for c in copies], ref_phases, ref_steps, impl="reference", **hyper,
         **scale_kwargs)

    steps = [torch.tensor(float(k)) for *_, k in views]
    inna([p.view for p, *_ in views], [g.view for _, g, *_ in views],
         [phase.view for _, _, phase, _ in views], steps, impl=impl, **hyper, **scale_kwargs)

    factor = (-1.0 if hyper["maximize"] else 1.0) / (grad_scale or 1.0)
    bound_hyper = {key: hyper[key] for key in ("lr", "alpha", "beta", "decay_power",
                                               "weight_decay", "psi_init")}
    for i, ((p, g, phase, k), (p0, g0, phase0, _)) in enumerate(zip(views, copies)):
        theta_bound, phase_bound = error_bounds(p0, g0, phase0, k, **bound_hyper,
                                                grad_factor=factor)
        if hyper["decoupled_weight_decay"]:
            theta_bound = theta_bound * 2
        what = f"entry {i} {tuple(p.view.shape)} {p.view.dtype} {impl}"
        assert_matches(p.view, ref_params[i], theta_bound + rounding_slack(ref_params[i],
                                                                           p.view.dtype),
                       f"param of {what}")
        if p.view.numel():
            assert_matches(phase.view, ref_phases[i], phase_bound + rounding_slack(ref_phases[i],
                                                                             phase.view.dtype),
                           f"phase of {what}")
        assert float(steps[i]) == k + 1
        for name, guarded in (("param", p), ("grad", g), ("phase", phase)):
            assert guarded.untouched_outside(), f"{what}: {name} buffer written outside the view"
        assert torch.equal(g.view, g0), f"{what}: grad modified"


@pytest.mark.parametrize("impl", impl_params(["fused", "foreach"]))
@PROPERTY_SETTINGS
@given(entry_specs=st.lists(entries, min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_found_inf_changes_nothing(impl, entry_specs, seed):
    views = build(entry_specs, seed)
    steps = [torch.tensor(float(k)) for *_, k in views]
    before = [(p.buffer.clone(), phase.buffer.clone()) for p, _, phase, _ in views]
    inna([p.view for p, *_ in views], [g.view for _, g, *_ in views],
         [phase.view for _, _, phase, _ in views], steps, impl=impl, lr=0.1, alpha=0.5, beta=0.1,
         grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0))
    for (p, _, phase, k), (p_before, phase_before), step in zip(views, before, steps):
        assert torch.equal(p.buffer, p_before) and torch.equal(phase.buffer.nan_to_num(),
                                                               phase_before.nan_to_num())
        assert float(step) == k


def test_error_bound_is_tight_enough_to_catch_a_wrong_coefficient():
    # The comparison these properties rest on must notice a 1e-4 relative change in β.
    views = build([((257,), torch.float32, "contiguous", "contiguous", "contiguous", 3)], 0)
    (p, g, phase, k), = views
    hyper = dict(lr=0.1, alpha=0.5, decay_power=0.0, weight_decay=0.0)
    results = []
    for beta in (0.1, 0.1 * (1 + 1e-4)):
        theta, ps = p.view.clone(), phase.view.clone()
        inna([theta], [g.view], [ps], [torch.tensor(3.0)], impl="reference", beta=beta, **hyper)
        results.append(theta)
    bound, _ = error_bounds(p.view, g.view, phase.view, k, beta=0.1, **hyper)
    with pytest.raises(AssertionError):
        assert_matches(results[1], results[0], bound + rounding_slack(results[0], torch.float32),
                       "perturbed")
