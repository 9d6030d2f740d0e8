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
PROP_HYPER = dict(alpha=0.5, beta=0.9, sigma=0.99, eps=1e-8, weight_decay=0.01)
LRS = [0.05, 0.04, 0.03, 0.02]

requires_innaprop_kernel = pytest.mark.skipif(
    not _ops.op_kernel_available(_ops.INNAPROP_OP_NAME, "cpu"),
    reason="the CPU kernel of inna_fused::fused_innaprop_ is not built")
# (optimizer, its hyper-parameters) for the tests that run both.
BOTH = [pytest.param(INNA, HYPER, id="INNA"),
        pytest.param(INNAprop, PROP_HYPER, id="INNAprop", marks=requires_innaprop_kernel)]


def assert_same_state(eager_model, eager_opt, compiled_model, compiled_opt, steps):
    """Params and every state tensor (phase; INNAprop's exp_avg_sq) bitwise equal, and every
    param's step count equal to `steps`."""
    for p_eager, p_compiled in zip(eager_model.parameters(), compiled_model.parameters()):
        assert torch.equal(p_eager, p_compiled)
        eager_state, compiled_state = eager_opt.state[p_eager], compiled_opt.state[p_compiled]
        assert eager_state.keys() == compiled_state.keys()
        for key in eager_state.keys() - {"step"}:
            assert torch.equal(eager_state[key], compiled_state[key]), key
        assert float(compiled_state["step"]) == steps


@pytest.mark.parametrize("optimizer, options", [
    pytest.param(INNA, dict(HYPER, psi_init="paper"), id="INNA-paper"),
    pytest.param(INNA, dict(HYPER, psi_init="zero"), id="INNA-zero"),
    pytest.param(INNAprop, PROP_HYPER, id="INNAprop-fp32-state",
                 marks=requires_innaprop_kernel),
    pytest.param(INNAprop, dict(PROP_HYPER, state_dtype=torch.bfloat16),
                 id="INNAprop-bf16-state", marks=requires_innaprop_kernel)])
def test_fullgraph_step_matches_eager_and_compiles_once(optimizer, options):
    eager_model, compiled_model = make_model(), make_model()
    eager_opt = train(eager_model, lambda opt: opt.step, LRS, optimizer=optimizer, **options)
    counter = CompileCounterWithBackend("aot_eager")
    opt = train(compiled_model,
                lambda opt: torch.compile(opt.step, fullgraph=True, backend=counter),
                LRS, optimizer=optimizer, **options)
    # One graph for every step: neither the lr value (a tensor changed in place), nor the step
    # count (a tensor read by the kernel: γ_k, INNAprop's bias correction 1 − σ^t), nor the
    # first step's state initialisation recompiles.
    assert counter.frame_count == 1
    assert_same_state(eager_model, eager_opt, compiled_model, opt, len(LRS))


# The scheduler wraps opt.step in a function dynamo refuses to trace, so the step is compiled
# before the scheduler exists; the scheduler's call-order heuristic then warns (harmless).
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("optimizer, hyper", BOTH)
def test_compiled_step_with_lr_scheduler_does_not_recompile(optimizer, hyper):
    """A scheduler writes a tensor lr in place (torch.optim.lr_scheduler does fill_ for tensors)."""
    def run(compile_step):
        model = make_model()
        opt = optimizer(model.parameters(), lr=torch.tensor(0.05), fused=True, **hyper)
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
        return model, opt, counter.frame_count

    (eager_model, eager_opt, _), (compiled_model, compiled_opt, frames) = run(False), run(True)
    assert frames == 1
    assert float(compiled_opt.param_groups[0]["lr"]) == pytest.approx(0.05 * 0.8 ** 4)
    assert_same_state(eager_model, eager_opt, compiled_model, compiled_opt, 4)


@pytest.mark.parametrize("optimizer, hyper", BOTH)
def test_inductor_compiled_step_matches_eager(optimizer, hyper):
    eager_model, compiled_model = make_model(), make_model()
    eager_opt = train(eager_model, lambda opt: opt.step, LRS[:3], optimizer=optimizer, **hyper)
    opt = train(compiled_model, lambda opt: torch.compile(opt.step, fullgraph=True), LRS[:3],
                optimizer=optimizer, **hyper)
    assert_same_state(eager_model, eager_opt, compiled_model, opt, 3)


@pytest.mark.parametrize("optimizer, hyper", BOTH)
def test_compiled_step_driven_by_grad_scaler(optimizer, hyper):
    """GradScaler hands grad_scale/found_inf to a compiled step: one graph, and the step with an
    inf gradient is skipped inside it exactly as in eager mode."""
    def run(compile_step):
        model = make_model()
        opt = optimizer(model.parameters(), lr=torch.tensor(0.05), fused=True, **hyper)
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
    assert_same_state(eager_model, eager_opt, compiled_model, compiled_opt, 3)  # inf step: none
