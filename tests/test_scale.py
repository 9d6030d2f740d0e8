"""64-bit sizes: one bfloat16 param of more than 2^31 elements on the CPU (opt-in, ~16 GiB each).

    INNA_FUSED_BIG_TEST=1 python -m pytest tests/test_scale.py -s

The param and its grad (bfloat16, 4 GiB each) repeat random tables of 997 and 991 values
(primes, so the (θ, g) pattern repeats every 988027 elements, not at a power of two). INNA's
phase is float32 (8 GiB); INNAprop's phase and exp_avg_sq are bfloat16 (4 GiB each). The state is
initialised by the first step and read by the second. After two fused steps (rounding to nearest:
stochastic rounding would draw different bits in every period) the first period must match the
reference step (INNA: the phase form; INNAprop: its foreach path) within the derived error
bounds, and every later period — including the one holding element 2^31 and the ragged tail —
must equal the first bit for bit: an element updated at a wrapped 32-bit offset, skipped or
updated twice cannot pass. The two tests run one after the other (each needs ~17.5 GiB).
"""
import os
import resource
import time

import pytest
import torch

from inna_fused.functional import inna
from inna_fused.innaprop_functional import innaprop

from conftest import requires_cpu_kernel
from reliability_helpers import (assert_matches, error_bounds, innaprop_error_bounds,
                                 phase_step_reference, rounding_slack)

NUMEL = 2**31 + 2**15 + 7  # past the int32 range, with a ragged last chunk
NEEDED_GIB = 17.5          # 16 GiB of tensors plus the interpreter and some slack
THETA_PERIOD, GRAD_PERIOD = 997, 991
PERIOD = THETA_PERIOD * GRAD_PERIOD
HYPER = dict(lr=0.05, alpha=0.5, beta=0.1, decay_power=0.5, weight_decay=1e-3, psi_init="zero")
PROP_HYPER = dict(lr=0.01, alpha=0.1, beta=0.9, sigma=0.9, eps=1e-8, weight_decay=0.01)


def available_gib():
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 2**20


def periodic(numel, period, dtype, seed):
    """A tensor of `numel` elements repeating `period` random values (no extra memory)."""
    table = torch.randn(period, generator=torch.Generator().manual_seed(seed)).to(dtype)
    out = torch.empty(numel, dtype=dtype)
    rows = numel // period
    out[:rows * period].view(rows, period).copy_(table.expand(rows, period))
    out[rows * period:].copy_(table[:numel - rows * period])
    return out, table


def assert_every_period_equals_the_first(t, what, block_rows=64):
    first = t[:PERIOD]
    rows = t.numel() // PERIOD
    for row in range(1, rows, block_rows):
        n = min(block_rows, rows - row)
        block = t[row * PERIOD:(row + n) * PERIOD].view(n, PERIOD)
        same = block == first.expand(n, PERIOD)
        assert bool(same.all()), (f"{what}: period {row + int((~same).any(1).nonzero()[0])} "
                                  "differs from the first")
    tail = t[rows * PERIOD:]
    assert torch.equal(tail, first[:tail.numel()]), f"{what}: the ragged tail differs"


class InnaSpec:
    """INNA: a float32 phase; the reference is the phase form written out once more."""
    name = "INNA"
    state_dtypes = {"phase": torch.float32}

    @staticmethod
    def fused(param, grad, state, step):
        inna([param], [grad], [state["phase"]], [step], impl="fused", stochastic_rounding=False,
             **HYPER)

    @staticmethod
    def reference(theta, grad, state, k):
        """The state after the reference step and the bounds, per state name (θ: "param")."""
        theta_bound, phase_bound = error_bounds(theta, grad, state["phase"], k, **HYPER)
        theta, phase = phase_step_reference(theta, grad, state["phase"], k, **HYPER)
        return dict(param=theta, phase=phase), dict(param=theta_bound, phase=phase_bound)


class InnapropSpec:
    """INNAprop with all of its state in bfloat16; the reference is its foreach path."""
    name = "INNAprop"
    state_dtypes = {"phase": torch.bfloat16, "exp_avg_sq": torch.bfloat16}

    @staticmethod
    def fused(param, grad, state, step):
        innaprop([param], [grad], [state["phase"]], [state["exp_avg_sq"]], [step], impl="fused",
                 stochastic_rounding=False, **PROP_HYPER)

    @staticmethod
    def reference(theta, grad, state, k):
        bounds = innaprop_error_bounds(theta, grad, state["phase"], state["exp_avg_sq"], k,
                                       **PROP_HYPER)
        out = dict(param=theta.clone(), phase=state["phase"].clone(),
                   exp_avg_sq=state["exp_avg_sq"].clone())
        innaprop([out["param"]], [grad], [out["phase"]], [out["exp_avg_sq"]],
                 [torch.tensor(float(k))], impl="foreach", stochastic_rounding=False,
                 **PROP_HYPER)
        return out, dict(zip(("param", "phase", "exp_avg_sq"), bounds))


@requires_cpu_kernel
@pytest.mark.skipif(os.environ.get("INNA_FUSED_BIG_TEST") != "1",
                    reason="opt-in: set INNA_FUSED_BIG_TEST=1 (needs ~17.5 GiB of free memory)")
@pytest.mark.parametrize("spec", [InnaSpec, InnapropSpec], ids=lambda s: s.name)
def test_bfloat16_param_past_2_to_the_31_elements(spec):
    if available_gib() < NEEDED_GIB:
        pytest.skip(f"needs {NEEDED_GIB} GiB of available memory, {available_gib():.1f} GiB free")
    start = time.perf_counter()
    param, param_table = periodic(NUMEL, THETA_PERIOD, torch.bfloat16, seed=1)
    grad, grad_table = periodic(NUMEL, GRAD_PERIOD, torch.bfloat16, seed=2)
    # Filled by the first (k = 0) step.
    state = {name: torch.empty(NUMEL, dtype=dtype) for name, dtype in spec.state_dtypes.items()}
    step = torch.zeros(())

    # Each step is checked on the first period against the reference taken from the same state
    # (a bfloat16 rounding flip in step 1 would otherwise be amplified by step 2).
    index = torch.arange(PERIOD)
    theta_ref = param_table[index % THETA_PERIOD]
    grad_ref = grad_table[index % GRAD_PERIOD]
    state_ref = {name: torch.zeros(PERIOD, dtype=dtype)
                 for name, dtype in spec.state_dtypes.items()}
    filled = time.perf_counter()
    fused_seconds = 0.0
    for k in range(2):
        want, bounds = spec.reference(theta_ref, grad_ref, state_ref, k)
        begin = time.perf_counter()
        spec.fused(param, grad, state, step)
        fused_seconds += time.perf_counter() - begin
        got = dict(param=param, **state)
        for name, value in want.items():
            assert_matches(got[name][:PERIOD], value,
                           bounds[name] + rounding_slack(value, got[name].dtype),
                           f"{spec.name} {name}, step {k}")
        theta_ref = param[:PERIOD].clone()
        state_ref = {name: t[:PERIOD].clone() for name, t in state.items()}
    assert float(step) == 2
    for name, t in dict(param=param, **state).items():
        assert_every_period_equals_the_first(t, f"{spec.name} {name}")
    checked = time.perf_counter()
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n{spec.name}, numel={NUMEL}: fill {filled - start:.1f} s, two fused steps "
          f"{fused_seconds:.1f} s, checks {checked - filled - fused_seconds:.1f} s, "
          f"peak RSS {peak_gib:.1f} GiB, {torch.get_num_threads()} threads")
