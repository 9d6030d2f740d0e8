"""The fused INNAprop op (torch.ops.inna_fused.fused_innaprop_), called directly.

The oracle is a literal transcription of the authors' step (Bolte et al. 2024) in ψ, written here
independently of the kernel (which keeps the phase w = (ψ − (1 − αβ)θ)/β instead).
"""
import importlib
import math

import pytest
import torch

import inna_fused  # noqa: F401  (registers the ops)

from conftest import requires_fma_cpu_kernel

OP = torch.ops.inna_fused.fused_innaprop_


def authors_step(theta, psi, exp_avg_sq, grad, step, *, lr, alpha, beta, sigma, eps, wd):
    """One INNAprop step as the authors write it; `step` is t (1 on the first step).

    State init (t == 1): ψ = (1 − αβ)θ, exp_avg_sq = 0, taken before θ decays."""
    if step == 1:
        psi = (1 - alpha * beta) * theta.clone()
        exp_avg_sq = torch.zeros_like(theta)
    theta = theta * (1 - lr * wd)
    exp_avg_sq = exp_avg_sq * sigma + (1 - sigma) * grad * grad
    bias_correction2 = 1 - sigma ** step
    denom = exp_avg_sq.sqrt() / math.sqrt(bias_correction2) + eps
    u = grad / denom
    drift = (1 / beta - alpha) * theta - psi / beta
    new_psi = psi + lr * drift
    new_theta = theta + lr * (drift - beta * u)
    return new_theta, new_psi, exp_avg_sq


def make_state(shapes, dtype, phase_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    opmath = torch.float64 if dtype == torch.float64 else torch.float32
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    phases = [torch.full(s, float("nan"), dtype=phase_dtype or opmath) for s in shapes]
    sqs = [torch.full(s, float("nan"), dtype=phase_dtype or opmath) for s in shapes]  # v: the phase's
    steps = [torch.zeros((), dtype=torch.float32) for _ in shapes]
    return params, phases, sqs, steps


def grads_for(params, k, seed=0):
    g = torch.Generator().manual_seed(1000 + 7 * k + seed)
    return [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) for p in params]


HYPER = {
    "defaults": dict(lr=1e-3, alpha=0.1, beta=0.9, sigma=0.999, eps=1e-8, weight_decay=0.01),
    "alpha_beta_2": dict(lr=6e-4, alpha=2.0, beta=2.0, sigma=0.99, eps=1e-8, weight_decay=0.1),
    "no_decay": dict(lr=1e-3, alpha=0.1, beta=0.9, sigma=0.999, eps=1e-8, weight_decay=0.0),
}


def call(params, grads, phases, sqs, steps, h, **kw):
    OP(params, grads, phases, sqs, steps, lr=h["lr"], alpha=h["alpha"], beta=h["beta"],
       sigma=h["sigma"], eps=h["eps"], weight_decay=h["weight_decay"],
       maximize=kw.pop("maximize", False), **kw)


@pytest.mark.parametrize("name", list(HYPER))
def test_float64_matches_authors_step(name):
    h = HYPER[name]
    shapes = [(37,), (5, 13), (1,), (0,), (70000,)]
    params, phases, sqs, steps = make_state(shapes, torch.float64)
    ref = [(p.clone(), None, None) for p in params]
    ab = 1 - h["alpha"] * h["beta"]
    for k in range(100):
        grads = grads_for(params, k)
        call(params, grads, phases, sqs, steps, h)
        new_ref = []
        for (th, psi, sq), g in zip(ref, grads):
            new_ref.append(authors_step(th, psi, sq, g, k + 1, lr=h["lr"], alpha=h["alpha"],
                                        beta=h["beta"], sigma=h["sigma"], eps=h["eps"],
                                        wd=h["weight_decay"]))
        ref = new_ref
    for p, w, sq, st, (th, psi, rsq) in zip(params, phases, sqs, steps, ref):
        assert st.item() == 100
        torch.testing.assert_close(p, th, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ab * p + h["beta"] * w, psi, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(sq, rsq, rtol=1e-12, atol=1e-300)


def test_float32_close_to_float64():
    h = HYPER["defaults"]
    shapes = [(1000,), (33, 3)]
    p64, w64, s64, st64 = make_state(shapes, torch.float64)
    p32 = [p.float() for p in p64]
    _, w32, s32, st32 = make_state(shapes, torch.float32)
    for k in range(50):
        g64 = grads_for(p64, k)
        call(p64, g64, w64, s64, st64, h)
        call(p32, [g.float() for g in g64], w32, s32, st32, h)
    for a, b in zip(p32, p64):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    for a, b in zip(s32, s64):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("phase_dtype", [torch.float32, torch.bfloat16])
def test_bf16_params_stochastic_rounding(phase_dtype):
    h = dict(HYPER["defaults"], lr=1e-4)
    shapes = [(4099,)]
    pref, wref, sref, stref = make_state(shapes, torch.float32)
    pb = [p.bfloat16() for p in pref]
    pref = [p.bfloat16().float() for p in pref]
    _, wb, sb, stb = make_state(shapes, torch.bfloat16, phase_dtype=phase_dtype)
    start = pb[0].clone()
    for k in range(20):
        g = grads_for(pref, k)
        call(pref, g, wref, sref, stref, h)
        call(pb, [x.bfloat16() for x in g], wb, sb, stb, h, seed=3)
    assert sb[0].dtype == wb[0].dtype == phase_dtype
    # SR keeps θ moving although each step is far below half an ulp of bf16.
    assert (pb[0] != start).float().mean() > 0.2
    moved_ref = (pref[0] - start.float())
    moved = (pb[0].float() - start.float())
    err = (moved - moved_ref).double()
    # unbiased: the rounding errors average out (5 standard errors)
    assert err.mean().abs() < 5 * err.std() / math.sqrt(err.numel())
    # Same seed, same bits: deterministic.
    pb2 = [start.clone()]
    _, wb2, sb2, stb2 = make_state(shapes, torch.bfloat16, phase_dtype=phase_dtype)
    for k in range(20):
        g = grads_for(pref, k)
        call(pb2, [x.bfloat16() for x in g], wb2, sb2, stb2, h, seed=3)
    assert torch.equal(pb2[0], pb[0]) and torch.equal(wb2[0], wb[0]) and torch.equal(sb2[0], sb[0])


def test_maximize_grad_scale_found_inf_and_tensor_lr():
    h = HYPER["defaults"]
    shapes = [(300,)]
    pa, wa, sa, sta = make_state(shapes, torch.float32)
    pb, wb, sb, stb = [p.clone() for p in pa], [w.clone() for w in wa], [s.clone() for s in sa], \
        [s.clone() for s in sta]
    g = grads_for(pa, 0)
    call(pa, [-x for x in g], wa, sa, sta, h)
    call(pb, [x * 4 for x in g], wb, sb, stb, h, maximize=True,
         grad_scale=torch.tensor([4.0]), found_inf=torch.tensor([0.0]))
    assert torch.equal(pa[0], pb[0]) and torch.equal(wa[0], wb[0]) and torch.equal(sa[0], sb[0])
    before = [pb[0].clone(), wb[0].clone(), sb[0].clone()]
    call(pb, g, wb, sb, stb, h, found_inf=torch.tensor([1.0]))
    assert stb[0].item() == 1
    assert torch.equal(pb[0], before[0]) and torch.equal(wb[0], before[1])
    # tensor lr overload
    torch.ops.inna_fused.fused_innaprop_.tensor_lr(
        pa, g, wa, sa, sta, lr=torch.tensor(h["lr"], dtype=torch.float64), alpha=h["alpha"], beta=h["beta"],
        sigma=h["sigma"], eps=h["eps"], weight_decay=h["weight_decay"], maximize=False)
    call(pb, g, wb, sb, stb, h)
    assert torch.equal(pa[0], pb[0]) and torch.equal(wa[0], wb[0])


@pytest.mark.parametrize("bad, match", [
    (dict(sigma=1.0), "sigma"),
    (dict(lr=0.9), "lr"),
    (dict(lr=1.0), "lr"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(alpha=0.0), "alpha"),
    (dict(beta=float("nan")), "beta"),
    ("sq_dtype", "exp_avg_sqs"),
    ("sq_len", "exp_avg_sqs"),
    ("sq_shape", "exp_avg_sqs"),
    ("sq_alias", "overlap"),
])
def test_bad_input_raises_and_changes_nothing(bad, match):
    h = dict(HYPER["defaults"])
    params, phases, sqs, steps = make_state([(10,), (20,)], torch.float32)
    params += [torch.ones(3)]
    phases += [torch.zeros(3)]
    steps += [torch.zeros(())]
    sqs += [torch.zeros(3, dtype=torch.float64) if bad == "sq_dtype" else torch.zeros(3)]
    if bad == "sq_len":
        sqs = sqs[:2]
    if bad == "sq_shape":
        sqs[2] = torch.zeros(4)
    if bad == "sq_alias":
        sqs[2] = phases[2]
    if isinstance(bad, dict):
        h.update(bad)
    grads = grads_for(params, 0)
    snap = [t.clone() for t in params + steps]
    with pytest.raises(ValueError if bad != "sq_dtype" else TypeError, match=match):
        call(params, grads, phases, sqs, steps, h)
    for a, b in zip(params + steps, snap):
        assert torch.equal(a, b)


def test_lr_tensor_must_be_below_beta():
    params, phases, sqs, steps = make_state([(10,)], torch.float32)
    with pytest.raises(ValueError, match="lr"):
        torch.ops.inna_fused.fused_innaprop_.tensor_lr(
            params, grads_for(params, 0), phases, sqs, steps, lr=torch.tensor(0.95), alpha=0.1,
            beta=0.9, sigma=0.999, eps=1e-8, weight_decay=0.0, maximize=False)
    assert steps[0].item() == 0


def _run(dtype, phase_dtype, threads, shapes, steps_n=3):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        params, phases, sqs, steps = make_state(shapes, dtype, phase_dtype=phase_dtype)
        for k in range(steps_n):
            call(params, grads_for(params, k), phases, sqs, steps, HYPER["defaults"], seed=5)
    finally:
        torch.set_num_threads(old)
    return params + phases + sqs


@pytest.mark.parametrize("dtype, phase_dtype", [(torch.float32, None), (torch.float64, None),
                                                (torch.bfloat16, torch.bfloat16),
                                                (torch.float16, None)])
def test_thread_count_independent(dtype, phase_dtype):
    shapes = [(40000,), (3,), (50001,), (17, 31)]
    one = _run(dtype, phase_dtype, 1, shapes)
    many = _run(dtype, phase_dtype, max(2, torch.get_num_threads()), shapes)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bf16_exp_avg_sq_rounds_with_its_documented_bits(dtype, threads):
    """A bfloat16 exp_avg_sq rounds g² (σ = 0: v = g², exact in float32, not in bfloat16) with
    inna_fused.rounding.sq_random_bits: θ's unused half of the element's word for float32 params,
    a word of its own for bfloat16 ones (whose θ takes that half); with 2 threads the work split
    starts a span mid-tensor (element 65536 − 40003 of the third)."""
    from inna_fused import rounding
    shapes = [(40000,), (3,), (50001,)]
    gen = torch.Generator().manual_seed(11)
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen).bfloat16().to(dtype) for s in shapes]
    phases = [torch.zeros(s, dtype=torch.bfloat16) for s in shapes]
    sqs = [torch.zeros(s, dtype=torch.bfloat16) for s in shapes]
    steps = [torch.zeros(()) for _ in shapes]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        call(params, grads, phases, sqs, steps, dict(HYPER["defaults"], sigma=0.0), seed=9)
    finally:
        torch.set_num_threads(old)
    moved = 0
    for g, v in zip(grads, sqs):
        square = g.float() * g.float()
        key = rounding.rounding_key(9, 0, g.numel())
        bits = rounding.sq_random_bits(key, torch.arange(g.numel()), dtype == torch.bfloat16)
        assert torch.equal(v, rounding.round_stochastic(square, torch.bfloat16, bits))
        moved += int((v != square.bfloat16()).sum())
    assert moved > 1000  # rounded away from the nearest value often: the bits matter


def test_non_contiguous_entries_written_back():
    h = HYPER["defaults"]
    base = torch.randn(8, 6, dtype=torch.float64)
    p = base.t()  # non-contiguous
    w = torch.zeros(6, 8, dtype=torch.float64)
    s = torch.zeros(6, 8, dtype=torch.float64)
    st = [torch.zeros(())]
    ref_p, ref_w, ref_s = p.contiguous(), w.clone(), s.clone()
    ref_st = [torch.zeros(())]
    g = torch.randn(6, 8, dtype=torch.float64)
    call([p], [g], [w], [s], st, h)
    call([ref_p], [g], [ref_w], [ref_s], ref_st, h)
    assert torch.equal(p, ref_p) and torch.equal(w, ref_w) and torch.equal(s, ref_s)


def _emulated_op():
    try:
        importlib.import_module("inna_fused._C_testing")
    except ImportError:
        return None
    return getattr(torch.ops.inna_fused, "_emulated_cuda_innaprop_launch_", None)


@requires_fma_cpu_kernel  # a baseline (no FMA) CPU kernel rounds its multiply-adds twice
@pytest.mark.parametrize("dtype, phase_dtype", [(torch.float32, None), (torch.float64, None),
                                                (torch.bfloat16, torch.bfloat16),
                                                (torch.float32, torch.bfloat16),
                                                (torch.float64, torch.bfloat16),
                                                (torch.bfloat16, None), (torch.float16, None)])
@pytest.mark.parametrize("name", ["defaults", "no_decay"])
@pytest.mark.parametrize("large_metadata", [True, False])
def test_emulated_cuda_matches_cpu_bitwise(dtype, phase_dtype, name, large_metadata):
    emu = _emulated_op()
    if emu is None:
        pytest.skip("test-only extension without _emulated_cuda_innaprop_launch_")
    h = HYPER[name]
    # > 72 entries: several launches at Depth 4 with the small metadata; one of 2 chunks
    shapes = [(65536 + 37,), (5,), (0,), (1000,), (3, 7)] + [(9 + i,) for i in range(80)]
    a = make_state(shapes, dtype, phase_dtype=phase_dtype)
    # an odd-offset view takes the functor's scalar path
    a[0][3] = torch.zeros(1001, dtype=dtype)[1:].copy_(a[0][3])
    b = [[t.clone() for t in lst] for lst in a]
    b[0][3] = torch.zeros(1001, dtype=dtype)[1:].copy_(a[0][3])
    stats = []
    for k in range(3):
        grads = grads_for(a[0], k)
        call(a[0], grads, a[1], a[2], a[3], h, seed=11, grad_scale=torch.tensor([2.0]))
        stats.append(emu(b[0], grads, b[1], b[2], b[3], lr=h["lr"], alpha=h["alpha"],
                         beta=h["beta"], sigma=h["sigma"], eps=h["eps"],
                         weight_decay=h["weight_decay"], maximize=False, seed=11,
                         grad_scale=torch.tensor([2.0]), large_metadata=large_metadata))
    main_launches, large_launches, step_launches, blocks, _, vector_blocks, scalar_blocks, _ = \
        stats[-1]
    assert main_launches == (1 if large_metadata else 2)
    assert scalar_blocks >= 1 and vector_blocks >= 1
    assert all(s.item() == 3 for s in b[3])
    for la, lb in zip(a, b):
        for x, y in zip(la, lb):
            assert torch.equal(x, y) or (x.isnan().all() and y.isnan().all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype, phase_dtype", [(torch.float32, None), (torch.float64, None),
                                                (torch.bfloat16, torch.bfloat16),
                                                (torch.float32, torch.bfloat16),
                                                (torch.float16, None)])
def test_cuda_matches_cpu_bitwise(dtype, phase_dtype):
    h = HYPER["defaults"]
    shapes = [(65536 * 3 + 5,), (7,), (0,), (129, 3)]
    a = make_state(shapes, dtype, phase_dtype=phase_dtype)
    b = [[t.cuda() for t in lst] for lst in a]
    for k in range(3):
        grads = grads_for(a[0], k)
        call(a[0], grads, a[1], a[2], a[3], h, seed=2)
        call(b[0], [g.cuda() for g in grads], b[1], b[2], b[3], h, seed=2)
    for la, lb in zip(a, b):
        for x, y in zip(la, lb):
            assert torch.equal(x, y.cpu())
