"""Checkpoints: state_dict round trips through torch.save/torch.load across implementations,
exact resumption (INNA and INNAprop), and state_dicts written by the authors' INNA class (their ψ
converts to our phase at load)."""
import copy
import io
import pickle

import pytest
import torch
from torch.optim import Optimizer

from inna_fused import INNA, INNAprop, phase_to_psi

from conftest import impl_kwargs, impl_params

HYPER = dict(lr=0.05, alpha=0.5, beta=0.1, decaypower=0.5, weight_decay=0.01)
# Per optimizer: its hyper-parameters, and other valid ones that a loaded checkpoint replaces.
OPTIMIZERS = {
    "INNA": (INNA, HYPER, dict(lr=0.9, alpha=1.0, beta=0.5)),
    "INNAprop": (INNAprop, dict(lr=0.01, alpha=0.1, beta=0.9, sigma=0.99, weight_decay=0.01),
                 dict(lr=0.3, alpha=1.0, beta=0.5, sigma=0.9)),
}


def make_model(dtype=torch.float32, seed=0):
    """Two layers; the second in `dtype` (16-bit dtypes keep a float32 phase by default)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    model[2].to(dtype)
    return model


def loss_of(model, x):
    hidden = model[1](model[0](x))
    return model[2](hidden.to(model[2].weight.dtype)).float().square().mean()


def batch(k):
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(100 + k))


def train(model, opt, ks):
    for k in ks:
        opt.zero_grad()
        loss_of(model, batch(k)).backward()
        opt.step()


def clone_model(model):
    clone = make_model(model[2].weight.dtype)
    clone.load_state_dict(model.state_dict())
    return clone


def through_file(obj, map_location="cpu"):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location=map_location, weights_only=True)


def assert_same_training_state(model_a, opt_a, model_b, opt_b, exact, what):
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert sa.keys() == sb.keys(), f"{what}: state keys of {name}"
        assert float(sb["step"]) == float(sa["step"]), f"{what}: step of {name}"
        tensors = [(sa[k], sb[k], k) for k in sorted(sa.keys() - {"step"})]
        for x, y, part in [(a, b, "param"), *tensors]:
            assert y.dtype == x.dtype, f"{what}: {part} dtype of {name}"
            if exact:
                assert torch.equal(x, y), f"{what}: {part} {name} differs"
            else:
                torch.testing.assert_close(y, x, rtol=2e-5, atol=1e-6,
                                           msg=lambda m: f"{what}: {part} {name}: {m}")


@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16], ids=["state-default",
                                                                    "state-bf16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_resume_is_bitwise_identical_to_not_stopping(optimizer, impl, dtype, state_dtype):
    cls, hyper, other_hyper = OPTIMIZERS[optimizer]
    hyper = dict(hyper, state_dtype=state_dtype)
    straight = make_model(dtype)
    straight_opt = cls(straight.parameters(), **hyper, **impl_kwargs(impl))
    train(straight, straight_opt, range(6))

    first = make_model(dtype)
    first_opt = cls(first.parameters(), **hyper, **impl_kwargs(impl))
    train(first, first_opt, range(3))
    checkpoint = through_file({"model": first.state_dict(), "opt": first_opt.state_dict()})
    del first, first_opt

    resumed = make_model(dtype, seed=123)  # different init: everything must come from the file
    resumed.load_state_dict(checkpoint["model"])
    # Other hyper-parameters and storage options: the checkpoint's replace them.
    resumed_opt = cls(resumed.parameters(), **other_hyper, **impl_kwargs(impl))
    resumed_opt.load_state_dict(checkpoint["opt"])
    train(resumed, resumed_opt, range(3, 6))
    assert_same_training_state(straight, straight_opt, resumed, resumed_opt, exact=True,
                               what=f"{optimizer} {impl} resumed")


@pytest.mark.parametrize("load_impl", impl_params())
@pytest.mark.parametrize("save_impl", impl_params())
def test_checkpoint_moves_between_implementations(save_impl, load_impl):
    """Saved by one implementation, loaded by another with map_location: training continues as
    the loading implementation would have trained from the start (up to rounding)."""
    dtype = torch.bfloat16
    straight = make_model(dtype)
    straight_opt = INNA(straight.parameters(), **HYPER, **impl_kwargs(load_impl))
    train(straight, straight_opt, range(5))

    saver = make_model(dtype)
    saver_opt = INNA(saver.parameters(), **HYPER, **impl_kwargs(save_impl))
    train(saver, saver_opt, range(2))
    saved = through_file(saver_opt.state_dict(), map_location=torch.device("cpu"))

    loader = clone_model(saver)
    loader_opt = INNA(loader.parameters(), **HYPER, **impl_kwargs(load_impl))
    loader_opt.load_state_dict(saved)
    assert all(loader_opt.state[p]["phase"].dtype == torch.float32 for p in loader.parameters())
    train(loader, loader_opt, range(2, 5))
    # bf16 params: the implementations may round the stored param differently by one ulp.
    if save_impl == load_impl:
        assert_same_training_state(straight, straight_opt, loader, loader_opt, exact=True,
                                   what="same implementation")
    else:
        for a, b in zip(straight.parameters(), loader.parameters()):
            torch.testing.assert_close(b, a, rtol=2e-2, atol=1e-2)
            torch.testing.assert_close(loader_opt.state[b]["phase"],
                                       straight_opt.state[a]["phase"], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("copy_how", ["deepcopy", "pickle"])
def test_copied_optimizer_still_keeps_float32_phase_on_load(copy_how):
    model = make_model(torch.bfloat16)
    opt = INNA(model.parameters(), **HYPER)
    train(model, opt, range(2))
    saved = opt.state_dict()
    copied = copy.deepcopy(opt) if copy_how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    copied.load_state_dict(saved)
    for p in copied.param_groups[0]["params"]:
        assert copied.state[p]["phase"].dtype == torch.float32


class AuthorsINNA(Optimizer):
    """The authors' public INNA class, transcribed from its documented semantics, independently
    of inna_fused:

    - state per param: 'psi' (a tensor) and 'step' (a Python int, the steps already taken);
    - group keys: lr, alpha, beta, decaypower, weight_decay;
    - ψ₀ = (1 − αβ)θ₀, created at the param's first step ("zero" convention);
    - γ_k = lr / (k+1)^decaypower;
    - coupled weight decay: θ's step gets + wd·θ (not multiplied by β).
    """

    def __init__(self, params, lr=0.1, alpha=0.5, beta=0.1, decaypower=0.0, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, alpha=alpha, beta=beta, decaypower=decaypower,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, alpha, beta = group["lr"], group["alpha"], group["beta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["psi"] = (1 - alpha * beta) * p.clone()
                gamma = lr / (state["step"] + 1) ** group["decaypower"]
                psi = state["psi"]
                velocity_theta = (1 / beta - alpha) * p - psi / beta
                velocity_psi = velocity_theta.clone()
                velocity_theta -= beta * p.grad + group["weight_decay"] * p
                psi += gamma * velocity_psi
                p += gamma * velocity_theta
                state["step"] += 1


def two_part_loss(model, k):
    """Loss on `model`'s first layer always, on its second only from step 3 on: when the
    checkpoint is taken, the second layer has no state yet."""
    x = batch(k).double()
    hidden = model[1](model[0](x))
    return hidden.square().mean() + (model[2](hidden).square().mean() if k >= 3 else 0)


@pytest.mark.parametrize("impl", impl_params())
def test_loads_the_authors_state_dict_and_continues_as_their_class_would(impl):
    hyper = dict(lr=0.05, alpha=0.7, beta=0.2, decaypower=0.25, weight_decay=0.02)
    theirs = make_model().double()
    theirs_opt = AuthorsINNA(theirs.parameters(), **hyper)
    for k in range(3):
        theirs_opt.zero_grad()
        two_part_loss(theirs, k).backward()
        theirs_opt.step()
    saved = through_file(theirs_opt.state_dict())
    assert isinstance(saved["state"][0]["step"], int)
    assert set(saved["param_groups"][0]) == {"params", *hyper}

    ours = make_model().double()
    ours.load_state_dict(theirs.state_dict())
    ours_opt = INNA(ours.parameters(), **impl_kwargs(impl))  # defaults: lr etc. come from the file
    ours_opt.load_state_dict(saved)
    for k in range(3, 7):
        for model, opt in ((theirs, theirs_opt), (ours, ours_opt)):
            opt.zero_grad()
            two_part_loss(model, k).backward()
            opt.step()
    for (name, a), b in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=lambda m: f"{name}: {m}")
        ours_psi = phase_to_psi(b, ours_opt.state[b]["phase"], hyper["alpha"], hyper["beta"])
        torch.testing.assert_close(ours_psi, theirs_opt.state[a]["psi"],
                                   rtol=1e-12, atol=1e-14, msg=lambda m: f"psi {name}: {m}")
        assert float(ours_opt.state[b]["step"]) == theirs_opt.state[a]["step"]
    assert theirs_opt.state[theirs[2].weight]["step"] == 4  # the late layer did start at step 3
