"""INNA.step and INNAprop.step keep a plan of what a full step found out (implementation, one
device and dtype per group, validated hyper-parameters) and reuse it while it fits. These tests
run scenarios that change things between steps on two identical optimizers, one with plans and one
without, and require identical results (and identical errors)."""
import pytest
import torch

from inna_fused import INNA, INNAprop

from conftest import requires_cpu_kernel

pytestmark = requires_cpu_kernel

SHAPES = [(4, 3), (5,), (2, 2, 2), (7,)]


def make(shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    return params


def new_grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def snapshot(opt, params):
    out = [p.detach().clone() for p in params]
    for p in params:
        st = opt.state.get(p, {})
        out += [st[k].detach().clone() for k in ("phase", "exp_avg_sq", "step") if k in st]
    return out


CLASSES = [INNA, INNAprop]


def run(scenario, planned, cls=INNA, **kwargs):
    params = make()
    opt = cls(params, lr=0.05, fused=True, **kwargs)
    if not planned:
        opt._make_plan = lambda work: None
    errors = []
    for k in range(6):
        new_grads(params, k)
        scenario(k, opt, params)
        try:
            opt.step()
        except (ValueError, TypeError, RuntimeError) as e:
            errors.append((k, type(e)))
        if planned and k >= 1 and scenario in (plain, frozen_param):
            assert opt._plan is not None  # the plan is in use
    return snapshot(opt, params), errors


def plain(k, opt, params):
    pass


def add_group(k, opt, params):
    if k == 2:
        extra = make([(3,), (2, 5)], seed=7)
        params += extra
        opt.add_param_group({"params": extra, "lr": 0.01})
        new_grads(params, 50 + k)


def grad_none_then_back(k, opt, params):
    if k in (2, 3):
        params[1].grad = None


def grad_none_from_start(k, opt, params):
    if k < 3:
        params[2].grad = None


def frozen_param(k, opt, params):
    params[2].grad = None  # never has a grad: the plan holds with it left out


def frozen_then_thawed(k, opt, params):
    if k < 4:
        params[0].grad = None


def load_state(k, opt, params):
    if k == 3:
        other = type(opt)(make(seed=3), lr=0.05, fused=True)
        new_grads(other.param_groups[0]["params"], 77)
        other.step()
        other.step()
        opt.load_state_dict(other.state_dict())


def hyper_change(k, opt, params):
    group = opt.param_groups[0]
    if k == 2:
        group["lr"] = 0.02
        group["alpha"] = 0.7
    if k == 3:
        group["weight_decay"] = 0.1
        group["psi_init"] = "zero"
    if k == 4:
        group["beta"] = -1.0  # invalid: the step raises, nothing moves
    if k == 5:
        group["beta"] = 0.2


def psi_init_invalid(k, opt, params):
    if k == 2:
        opt.param_groups[0]["psi_init"] = "bogus"
    if k == 3:
        opt.param_groups[0]["psi_init"] = "paper"


def lr_tensor(k, opt, params):
    if k == 1:
        opt.param_groups[0]["lr"] = torch.tensor(0.03)
    if k == 3:
        opt.param_groups[0]["lr"].fill_(0.01)  # in place: the op reads it on every call
    if k == 4:
        opt.param_groups[0]["lr"].fill_(float("nan"))


def lr_schedule(k, opt, params):
    opt.param_groups[0]["lr"] = 0.05 / (k + 1)  # a new float every step: the plan takes it over
    if k == 2:
        opt.param_groups[0]["lr"] = 3  # an int
    if k == 4:
        opt.param_groups[0]["lr"] = float("nan")  # invalid: raises, nothing moves


def dtype_change(k, opt, params):
    if k == 2:
        params[0].data = params[0].data.to(torch.bfloat16)
    if k == 4:
        for p in params:
            p.data = p.data.to(torch.float16)
    for p in params:
        if p.grad is not None:
            p.grad = p.grad.to(p.dtype)


def state_entry_replaced(k, opt, params):
    if k == 3:
        st = opt.state[params[1]]
        st["phase"] = torch.full_like(st["phase"], 0.5)
        st["step"] = torch.tensor(10.0)


def state_removed(k, opt, params):
    if k == 2:
        del opt.state[params[0]]
    if k == 4:
        opt.state.clear()


def param_replaced_in_group(k, opt, params):
    if k == 2:
        params[3] = make([(7,)], seed=9)[0]
        params[3].grad = torch.ones(7)
        opt.param_groups[0]["params"][3] = params[3]


def bad_grad_shape(k, opt, params):
    if k == 3:
        params[2].grad = params[2].data  # aliases what the step writes: raises, nothing moves


def sparse_grad(k, opt, params):
    if k == 3:
        params[1].grad = params[1].grad.to_sparse()


def grad_scale(k, opt, params):
    opt.grad_scale = torch.tensor(4.0)
    opt.found_inf = torch.tensor(1.0 if k == 3 else 0.0)


def lr_at_or_above_beta(k, opt, params):
    # INNAprop needs lr < beta: a scheduler's lr that reaches beta raises, nothing moves.
    group = opt.param_groups[0]
    group["lr"] = {2: group["beta"], 3: 0.01}.get(k, group["lr"])


def innaprop_hyper_change(k, opt, params):
    group = opt.param_groups[0]
    if k == 2:
        group["sigma"] = 0.9
        group["eps"] = 1e-3
    if k == 3:
        group["sigma"] = 1.0  # invalid
    if k == 4:
        group["sigma"] = 0.99


def exp_avg_sq_replaced(k, opt, params):
    st = opt.state.get(params[1], {})
    if k == 3 and "exp_avg_sq" in st:
        st["exp_avg_sq"] = torch.full_like(st["exp_avg_sq"], 0.25)
    if k == 4 and "exp_avg_sq" in st:
        st["exp_avg_sq"] = st["exp_avg_sq"].double()  # wrong dtype: raises, nothing moves


SCENARIOS = [plain, frozen_param, frozen_then_thawed, add_group, grad_none_then_back, grad_none_from_start, load_state,
             hyper_change, psi_init_invalid, lr_tensor, lr_schedule, dtype_change, state_entry_replaced,
             state_removed, param_replaced_in_group, bad_grad_shape, sparse_grad, grad_scale,
             lr_at_or_above_beta, innaprop_hyper_change, exp_avg_sq_replaced]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs", [{}, {"state_dtype": torch.bfloat16}], ids=["f32", "bf16"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_planned_steps_match_full_steps(scenario, kwargs, cls):
    planned, planned_errors = run(scenario, True, cls, **kwargs)
    full, full_errors = run(scenario, False, cls, **kwargs)
    assert planned_errors == full_errors
    assert len(planned) == len(full)
    for a, b in zip(planned, full):
        assert a.dtype == b.dtype and torch.equal(a, b)


def two_groups(k, opt, params):
    pass


@pytest.mark.parametrize("change", ["none", "grad_none", "dtype", "sparse", "bad_beta",
                                    "nan_lr_tensor", "lr_schedule"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_two_groups(change, cls):
    def go(planned):
        params = make()
        opt = cls([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.1}],
                  lr=0.05, fused=True)
        if not planned:
            opt._make_plan = lambda work: None
        errors = []
        for k in range(5):
            new_grads(params, k)
            if k == 2:
                if change == "grad_none":
                    params[3].grad = None
                elif change == "dtype":
                    params[3].data = params[3].data.to(torch.bfloat16)
                    params[3].grad = params[3].grad.to(torch.bfloat16)
                elif change == "sparse":
                    params[3].grad = params[3].grad.to_sparse()
                elif change == "bad_beta":
                    opt.param_groups[1]["beta"] = 0.0
                elif change == "nan_lr_tensor":
                    opt.param_groups[1]["lr"].fill_(float("nan"))
            if change == "nan_lr_tensor" and k == 1:
                opt.param_groups[1]["lr"] = torch.tensor(0.01)
            if change == "nan_lr_tensor" and k == 3:
                opt.param_groups[1]["lr"].fill_(0.01)
            if change == "lr_schedule":
                opt.param_groups[0]["lr"] = 0.05 * 0.9 ** k
            try:
                opt.step()
            except (ValueError, TypeError, RuntimeError) as e:
                errors.append((k, type(e)))
            if change == "bad_beta" and k == 2:
                opt.param_groups[1]["beta"] = 0.2
        return snapshot(opt, params), errors
    (a, ea), (b, eb) = go(True), go(False)
    assert ea == eb
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_hooks_fire_on_planned_steps():
    params = make()
    opt = INNA(params, lr=0.05, fused=True)
    calls = []
    opt.register_step_pre_hook(lambda o, a, kw: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, kw: calls.append("post"))
    for k in range(3):
        new_grads(params, k)
        opt.step()
    assert opt._plan is not None
    assert calls == ["pre", "post"] * 3


def test_planned_step_reads_grads_of_this_step():
    # zero_grad(set_to_none=False) keeps the grad tensors; backward() makes new ones: both seen.
    params = make()
    opt = INNA(params, lr=0.05, fused=True)
    new_grads(params, 0)
    opt.step()
    new_grads(params, 1)
    opt.step()
    before = [p.detach().clone() for p in params]
    opt.zero_grad(set_to_none=False)
    for p in params:
        p.grad.fill_(1.0)
    opt.step()
    for p, b in zip(params, before):
        assert not torch.equal(p.detach(), b)


@pytest.mark.parametrize("scenario", [plain, grad_none_then_back, dtype_change, lr_tensor,
                                      grad_scale, bad_grad_shape], ids=lambda f: f.__name__)
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_direct_call_matches_torch_ops(scenario, cls, monkeypatch):
    from inna_fused import functional, innaprop_functional
    module = functional if cls is INNA else innaprop_functional
    if module._DIRECT is None:
        pytest.skip("extension built without the direct call")
    direct, direct_errors = run(scenario, True, cls)
    monkeypatch.setattr(module, "_DIRECT", None)  # steps call torch.ops instead
    boxed, boxed_errors = run(scenario, True, cls)
    assert direct_errors == boxed_errors
    for a, b in zip(direct, boxed):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_direct_call_declines_under_dispatch_mode():
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    params = make()
    opt = INNA(params, lr=0.05, fused=True)
    for k in range(2):
        new_grads(params, k)
        opt.step()
    assert opt._plan is not None
    new_grads(params, 2)
    with Record():
        opt.step()
    assert any("fused_inna_" in s for s in seen)
    assert opt.state[params[0]]["step"].item() == 3


def test_profiler_sees_planned_steps():
    params = make()
    opt = INNA(params, lr=0.05, fused=True)
    for k in range(2):
        new_grads(params, k)
        opt.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert any("fused_inna_" in e.name for e in prof.events())


def test_planned_step_keeps_python_refcounts():
    import sys
    params = make()
    opt = INNA(params, lr=0.05, fused=True)
    for k in range(2):
        new_grads(params, k)
        opt.step()
    before = [sys.getrefcount(p) for p in params] + [sys.getrefcount(p.grad) for p in params]
    for _ in range(5):
        opt.step()
    after = [sys.getrefcount(p) for p in params] + [sys.getrefcount(p.grad) for p in params]
    assert before == after


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
@pytest.mark.parametrize("victim", ["phases", "params", "steps"])
def test_op_finds_a_grad_aliasing_a_written_tensor_in_any_address_order(order, victim):
    # The op's overlap check walks grads in address order when they come sorted either way and
    # searches otherwise; each way must find the one grad that aliases a written tensor.
    n, bad = 40, 17
    block = torch.randn(n, 16)
    grads = [block[i, :8] for i in range(n)]  # ascending addresses, gaps between them
    params = [torch.randn(8) for _ in range(n)]
    phases = [torch.randn(8) for _ in range(n)]
    steps = [torch.ones(()) for _ in range(n)]
    target = {"params": params, "phases": phases, "steps": steps}[victim]
    target[5] = block[bad, 3] if victim == "steps" else block[bad, :8]  # aliases grads[bad]
    target[5].fill_(1.0)
    index = list(range(n))
    if order == "descending":
        index = index[::-1]
    elif order == "shuffled":
        index = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    grads = [grads[i] for i in index]
    at = index.index(bad)
    before = [t.clone() for t in params + phases + steps]
    hyper = dict(lr=0.1, alpha=0.5, beta=0.1, decay_power=0.0, weight_decay=0.0,
                 decoupled_weight_decay=False, paper_init=True, maximize=False)
    with pytest.raises(ValueError, match=rf"grads\[{at}\] and {victim}\[5\] overlap"):
        torch.ops.inna_fused.fused_inna_(params, grads, phases, steps, **hyper)
    for a, b in zip(params + phases + steps, before):
        assert torch.equal(a, b)
    grads[at] = torch.randn(8)
    torch.ops.inna_fused.fused_inna_(params, grads, phases, steps, **hyper)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_full_path_runs_only_when_needed(frozen, groups, cls, monkeypatch):
    params = make()
    spec = [{"params": params}] if groups == 1 else [{"params": params[:2]},
                                                     {"params": params[2:], "lr": 0.01}]
    opt = cls(spec, lr=0.05, fused=True)
    full_steps = []
    init_group = opt._init_group
    monkeypatch.setattr(opt, "_init_group", lambda group, *a, **kw: (
        full_steps.append(1), init_group(group, *a, **kw)))
    for k in range(5):
        new_grads(params, k)
        if frozen:
            params[3].grad = None
        opt.param_groups[0]["lr"] = 0.05 / (k + 1)  # an LR schedule: no full step
        if k == 3:
            opt.param_groups[-1]["alpha"] = 0.6  # a changed hyper-parameter: one full step
        opt.step()
    assert len(full_steps) == 2 * groups  # steps 0 and 3


@pytest.mark.parametrize("lr", [0.05, "tensor"])
def test_functional_unboxed_under_no_grad_matches_torch_ops(lr):
    from inna_fused.functional import inna

    def go(no_grad):
        params = [p.detach() for p in make()]
        grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i))
                 for i, p in enumerate(params)]
        phases = [torch.empty_like(p) for p in params]
        steps = [torch.zeros(()) for _ in params]
        rate = torch.tensor(0.05) if lr == "tensor" else lr
        for _ in range(3):
            with torch.set_grad_enabled(not no_grad):
                inna(params, grads, phases, steps, lr=rate, alpha=0.5, beta=0.1,
                     weight_decay=0.01, seed=3)
        return params + phases + steps

    for a, b in zip(go(True), go(False)):
        assert torch.equal(a, b)
