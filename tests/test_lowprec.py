"""Low precision: the phase state, bfloat16 state, and deterministic stochastic rounding (SR).

- The Python re-implementation of the kernels' hash and rounding (inna_fused.rounding) draws the
  same bits: with inputs chosen so that every float32 value before a 16-bit store is exact
  (power-of-two lr and β, dyadic θ and gradients), fused, foreach and loop agree bit for bit.
- SR is unbiased; bfloat16 state costs 2 bytes per element; runs resume and repeat bit for bit.
- Checkpoints in the paper's ψ format load and continue; psi_state_dict() writes that format.
- The phase form drifts far less from the float64 trajectory than the literal eq. (12), and
  bfloat16 params train as well as float32 ones.
"""
import io
import pickle

import pytest
import torch

from inna_fused import INNA, phase_to_psi, psi_to_phase
from inna_fused import rounding
from inna_fused.functional import inna
from inna_fused._contract import default_phase_dtype
from inna_fused.reference import inna_reference_

from conftest import DTYPE_IDS, impl_kwargs, impl_params, requires_cpu_kernel

SIXTEEN_BIT = [torch.bfloat16, torch.float16]

# ------------------------------------------------------------------------------------------------
# The hash

def mix32_python(x):
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_splitmix64_first_output_of_seed_zero():
    # The published first output of SplitMix64 seeded with 0.
    assert rounding.splitmix64(0) == 0xE220A8397B1DCDAF


def test_mix32_in_int64_tensors_equals_unsigned_32_bit_arithmetic():
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 2**32, (5000,), generator=gen, dtype=torch.int64)
    values = torch.cat([values, torch.tensor([0, 1, 2**16 - 1, 2**31, 2**32 - 1])])
    got = rounding.mix32(values).tolist()
    assert got == [mix32_python(v) for v in values.tolist()]


def test_random_bits_use_both_halves_of_index_and_key():
    key = rounding.rounding_key(seed=3, step=7, numel=10)
    index = torch.tensor([5, 5 + 2**32], dtype=torch.int64)
    low, high = rounding.random_bits(key, index).tolist()
    assert low != high
    for i, bits in ((5, low), (5 + 2**32, high)):
        salt = (key & 0xFFFFFFFF) ^ mix32_python((i >> 32) ^ (key >> 32))
        assert bits == mix32_python((i & 0xFFFFFFFF) ^ salt)
    assert rounding.theta_bits(torch.tensor([0xABCD1234])).item() == 0xABCD
    assert rounding.phase_bits(torch.tensor([0xABCD1234])).item() == 0x1234


def test_sq_random_bits_reuse_thetas_half_or_draw_a_word_of_their_own():
    key = rounding.rounding_key(seed=3, step=7, numel=10)
    sq_key = rounding.sq_rounding_key(key)
    assert sq_key == rounding.splitmix64(key ^ 0xD1B54A32D192ED03)
    index = torch.tensor([10, 11, 2**33 + 4], dtype=torch.int64)
    words = rounding.random_bits(key, index)
    # θ not rounded (float32/float64 params): the high half θ leaves unused.
    assert torch.equal(rounding.sq_random_bits(key, index, False), words >> 16)
    assert torch.equal(rounding.sq_random_bits(key, index, False, words), words >> 16)
    # θ rounded (16-bit params): the high half of a word under the exp_avg_sq key.
    own = rounding.sq_random_bits(key, index, True)
    assert torch.equal(own, rounding.random_bits(sq_key, index) >> 16)
    assert not torch.equal(own, words >> 16) and not torch.equal(own, words & 0xFFFF)


# ------------------------------------------------------------------------------------------------
# The rounding functions

def neighbours(x, dtype):
    """The two `dtype` values around float32 x: below ≤ x ≤ above."""
    nearest = x.to(dtype)
    down = torch.nextafter(nearest, torch.full_like(nearest, -float("inf")))
    up = torch.nextafter(nearest, torch.full_like(nearest, float("inf")))
    below = torch.where(nearest.float() > x, down, nearest)
    above = torch.where(nearest.float() < x, up, nearest)
    return below.float(), above.float()


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=DTYPE_IDS.get)
def test_stochastic_rounding_picks_a_neighbour_and_keeps_exact_values(dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20000, generator=gen) * torch.logspace(-6, 4, 20000)
    x[:100] = x[:100].to(dtype).float()  # exactly representable: must not move
    r16 = rounding.theta_bits(rounding.random_bits(12345, torch.arange(x.numel())))
    rounded = rounding.round_stochastic(x, dtype, r16).float()
    assert torch.equal(rounded[:100], x[:100])
    lo, hi = neighbours(x, dtype)
    assert bool(((rounded == lo) | (rounded == hi)).all())
    assert bool((rounded != x.to(dtype).float()).any())  # sometimes not the nearest


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=DTYPE_IDS.get)
def test_stochastic_rounding_of_special_values_is_round_to_nearest(dtype):
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1e6, -7e4])
    rounded = rounding.round_stochastic(x, dtype, torch.arange(x.numel()) * 9000)
    assert torch.equal(rounded.isnan(), x.to(dtype).isnan())
    finite = ~x.isnan()
    assert torch.equal(rounded[finite], x[finite].to(dtype))


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("fraction", [0.03, 0.3, 0.5, 0.9])
def test_stochastic_rounding_is_unbiased(dtype, fraction):
    n = 1 << 15
    for base in (1.0, -3.0, 2.0**-20):  # normal values and (for float16) subnormals
        base_t = torch.tensor(base).to(dtype)
        up = torch.nextafter(base_t, torch.tensor(1e4).to(dtype) * (1 if base > 0 else -1))
        ulp = (up.float() - base_t.float()).abs().item()
        x = torch.full((n,), base_t.float().item() + (1 if base > 0 else -1) * fraction * ulp)
        key = rounding.rounding_key(seed=0, step=1, numel=n)
        for r16 in (rounding.theta_bits, rounding.phase_bits):
            bits = r16(rounding.random_bits(key, torch.arange(n)))
            rounded = rounding.round_stochastic(x, dtype, bits).double()
            standard_error = ulp * (fraction * (1 - fraction) / n) ** 0.5
            assert abs(rounded.mean().item() - x[0].item()) < 5 * standard_error, (base, fraction)


@pytest.mark.parametrize("impl", impl_params())
def test_tiny_updates_move_bf16_params_on_average_only_with_stochastic_rounding(impl):
    """A step of a tenth of an ulp: round to nearest freezes θ, SR moves it by the right mean."""
    n = 1 << 14
    delta = 0.1 * 2.0**-7  # θ = 1, ulp 2^-7
    results = {}
    for sr in (False, True):
        p = torch.ones(n, dtype=torch.bfloat16, requires_grad=True)
        opt = INNA([p], lr=1.0, alpha=0.5, beta=1.0, psi_init="zero", stochastic_rounding=sr,
                   **impl_kwargs(impl))
        p.grad = torch.full((n,), delta, dtype=torch.bfloat16)  # step 1: θ −= γβv
        opt.step()
        results[sr] = p.detach().double()
    assert bool((results[False] == 1).all())
    expected = 1 - p.grad.double()[0].item()
    ulp = 2.0**-8  # just below 1 the bf16 spacing is 2^-8
    p_down = (1 - expected) / ulp
    standard_error = ulp * (p_down * (1 - p_down) / n) ** 0.5
    assert abs(results[True].mean().item() - expected) < 5 * standard_error


# ------------------------------------------------------------------------------------------------
# Same bits everywhere: fused == foreach == loop, bitwise, with SR on

EXACT_HYPER = {
    "plain": dict(),
    "coupled-wd": dict(weight_decay=0.25),
    "decoupled-wd": dict(weight_decay=0.25, decoupled_weight_decay=True),
    "zero-init-maximize": dict(psi_init="zero", maximize=True),
}


def dyadic(shape, gen, dtype, denominator):
    return (torch.randint(-64, 65, shape, generator=gen).double() / denominator).to(dtype)


def exact_run(impl, dtype, state_dtype, hyper, seed=5, steps=4, stochastic_rounding=True):
    """Power-of-two lr and β, dyadic θ and grads: every float32 value before a 16-bit store is
    exact, so the implementations must agree to the bit. One transposed param with a matching
    grad (walked in memory order) and one with a contiguous grad (walked in row-major order)."""
    gen = torch.Generator().manual_seed(0)
    params = [dyadic((37, 5), gen, dtype, 32), dyadic((3, 130), gen, dtype, 32),
              dyadic((6, 4), gen, dtype, 32).t(), dyadic((8, 3), gen, dtype, 32).t()]
    # empty_like keeps a transposed param's strides: the phase is walked with its param
    phases = [torch.empty_like(p, dtype=state_dtype or default_phase_dtype(dtype)) for p in params]
    steps_t = [torch.zeros(()) for _ in params]
    for _ in range(steps):
        grads = [dyadic(p.shape, gen, dtype, 16) for p in params]
        grads[2] = dyadic(params[2].t().shape, gen, dtype, 16).t()  # same strides as its param
        inna(params, grads, phases, steps_t, lr=2.0**-4, alpha=0.5, beta=2.0**-2, impl=impl,
             stochastic_rounding=stochastic_rounding, seed=seed, **hyper)
    return params, phases


@requires_cpu_kernel
@pytest.mark.parametrize("case", list(EXACT_HYPER))
@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16], ids=["f32-state", "bf16-state"])
@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=DTYPE_IDS.get)
def test_python_rounding_bits_equal_the_kernels(dtype, state_dtype, case):
    fused = exact_run("fused", dtype, state_dtype, EXACT_HYPER[case])
    for impl in ("foreach", "loop"):
        other = exact_run(impl, dtype, state_dtype, EXACT_HYPER[case])
        for i, (a, b) in enumerate(zip(fused[0] + fused[1], other[0] + other[1])):
            assert torch.equal(a, b), f"{impl}: tensor {i} differs from the fused kernel's"
    # The bits matter: round to nearest or another seed gives other values.
    nearest = exact_run("fused", dtype, state_dtype, EXACT_HYPER[case], stochastic_rounding=False)
    reseeded = exact_run("fused", dtype, state_dtype, EXACT_HYPER[case], seed=6)
    assert not all(torch.equal(a, b) for a, b in zip(fused[0], nearest[0]))
    assert not all(torch.equal(a, b) for a, b in zip(fused[0], reseeded[0]))


@requires_cpu_kernel
def test_one_call_with_several_param_and_phase_dtypes_groups_them():
    """Grouping by (device, param dtype, phase dtype): each group gets the result it would get
    alone, on every implementation."""
    def lists():
        gen = torch.Generator().manual_seed(4)
        dtypes = [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                  (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
                  (torch.float64, torch.bfloat16), (torch.float64, torch.float64)]
        params = [dyadic((40,), gen, d, 32) for d, _ in dtypes]
        phases = [torch.empty(40, dtype=s) for _, s in dtypes]
        return params, phases, [dyadic((40,), gen, d, 16) for d, _ in dtypes]

    hyper = dict(lr=2.0**-4, alpha=0.5, beta=2.0**-2, seed=3)
    for impl in ("fused", "foreach", "loop"):
        params, phases, grads = lists()
        inna(params, grads, phases, [torch.zeros(()) for _ in params], impl=impl, **hyper)
        alone_params, alone_phases, alone_grads = lists()
        for p, s, g in zip(alone_params, alone_phases, alone_grads):
            inna([p], [g], [s], [torch.zeros(())], impl="fused", **hyper)
        for i in range(len(params)):
            assert torch.equal(params[i], alone_params[i]), f"{impl}: param {i}"
            assert torch.equal(phases[i], alone_phases[i]), f"{impl}: phase {i}"


@pytest.mark.parametrize("impl", impl_params())
def test_param_groups_may_have_different_state_dtypes(impl):
    a = torch.randn(10, requires_grad=True)
    b = torch.randn(10, requires_grad=True)
    opt = INNA([{"params": [a]}, {"params": [b], "state_dtype": torch.bfloat16}], lr=0.1,
               **impl_kwargs(impl))
    a.grad, b.grad = torch.ones(10), torch.ones(10)
    opt.step()
    assert opt.state[a]["phase"].dtype == torch.float32
    assert opt.state[b]["phase"].dtype == torch.bfloat16


@requires_cpu_kernel
@pytest.mark.parametrize("threads", [2, 3])
def test_fused_and_foreach_are_independent_of_the_thread_count(threads):
    sizes = [(1 << 15) + 3, 1, 77, 2 * (1 << 15) + 1]

    def run(impl, thread_count):
        gen = torch.Generator().manual_seed(2)
        params = [torch.randn(n, generator=gen).to(torch.bfloat16) for n in sizes]
        phases = [torch.empty(n, dtype=torch.bfloat16) for n in sizes]
        steps = [torch.zeros(()) for _ in sizes]
        saved = torch.get_num_threads()
        torch.set_num_threads(thread_count)
        try:
            for _ in range(3):
                grads = [torch.randn(n, generator=gen).to(torch.bfloat16) for n in sizes]
                inna(params, grads, phases, steps, lr=0.01, alpha=0.5, beta=0.1,
                     weight_decay=0.01, impl=impl, seed=11)
        finally:
            torch.set_num_threads(saved)
        return params + phases

    for impl in ("fused", "foreach"):
        baseline, result = run(impl, 1), run(impl, threads)
        for i, (a, b) in enumerate(zip(result, baseline)):
            assert torch.equal(a, b), f"{impl}: tensor {i} differs with {threads} threads"


# ------------------------------------------------------------------------------------------------
# state_dtype

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=DTYPE_IDS.get)
def test_bf16_state_costs_two_bytes_per_element(dtype):
    params = [torch.randn(n, dtype=dtype, requires_grad=True) for n in (1000, 37, 4096)]
    opt = INNA(params, lr=0.01, state_dtype=torch.bfloat16)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    state_bytes = sum(opt.state[p]["phase"].untyped_storage().nbytes() for p in params)
    assert state_bytes == 2 * sum(p.numel() for p in params)
    assert all(opt.state[p]["phase"].dtype == torch.bfloat16 for p in params)
    assert opt.state_dict()["param_groups"][0]["state_dtype"] == torch.bfloat16


@pytest.mark.parametrize("param_dtype,state_dtype", [
    (torch.float32, torch.float16), (torch.float32, torch.float64), (torch.bfloat16, torch.float64),
    (torch.float64, torch.float32), (torch.float32, "bfloat16"), (torch.float32, torch.int8),
])
def test_bad_state_dtype_raises_and_changes_nothing(param_dtype, state_dtype):
    p = torch.zeros(3, dtype=param_dtype, requires_grad=True)
    with pytest.raises(ValueError, match=r"state_dtype.*" + str(state_dtype).replace(".", r"\.")):
        INNA([p], state_dtype=state_dtype)
    q = torch.zeros(3, requires_grad=True)
    opt = INNA([q], lr=0.1)
    groups_before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match="state_dtype"):
        opt.add_param_group({"params": [p], "state_dtype": state_dtype})
    assert opt.param_groups == groups_before


def test_state_dtype_of_complex_params_must_be_default():
    z = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match="complex"):
        INNA([z], state_dtype=torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_bad_seed_or_rounding_flag_raise(dtype):
    p = torch.zeros(3, dtype=dtype, requires_grad=True)
    with pytest.raises(ValueError, match="seed"):
        INNA([p], seed=2**63)
    with pytest.raises(ValueError, match="seed"):
        INNA([p], seed=1.5)
    with pytest.raises(TypeError, match="stochastic_rounding"):
        INNA([p], stochastic_rounding="yes")


# ------------------------------------------------------------------------------------------------
# Resumption with SR and bfloat16 state

def lowprec_train(impl, steps, first=0, params=None, state_dict=None):
    gen_init = torch.Generator().manual_seed(9)
    init = [torch.randn(n, generator=gen_init).to(torch.bfloat16) for n in (300, 7, 1 << 15)]
    params = [torch.nn.Parameter((params or init)[i].clone()) for i in range(len(init))]
    opt = INNA(params, lr=0.02, weight_decay=0.01, decoupled_weight_decay=True,
               state_dtype=torch.bfloat16, seed=1234, **impl_kwargs(impl))
    if state_dict is not None:
        opt.load_state_dict(state_dict)
    for k in range(first, steps):
        gen = torch.Generator().manual_seed(500 + k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(torch.bfloat16)
        opt.step()
    return params, opt


def through_file(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("impl", impl_params())
def test_resume_with_sr_and_bf16_state_is_bitwise(impl):
    straight, straight_opt = lowprec_train(impl, 6)
    half, half_opt = lowprec_train(impl, 3)
    resumed, resumed_opt = lowprec_train(impl, 6, first=3, params=[p.detach() for p in half],
                                         state_dict=through_file(half_opt.state_dict()))
    for i, (a, b) in enumerate(zip(resumed, straight)):
        assert torch.equal(a.detach(), b.detach()), f"param {i}"
        sa, sb = resumed_opt.state[a], straight_opt.state[b]
        assert sa["phase"].dtype == torch.bfloat16
        assert torch.equal(sa["phase"], sb["phase"]), f"phase {i}"
        assert float(sa["step"]) == float(sb["step"]) == 6


# ------------------------------------------------------------------------------------------------
# ψ checkpoints

def psi_oracle(theta, psi, grads_of, ks, hyper):
    for k in ks:
        for t, s, g in zip(theta, psi, grads_of(k)):
            inna_reference_(t, s, g, k, **hyper)


def grads_float64(k):
    gen = torch.Generator().manual_seed(40 + k)
    return [torch.randn(n, generator=gen, dtype=torch.float64) for n in (50, 9)]


@pytest.mark.parametrize("impl", impl_params())
def test_psi_checkpoint_from_the_oracle_loads_and_continues(impl):
    hyper = dict(lr=0.05, alpha=0.7, beta=0.2, decay_power=0.25, weight_decay=0.02)
    group = dict(lr=0.05, alpha=0.7, beta=0.2, decaypower=0.25, weight_decay=0.02)
    gen = torch.Generator().manual_seed(3)
    theta = [torch.randn(n, generator=gen, dtype=torch.float64) for n in (50, 9)]
    psi = [torch.empty_like(t) for t in theta]
    psi_oracle(theta, psi, grads_float64, range(3), hyper)
    old_format = {"state": {i: {"psi": s.clone(), "step": 3} for i, s in enumerate(psi)},
                  "param_groups": [dict(group, params=[0, 1])]}

    params = [torch.nn.Parameter(t.clone()) for t in theta]
    opt = INNA(params, **impl_kwargs(impl))
    opt.load_state_dict(through_file(old_format))
    assert all("psi" not in opt.state[p] and opt.state[p]["phase"].dtype == torch.float64
               for p in params)
    psi_oracle(theta, psi, grads_float64, range(3, 7), hyper)
    for k in range(3, 7):
        for p, g in zip(params, grads_float64(k)):
            p.grad = g
        opt.step()
    for i, (p, t, s) in enumerate(zip(params, theta, psi)):
        torch.testing.assert_close(p.detach(), t, rtol=1e-12, atol=1e-12, msg=f"param {i}")
        ours_psi = phase_to_psi(p, opt.state[p]["phase"], 0.7, 0.2)
        torch.testing.assert_close(ours_psi, s, rtol=1e-12, atol=1e-12, msg=f"psi {i}")


def test_psi_checkpoint_loads_into_a_bf16_state_optimizer():
    theta = torch.randn(64)
    psi = (1 - 0.05) * theta + 0.01 * torch.randn(64)
    p = torch.nn.Parameter(theta.clone())
    opt = INNA([p], lr=0.1, state_dtype=torch.bfloat16)
    old_format = {"state": {0: {"psi": psi, "step": 5}},
                  "param_groups": [dict(lr=0.1, alpha=0.5, beta=0.1, decaypower=0.0,
                                        weight_decay=0.0, params=[0])]}
    opt.load_state_dict(old_format)
    phase = opt.state[p]["phase"]
    assert phase.dtype == torch.bfloat16
    assert opt.param_groups[0]["state_dtype"] == torch.bfloat16  # the loader's choice is kept
    torch.testing.assert_close(phase, psi_to_phase(theta, psi, 0.5, 0.1, dtype=torch.bfloat16),
                               rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=DTYPE_IDS.get)
def test_psi_state_dict_round_trip(dtype):
    params = [torch.nn.Parameter(torch.randn(n, dtype=dtype)) for n in (40, 3)]
    opt = INNA(params, lr=0.05, alpha=0.6, beta=0.3)
    for k in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    saved = opt.psi_state_dict()
    assert all(set(st) == {"psi", "step"} for st in saved["state"].values())
    assert all("phase" in opt.state[p] for p in params)  # the optimizer's own state is untouched
    for i, p in enumerate(params):
        psi = saved["state"][i]["psi"]
        assert psi.dtype == default_phase_dtype(dtype)
        expected = phase_to_psi(p, opt.state[p]["phase"], 0.6, 0.3, dtype=torch.float64)
        torch.testing.assert_close(psi.double(), expected, rtol=torch.finfo(dtype).eps, atol=0)

    fresh = INNA(params, lr=0.05, alpha=0.6, beta=0.3)
    fresh.load_state_dict(through_file(saved))
    for p in params:
        # ψ stored in the param's precision holds θ-sized values: the phase comes back to within
        # that precision times |θ|/β.
        tol = 4 * torch.finfo(dtype).eps * (p.detach().abs().max().item() + 1) / 0.3
        torch.testing.assert_close(fresh.state[p]["phase"], opt.state[p]["phase"], rtol=0,
                                   atol=tol)


def test_optimizer_pickled_with_psi_state_steps_like_the_oracle():
    """An INNA object pickled by an earlier version holds ψ; unpickling converts it."""
    theta = torch.randn(20, dtype=torch.float64)
    psi = torch.empty_like(theta)
    p = torch.nn.Parameter(theta.clone())
    opt = INNA([p], lr=0.05, fused=False, foreach=False)
    grad = torch.randn(20, dtype=torch.float64)
    inna_reference_(theta, psi, grad, 0, lr=0.05, alpha=0.5, beta=0.1)
    with torch.no_grad():
        p.copy_(theta)
    opt.state[p] = {"psi": psi.clone(), "step": 1}  # the earlier version's state
    restored = pickle.loads(pickle.dumps(opt))
    restored_p = restored.param_groups[0]["params"][0]
    restored_p.grad = grad
    restored.step()
    inna_reference_(theta, psi, grad, 1, lr=0.05, alpha=0.5, beta=0.1)
    torch.testing.assert_close(restored_p.detach(), theta, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(phase_to_psi(restored_p, restored.state[restored_p]["phase"],
                                            0.5, 0.1), psi, rtol=1e-12, atol=1e-12)


def test_conversions_invert_each_other_in_float64():
    theta = torch.randn(100, dtype=torch.float64)
    psi = torch.randn(100, dtype=torch.float64)
    phase = psi_to_phase(theta, psi, 0.5, 0.1)
    assert phase.dtype == torch.float64
    torch.testing.assert_close(phase_to_psi(theta, phase, 0.5, 0.1), psi, rtol=1e-14, atol=1e-14)
    assert psi_to_phase(theta.float(), psi.float(), 0.5, 0.1).dtype == torch.float32
    assert psi_to_phase(theta, psi, 0.5, 0.1, dtype=torch.bfloat16).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------
# Accuracy on a least-squares problem

# 1000 steps rather than the 3000 of the acceptance criterion, to keep the test at a few seconds:
# the ratio of the drifts is already ~20 there (the literal form's drift keeps growing with steps).
LSQ_STEPS = 1000
LSQ_HYPER = dict(lr=0.1, alpha=0.5, beta=0.1)


def least_squares():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(512, 256, generator=gen, dtype=torch.float64) / 16
    x_star = torch.randn(256, generator=gen, dtype=torch.float64)
    y = a @ x_star + 0.01 * torch.randn(512, generator=gen, dtype=torch.float64)
    return a, y


def lsq_grad(a, y, theta, k):
    rows = slice(64 * (k % 8), 64 * (k % 8 + 1))
    a_batch, y_batch = a[rows], y[rows]
    return a_batch.t() @ (a_batch @ theta - y_batch) / 64


def lsq_run_ours(dtype, steps=LSQ_STEPS, **kwargs):
    """INNA on params of `dtype`; gradients evaluated in float32 (float64 for float64 params)
    and handed over in the param dtype."""
    a, y = least_squares()
    work = default_phase_dtype(dtype)
    a, y = a.to(work), y.to(work)
    theta = torch.nn.Parameter(torch.ones(256, dtype=dtype))
    opt = INNA([theta], psi_init="zero", **LSQ_HYPER, **kwargs)
    for k in range(steps):
        theta.grad = lsq_grad(a, y, theta.detach().to(work), k).to(dtype)
        opt.step()
    return theta.detach().double()


def lsq_run_literal(dtype, steps=LSQ_STEPS):
    """The literal eq. (12) (the ψ oracle) in `dtype`."""
    a, y = least_squares()
    a, y = a.to(dtype), y.to(dtype)
    theta, psi = torch.ones(256, dtype=dtype), torch.empty(256, dtype=dtype)
    for k in range(steps):
        inna_reference_(theta, psi, lsq_grad(a, y, theta, k), k, psi_init="zero", **LSQ_HYPER)
    return theta.double()


def lsq_loss(theta):
    a, y = least_squares()
    return 0.5 * (a @ theta - y).square().mean().item()


@requires_cpu_kernel
def test_float32_phase_form_drifts_at_most_a_fifth_of_the_literal_form():
    exact = lsq_run_literal(torch.float64)
    phase_form = lsq_run_ours(torch.float32)
    literal = lsq_run_literal(torch.float32)
    ours_drift = (phase_form - exact).norm().item()
    literal_drift = (literal - exact).norm().item()
    assert ours_drift <= literal_drift / 5, (ours_drift, literal_drift)


@requires_cpu_kernel
def test_bf16_params_with_default_args_train_like_float32():
    start = lsq_loss(torch.ones(256, dtype=torch.float64))
    float32_loss = lsq_loss(lsq_run_ours(torch.float32))
    bf16_loss = lsq_loss(lsq_run_ours(torch.bfloat16))
    assert float32_loss < 0.5 * start  # the problem is really being solved
    assert bf16_loss <= 1.1 * float32_loss, (bf16_loss, float32_loss)
