"""The CPU kernel's work split: units of 2^15 elements of the list laid end to end, which may span
several tensors or start mid-tensor, at any offset modulo the SIMD block. Every element must be
updated exactly once, as the reference does, and the result must not depend on the thread count
or on where a thread's range starts inside a SIMD block."""
import pytest
import torch

import inna_fused
from inna_fused.reference import inna_reference_

pytestmark = pytest.mark.skipif(not inna_fused.kernel_available("cpu"),
                                reason="the CPU kernel is not built")

UNIT = 1 << 15
BLOCK = 16  # elements per SIMD block of the CPU kernel (two float vectors; wider than AVX-512's)
# Unit boundaries land inside tensors, at tensor edges, after size-0 entries and in tiny tensors.
SIZES = [1, UNIT - 1, 0, UNIT + 1, 5, 2 * UNIT + 3, 0, 7, UNIT, 17, 100_001]
HYPER = dict(lr=0.05, alpha=0.5, beta=0.1, decay_power=0.3, weight_decay=0.01)


def _lists(dtype, sizes=SIZES, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=g).to(dtype) for n in sizes]
    grads = [torch.randn(n, generator=g).to(dtype) for n in sizes]
    return params, grads


def _default_phase_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fused_steps(params, grads, steps=3, threads=None, phase_dtype=None,
                 stochastic_rounding=False, hyper=HYPER):
    """`steps` fused steps on copies of `params` (the same grads each step) at `threads` threads."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        params = [p.clone() for p in params]
        phase_dtype = phase_dtype or _default_phase_dtype(params[0].dtype)
        phases = [torch.full(p.shape, float("nan"), dtype=phase_dtype) for p in params]  # poison
        counts = [torch.zeros((), dtype=torch.float32) for _ in params]
        for _ in range(steps):
            torch.ops.inna_fused.fused_inna_(
                params, grads, phases, counts, lr=hyper["lr"], alpha=hyper["alpha"],
                beta=hyper["beta"], decay_power=hyper["decay_power"],
                weight_decay=hyper["weight_decay"], decoupled_weight_decay=False,
                paper_init=True, maximize=False, stochastic_rounding=stochastic_rounding, seed=5)
    finally:
        torch.set_num_threads(previous)
    return params, phases


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5),
                                        (torch.bfloat16, 1e-2)], ids=["fp64", "fp32", "bf16"])
def test_every_element_updated_like_the_reference(dtype, tol):
    """Against the literal eq. (12) in ψ; the phase is compared as (α − 1/β)θ + ψ/β."""
    params, grads = _lists(dtype)
    fused, fused_phases = _fused_steps(params, grads)
    alpha, beta = HYPER["alpha"], HYPER["beta"]
    for i, (p, g) in enumerate(zip(params, grads)):
        expected = p.double()
        psi = torch.empty(p.shape, dtype=torch.float64)
        for k in range(3):
            inna_reference_(expected, psi, g.double(), k, **HYPER)
        expected_phase = (alpha - 1 / beta) * expected + psi / beta
        torch.testing.assert_close(fused[i].double(), expected, rtol=tol, atol=tol,
                                   msg=f"params[{i}]")
        torch.testing.assert_close(fused_phases[i].double(), expected_phase, rtol=tol, atol=tol,
                                   msg=f"phases[{i}]")


CASES = {  # param dtype, phase dtype, stochastic rounding
    "fp32": (torch.float32, None, False),
    "fp64": (torch.float64, None, False),
    "bf16": (torch.bfloat16, None, False),
    "bf16-sr": (torch.bfloat16, None, True),
    "fp16-sr": (torch.float16, None, True),
    "bf16-sr-bf16state": (torch.bfloat16, torch.bfloat16, True),
    "fp32-bf16state": (torch.float32, torch.bfloat16, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bitwise_identical_for_any_thread_count(case):
    dtype, phase_dtype, sr = CASES[case]
    params, grads = _lists(dtype, seed=1)
    one = _fused_steps(params, grads, threads=1, phase_dtype=phase_dtype, stochastic_rounding=sr)
    for threads in (2, 3):
        many = _fused_steps(params, grads, threads=threads, phase_dtype=phase_dtype,
                            stochastic_rounding=sr)
        for a, b in zip(one[0] + one[1], many[0] + many[1]):
            assert torch.equal(a, b), f"{threads} threads differ from 1"


@pytest.mark.parametrize("case", ["fp32", "bf16-sr", "bf16-sr-bf16state", "fp32-bf16state"])
@pytest.mark.parametrize("offset", range(BLOCK))
def test_split_at_every_offset_in_a_simd_block(case, offset):
    """A prefix tensor of `offset + 1` elements moves the 2-thread split (a multiple of 2^15 in the
    list laid end to end) to every position modulo the SIMD block inside the big tensor, which
    also has coupled weight decay and a decaying step size (the settings of the bug this guards)."""
    dtype, phase_dtype, sr = CASES[case]
    sizes = [offset + 1, 2 * UNIT + 5, 3]
    assert (UNIT - sizes[0]) % BLOCK == (BLOCK - offset - 1) % BLOCK  # the split's block offset
    params, grads = _lists(dtype, sizes=sizes, seed=offset)
    hyper = dict(lr=0.05, alpha=0.5, beta=0.1, decay_power=0.5, weight_decay=1e-3)
    one = _fused_steps(params, grads, steps=4, threads=1, phase_dtype=phase_dtype,
                       stochastic_rounding=sr, hyper=hyper)
    two = _fused_steps(params, grads, steps=4, threads=2, phase_dtype=phase_dtype,
                       stochastic_rounding=sr, hyper=hyper)
    for i, (a, b) in enumerate(zip(one[0] + one[1], two[0] + two[1])):
        assert torch.equal(a, b), (f"tensor {i}: 2 threads differ from 1 in "
                                   f"{int((a != b).sum())} elements")


def test_issue_repro_sizes_are_thread_count_independent():
    """The sizes that exposed a thread-count dependence in float32 (one element of the 2^20
    tensor, the last before the 2-thread split, differed)."""
    sizes = [1, 3, 1000, 65537, 1 << 20, 777]
    torch.manual_seed(0)
    params = [torch.randn(n) for n in sizes]
    grads = [torch.randn(n) for n in sizes]
    hyper = dict(lr=0.05, alpha=0.5, beta=0.1, decay_power=0.5, weight_decay=1e-3)
    one = _fused_steps(params, grads, steps=4, threads=1, hyper=hyper)
    two = _fused_steps(params, grads, steps=4, threads=2, hyper=hyper)
    for a, b in zip(one[0] + one[1], two[0] + two[1]):
        assert torch.equal(a, b)
