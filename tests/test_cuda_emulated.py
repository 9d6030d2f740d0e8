"""The CUDA backend's launch logic, run on the CPU (no GPU needed; `pytest -k emulated`).

`torch.ops.inna_fused._emulated_cuda_launch_` packs the lists with the CUDA launcher's host code
(csrc/cuda/multi_tensor_apply.cuh) and runs the kernel's functor (csrc/cuda/inna_functor.cuh) over
an emulated grid; `_cuda_launch_plan` packs sizes only. These test-only ops live in the test-only
extension inna_fused._C_testing (csrc/testing/, built with INNA_FUSED_BUILD_TESTING=1, as
tools/env.sh does), never in inna_fused._C. Results are compared with inna_fused.reference run in
float64 (its ψ converted to the kernels' phase, inna_cuda_helpers.Truth), and, with stochastic
rounding, bit for bit with the CPU kernel.
"""
import importlib
import math
import subprocess
import sys

import pytest
import torch

import inna_fused

from conftest import requires_fma_cpu_kernel
from inna_cuda_helpers import (DTYPE_IDS, HYPER_CASES, Truth, assert_matches, make_grads,
                               make_tensors, opmath_dtype)



def _load_testing_ops():
    """Registers the test-only ops; returns why they are missing, or None."""
    if not inna_fused.kernel_available("cpu"):
        return f"compiled extension not loaded: {inna_fused.load_error()}"
    try:
        importlib.import_module("inna_fused._C_testing")  # its import registers the ops
    except ImportError as e:
        return ("test-only extension inna_fused._C_testing not built (build with "
                f"INNA_FUSED_BUILD_TESTING=1, as tools/env.sh does): {e}")
    return None


_MISSING = _load_testing_ops()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))


def test_users_extension_has_no_test_only_ops():
    """inna_fused._C alone (what users load) registers the op but none of the test-only ops."""
    code = ("import torch, inna_fused\n"
            "assert inna_fused.kernel_available('cpu')\n"
            "ns = torch.ops.inna_fused\n"
            "for name in ('_emulated_cuda_launch_', '_cuda_launch_plan', '_cuda_launch_constants'):\n"
            "    assert not hasattr(ns, name), name\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
STATE_IDS = {"opmath": "opmath-phase", "bf16": "bf16-phase"}
STAT_NAMES = ("main_launches", "large_launches", "step_launches", "blocks", "small_block_launches",
              "vector_blocks", "scalar_blocks", "skipped_blocks")


def constants():
    chunk, small_cap, large_cap, step_cap, block_large, block_small = (
        torch.ops.inna_fused._cuda_launch_constants())
    return dict(chunk=chunk, small_cap=small_cap, large_cap=large_cap, step_cap=step_cap,
                block_large=block_large, block_small=block_small)


def state_dtype_of(param_dtype, state):
    return torch.bfloat16 if state == "bf16" else opmath_dtype(param_dtype)


def emulated_step(params, phases, grads, steps, *, lr, alpha=0.5, beta=0.1, decay_power=0.0,
                  weight_decay=0.0, decoupled_weight_decay=False, psi_init="paper",
                  maximize=False, lr_tensor=None, grad_scale=None, found_inf=None,
                  large_metadata=True, stochastic_rounding=False, seed=0):
    """One emulated step. Stochastic rounding is off unless asked: the agreement tests compare
    with a deterministic reference."""
    stats = torch.ops.inna_fused._emulated_cuda_launch_(
        params, grads, phases, steps, lr=lr, alpha=alpha, beta=beta, decay_power=decay_power,
        weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
        paper_init=psi_init == "paper", maximize=maximize,
        stochastic_rounding=stochastic_rounding, seed=seed, lr_tensor=lr_tensor,
        grad_scale=grad_scale, found_inf=found_inf, large_metadata=large_metadata)
    return dict(zip(STAT_NAMES, stats))


def new_state(params, poison=True, state="opmath"):
    """Phase buffers (NaN: the first step must not read them) and zero step counts."""
    phases = [torch.full_like(p, math.nan if poison else 0.0,
                              dtype=state_dtype_of(p.dtype, state)) for p in params]
    steps = [torch.zeros((), dtype=torch.float32) for _ in params]
    return phases, steps


def run_both(sizes, dtype, n_steps=3, views=None, large_metadata=True, state="opmath", **hyper):
    """n_steps emulated steps and the float64 reference on the same data; returns the emulated
    state, the reference and the statistics of the last emulated call. `views(init)` may build
    the params from the initial values (e.g. as views at odd offsets)."""
    init = make_tensors(sizes, dtype)
    params = views(init) if views else [p.clone() for p in init]
    phases, steps = new_state(params, state=state)
    truth = Truth(init, alpha=hyper.get("alpha", 0.5), beta=hyper.get("beta", 0.1))
    stats = None
    for k in range(n_steps):
        grads = make_grads(init, k)
        stats = emulated_step(params, phases, [g.clone() for g in grads], steps,
                              large_metadata=large_metadata, **hyper)
        truth.step(grads, [k] * len(init), **hyper)
    return params, phases, steps, truth, stats


@pytest.mark.parametrize("state", list(STATE_IDS), ids=STATE_IDS.get)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", list(HYPER_CASES))
def test_emulated_matches_reference(case, dtype, state):
    sizes = [1, 7, 33, 1000, 4099]
    params, phases, steps, truth, stats = run_both(sizes, dtype, state=state, **HYPER_CASES[case])
    assert_matches(params, phases, truth, dtype, what=case)
    assert [s.item() for s in steps] == [3.0] * len(sizes)
    assert stats["main_launches"] == 1 and stats["blocks"] == len(sizes)
    assert stats["vector_blocks"] == len(sizes), "fresh tensors are aligned: 16-byte path"


@pytest.mark.parametrize("state", list(STATE_IDS), ids=STATE_IDS.get)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_emulated_chunk_tails(dtype, state):
    c = constants()["chunk"]
    sizes = [c - 1, c, c + 1, 2 * c + 3, 5, 9]
    params, phases, steps, truth, stats = run_both(
        sizes, dtype, n_steps=2, state=state, lr=0.05, decay_power=0.5)
    assert_matches(params, phases, truth, dtype, what="tails", n_steps=2)
    assert stats["blocks"] == sum(-(-n // c) for n in sizes)
    assert [s.item() for s in steps] == [2.0] * len(sizes)
    # Multi-chunk tensors' steps are advanced by the step launch, the others in their block.
    assert stats["step_launches"] == 1
    assert stats["small_block_launches"] == 0


@pytest.mark.parametrize("state", list(STATE_IDS), ids=STATE_IDS.get)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_emulated_misaligned_views_take_scalar_path(dtype, state):
    """Params at an odd element offset of a buffer are not 16-byte aligned: the whole chunk takes
    the scalar path, and results are the same."""
    c = constants()["chunk"]
    sizes = [1, 31, 1000, c + 17]

    def odd_views(init):
        views = []
        for p in init:
            buf = torch.empty(p.numel() + 1, dtype=p.dtype)
            view = buf[1:1 + p.numel()]
            view.copy_(p)
            views.append(view)
        return views

    params, phases, steps, truth, stats = run_both(
        sizes, dtype, views=odd_views, state=state, lr=0.05, weight_decay=0.01)
    assert all(p.data_ptr() % 16 != 0 for p in params)
    assert_matches(params, phases, truth, dtype, what="misaligned")
    assert stats["scalar_blocks"] == stats["blocks"] == 5
    assert stats["vector_blocks"] == 0


@pytest.mark.parametrize("state", list(STATE_IDS), ids=STATE_IDS.get)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=DTYPE_IDS.get)
def test_emulated_aligned_views_at_16_byte_offsets_take_vector_path(dtype, state):
    elems_per_16_bytes = 16 // torch.empty((), dtype=dtype).element_size()

    def shifted_views(init):
        out = []
        for p in init:
            buf = torch.empty(p.numel() + elems_per_16_bytes, dtype=p.dtype)
            view = buf[elems_per_16_bytes:]
            view.copy_(p)
            out.append(view)
        return out

    params, phases, steps, truth, stats = run_both(
        [13, 4096 + 3], dtype, views=shifted_views, state=state, lr=0.05)
    assert_matches(params, phases, truth, dtype, what="16-byte offset")
    assert stats["vector_blocks"] == stats["blocks"] == 2


def test_emulated_misaligned_grad_only():
    """One misaligned stream (the grad) is enough to leave the vector path."""
    init = make_tensors([4096], torch.float32)
    params = [p.clone() for p in init]
    phases, steps = new_state(params)
    grad_buf = torch.empty(4097)
    grad = grad_buf[1:]
    grad.copy_(make_grads(init, 0)[0])
    stats = emulated_step(params, phases, [grad], steps, lr=0.05)
    truth = Truth(init)
    truth.step([grad.clone()], [0], lr=0.05)
    assert_matches(params, phases, truth, torch.float32, what="grad misaligned", n_steps=1)
    assert stats["scalar_blocks"] == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_emulated_bf16_phase_misaligned_to_its_pack_takes_scalar_path(dtype):
    """The bfloat16 phase pack of kVec elements is 4 (float64 params) to 16 bytes: a phase one
    element off that alignment leaves the vector path even though θ and g are aligned."""
    init = make_tensors([4096], dtype)
    params = [p.clone() for p in init]
    phase_buf = torch.full((4097,), math.nan, dtype=torch.bfloat16)
    phases = [phase_buf[1:]]
    steps = [torch.zeros(())]
    truth = Truth(init)
    for k in range(2):
        grads = make_grads(init, k)
        stats = emulated_step(params, phases, grads, steps, lr=0.05)
        truth.step(grads, [k], lr=0.05)
    assert_matches(params, phases, truth, dtype, what="bf16 phase misaligned", n_steps=2)
    assert stats["scalar_blocks"] == 1 and stats["vector_blocks"] == 0


@pytest.mark.parametrize("large_metadata", [False, True], ids=["4KB-metadata", "32KB-metadata"])
def test_emulated_more_tensors_than_one_launch_holds(large_metadata):
    c = constants()
    capacity = c["large_cap"] if large_metadata else c["small_cap"]
    n = capacity + c["small_cap"] // 2 + 3  # the last launch fits the 4 KB metadata
    g = torch.Generator().manual_seed(5)
    sizes = torch.randint(1, 40, (n,), generator=g).tolist()
    sizes[n // 2] = c["chunk"] + 9  # one multi-chunk tensor
    dtype = torch.float32
    params, phases, steps, truth, stats = run_both(
        sizes, dtype, n_steps=2, lr=0.05, decay_power=0.5, large_metadata=large_metadata)
    assert_matches(params, phases, truth, dtype, what="many tensors", n_steps=2)
    assert stats["main_launches"] == 2
    assert stats["large_launches"] == (1 if large_metadata else 0)
    assert stats["blocks"] == n + 1
    assert stats["step_launches"] == 1
    assert [s.item() for s in steps] == [2.0] * n


def test_emulated_many_launches_and_step_launches():
    """Hundreds of tensors with the 4 KB metadata: several main launches; more late steps than
    one step launch holds: several step launches."""
    c = constants()
    n_empty = c["step_cap"] + 4
    sizes = [3] * (3 * c["small_cap"] + 1) + [0] * n_empty
    params = make_tensors(sizes, torch.float32)
    phases, steps = new_state(params)
    grads = make_grads(params, 0)
    stats = emulated_step(params, phases, grads, steps, lr=0.1, large_metadata=False)
    assert stats["main_launches"] == 4
    assert stats["step_launches"] == 2
    assert stats["small_block_launches"] == 4
    assert [s.item() for s in steps] == [1.0] * len(sizes)


@pytest.mark.parametrize("state", list(STATE_IDS), ids=STATE_IDS.get)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_emulated_size_zero_tensors_advance_their_step(dtype, state):
    sizes = [0, 5, 0, 2000, 0]
    params, phases, steps, truth, stats = run_both(sizes, dtype, n_steps=2, state=state, lr=0.05)
    assert_matches(params, phases, truth, dtype, what="size-0 mix", n_steps=2)
    assert [s.item() for s in steps] == [2.0] * len(sizes)
    assert stats["blocks"] == 2 and stats["step_launches"] == 1


def test_emulated_only_empty_tensors():
    params = [torch.empty(0), torch.empty(0, 3)]
    phases, steps = new_state(params)
    stats = emulated_step(params, phases, [torch.empty(0), torch.empty(0, 3)], steps, lr=0.1)
    assert stats["main_launches"] == 0 and stats["step_launches"] == 1
    assert [s.item() for s in steps] == [1.0, 1.0]


@pytest.mark.parametrize("state", list(STATE_IDS), ids=STATE_IDS.get)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_emulated_grad_scale_unscales_in_kernel(dtype, state):
    scale = torch.tensor(1024.0)
    init = make_tensors([3, 1000], dtype)
    params = [p.clone() for p in init]
    phases, steps = new_state(params, state=state)
    truth = Truth(init)
    inv_scale = scale.double().reciprocal().float().item()
    for k in range(2):
        grads = make_grads(init, k)
        scaled = [(g.double() * scale.item()).to(dtype) for g in grads]
        emulated_step(params, phases, scaled, steps, lr=0.05, grad_scale=scale, maximize=k == 1)
        truth.step(scaled, [k] * 2, lr=0.05, inv_scale=inv_scale, maximize=k == 1)
    assert_matches(params, phases, truth, dtype, what="grad_scale", n_steps=2)


@pytest.mark.parametrize("found", [1.0, math.inf, math.nan], ids=["one", "inf", "nan"])
def test_emulated_found_inf_leaves_everything_untouched(found):
    c = constants()["chunk"]
    params = make_tensors([0, 10, c + 1], torch.float32)
    phases, steps = new_state(params, poison=False)
    grads = make_grads(params, 0)
    emulated_step(params, phases, grads, steps, lr=0.1)  # phase initialised, steps at 1
    before = [t.clone() for t in params + phases + steps]
    stats = emulated_step(params, phases, grads, steps, lr=0.1, grad_scale=torch.tensor(2.0),
                          found_inf=torch.tensor(found))
    for a, b in zip(params + phases + steps, before):
        assert torch.equal(a, b)
    assert stats["skipped_blocks"] == stats["blocks"] == 3


def test_emulated_found_inf_zero_runs_the_step():
    params = make_tensors([100], torch.float32)
    phases, steps = new_state(params)
    stats = emulated_step(params, phases, make_grads(params, 0), steps, lr=0.1,
                          found_inf=torch.tensor(0.0))
    assert stats["skipped_blocks"] == 0 and steps[0].item() == 1.0


@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=DTYPE_IDS.get)
def test_emulated_lr_tensor_is_read_in_kernel(lr_dtype):
    """lr as a tensor on the params' device is read by the kernel: same bits as the float."""
    lr_tensor = torch.tensor(0.037, dtype=lr_dtype)
    init = make_tensors([5, 3000], torch.float32)
    a = [p.clone() for p in init]
    b = [p.clone() for p in init]
    phases_a, steps_a = new_state(a)
    phases_b, steps_b = new_state(b)
    for k in range(2):
        grads = make_grads(init, k)
        emulated_step(a, phases_a, grads, steps_a, lr=0.0, lr_tensor=lr_tensor, decay_power=0.5)
        emulated_step(b, phases_b, grads, steps_b, lr=float(lr_tensor), decay_power=0.5)
    for x, y in zip(a + phases_a, b + phases_b):
        assert torch.equal(x, y)


def test_emulated_per_tensor_step_counts_and_float64_steps():
    """Each tensor's γ_k and first-step flag come from its own step (float32 or float64)."""
    init = make_tensors([4, 70000, 9], torch.float64)
    params = [p.clone() for p in init]
    psis = [torch.randn(p.shape, dtype=torch.float64) for p in params]
    truth = Truth(init, psis=psis)
    phases = [w.clone() for w in truth.phases()]
    ks = [0, 5, 2]
    steps = [torch.tensor(float(ks[0]), dtype=torch.float64), torch.tensor(float(ks[1])),
             torch.tensor(float(ks[2]), dtype=torch.float64)]
    grads = make_grads(init, 0)
    emulated_step(params, phases, grads, steps, lr=0.05, decay_power=0.5)
    truth.step(grads, ks, lr=0.05, decay_power=0.5)
    assert_matches(params, phases, truth, torch.float64, what="per-tensor k", n_steps=1)
    assert [s.item() for s in steps] == [k + 1.0 for k in ks]
    assert steps[0].dtype == torch.float64 and steps[1].dtype == torch.float32


def test_emulated_bad_input_raises_before_any_write():
    params = make_tensors([10, 10], torch.float32)
    phases, steps = new_state(params, poison=False)
    before = [t.clone() for t in params + phases + steps]
    grads = [torch.randn(10), torch.randn(11)]
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        emulated_step(params, phases, grads, steps, lr=0.1)
    for a, b in zip(params + phases + steps, before):
        assert torch.equal(a, b)


# ---- low precision: error budget and stochastic rounding -------------------------------------

def naive_same_dtype_run(init, n_steps, dtype, lr, alpha=0.5, beta=0.1):
    """Eq. (12) computed entirely in `dtype` (ψ too): the error yardstick for low precision, its
    ψ converted to the phase in float64 (as tests/test_core.py does for the CPU kernel)."""
    params, psis = [p.clone().to(dtype) for p in init], []
    for k in range(n_steps):
        for i, (p, g) in enumerate(zip(params, make_grads(init, k))):
            g = g.to(dtype)
            if k == 0:
                psis.append((1 - alpha * beta) * p - (beta * beta - beta) * g)
            phase = (alpha - 1 / beta) * p + psis[i] / beta
            p.sub_(lr * (phase + beta * g))
            psis[i] = psis[i] - lr * phase
    truth = Truth(params, alpha, beta, psis=psis)
    return params, truth.phases()


@pytest.mark.parametrize("state", list(STATE_IDS), ids=STATE_IDS.get)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
def test_emulated_low_precision_error_budget(dtype, state):
    """Round to nearest: error vs float64 at most 2x that of the plain same-dtype computation
    (a float32 param's bfloat16 phase is measured against plain bfloat16)."""
    if dtype == torch.float32 and state == "bf16":
        yardstick = torch.bfloat16
    else:
        yardstick = dtype
    c = constants()["chunk"]
    init = make_tensors([5, 1000, c + 17], dtype)
    params, phases, _, truth, _ = run_both([5, 1000, c + 17], dtype, n_steps=6, state=state,
                                           lr=0.01)
    naive, naive_phases = naive_same_dtype_run(init, 6, yardstick, lr=0.01)
    eps = torch.finfo(yardstick).eps
    for name, ours, exact, plain in [("param", params, truth.params, naive),
                                     ("phase", phases, truth.phases(), naive_phases)]:
        for i, (x, t, nv) in enumerate(zip(ours, exact, plain)):
            err = (x.double() - t).abs().max().item()
            naive_err = (nv.double() - t).abs().max().item()
            assert err <= 2 * naive_err + eps, (
                f"{name} {i}: error {err:.3e} vs naive {naive_err:.3e}")


# (param dtype, phase dtype) pairs where at least one store is 16-bit and rounds stochastically.
SR_PAIRS = [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
            (torch.bfloat16, torch.bfloat16), (torch.float16, torch.bfloat16),
            (torch.float32, torch.bfloat16), (torch.float64, torch.bfloat16)]
SR_IDS = [f"{DTYPE_IDS[p]}-{DTYPE_IDS[w]}-phase" for p, w in SR_PAIRS]


def sr_run(step_fn, init, phase_dtype, seed, n_steps=3, views=False, **hyper):
    """n_steps steps with stochastic rounding through `step_fn` (the emulated CUDA op or the CPU
    op); `views`: params, phases and grads at a 1-element offset (unaligned: scalar path)."""
    def place(t):
        if not views:
            return t.clone()
        buf = torch.empty(t.numel() + 1, dtype=t.dtype)
        view = buf[1:]
        view.copy_(t)
        return view

    params = [place(p) for p in init]
    phases = [place(torch.full_like(p, math.nan, dtype=phase_dtype)) for p in init]
    steps = [torch.zeros(()) for _ in init]
    for k in range(n_steps):
        grads = [place(g) for g in make_grads(init, k)]
        step_fn(params, phases, grads, steps, seed=seed, **hyper)
    return params, phases, steps


def emulated_sr(params, phases, grads, steps, seed, **hyper):
    emulated_step(params, phases, grads, steps, stochastic_rounding=True, seed=seed, **hyper)


def cpu_sr(params, phases, grads, steps, seed, lr, decay_power=0.0, weight_decay=0.0):
    torch.ops.inna_fused.fused_inna_(
        params, grads, phases, steps, lr=lr, alpha=0.5, beta=0.1, decay_power=decay_power,
        weight_decay=weight_decay, decoupled_weight_decay=False, paper_init=True,
        maximize=False, stochastic_rounding=True, seed=seed)


def bits(t):
    """The raw bits of a tensor (NaN-safe bitwise comparison)."""
    return t.contiguous().view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_bitwise_equal(a, b, what):
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and torch.equal(bits(x), bits(y)), f"{what} {i} differs"


# Runs bitwise against the CPU kernel (csrc/cpu/inna_cpu.cpp), which implements the same rounding
# (inna_math.h round_store, keyed by seed, k, numel and the element's index in its tensor); not
# for a CPU kernel built without FMA (conftest.requires_fma_cpu_kernel).
@requires_fma_cpu_kernel
@pytest.mark.parametrize("views", [False, True], ids=["aligned", "odd-views"])
@pytest.mark.parametrize("pair", SR_PAIRS, ids=SR_IDS)
def test_emulated_stochastic_rounding_bitwise_equals_cpu_kernel(pair, views):
    dtype, phase_dtype = pair
    c = constants()["chunk"]
    init = make_tensors([1, 7, 33, 1000, 4099, c + 17], dtype)
    for seed in (0, 1, 123456789, -5):
        hyper = dict(lr=0.05, decay_power=0.5, weight_decay=0.01)
        emu = sr_run(emulated_sr, init, phase_dtype, seed, views=views, **hyper)
        cpu = sr_run(cpu_sr, init, phase_dtype, seed, views=views, **hyper)
        for what, a, b in zip(("param", "phase", "step"), emu, cpu):
            assert_bitwise_equal(a, b, f"seed {seed}: {what}")
        assert [s.item() for s in emu[2]] == [3.0] * len(init)


@pytest.mark.parametrize("pair", SR_PAIRS, ids=SR_IDS)
def test_emulated_stochastic_rounding_independent_of_path_and_chunking(pair):
    """The bits depend on the element's index in its tensor, not on the thread, the chunk or the
    vector/scalar path: aligned (vector path) and odd views (scalar path) give the same bits, and
    so do the 4 KB and 32 KB metadata."""
    dtype, phase_dtype = pair
    c = constants()["chunk"]
    init = make_tensors([3, 4099, 2 * c + 5], dtype)
    aligned = sr_run(emulated_sr, init, phase_dtype, seed=7, lr=0.05)
    odd = sr_run(emulated_sr, init, phase_dtype, seed=7, views=True, lr=0.05)
    small = sr_run(lambda *a, **k: emulated_sr(*a, large_metadata=False, **k), init,
                   phase_dtype, seed=7, lr=0.05)
    for other in (odd, small):
        for what, a, b in zip(("param", "phase", "step"), aligned, other):
            assert_bitwise_equal(a, b, what)


@pytest.mark.parametrize("pair", SR_PAIRS, ids=SR_IDS)
def test_emulated_stochastic_rounding_seeds(pair):
    """Same seed: same bits. Another seed: other bits for the 16-bit stores (an element whose
    rounding is not exact differs with a probability up to 1/2). A wider store is not rounded
    stochastically (see the next test) but may still differ: it reads the other, rounded one."""
    dtype, phase_dtype = pair
    init = make_tensors([5000], dtype)
    a = sr_run(emulated_sr, init, phase_dtype, seed=11, lr=0.05)
    b = sr_run(emulated_sr, init, phase_dtype, seed=11, lr=0.05)
    c = sr_run(emulated_sr, init, phase_dtype, seed=12, lr=0.05)
    for what, x, y in zip(("param", "phase", "step"), a, b):
        assert_bitwise_equal(x, y, what)
    for what, x, y in (("param", a[0][0], c[0][0]), ("phase", a[1][0], c[1][0])):
        if x.element_size() == 2:
            differ = (bits(x) != bits(y)).double().mean().item()
            assert differ > 0.05, f"{what}: seeds 11 and 12 give the same bits ({differ:.3f})"


@pytest.mark.parametrize("pair", [(torch.float32, torch.float32), (torch.float64, torch.float64)],
                         ids=["f32-f32-phase", "f64-f64-phase"])
def test_emulated_stochastic_rounding_no_effect_without_16_bit_stores(pair):
    dtype, phase_dtype = pair
    init = make_tensors([100, 4099], dtype)
    on = sr_run(emulated_sr, init, phase_dtype, seed=3, lr=0.05)
    off = sr_run(lambda *a, seed, **k: emulated_step(*a, **k), init, phase_dtype, seed=3,
                 lr=0.05)
    for what, a, b in zip(("param", "phase", "step"), on, off):
        assert_bitwise_equal(a, b, what)


@pytest.mark.parametrize("pair", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32),
                                  (torch.float32, torch.bfloat16)],
                         ids=["bf16-bf16-phase", "f16-f32-phase", "f32-bf16-phase"])
def test_emulated_stochastic_rounding_is_unbiased(pair):
    """n equal elements take one step: they all have the same float32 result x, far below half an
    ulp away from θ₀ (round to nearest would not move θ). The stochastically rounded 16-bit
    values average to x within a few standard errors; the same for the phase. x comes from the
    float32 kernel on the same values (its stores are exact float32)."""
    dtype, phase_dtype = pair
    n = 200_000
    # Exact in every dtype; θ₁ = 1 − 0.05·2^-7 lies between bfloat16 0.99609375 and 1.0.
    theta0, grad, lr = 1.0, 2.0**-7, 0.05

    def one_step(param_dtype, phase_dtype, sr):
        params = [torch.full((n,), theta0, dtype=param_dtype)]
        phases = [torch.empty(n, dtype=phase_dtype)]
        grads = [torch.full((n,), grad, dtype=param_dtype)]
        emulated_step(params, phases, grads, [torch.zeros(())], lr=lr, stochastic_rounding=sr,
                      seed=2024)
        return params[0], phases[0]

    exact_theta, exact_phase = one_step(torch.float32, torch.float32, False)
    x_theta, x_phase = exact_theta[0].item(), exact_phase[0].item()
    theta, phase = one_step(dtype, phase_dtype, True)
    checked = 0
    for what, values, x in (("param", theta, x_theta), ("phase", phase, x_phase)):
        if values.element_size() != 2:
            continue
        values = values.double()
        lo, hi = values.min().item(), values.max().item()
        assert lo < x < hi, f"{what}: {x!r} not between its two 16-bit neighbours {lo}, {hi}"
        p_up = (x - lo) / (hi - lo)
        std_err = (hi - lo) * math.sqrt(p_up * (1 - p_up) / n)
        mean = values.mean().item()
        assert abs(mean - x) < 5 * std_err, f"{what}: mean {mean!r} vs {x!r} (se {std_err:.2e})"
        checked += 1
    assert checked >= 1


# ---- packing only: sizes, no data ------------------------------------------------------------

def launch_plan(numels, large_metadata=True):
    out = torch.ops.inna_fused._cuda_launch_plan(numels, large_metadata)
    fields = ("launch", "block_size", "blocks", "covered", "last_start", "last_count", "tiled")
    rows = [dict(zip(fields, out[3 + 7 * i: 10 + 7 * i])) for i in range(len(numels))]
    return dict(main_launches=out[0], large_launches=out[1], step_launches=out[2]), rows


def test_emulated_packing_of_tensors_beyond_2_to_the_31_elements():
    c = constants()["chunk"]
    numels = [3, 2**31 + 12345, 0, 5 * 2**32 + 7, 70000]
    totals, rows = launch_plan(numels)
    assert totals == dict(main_launches=1, large_launches=0, step_launches=1)
    for n, row in zip(numels, rows):
        if n == 0:
            assert row["launch"] == -1 and row["blocks"] == 0
            continue
        blocks = -(-n // c)
        assert row["launch"] == 0
        assert row["blocks"] == blocks
        assert row["covered"] == n, "every element in exactly one chunk"
        assert row["tiled"] == 1, "chunks in order, each starting where the previous ended"
        assert row["last_start"] == (blocks - 1) * c
        assert row["last_count"] == n - (blocks - 1) * c
    assert rows[1]["last_start"] == 2**31 and rows[1]["last_count"] == 12345
    assert rows[3]["last_start"] == 5 * 2**32 and rows[3]["last_count"] == 7


@pytest.mark.parametrize("large_metadata", [False, True], ids=["4KB-metadata", "32KB-metadata"])
def test_emulated_packing_of_many_tiny_tensors(large_metadata):
    c = constants()
    n = 1000
    totals, rows = launch_plan([1] * n, large_metadata)
    capacity = c["large_cap"] if large_metadata else c["small_cap"]
    assert totals["main_launches"] == -(-n // capacity)
    assert totals["step_launches"] == 0, "single-chunk tensors advance their step in-block"
    assert [r["launch"] for r in rows] == [i // capacity for i in range(n)]
    assert all(r["block_size"] == c["block_small"] for r in rows)
    if large_metadata:
        # 736 + 264 tensors: both launches need more than the 4 KB metadata holds.
        assert totals["large_launches"] == 2


def test_emulated_packing_block_size_follows_tensor_sizes():
    c = constants()
    _, rows = launch_plan([c["chunk"] * 4, c["chunk"], 7])
    assert {r["block_size"] for r in rows} == {c["block_large"]}
    _, rows = launch_plan([100] * 50)
    assert {r["block_size"] for r in rows} == {c["block_small"]}
