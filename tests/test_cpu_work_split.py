"""The CPU kernel's work split: units of 2^15 elements of the list laid end to end, which may span
several tensors or start mid-tensor. Every element must be updated exactly once, as the reference
does, and the result must not depend on the thread count."""
import pytest
import torch

import inna_fused
from inna_fused.reference import inna_reference_

pytestmark = pytest.mark.skipif(not inna_fused.kernel_available("cpu"),
                                reason="the CPU kernel is not built")

UNIT = 1 << 15
# Unit boundaries land inside tensors, at tensor edges, after size-0 entries and in tiny tensors.
SIZES = [1, UNIT - 1, 0, UNIT + 1, 5, 2 * UNIT + 3, 0, 7, UNIT, 17, 100_001]
HYPER = dict(lr=0.05, alpha=0.5, beta=0.1, decay_power=0.3, weight_decay=0.01)


def _lists(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=g).to(dtype) for n in SIZES]
    grads = [torch.randn(n, generator=g).to(dtype) for n in SIZES]
    return params, grads


def _fused_steps(params, grads, steps=3, threads=None):
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        params = [p.clone() for p in params]
        psi_type = torch.float64 if params[0].dtype == torch.float64 else torch.float32
        psis = [torch.full(p.shape, float("nan"), dtype=psi_type) for p in params]  # poison
        counts = [torch.zeros((), dtype=torch.float32) for _ in params]
        for _ in range(steps):
            inna_fused.inna(params, grads, psis, counts, impl="fused", **HYPER)
    finally:
        torch.set_num_threads(previous)
    return params, psis


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5),
                                        (torch.bfloat16, 1e-2)], ids=["fp64", "fp32", "bf16"])
def test_every_element_updated_like_the_reference(dtype, tol):
    params, grads = _lists(dtype)
    fused, fused_psis = _fused_steps(params, grads)
    for i, (p, g) in enumerate(zip(params, grads)):
        expected, psi = p.clone(), torch.empty(p.shape, dtype=fused_psis[i].dtype)
        for k in range(3):
            inna_reference_(expected, psi, g, k, **HYPER)
        torch.testing.assert_close(fused[i], expected, rtol=tol, atol=tol, msg=f"params[{i}]")
        torch.testing.assert_close(fused_psis[i], psi, rtol=tol, atol=tol, msg=f"psis[{i}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bitwise_identical_for_any_thread_count(dtype):
    params, grads = _lists(dtype, seed=1)
    one, one_psis = _fused_steps(params, grads, threads=1)
    for threads in (2, 3):
        many, many_psis = _fused_steps(params, grads, threads=threads)
        for a, b in zip(one + one_psis, many + many_psis):
            assert torch.equal(a, b), f"{threads} threads differ from 1"
