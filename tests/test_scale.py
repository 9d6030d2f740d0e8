"""64-bit sizes: one bfloat16 param of more than 2^31 elements on the CPU (opt-in, ~16 GiB).

    INNA_FUSED_BIG_TEST=1 python -m pytest tests/test_scale.py -s

The param and its grad (bfloat16, 4 GiB each) repeat random tables of 997 and 991 values
(primes, so the (θ, g) pattern repeats every 988027 elements, not at a power of two); the phase
(float32, 8 GiB) is initialised by the first step and read by the second. After two fused steps
(rounding to nearest: stochastic rounding would draw different bits in every period) the first
period must match the phase-form reference step, and every later period — including the one
holding element 2^31 and the ragged tail — must equal the first bit for bit: an element updated at
a wrapped 32-bit offset, skipped or updated twice cannot pass.
"""
import os
import resource
import time

import pytest
import torch

from inna_fused.functional import inna

from conftest import requires_cpu_kernel
from reliability_helpers import assert_matches, error_bounds, phase_step_reference, rounding_slack

NUMEL = 2**31 + 2**15 + 7  # past the int32 range, with a ragged last chunk
NEEDED_GIB = 17.5          # 16 GiB of tensors plus the interpreter and some slack
THETA_PERIOD, GRAD_PERIOD = 997, 991
PERIOD = THETA_PERIOD * GRAD_PERIOD
HYPER = dict(lr=0.05, alpha=0.5, beta=0.1, decay_power=0.5, weight_decay=1e-3)


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


@requires_cpu_kernel
@pytest.mark.skipif(os.environ.get("INNA_FUSED_BIG_TEST") != "1",
                    reason="opt-in: set INNA_FUSED_BIG_TEST=1 (needs ~17.5 GiB of free memory)")
def test_bfloat16_param_past_2_to_the_31_elements():
    if available_gib() < NEEDED_GIB:
        pytest.skip(f"needs {NEEDED_GIB} GiB of available memory, {available_gib():.1f} GiB free")
    start = time.perf_counter()
    param, param_table = periodic(NUMEL, THETA_PERIOD, torch.bfloat16, seed=1)
    grad, grad_table = periodic(NUMEL, GRAD_PERIOD, torch.bfloat16, seed=2)
    phase = torch.empty(NUMEL, dtype=torch.float32)  # filled by the first (k = 0) step
    step = torch.zeros(())

    # Each step is checked on the first period against the reference taken from the same state
    # (a bfloat16 rounding flip in step 1 would otherwise be amplified by step 2).
    index = torch.arange(PERIOD)
    theta_ref = param_table[index % THETA_PERIOD]
    grad_ref = grad_table[index % GRAD_PERIOD]
    phase_ref = torch.zeros(PERIOD, dtype=torch.float32)
    filled = time.perf_counter()
    fused_seconds = 0.0
    for k in range(2):
        theta_bound, phase_bound = error_bounds(theta_ref, grad_ref, phase_ref, k, **HYPER)
        theta_ref, phase_ref = phase_step_reference(theta_ref, grad_ref, phase_ref, k, **HYPER)
        begin = time.perf_counter()
        inna([param], [grad], [phase], [step], impl="fused", stochastic_rounding=False, **HYPER)
        fused_seconds += time.perf_counter() - begin
        assert_matches(param[:PERIOD], theta_ref,
                       theta_bound + rounding_slack(theta_ref, torch.bfloat16), f"param, step {k}")
        assert_matches(phase[:PERIOD], phase_ref,
                       phase_bound + rounding_slack(phase_ref, torch.float32), f"phase, step {k}")
        theta_ref, phase_ref = param[:PERIOD].clone(), phase[:PERIOD].clone()
    assert float(step) == 2
    assert_every_period_equals_the_first(param, "param")
    assert_every_period_equals_the_first(phase, "phase")
    checked = time.perf_counter()
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nnumel={NUMEL}: fill {filled - start:.1f} s, two fused steps {fused_seconds:.1f} s, "
          f"checks {checked - filled - fused_seconds:.1f} s, "
          f"peak RSS {peak_gib:.1f} GiB, {torch.get_num_threads()} threads")
