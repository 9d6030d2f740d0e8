"""LR schedulers and param groups: the lr each step uses is the scheduler's, per group, and
decaypower applies on top (γ_k = scheduler lr / (k+1)^q)."""
import math

import pytest
import torch
from torch.optim import lr_scheduler

from inna_fused import INNA, psi_to_phase
from inna_fused.reference import inna_reference_

from conftest import impl_kwargs, impl_params

STEPS = 7


def make_params(sizes=(7, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64).requires_grad_() for n in sizes]


def grad_for(p, k):
    """A deterministic gradient that depends on the param (so errors propagate)."""
    return torch.sin(3 * p.detach() + k) + 0.1 * k


def run_inna(params, opt, sched=None, steps=STEPS):
    for k in range(steps):
        for p in params:
            p.grad = grad_for(p, k)
        opt.step()
        if sched is not None:
            sched.step()


def run_reference(params, lrs, hyper):
    """eq. (12) one tensor at a time, from the params' first step, with the lr sequence `lrs`."""
    psis = [torch.empty_like(p) for p in params]
    for k, lr in enumerate(lrs):
        for p, psi in zip(params, psis):
            with torch.no_grad():
                inna_reference_(p, psi, grad_for(p, k), k, lr=lr, **hyper)
    return psis


SCHEDULES = {
    # name: (scheduler factory, the lr of step k in closed form)
    "StepLR": (lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
               lambda lr0, k: lr0 * 0.5 ** (k // 3)),
    "CosineAnnealingLR": (
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=0.01),
        lambda lr0, k: 0.01 + (lr0 - 0.01) * (1 + math.cos(math.pi * k / STEPS)) / 2),
    "LambdaLR": (lambda opt: lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + k)),
                 lambda lr0, k: lr0 / (1 + k)),
}


@pytest.mark.parametrize("decaypower", [0.0, 0.5], ids=["no-decay", "decaypower=0.5"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("impl", impl_params())
def test_scheduler_drives_lr(impl, schedule, decaypower):
    make_sched, closed_form = SCHEDULES[schedule]
    hyper = dict(alpha=0.5, beta=0.1, decay_power=decaypower, weight_decay=0.01, psi_init="paper")
    lr0 = 0.1
    params = make_params()
    opt = INNA(params, lr=lr0, alpha=0.5, beta=0.1, decaypower=decaypower, weight_decay=0.01,
               psi_init="paper", **impl_kwargs(impl))
    sched = make_sched(opt)
    run_inna(params, opt, sched)

    expected = make_params()
    psis = run_reference(expected, [closed_form(lr0, k) for k in range(STEPS)], hyper)
    for p, e, psi in zip(params, expected, psis):
        torch.testing.assert_close(p.detach(), e.detach(), rtol=1e-12, atol=1e-13)
        phase = psi_to_phase(e, psi, hyper["alpha"], hyper["beta"])
        torch.testing.assert_close(opt.state[p]["phase"], phase, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("impl", impl_params())
def test_scheduler_with_tensor_lr(impl):
    """A 0-d tensor lr (the compile-friendly form) is updated in place by the scheduler."""
    lr = torch.tensor(0.1, dtype=torch.float64)
    params = make_params()
    opt = INNA(params, lr=lr, **impl_kwargs(impl))  # psi_init="zero"
    run_inna(params, opt, lr_scheduler.StepLR(opt, step_size=2, gamma=0.5))
    assert opt.param_groups[0]["lr"] is lr and float(lr) == 0.1 * 0.5 ** (STEPS // 2)

    expected = make_params()
    run_reference(expected, [0.1 * 0.5 ** (k // 2) for k in range(STEPS)],
                  dict(alpha=0.5, beta=0.1, psi_init="zero"))
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e.detach(), rtol=1e-12, atol=1e-13)


GROUP_HYPER = [
    dict(lr=0.05, alpha=0.5, beta=0.1, decaypower=0.0, weight_decay=0.0, psi_init="paper"),
    dict(lr=0.02, alpha=1.3, beta=0.3, decaypower=0.5, weight_decay=0.1, psi_init="zero",
         decoupled_weight_decay=True),
    dict(lr=0.01, alpha=0.2, beta=0.05, decaypower=0.25, weight_decay=0.02, maximize=True,
         psi_init="paper"),
]


def reference_hyper(group):
    return {("decay_power" if k == "decaypower" else k): v for k, v in group.items() if k != "lr"}


@pytest.mark.parametrize("impl", impl_params())
def test_per_group_hyperparameters(impl):
    groups = [make_params(seed=i) for i in range(len(GROUP_HYPER))]
    opt = INNA([dict(params=ps, **h) for ps, h in zip(groups, GROUP_HYPER)], lr=1.0,
               **impl_kwargs(impl))
    run_inna([p for ps in groups for p in ps], opt)
    for i, h in enumerate(GROUP_HYPER):
        expected = make_params(seed=i)
        run_reference(expected, [h["lr"]] * STEPS, reference_hyper(h))
        for p, e in zip(groups[i], expected):
            torch.testing.assert_close(p.detach(), e.detach(), rtol=1e-12, atol=1e-13,
                                       msg=lambda m: f"group {i}: {m}")


@pytest.mark.parametrize("impl", impl_params())
def test_add_param_group_mid_training(impl):
    first, added = make_params(seed=0), make_params(seed=1)
    opt = INNA(first, **GROUP_HYPER[0], **impl_kwargs(impl))
    run_inna(first, opt, steps=3)
    opt.add_param_group(dict(params=added, **GROUP_HYPER[1]))
    assert opt.param_groups[1]["alpha"] == 1.3 and opt.param_groups[1]["psi_init"] == "zero"
    for k in range(3, STEPS):
        for p in first:
            p.grad = grad_for(p, k)
        for p in added:
            p.grad = grad_for(p, k - 3)
        opt.step()

    for params, seed, group, start in ((first, 0, GROUP_HYPER[0], 0),
                                       (added, 1, GROUP_HYPER[1], 3)):
        expected = make_params(seed=seed)
        run_reference(expected, [group["lr"]] * (STEPS - start), reference_hyper(group))
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach(), e.detach(), rtol=1e-12, atol=1e-13)
            assert float(opt.state[p]["step"]) == STEPS - start


def test_add_param_group_rejects_bad_hyperparameters():
    opt = INNA(make_params(seed=0))
    with pytest.raises(ValueError, match="beta"):
        opt.add_param_group(dict(params=make_params(seed=1), beta=0.0))
    assert len(opt.param_groups) == 1
