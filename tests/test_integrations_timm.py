"""inna_fused.register_timm_optimizers(): timm's create_optimizer_v2 builds INNA by name, and
inna_fused never needs timm otherwise."""
import subprocess
import sys

import pytest
import torch

import inna_fused
from inna_fused import INNA
from inna_fused.integrations import timm_optimizer_names


def test_importing_inna_fused_imports_no_optional_library():
    code = ("import sys, inna_fused, inna_fused.integrations; "
            "print(sorted(m for m in ('timm', 'transformers', 'lightning', 'pytorch_lightning', "
            "'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_register_without_timm_raises_clear_import_error(monkeypatch):
    for name in list(sys.modules):
        if name == "timm" or name.startswith("timm."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ImportError, match=r"needs timm.*pip install timm"):
        inna_fused.register_timm_optimizers()


def test_names_have_no_underscore():
    # timm splits optimizer names on "_" (e.g. "lookahead_inna").
    assert "inna" in timm_optimizer_names()
    assert all("_" not in n for n in timm_optimizer_names())


@pytest.fixture(scope="module")
def timm_optim():
    return pytest.importorskip("timm.optim", reason="timm is not installed "
                               "(pip install 'inna_fused[integrations]')")


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7),
                               torch.nn.Linear(7, 3))


def train(m, opt, steps=3):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()


@pytest.fixture(scope="module")
def registered(timm_optim):
    names = inna_fused.register_timm_optimizers()
    assert names == timm_optimizer_names()
    return names


def test_registered_names_are_listed(registered, timm_optim):
    listed = timm_optim.list_optimizers("inna*")
    assert set(registered) <= set(listed)
    assert timm_optim.get_optimizer_class("inna") is INNA
    if hasattr(inna_fused, "INNAprop"):
        assert "innaprop" in registered


def test_register_twice_is_harmless(registered, timm_optim):
    assert inna_fused.register_timm_optimizers() == registered
    assert timm_optim.get_optimizer_class("inna") is INNA


def test_create_optimizer_v2_returns_inna_with_timm_param_groups(registered, timm_optim):
    m = model()
    opt = timm_optim.create_optimizer_v2(m, "inna", lr=0.05, weight_decay=0.01, alpha=0.3,
                                         beta=0.2, decaypower=0.5)
    assert type(opt) is INNA
    # timm's groups: no weight decay for 1-d params (biases, LayerNorm), weight decay for the rest.
    by_wd = {g["weight_decay"]: len(g["params"]) for g in opt.param_groups}
    assert by_wd == {0.0: 4, 0.01: 2}
    for g in opt.param_groups:
        assert (g["lr"], g["alpha"], g["beta"], g["decaypower"]) == (0.05, 0.3, 0.2, 0.5)


def test_timm_built_inna_trains_like_direct_inna(registered, timm_optim):
    m1, m2 = model(), model()
    opt1 = timm_optim.create_optimizer_v2(m1, "INNA", lr=0.05, weight_decay=0.0)
    opt2 = INNA(m2.parameters(), lr=0.05)
    train(m1, opt1)
    train(m2, opt2)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


def test_generic_timm_kwargs_are_dropped(registered, timm_optim):
    # timm passes eps/betas/momentum for some optimizers; INNA has none of them.
    opt = timm_optim.create_optimizer_v2(model(), "inna", lr=0.05, eps=1e-8, betas=(0.9, 0.99),
                                         momentum=0.9, foreach=True)
    assert type(opt) is INNA and opt.defaults["foreach"] is True


def test_lookahead_wrapper(registered, timm_optim):
    m = model()
    opt = timm_optim.create_optimizer_v2(m, "lookahead_inna", lr=0.05)
    assert type(opt._base_optimizer) is INNA  # timm keeps it there
    before = [p.detach().clone() for p in m.parameters()]
    train(m, opt)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
