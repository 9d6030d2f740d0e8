"""Core behaviour: every implementation against the reference, state, sizes, conventions, op.

The oracle is the paper's eq. (12) in ψ (`inna_reference_`); its state is compared with ours through
the float64 conversion ψ → phase (or phase → ψ where the test states a fact about ψ)."""
import os
import subprocess
import sys

import pytest
import torch

import inna_fused
from inna_fused import INNA, phase_to_psi, psi_to_phase
from inna_fused.functional import inna
from inna_fused._contract import default_phase_dtype
from inna_fused.reference import inna_reference_

from conftest import (DTYPE_IDS, assert_close_report, impl_kwargs, impl_params,
                      requires_cpu_kernel)

CHUNK = 1 << 15  # csrc/cpu/list_split.h kUnit
HYPER_CASES = {
    "default": dict(lr=0.05),  # psi_init="zero"
    "paper-init": dict(lr=0.05, psi_init="paper"),
    "decay": dict(lr=0.05, decaypower=0.5, psi_init="paper"),
    "coupled-wd": dict(lr=0.05, weight_decay=0.1, psi_init="paper"),
    "decoupled-wd": dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True,
                         psi_init="paper"),
    "zero-init": dict(lr=0.05, psi_init="zero", alpha=1.3, beta=0.2),
    "maximize": dict(lr=0.05, maximize=True, decaypower=0.25, psi_init="paper"),
    "zero-init-decoupled-wd": dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True),
}


def make_params(sizes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64).to(dtype) for n in sizes]


def grads_for(params, step, seed=1):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    return [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) for p in params]


def run_optimizer(impl, init, steps=4, **hyper):
    """Run INNA for `steps` steps; return params, phases and step counts."""
    params = [p.clone().requires_grad_() for p in init]
    opt = INNA(params, **impl_kwargs(impl), **hyper)
    for k in range(steps):
        for p, g in zip(params, grads_for(init, k)):
            p.grad = g
        opt.step()
    return ([p.detach() for p in params], [opt.state[p]["phase"] for p in params],
            [opt.state[p]["step"] for p in params])


def oracle_phases(params, psis, alpha=0.5, beta=0.1, **_):
    """The oracle's state as phases, converted in float64."""
    return [psi_to_phase(p, psi, alpha, beta, dtype=torch.float64) for p, psi in zip(params, psis)]


def reference_run(init, steps=4, dtype=None, **hyper):
    """The oracle: inna_reference_ in a plain loop, optionally in another dtype."""
    hyper = dict(hyper)
    reference_hyper = dict(lr=hyper.pop("lr"), alpha=hyper.pop("alpha", 0.5),
                           beta=hyper.pop("beta", 0.1), decay_power=hyper.pop("decaypower", 0.0),
                           psi_init=hyper.pop("psi_init", "zero"), **hyper)  # INNA's default
    params = [p.clone().to(dtype or p.dtype) for p in init]
    psis = [torch.empty_like(p, dtype=default_phase_dtype(p.dtype)) for p in params]
    for k in range(steps):
        for p, psi, g in zip(params, psis, grads_for(init, k)):
            inna_reference_(p, psi, g.to(p.dtype), k, **reference_hyper)
    return params, psis


@pytest.mark.parametrize("impl", impl_params(["fused", "foreach"]))
@pytest.mark.parametrize("case", list(HYPER_CASES))
def test_matches_reference_float64(impl, case):
    init = make_params([1, 17, 1000, CHUNK + 3], torch.float64)
    params, phases, steps = run_optimizer(impl, init, **HYPER_CASES[case])
    ref_params, ref_psis = reference_run(init, **HYPER_CASES[case])
    ref_phases = oracle_phases(ref_params, ref_psis, **HYPER_CASES[case])
    for i, (p, phase, rp, rphase) in enumerate(zip(params, phases, ref_params, ref_phases)):
        assert_close_report(p, rp, atol=1e-12, rtol=1e-12, what=f"param {i}")
        assert_close_report(phase, rphase, atol=1e-12, rtol=1e-12, what=f"phase {i}")
    assert all(s.item() == 4 for s in steps)


def naive_same_dtype_run(init, steps, dtype, lr, alpha=0.5, beta=0.1):
    """Eq. (12) computed entirely in `dtype` (ψ too): the error yardstick for low precision."""
    params = [p.clone().to(dtype) for p in init]
    psis = []
    for k in range(steps):
        for i, (p, g) in enumerate(zip(params, grads_for(init, k))):
            g = g.to(dtype)
            if k == 0:
                psis.append((1 - alpha * beta) * p - (beta * beta - beta) * g)
            phase = (alpha - 1 / beta) * p + psis[i] / beta
            p.sub_(lr * (phase + beta * g))
            psis[i] = psis[i] - lr * phase
    return params, psis


@pytest.mark.parametrize("impl", impl_params(["fused", "foreach"]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
def test_low_precision_error_budget(impl, dtype):
    """Error vs a float64 computation is at most 2x that of the plain same-dtype computation, for
    θ and for ψ (ours implied by θ and the phase, in float64). Round to nearest: the budget is
    one run's error, not an average."""
    init = make_params([5, 1000, CHUNK + 17], dtype)
    params, phases, _ = run_optimizer(impl, init, steps=6, lr=0.01, stochastic_rounding=False,
                                      psi_init="paper")
    psis = [phase_to_psi(p, phase, 0.5, 0.1, dtype=torch.float64)
            for p, phase in zip(params, phases)]
    truth, truth_psi = reference_run(init, steps=6, dtype=torch.float64, lr=0.01,
                                     psi_init="paper")
    naive, naive_psis = naive_same_dtype_run(init, 6, dtype, lr=0.01)
    eps = torch.finfo(dtype).eps
    for name, ours, exact, plain in [("param", params, truth, naive),
                                     ("psi", psis, truth_psi, naive_psis)]:
        for i, (x, t, nv) in enumerate(zip(ours, exact, plain)):
            err = (x.double() - t).abs().max().item()
            naive_err = (nv.double() - t).abs().max().item()
            assert err <= 2 * naive_err + eps, f"{name} {i}: error {err:.3e} vs naive {naive_err:.3e}"
    assert all(phase.dtype == default_phase_dtype(dtype) for phase in phases)


@requires_cpu_kernel
@pytest.mark.parametrize("sizes", [
    [0], [1], [7, 0, 3], [CHUNK - 1], [CHUNK], [CHUNK + 1], [3 * CHUNK + 5, 1 << 20],
    [int(n) for n in torch.randint(0, 3000, (300,), generator=torch.Generator().manual_seed(3))],
], ids=["0", "1", "odd-with-empty", "chunk-1", "chunk", "chunk+1", "large", "300-tensors"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_multi_tensor_sizes(sizes, dtype):
    init = make_params(sizes, dtype)
    fused, fused_phases, steps = run_optimizer("fused", init, steps=3, lr=0.03, decaypower=0.5)
    ref, ref_phases, _ = run_optimizer("reference", init, steps=3, lr=0.03, decaypower=0.5)
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    for i in range(len(sizes)):
        if dtype == torch.bfloat16:
            # A bf16 rounding of θ may differ by one ulp (FMA contraction).
            tol = dict(atol=1e-2, rtol=1e-2)
        assert_close_report(fused[i], ref[i], **tol, what=f"param {i}")
        assert_close_report(fused_phases[i], ref_phases[i], **tol, what=f"phase {i}")
        assert steps[i].item() == 3


@pytest.mark.parametrize("impl", impl_params())
def test_paper_init_first_step_is_sgd(impl):
    init = make_params([100], torch.float64)
    params, _, _ = run_optimizer(impl, init, steps=1, lr=0.1, alpha=0.7, beta=0.3,
                                 psi_init="paper")
    g0 = grads_for(init, 0)[0]
    assert_close_report(params[0], init[0] - 0.1 * g0, atol=1e-13, rtol=0, what="θ1")


@pytest.mark.parametrize("impl", impl_params())
def test_zero_init_first_step(impl):
    init = make_params([100], torch.float64)
    params, phases, _ = run_optimizer(impl, init, steps=1, lr=0.1, alpha=0.7, beta=0.3,
                                      psi_init="zero")
    g0 = grads_for(init, 0)[0]
    assert_close_report(params[0], init[0] - 0.1 * 0.3 * g0, atol=1e-13, rtol=0, what="θ1")
    assert_close_report(phase_to_psi(params[0], phases[0], 0.7, 0.3), (1 - 0.7 * 0.3) * init[0],
                        atol=1e-13, rtol=0, what="ψ1")
    assert_close_report(phases[0], (1 - 0.7 * 0.3) * 0.1 * g0, atol=1e-15, rtol=0, what="w1")


@pytest.mark.parametrize("impl", impl_params())
def test_rest_point_is_fixed(impl):
    """At ∇J = 0 with ψ = (1 − αβ)θ nothing moves (INNA.md, rest points)."""
    theta = torch.randn(50, dtype=torch.float64, requires_grad=True)
    opt = INNA([theta], lr=0.5, alpha=0.6, beta=0.2, psi_init="zero", **impl_kwargs(impl))
    start = theta.detach().clone()
    for _ in range(5):
        theta.grad = torch.zeros_like(theta)
        opt.step()
    assert_close_report(theta.detach(), start, atol=1e-14, rtol=0, what="θ at rest")


@pytest.mark.parametrize("impl", impl_params())
def test_maximize_equals_minimizing_negated_grads(impl):
    init = make_params([33, 70], torch.float64)
    a = [p.clone().requires_grad_() for p in init]
    b = [p.clone().requires_grad_() for p in init]
    opt_a = INNA(a, lr=0.05, maximize=True, **impl_kwargs(impl))
    opt_b = INNA(b, lr=0.05, **impl_kwargs(impl))
    for k in range(3):
        for pa, pb, g in zip(a, b, grads_for(init, k)):
            pa.grad, pb.grad = g, -g
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("save_impl", impl_params())
@pytest.mark.parametrize("load_impl", impl_params())
def test_state_dict_roundtrip_mid_run(save_impl, load_impl):
    init = make_params([10, CHUNK + 9], torch.float64)
    hyper = dict(lr=0.05, decaypower=0.5, weight_decay=0.01)
    straight, straight_phases, straight_steps = run_optimizer(save_impl, init, steps=6, **hyper)

    params = [p.clone().requires_grad_() for p in init]
    opt = INNA(params, **impl_kwargs(save_impl), **hyper)
    for k in range(3):
        for p, g in zip(params, grads_for(init, k)):
            p.grad = g
        opt.step()
    saved = opt.state_dict()
    params2 = [p.detach().clone().requires_grad_() for p in params]
    opt2 = INNA(params2, **impl_kwargs(load_impl), **hyper)
    opt2.load_state_dict(saved)
    for k in range(3, 6):
        for p, g in zip(params2, grads_for(init, k)):
            p.grad = g
        opt2.step()
    tol = 0 if save_impl == load_impl else 1e-12
    for i, p in enumerate(params2):
        assert_close_report(p.detach(), straight[i], atol=tol, rtol=tol, what=f"param {i}")
        assert_close_report(opt2.state[p]["phase"], straight_phases[i], atol=tol, rtol=tol,
                            what=f"phase {i}")
        assert opt2.state[p]["step"].item() == straight_steps[i].item() == 6


@pytest.mark.parametrize("impl", impl_params())
def test_lr_tensor_equals_float_lr(impl):
    init = make_params([40], torch.float32)
    a, _, _ = run_optimizer(impl, init, lr=0.05)
    b, _, _ = run_optimizer(impl, init, lr=torch.tensor(0.05))
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("impl", impl_params())
def test_grad_scale_and_found_inf(impl):
    init = make_params([64, 5], torch.float32)
    g = grads_for(init, 0)
    scale = torch.tensor(1024.0)

    def run(scaled, found_inf=None):
        params = [p.clone() for p in init]
        phases = [torch.empty_like(p) for p in params]
        steps = [torch.zeros(()) for _ in params]
        grads = [x * scale for x in g] if scaled else g
        inna(params, grads, phases, steps, lr=0.1, alpha=0.5, beta=0.1, impl=impl,
             grad_scale=scale if scaled else None, found_inf=found_inf)
        return params, phases, steps

    plain, plain_phases, _ = run(False)
    scaled, scaled_phases, _ = run(True)
    for a, b in zip(plain + plain_phases, scaled + scaled_phases):
        assert_close_report(a, b, atol=1e-6, rtol=1e-6, what="scaled vs unscaled")
    skipped, _, steps = run(True, found_inf=torch.tensor(1.0))
    assert all(torch.equal(a, b) for a, b in zip(skipped, init))
    assert all(s.item() == 0 for s in steps)


@pytest.mark.parametrize("impl", impl_params())
def test_non_contiguous_params(impl):
    transposed = torch.randn(12, 9, dtype=torch.float64).t().requires_grad_()  # transposed leaf
    assert not transposed.is_contiguous()
    expected = transposed.detach().clone()
    psi = torch.empty_like(expected)
    g = torch.randn(9, 12, dtype=torch.float64)
    opt = INNA([transposed], lr=0.1, psi_init="paper", **impl_kwargs(impl))
    for k in range(2):
        transposed.grad = g.clone()  # contiguous grad for a transposed param: the copy path
        opt.step()
        inna_reference_(expected, psi, g, k, lr=0.1, alpha=0.5, beta=0.1)
    assert_close_report(transposed.detach(), expected, atol=1e-13, rtol=0, what="transposed")
    assert_close_report(opt.state[transposed]["phase"], psi_to_phase(expected, psi, 0.5, 0.1),
                        atol=1e-13, rtol=0, what="phase")


@requires_cpu_kernel
def test_op_updates_strided_views_in_place():
    """Views with gaps (sliced with a step) are updated in place, the gaps untouched."""
    buf = torch.randn(40, 10, dtype=torch.float64)
    view = buf[:, ::2]
    before = buf.clone()
    phase = torch.empty(view.shape, dtype=torch.float64)
    g = torch.randn(view.shape, dtype=torch.float64)
    expected, exp_psi = view.clone(), phase.clone()
    torch.ops.inna_fused.fused_inna_([view], [g], [phase], [torch.zeros(())], lr=0.1, alpha=0.5,
                                     beta=0.1, decay_power=0.0, weight_decay=0.0,
                                     decoupled_weight_decay=False, paper_init=True, maximize=False)
    inna_reference_(expected, exp_psi, g, 0, lr=0.1, alpha=0.5, beta=0.1)
    assert_close_report(buf[:, ::2], expected, atol=1e-13, rtol=0, what="view")
    assert torch.equal(buf[:, 1::2], before[:, 1::2])


@pytest.mark.parametrize("impl", impl_params())
def test_complex_params_as_real_views(impl):
    z = torch.randn(20, dtype=torch.complex64, requires_grad=True)
    expected = torch.view_as_real(z.detach().clone())
    psi = torch.empty_like(expected)
    g = torch.randn(20, dtype=torch.complex64)
    opt = INNA([z], lr=0.1, psi_init="paper", **impl_kwargs(impl))
    for k in range(3):
        z.grad = g
        opt.step()
        inna_reference_(expected, psi, torch.view_as_real(g), k, lr=0.1, alpha=0.5, beta=0.1)
    assert opt.state[z]["phase"].dtype == torch.complex64
    assert_close_report(torch.view_as_real(z.detach()), expected, atol=1e-6, rtol=1e-6, what="z")


@requires_cpu_kernel
def test_mixed_dtypes_in_one_group():
    init = make_params([30], torch.float32) + make_params([31], torch.float64) + \
        make_params([32], torch.bfloat16)
    fused, _, _ = run_optimizer("fused", init, lr=0.05)
    ref, _, _ = run_optimizer("reference", init, lr=0.05)
    for f, r in zip(fused, ref):
        assert f.dtype == r.dtype
        assert_close_report(f, r, atol=1e-2 if f.dtype == torch.bfloat16 else 1e-6,
                            rtol=1e-5, what=str(f.dtype))


def test_param_groups_hyperparameters_and_closure():
    a = torch.randn(10, dtype=torch.float64, requires_grad=True)
    b = torch.randn(10, dtype=torch.float64, requires_grad=True)
    ea, eb = a.detach().clone(), b.detach().clone()
    pa, pb = torch.empty_like(ea), torch.empty_like(eb)
    opt = INNA([{"params": [a]}, {"params": [b], "lr": 0.01, "alpha": 1.3, "psi_init": "zero"}],
               lr=0.1, psi_init="paper")

    def closure():
        opt.zero_grad()
        loss = (a ** 2).sum() + (b ** 3).sum()
        loss.backward()
        return loss

    for k in range(3):
        ga, gb = 2 * ea, 3 * eb ** 2
        loss = opt.step(closure)
        assert torch.is_tensor(loss)
        inna_reference_(ea, pa, ga, k, lr=0.1, alpha=0.5, beta=0.1)
        inna_reference_(eb, pb, gb, k, lr=0.01, alpha=1.3, beta=0.1, psi_init="zero")
    assert_close_report(a.detach(), ea, atol=1e-12, rtol=1e-12, what="group 0")
    assert_close_report(b.detach(), eb, atol=1e-12, rtol=1e-12, what="group 1")


def test_params_without_grad_are_skipped():
    a = torch.randn(5, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    before = b.detach().clone()
    opt = INNA([a, b], lr=0.1)
    a.grad = torch.ones(5)
    opt.step()
    assert torch.equal(b.detach(), before)
    assert b not in opt.state


@requires_cpu_kernel
@pytest.mark.parametrize("overload", ["default", "tensor_lr"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("phase_dtype", ["default", "bf16"])
def test_opcheck(overload, dtype, phase_dtype):
    params = make_params([3, 40], dtype)
    state_dtype = default_phase_dtype(dtype) if phase_dtype == "default" else torch.bfloat16
    phases = [torch.randn(p.shape, dtype=state_dtype) for p in params]
    grads = grads_for(params, 0)
    steps = [torch.tensor(2.0), torch.tensor(5.0)]
    kwargs = dict(alpha=0.5, beta=0.1, decay_power=0.5, weight_decay=0.01,
                  decoupled_weight_decay=False, paper_init=True, maximize=False,
                  stochastic_rounding=True, seed=7)
    op = getattr(torch.ops.inna_fused.fused_inna_, overload)
    kwargs["lr"] = torch.tensor(0.1) if overload == "tensor_lr" else 0.1
    torch.library.opcheck(op, (params, grads, phases, steps), kwargs)


BAD_HYPER = [
    dict(lr=-0.1), dict(lr=float("nan")), dict(alpha=0.0), dict(alpha=-1.0), dict(beta=0.0),
    dict(decaypower=-0.5), dict(weight_decay=-1e-4), dict(psi_init="ones"),
]


@pytest.mark.parametrize("bad", BAD_HYPER, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_bad_hyperparameters_raise_valueerror(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        INNA([torch.zeros(3, requires_grad=True)], **bad)


def bad_input_cases():
    """(name, mutate(params, grads, phases) -> None, expected exception)."""
    def sparse(p, g, s): g[1] = g[1].to_sparse()
    def shape(p, g, s): g[1] = g[1][:-1]
    def dtype(p, g, s): g[1] = g[1].double()
    def phase_f64(p, g, s): s[1] = s[1].double()
    def phase_f16(p, g, s): s[1] = s[1].half()
    def int_param(p, g, s): p[1], g[1] = p[1].long(), g[1].long()
    def phase_alias(p, g, s): s[1] = p[1].view(s[1].shape)
    def overlap(p, g, s): p[2] = p[1]
    return [("sparse-grad", sparse, TypeError), ("grad-shape", shape, ValueError),
            ("grad-dtype", dtype, TypeError), ("phase-float64", phase_f64, TypeError),
            ("phase-float16", phase_f16, TypeError), ("int-param", int_param, TypeError),
            ("phase-aliases-param", phase_alias, ValueError),
            ("params-overlap", overlap, ValueError)]


@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("name,mutate,error", bad_input_cases(), ids=[c[0] for c in bad_input_cases()])
def test_bad_tensors_leave_everything_untouched(impl, name, mutate, error):
    params = make_params([6, 6, 6, 6], torch.float32)
    grads = grads_for(params, 0)
    phases = [torch.randn(6) for _ in params]
    steps = [torch.tensor(1.0) for _ in params]
    mutate(params, grads, phases)
    snapshot = [t.clone() for t in params + phases + steps]
    with pytest.raises(error, match=r"\[1\]|\[2\]"):
        inna(params, grads, phases, steps, lr=0.1, alpha=0.5, beta=0.1, impl=impl)
    for before, after in zip(snapshot, params + phases + steps):
        assert torch.equal(before, after)


@requires_cpu_kernel
def test_op_rejects_bad_hyperparameters_without_writing():
    p = torch.randn(5)
    before = p.clone()
    with pytest.raises(ValueError, match="beta"):
        torch.ops.inna_fused.fused_inna_([p], [torch.randn(5)], [torch.empty(5)], [torch.zeros(())],
                                         lr=0.1, alpha=0.5, beta=0.0, decay_power=0.0,
                                         weight_decay=0.0, decoupled_weight_decay=False,
                                         paper_init=True, maximize=False)
    assert torch.equal(p, before)


def test_fused_true_without_kernel_raises_and_default_falls_back():
    # In the same fresh interpreter (one subprocess for both): `import inna_fused` and the `info`
    # command load none of the benchmark harness, the experiments or their dependencies.
    code = """
import contextlib, io, sys, warnings, torch
before = set(sys.modules)  # torch itself may load tqdm
import inna_fused
heavy = ('inna_fused.bench', 'inna_fused.experiments', 'matplotlib', 'tqdm', 'sklearn')
loaded = lambda: [m for m in set(sys.modules) - before
                  if any(m == h or m.startswith(h + '.') for h in heavy)]
assert not loaded(), loaded()
from inna_fused.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(['info']) == 0
assert not loaded(), loaded()
assert inna_fused.load_error() and 'INNA_FUSED_DISABLE_NATIVE' in inna_fused.load_error()
p = torch.zeros(3, requires_grad=True)
try:
    inna_fused.INNA([p], fused=True)
    raise SystemExit('fused=True did not raise')
except RuntimeError as e:
    assert 'pip install' in str(e), e
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    opt = inna_fused.INNA([p], lr=0.1)
    assert any('foreach' in str(x.message) for x in w), [str(x.message) for x in w]
p.grad = torch.ones(3)
opt.step()  # psi_init="zero": θ1 = θ0 - lr·β·v0
assert torch.allclose(p.detach(), torch.full((3,), -0.01))
print('ok')
"""
    env = dict(os.environ, INNA_FUSED_DISABLE_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_build_info_reports_kernels():
    info = inna_fused.build_info()
    assert info["loaded"] == (inna_fused.load_error() is None)
    assert info["cpu_kernel"] == inna_fused.kernel_available("cpu")
    assert info["innaprop_cpu_kernel"] == inna_fused.innaprop_functional.fused_available("cpu")
    assert info["innaprop_cuda_kernel"] == inna_fused.innaprop_functional.fused_available("cuda")
