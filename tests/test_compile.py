"""torch.compile: the fused INNA and INNAprop steps trace without a graph break and match eager
execution.

Compiling takes seconds per graph on a small machine, so the models are tiny and the
graph-capturing tests use the "eager"/"aot_eager" backends (dynamo + the op's fake impl +
functionalization are what is under test); one test runs inductor end to end.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from inna_fused import INNA, INNAprop, _ops

from conftest import requires_cpu_kernel

pytestmark = requires_cpu_kernel


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make_model(seed=0):
    """Two layers in two dtypes, so one step runs the op once per (device, dtype) group."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    model[2].to(torch.float64)
    return model


def loss_of(model, x):
    hidden = model[1](model[0](x))
    return model[2](hidden.double()).square().mean()


def train(model, step_fn_of, lrs, optimizer=INNA, **opt_kwargs):
    """Steps with lr taking the values `lrs`, written in place into a 0-d tensor lr."""
    lr = torch.tensor(lrs[0])
    opt = optimizer(model.parameters(), lr=lr, fused=True, **opt_kwargs)
    step = step_fn_of(opt)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    for value in lrs:
        lr.fill_(value)
        opt.zero_grad()
        loss_of(model, x).backward()
        step()
    return opt


HYPER = dict(alpha=0.6, beta=0.2, decaypower=0.5, weight_decay=0.01)
LRS = [0.05, 0.04, 0.03, 0.02]


@pytest.mark.parametrize("psi_init", ["paper", "zero"])
def test_fullgraph_step_matches_eager_and_compiles_once(psi_init):
    eager_model, compiled_model = make_model(), make_model()
    train(eager_model, lambda opt: opt.step, LRS, psi_init=psi_init, **HYPER)
    counter = CompileCounterWithBackend("aot_eager")
    opt = train(compiled_model,
                lambda opt: torch.compile(opt.step, fullgraph=True, backend=counter),
                LRS, psi_init=psi_init, **HYPER)
    # One graph for every step: neither the lr value (a tensor changed in place), nor the step
    # count (a tensor read by the kernel), nor ψ's first-step initialisation recompiles.
    assert counter.frame_count == 1
    for p_eager, p_compiled in zip(eager_model.parameters(), compiled_model.parameters()):
        assert torch.equal(p_eager, p_compiled)
    assert all(float(opt.state[p]["step"]) == len(LRS) for p in compiled_model.parameters())


# The scheduler wraps opt.step in a function dynamo refuses to trace, so the step is compiled
# before the scheduler exists; the scheduler's call-order heuristic then warns (harmless).
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_compiled_step_with_lr_scheduler_does_not_recompile():
    """A scheduler writes a tensor lr in place (torch.optim.lr_scheduler does fill_ for tensors)."""
    def run(compile_step):
        model = make_model()
        opt = INNA(model.parameters(), lr=torch.tensor(0.05), fused=True, **HYPER)
        counter = CompileCounterWithBackend("eager")
        # Compiled before the scheduler wraps opt.step (dynamo does not trace that wrapper).
        step = opt.step
        if compile_step:
            step = torch.compile(opt.step, fullgraph=True, backend=counter)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.8 ** k)
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
        for _ in range(4):
            opt.zero_grad()
            loss_of(model, x).backward()
            step()
            sched.step()
        return model, counter.frame_count

    (eager_model, _), (compiled_model, frames) = run(False), run(True)
    assert frames == 1
    for p_eager, p_compiled in zip(eager_model.parameters(), compiled_model.parameters()):
        assert torch.equal(p_eager, p_compiled)


def test_inductor_compiled_step_matches_eager():
    eager_model, compiled_model = make_model(), make_model()
    train(eager_model, lambda opt: opt.step, LRS[:3], **HYPER)
    train(compiled_model, lambda opt: torch.compile(opt.step, fullgraph=True), LRS[:3], **HYPER)
    for p_eager, p_compiled in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(p_compiled, p_eager, rtol=0, atol=0)


def test_compiled_step_driven_by_grad_scaler():
    """GradScaler hands grad_scale/found_inf to a compiled step: one graph, and the step with an
    inf gradient is skipped inside it exactly as in eager mode."""
    def run(compile_step):
        model = make_model()
        opt = INNA(model.parameters(), lr=torch.tensor(0.05), fused=True, **HYPER)
        counter = CompileCounterWithBackend("aot_eager")
        if compile_step:
            opt.step = torch.compile(opt.step, fullgraph=True, backend=counter)
        scaler = torch.amp.GradScaler("cpu", init_scale=1000.0)
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
        for k in range(4):
            opt.zero_grad()
            scaler.scale(loss_of(model, x)).backward()
            if k == 2:
                model[0].weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
        return model, opt, counter.frame_count, scaler.get_scale()

    eager_model, eager_opt, _, eager_scale = run(False)
    compiled_model, compiled_opt, frames, compiled_scale = run(True)
    assert frames == 1
    assert compiled_scale == eager_scale == 500.0  # lowered once, by the inf step
    for p_eager, p_compiled in zip(eager_model.parameters(), compiled_model.parameters()):
        assert torch.equal(p_eager, p_compiled)
        assert float(compiled_opt.state[p_compiled]["step"]) == 3  # the inf step did not count


# ---------------------------------------------------------------------------------------------
# INNAprop: the same checks on inna_fused::fused_innaprop_

requires_innaprop_kernel = pytest.mark.skipif(
    not _ops.op_kernel_available(_ops.INNAPROP_OP_NAME, "cpu"),
    reason="the CPU kernel of inna_fused::fused_innaprop_ is not built")

PROP_HYPER = dict(alpha=0.5, beta=0.9, sigma=0.99, eps=1e-8, weight_decay=0.01)


def assert_same_innaprop_state(eager_model, eager_opt, compiled_model, compiled_opt, steps):
    for p_eager, p_compiled in zip(eager_model.parameters(), compiled_model.parameters()):
        assert torch.equal(p_eager, p_compiled)
        for key in ("phase", "exp_avg_sq"):
            assert torch.equal(eager_opt.state[p_eager][key], compiled_opt.state[p_compiled][key])
        assert float(compiled_opt.state[p_compiled]["step"]) == steps


@requires_innaprop_kernel
@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16], ids=["fp32-state", "bf16-state"])
def test_innaprop_fullgraph_step_matches_eager_and_compiles_once(state_dtype):
    eager_model, compiled_model = make_model(), make_model()
    eager_opt = train(eager_model, lambda opt: opt.step, LRS, optimizer=INNAprop,
                      state_dtype=state_dtype, **PROP_HYPER)
    counter = CompileCounterWithBackend("aot_eager")
    opt = train(compiled_model,
                lambda opt: torch.compile(opt.step, fullgraph=True, backend=counter),
                LRS, optimizer=INNAprop, state_dtype=state_dtype, **PROP_HYPER)
    # One graph for every step: neither the lr value, nor the step count (the bias correction
    # 1 − σ^t is computed by the kernel from the step tensor), nor the first step's state
    # initialisation recompiles.
    assert counter.frame_count == 1
    assert_same_innaprop_state(eager_model, eager_opt, compiled_model, opt, len(LRS))


@requires_innaprop_kernel
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_innaprop_compiled_step_with_lr_scheduler_does_not_recompile():
    def run(compile_step):
        model = make_model()
        opt = INNAprop(model.parameters(), lr=torch.tensor(0.05), fused=True, **PROP_HYPER)
        counter = CompileCounterWithBackend("eager")
        step = opt.step
        if compile_step:  # before the scheduler wraps opt.step (dynamo does not trace that)
            step = torch.compile(opt.step, fullgraph=True, backend=counter)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.8 ** k)
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
        for _ in range(4):
            opt.zero_grad()
            loss_of(model, x).backward()
            step()
            sched.step()
        return model, opt, counter.frame_count

    (eager_model, eager_opt, _), (compiled_model, compiled_opt, frames) = run(False), run(True)
    assert frames == 1
    assert float(compiled_opt.param_groups[0]["lr"]) == pytest.approx(0.05 * 0.8 ** 4)
    assert_same_innaprop_state(eager_model, eager_opt, compiled_model, compiled_opt, 4)


@requires_innaprop_kernel
def test_innaprop_inductor_compiled_step_matches_eager():
    eager_model, compiled_model = make_model(), make_model()
    eager_opt = train(eager_model, lambda opt: opt.step, LRS[:3], optimizer=INNAprop,
                      **PROP_HYPER)
    opt = train(compiled_model, lambda opt: torch.compile(opt.step, fullgraph=True), LRS[:3],
                optimizer=INNAprop, **PROP_HYPER)
    assert_same_innaprop_state(eager_model, eager_opt, compiled_model, opt, 3)


@requires_innaprop_kernel
def test_innaprop_compiled_step_driven_by_grad_scaler():
    def run(compile_step):
        model = make_model()
        opt = INNAprop(model.parameters(), lr=torch.tensor(0.05), fused=True, **PROP_HYPER)
        counter = CompileCounterWithBackend("aot_eager")
        if compile_step:
            opt.step = torch.compile(opt.step, fullgraph=True, backend=counter)
        scaler = torch.amp.GradScaler("cpu", init_scale=1000.0)
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
        for k in range(4):
            opt.zero_grad()
            scaler.scale(loss_of(model, x)).backward()
            if k == 2:
                model[0].weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
        return model, opt, counter.frame_count, scaler.get_scale()

    eager_model, eager_opt, _, eager_scale = run(False)
    compiled_model, compiled_opt, frames, compiled_scale = run(True)
    assert frames == 1
    assert compiled_scale == eager_scale == 500.0  # lowered once, by the inf step
    assert_same_innaprop_state(eager_model, eager_opt, compiled_model, compiled_opt, 3)
