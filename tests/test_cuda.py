"""The CUDA kernel on a GPU. Skipped unless the CUDA kernel was built and a GPU is present.

Run them all with `pytest tests/test_cuda.py` (bench/gpu_check.sh does, on the GPU machine).
"""
import math

import pytest
import torch

import inna_fused
from inna_fused import INNA

from inna_cuda_helpers import (DTYPE_IDS, HYPER_CASES, TOLERANCES, Truth, assert_close_report,
                               assert_matches, make_grads, make_tensors, opmath_dtype,
                               phase_to_psi)

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
STATE_IDS = {"opmath": "opmath-phase", "bf16": "bf16-phase"}
CHUNK = 1 << 16  # csrc/cuda/multi_tensor_apply.cuh kChunk


@pytest.fixture(autouse=True)
def _require_cuda_kernel():
    # Asked at run time, not at import: collecting this file never touches CUDA.
    if not inna_fused.kernel_available("cuda"):
        pytest.skip("CUDA kernel not built")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def op_kwargs(lr=0.05, alpha=0.5, beta=0.1, decay_power=0.0, weight_decay=0.0,
              decoupled_weight_decay=False, psi_init="paper", maximize=False,
              stochastic_rounding=False, seed=0, **extra):
    """The op's arguments. Stochastic rounding is off unless asked: most tests compare with a
    deterministic reference."""
    return dict(lr=lr, alpha=alpha, beta=beta, decay_power=decay_power,
                weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                paper_init=psi_init == "paper", maximize=maximize,
                stochastic_rounding=stochastic_rounding, seed=seed, **extra)


def fused_step(params, phases, grads, steps, **hyper):
    kwargs = op_kwargs(**hyper)
    if isinstance(kwargs["lr"], torch.Tensor):
        torch.ops.inna_fused.fused_inna_.tensor_lr(params, grads, phases, steps, **kwargs)
    else:
        torch.ops.inna_fused.fused_inna_(params, grads, phases, steps, **kwargs)


def new_state(params, state="opmath"):
    phases = [torch.full_like(p, math.nan, dtype=torch.bfloat16 if state == "bf16"
                              else opmath_dtype(p.dtype)) for p in params]
    steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in params]
    return phases, steps


def phase_state(opt, p):
    """The optimizer's state tensor of p (the phase; "psi" in optimizers that predate it)."""
    state = opt.state[p]
    return state["phase"] if "phase" in state else state["psi"]


def odd_view(t):
    """The same values at a 1-element offset in a larger buffer (not 16-byte aligned)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buf[1:].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("state", list(STATE_IDS), ids=STATE_IDS.get)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", list(HYPER_CASES))
def test_cuda_matches_reference(case, dtype, state):
    sizes = [0, 1, 7, 1000, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]
    init = make_tensors(sizes, dtype, device="cuda")
    params = [p.clone() for p in init]
    params[3] = odd_view(params[3])  # scalar path
    params[6] = odd_view(params[6])
    phases, steps = new_state(params, state)
    hyper = HYPER_CASES[case]
    truth = Truth(init, alpha=hyper.get("alpha", 0.5), beta=hyper.get("beta", 0.1))
    for k in range(3):
        grads = make_grads(init, k)
        fused_step(params, phases, grads, steps, **hyper)
        truth.step(grads, [k] * len(sizes), **hyper)
    torch.cuda.synchronize()
    assert_matches(params, phases, truth, dtype, what=case)
    assert [s.item() for s in steps] == [3.0] * len(sizes)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_cuda_optimizer_matches_cpu_fused(dtype):
    """The INNA class on CUDA (capturable, lr tensor, AMP scale) against the CPU kernel."""
    init = make_tensors([5, 300, CHUNK + 3], dtype)
    cuda_params = [p.to("cuda", copy=True).requires_grad_() for p in init]
    cpu_params = [p.clone().requires_grad_() for p in init]
    cuda_opt = INNA(cuda_params, lr=torch.tensor(0.05, dtype=torch.float64, device="cuda"),
                    decaypower=0.5, weight_decay=0.01, fused=True, capturable=True)
    cpu_opt = INNA(cpu_params, lr=0.05, decaypower=0.5, weight_decay=0.01, fused=True)
    for k in range(3):
        for pc, pg, g in zip(cpu_params, cuda_params, make_grads(init, k)):
            pc.grad = g.clone()
            pg.grad = g.cuda()
        cuda_opt.step()
        cpu_opt.step()
    (pa, pr), (sa, sr) = TOLERANCES[dtype]
    for i, (pg, pc) in enumerate(zip(cuda_params, cpu_params)):
        assert_close_report(pg, pc, pa, pr, f"INNA class param {i}")
        assert_close_report(phase_state(cuda_opt, pg), phase_state(cpu_opt, pc), sa, sr,
                            f"INNA class state {i}")
    assert all(cuda_opt.state[p]["step"].device.type == "cuda" for p in cuda_params)
    assert [cuda_opt.state[p]["step"].item() for p in cuda_params] == [3.0] * 3


def test_cuda_opcheck():
    params = make_tensors([3, 100, 1000], torch.float32, device="cuda")
    grads = make_grads(params, 0)
    phases = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros((), device="cuda") for _ in params]
    torch.library.opcheck(torch.ops.inna_fused.fused_inna_.default, (params, grads, phases, steps),
                          op_kwargs(decay_power=0.5))
    torch.library.opcheck(torch.ops.inna_fused.fused_inna_.tensor_lr,
                          (params, grads, phases, steps),
                          op_kwargs(lr=torch.tensor(0.05, device="cuda"),
                                    grad_scale=torch.tensor(4.0, device="cuda"),
                                    found_inf=torch.tensor(0.0, device="cuda")))
    bf16 = [p.bfloat16() for p in params]
    torch.library.opcheck(torch.ops.inna_fused.fused_inna_.default,
                          (bf16, [g.bfloat16() for g in grads], [torch.zeros_like(p) for p in bf16],
                           [torch.zeros((), device="cuda") for _ in bf16]),
                          op_kwargs(stochastic_rounding=True, seed=3))


def test_cuda_lr_tensor_on_cpu_or_gpu_same_bits():
    init = make_tensors([17, 5000], torch.float32, device="cuda")
    results = []
    for lr in (0.05, torch.tensor(0.05, dtype=torch.float64),
               torch.tensor(0.05, dtype=torch.float64, device="cuda")):
        params = [p.clone() for p in init]
        phases, steps = new_state(params)
        for k in range(2):
            fused_step(params, phases, make_grads(init, k), steps, lr=lr, decay_power=0.5)
        results.append(params + phases + steps)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def _graph_setup(lr_value):
    model_sizes = [(64, 32), (32,), (1000,), (3, CHUNK + 1)]
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=g).cuda().requires_grad_() for s in model_sizes]
    for p in params:
        p.grad = torch.zeros_like(p)
    lr = torch.tensor(lr_value, device="cuda")
    opt = INNA(params, lr=lr, decaypower=0.25, fused=True, capturable=True)
    return params, lr, opt


def _set_grads(params, k):
    for p, g in zip(params, make_grads([p.detach() for p in params], k)):
        p.grad.copy_(g)


def test_cuda_graph_capture_and_replay_matches_eager():
    params, lr, opt = _graph_setup(0.05)
    eager_params, eager_lr, eager_opt = _graph_setup(0.05)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up creates the state outside the capture
        for k in range(2):
            _set_grads(params, k)
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for k in range(2, 6):
        _set_grads(params, k)
        if k == 4:
            lr.fill_(0.02)  # read by the kernel at replay time
        graph.replay()

    for k in range(6):
        _set_grads(eager_params, k)
        if k == 4:
            eager_lr.fill_(0.02)
        eager_opt.step()
    torch.cuda.synchronize()
    for p, q in zip(params, eager_params):
        assert torch.equal(p, q)
        assert torch.equal(phase_state(opt, p), phase_state(eager_opt, q))
        assert opt.state[p]["step"].item() == eager_opt.state[q]["step"].item() == 6


def test_cuda_compiled_op_matches_eager():
    init = make_tensors([10, 3000, CHUNK + 7], torch.float32, device="cuda")
    lr = torch.tensor(0.05, device="cuda")

    def step(params, phases, grads, steps):
        torch.ops.inna_fused.fused_inna_.tensor_lr(params, grads, phases, steps,
                                                   **op_kwargs(lr=lr, decay_power=0.5))

    compiled = torch.compile(step, fullgraph=True)
    a, b = [p.clone() for p in init], [p.clone() for p in init]
    (phases_a, steps_a), (phases_b, steps_b) = new_state(a), new_state(b)
    for k in range(3):
        grads = make_grads(init, k)
        compiled(a, phases_a, grads, steps_a)
        step(b, phases_b, grads, steps_b)
    for x, y in zip(a + phases_a + steps_a, b + phases_b + steps_b):
        assert torch.equal(x, y)


def test_cuda_compiled_optimizer_step_matches_eager():
    params, lr, opt = _graph_setup(0.05)
    eager_params, eager_lr, eager_opt = _graph_setup(0.05)

    @torch.compile(fullgraph=True)
    def compiled_step():
        opt.step()

    for k in range(3):
        _set_grads(params, k)
        _set_grads(eager_params, k)
        compiled_step()
        eager_opt.step()
    for p, q in zip(params, eager_params):
        assert_close_report(p, q, 1e-6, 1e-6, "param")
        assert_close_report(phase_state(opt, p), phase_state(eager_opt, q), 1e-6, 1e-6, "state")


def test_cuda_grad_scaler_inf_leaves_state_untouched():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4)).cuda()
    opt = INNA(model.parameters(), lr=0.05, fused=True, capturable=True)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    x = torch.randn(8, 16, device="cuda")

    def backward(inject_inf):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        if inject_inf:
            model[0].weight.grad[0, 0] = math.inf

    backward(False)
    scaler.step(opt)
    scaler.update()
    params = list(model.parameters())
    before = [t.clone() for p in params for t in (p.detach(), phase_state(opt, p),
                                                  opt.state[p]["step"])]
    backward(True)
    scaler.step(opt)
    scaler.update()
    after = [t for p in params for t in (p.detach(), phase_state(opt, p), opt.state[p]["step"])]
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert scaler.get_scale() < 1024.0
    assert all(opt.state[p]["step"].item() == 1 for p in params)


def test_cuda_grad_scale_matches_unscaled_reference():
    init = make_tensors([33, CHUNK + 2], torch.bfloat16, device="cuda")
    scale = torch.tensor(65536.0, device="cuda")
    inv_scale = scale.double().reciprocal().float().item()
    params = [p.clone() for p in init]
    phases, steps = new_state(params)
    truth = Truth(init)
    for k in range(2):
        scaled = [(g.double() * scale.item()).to(torch.bfloat16) for g in make_grads(init, k)]
        fused_step(params, phases, scaled, steps, grad_scale=scale,
                   found_inf=torch.zeros((), device="cuda"))
        truth.step(scaled, [k, k], lr=0.05, inv_scale=inv_scale)
    assert_matches(params, phases, truth, torch.bfloat16, what="scaled", n_steps=2)


def test_cuda_ten_thousand_tensors():
    g = torch.Generator().manual_seed(11)
    sizes = torch.randint(1, 2000, (10_000,), generator=g).tolist()
    init = make_tensors(sizes, torch.float32, device="cuda")
    params = [p.clone() for p in init]
    phases, steps = new_state(params)
    # The update is elementwise with one k for all: the reference on the concatenation is exact.
    truth = Truth([torch.cat(init)])
    for k in range(2):
        grads = make_grads(init, k)
        fused_step(params, phases, grads, steps, decay_power=0.5)
        truth.step([torch.cat(grads)], [k], lr=0.05, decay_power=0.5)
    assert_matches([torch.cat(params)], [torch.cat(phases)], truth, torch.float32, what="flat",
                   n_steps=2)
    assert torch.stack(steps).eq(2).all()


def test_cuda_ten_thousand_tensors_launch_count():
    """Launches are bounded by the metadata capacity (736 tensors), not by the tensor count."""
    params = [torch.randn(1000, device="cuda") for _ in range(10_000)]
    phases, steps = new_state(params)
    grads = [torch.randn_like(p) for p in params]
    fused_step(params, phases, grads, steps)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fused_step(params, phases, grads, steps)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not names:
        pytest.skip("the profiler recorded no CUDA activity on this machine")
    # The generic engine's kernel instantiated with INNA's functor (csrc/cuda/inna_cuda.cu).
    main = [n for n in names if "multi_tensor_kernel" in n and "InnaFunctor" in n]
    assert len(main) <= math.ceil(10_000 / 88)
    assert len(main) in (math.ceil(10_000 / 736), math.ceil(10_000 / 88))
    assert not [n for n in names if "step_increment_kernel" in n]


@pytest.mark.parametrize("state", list(STATE_IDS), ids=STATE_IDS.get)
def test_cuda_bitwise_deterministic(state):
    init = make_tensors([3, 1000, 5 * CHUNK + 11], torch.bfloat16, device="cuda")
    runs = []
    for _ in range(2):
        params = [p.clone() for p in init]
        phases, steps = new_state(params, state)
        for k in range(3):
            fused_step(params, phases, make_grads(init, k), steps, decay_power=0.5,
                       weight_decay=0.01, stochastic_rounding=True, seed=5)
        runs.append(params + phases + steps)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


SR_PAIRS = [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
            (torch.bfloat16, torch.bfloat16), (torch.float16, torch.bfloat16),
            (torch.float32, torch.bfloat16), (torch.float64, torch.bfloat16)]


@pytest.mark.parametrize("pair", SR_PAIRS,
                         ids=[f"{DTYPE_IDS[p]}-{DTYPE_IDS[w]}-phase" for p, w in SR_PAIRS])
def test_cuda_stochastic_rounding_bitwise_equals_cpu_kernel(pair):
    """The GPU kernel (nvcc's code, explicit FMAs, the same counter-based bits) and the CPU kernel
    give the same bits with stochastic rounding on, aligned and at odd offsets."""
    dtype, phase_dtype = pair
    init = make_tensors([1, 7, 1000, CHUNK + 17, 2 * CHUNK + 5], dtype)
    for seed in (0, 99):
        results = []
        for device in ("cuda", "cpu"):
            params = [p.to(device, copy=True) for p in init]
            params[2] = odd_view(params[2])
            params[3] = odd_view(params[3])
            phases = [torch.full_like(p, math.nan, dtype=phase_dtype) for p in params]
            steps = [torch.zeros((), device=device) for _ in params]
            for k in range(3):
                grads = [g.to(device) for g in make_grads(init, k)]
                fused_step(params, phases, grads, steps, decay_power=0.5, weight_decay=0.01,
                           stochastic_rounding=True, seed=seed)
            results.append([t.cpu() for t in params + phases + steps])
        for i, (a, b) in enumerate(zip(*results)):
            assert torch.equal(a, b), f"seed {seed}: tensor {i} ({a.dtype}) differs"


def test_cuda_step_on_a_side_stream():
    init = make_tensors([100, CHUNK * 2], torch.float32, device="cuda")
    params = [p.clone() for p in init]
    phases, steps = new_state(params)
    grads = make_grads(init, 0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fused_step(params, phases, grads, steps)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    truth = Truth(init)
    truth.step(grads, [0, 0], lr=0.05)
    assert_matches(params, phases, truth, torch.float32, what="side stream", n_steps=1)


def test_cuda_tensor_beyond_2_to_the_31_elements():
    n = 2**31 + 4099
    need = n * (2 + 2 + 4) + (1 << 30)
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory")
    param = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    grad = torch.empty_like(param)
    phase = torch.empty(n, dtype=torch.float32, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    param.normal_(generator=gen)
    grad.normal_(generator=gen)
    phase.normal_(generator=gen)
    step = torch.ones((), device="cuda")
    windows = [slice(0, 4099), slice(2**31 - 70000, 2**31 + 4099)]  # first and last chunks
    before = [(param[w].clone(), phase[w].clone(), grad[w].clone()) for w in windows]
    fused_step([param], [phase], [grad], [step], decay_power=0.5)
    for w, (p0, w0, g0) in zip(windows, before):
        truth = Truth([p0], psis=[phase_to_psi(p0, w0)])
        truth.step([g0], [1], lr=0.05, decay_power=0.5)
        assert_matches([param[w]], [phase[w]], truth, torch.bfloat16, what=f"window {w}",
                       n_steps=1)
    assert step.item() == 2
    del param, grad, phase
    torch.cuda.empty_cache()
