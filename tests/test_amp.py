"""Mixed precision: torch.amp.GradScaler drives INNA (unscale and inf check inside the step)."""
import copy

import pytest
import torch

from inna_fused import INNA

from conftest import impl_kwargs, impl_params

HYPER = dict(lr=0.05, alpha=0.5, beta=0.1, decaypower=0.25, weight_decay=0.01)


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)) for _ in range(n)]


def learnable_batch(seed=2):
    """A batch whose target a small model can fit (a linear teacher), so the loss can fall."""
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(seed))
    return x, x[:, :1] * 0.5 - x[:, 1:2] + 0.3


def loss_of(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def state_snapshot(model, opt):
    return [(p.detach().clone(), opt.state[p]["phase"].clone(), opt.state[p]["step"].clone())
            for p in model.parameters()]


def test_optimizer_declares_amp_support():
    assert INNA(make_model().parameters())._step_supports_amp_scaling


@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("unscale_first", [False, True], ids=["scaler-step", "unscale-then-clip"])
def test_scaled_training_equals_unscaled(impl, unscale_first):
    plain, scaled = make_model(), make_model()
    plain_opt = INNA(plain.parameters(), **HYPER, **impl_kwargs(impl))
    scaled_opt = INNA(scaled.parameters(), **HYPER, **impl_kwargs(impl))
    # A scale that is not a power of two, so unscaling is a real (rounded) division.
    scaler = torch.amp.GradScaler("cpu", init_scale=3000.0, growth_interval=2)
    for x, y in batches(5):
        plain_opt.zero_grad()
        loss_of(plain, x, y).backward()
        plain_opt.step()

        scaled_opt.zero_grad()
        scaler.scale(loss_of(scaled, x, y)).backward()
        if unscale_first:  # the documented pattern for gradient clipping
            scaler.unscale_(scaled_opt)
            torch.nn.utils.clip_grad_norm_(scaled.parameters(), max_norm=1e6)
        scaler.step(scaled_opt)
        scaler.update()
        assert not hasattr(scaled_opt, "grad_scale")  # GradScaler removes what it handed over
    assert scaler.get_scale() > 3000.0  # the scale grew: no step was skipped
    for p_plain, p_scaled in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(p_scaled, p_plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_non_finite_gradient_skips_the_step(impl, bad):
    model = make_model()
    opt = INNA(model.parameters(), **HYPER, **impl_kwargs(impl))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    (x, y), (x2, y2) = batches(2)
    opt.zero_grad()
    scaler.scale(loss_of(model, x, y)).backward()
    scaler.step(opt)
    scaler.update()
    before = state_snapshot(model, opt)
    scale_before = scaler.get_scale()

    opt.zero_grad()
    scaler.scale(loss_of(model, x2, y2)).backward()
    model[2].weight.grad[0, 3] = bad
    scaler.step(opt)
    scaler.update()

    for (p, phase, step), (p0, phase0, step0) in zip(state_snapshot(model, opt), before):
        assert torch.equal(p, p0) and torch.equal(phase, phase0) and torch.equal(step, step0)
    assert float(before[0][2]) == 1.0
    assert scaler.get_scale() < scale_before


@pytest.mark.parametrize("impl", impl_params())
def test_skipped_first_step_leaves_phase_uninitialised(impl):
    """A skipped first step must not count: the next step initialises the phase as a first step."""
    skipped_first, direct = make_model(), make_model()
    opts = [INNA(m.parameters(), **HYPER, **impl_kwargs(impl)) for m in (skipped_first, direct)]
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    (x, y), = batches(1)

    opts[0].zero_grad()
    scaler.scale(loss_of(skipped_first, x, y)).backward()
    skipped_first[0].bias.grad[0] = float("inf")
    scaler.step(opts[0])
    scaler.update()
    assert all(float(opts[0].state[p]["step"]) == 0 for p in skipped_first.parameters())

    for model, opt in zip((skipped_first, direct), opts):
        opt.zero_grad()
        scaler.scale(loss_of(model, x, y)).backward()
        scaler.step(opt)
    for p_skipped, p_direct in zip(skipped_first.parameters(), direct.parameters()):
        torch.testing.assert_close(p_skipped, p_direct, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", impl_params())
def test_bf16_autocast_training_decreases_the_loss(impl):
    model = make_model()
    opt = INNA(model.parameters(), lr=0.1, **impl_kwargs(impl))
    data = learnable_batch()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_of(model, *data)
            assert model[0](data[0]).dtype == torch.bfloat16  # autocast is really on
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(opt.state[p]["phase"].dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("impl", impl_params())
def test_bf16_params_keep_float32_phase_and_train(impl):
    model = copy.deepcopy(make_model()).to(torch.bfloat16)
    opt = INNA(model.parameters(), lr=0.1, **impl_kwargs(impl))
    x, y = (t.to(torch.bfloat16) for t in learnable_batch())
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(opt.state[p]["phase"].dtype == torch.float32 for p in model.parameters())
