"""FSDP2 + torch.distributed.checkpoint (DCP) with INNA and INNAprop, 2 processes on gloo (CPU,
127.0.0.1).

Each rank trains a fully_shard model for STEPS_BEFORE steps, saves the sharded model and
optimizer state (get_model_state_dict / get_optimizer_state_dict + dcp.save), builds a new
model and optimizer as a restarted job would, loads them back (dcp.load +
set_model_state_dict / set_optimizer_state_dict) and trains STEPS_AFTER more steps. The result
must equal, bit for bit, an uninterrupted run of STEPS_BEFORE + STEPS_AFTER steps: params,
phases (and INNAprop's exp_avg_sq) and step counts. Configurations: INNA with float64 params and
the default float64 phase; INNA and INNAprop with float32 params and a stochastically rounded
bfloat16 phase (its rounding depends on the step, so a step count restored wrongly shows up as
different bits).

Then one plain process loads the 2-rank checkpoint (DCP reshards it) and must continue like the
2-rank run. The model, data and helpers are those of tests/test_distributed.py.
"""
import os

import pytest
import torch
import torch.distributed as dist

from inna_fused import INNA, INNAprop
from distributed_helpers import run_in_processes
from test_distributed import (global_batch, innaprop_kwargs, local_batch, make_model,
                              optimizer_kwargs)

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

STEPS_BEFORE, STEPS_AFTER = 3, 3
BF16_STATE = dict(state_dtype=torch.bfloat16, stochastic_rounding=True, seed=7)
CONFIGS = {  # name: (param dtype, optimizer, extra arguments)
    "float64": (torch.float64, INNA, {}),
    "bf16_state": (torch.float32, INNA, BF16_STATE),
    "innaprop_bf16_state": (torch.float32, INNAprop, BF16_STATE),
}


def build(config):
    from torch.distributed.fsdp import fully_shard
    dtype, cls, extra = CONFIGS[config]
    model = make_model().to(dtype)
    fully_shard(model[0])
    fully_shard(model)
    # INNA's decaypower > 0 and INNAprop's bias correction make the step depend on the restored
    # step count, too.
    kwargs = optimizer_kwargs() if cls is INNA else innaprop_kwargs()
    opt = cls(model.parameters(), **dict(kwargs, **extra))
    return model, opt


def train(model, opt, rank, steps):
    x, y = local_batch(rank)
    x, y = x.to(model[0].weight.dtype), y.to(model[0].weight.dtype)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def snapshot(model, opt):
    params = list(model.parameters())
    return dict(params=[p.full_tensor().detach().clone() for p in params],
                phases=[opt.state[p]["phase"].full_tensor().clone() for p in params],
                exp_avg_sqs=[opt.state[p]["exp_avg_sq"].full_tensor().clone() for p in params
                             if "exp_avg_sq" in opt.state[p]],
                steps=[float(opt.state[p]["step"]) for p in params],
                phase_dtypes=[opt.state[p]["phase"].dtype for p in params])


def run_config(rank, config, ckpt_dir):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)
    out = {}
    model, opt = build(config)
    train(model, opt, rank, STEPS_BEFORE + STEPS_AFTER)
    out["straight"] = snapshot(model, opt)

    model, opt = build(config)
    train(model, opt, rank, STEPS_BEFORE)
    osd = get_optimizer_state_dict(model, opt)
    out["saved_keys"] = sorted(osd["state"])  # fully qualified param names
    dcp.save({"model": get_model_state_dict(model), "optim": osd}, checkpoint_id=ckpt_dir)
    del model, opt, osd

    # A restarted job: new model (its initial params differ from the checkpoint's), new INNA.
    torch.manual_seed(1234)
    model, opt = build(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=ckpt_dir)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, optim_state_dict=state["optim"])
    out["loaded_steps"] = [float(opt.state[p]["step"]) for p in model.parameters()]
    train(model, opt, rank, STEPS_AFTER)
    out["resumed"] = snapshot(model, opt)
    return out


# What each rank runs (distributed_helpers.worker): every configuration, checkpointing under
# out_dir/<config>.
RUNNERS = {config: (lambda rank, out_dir, config=config:
                    run_config(rank, config, os.path.join(out_dir, config)))
           for config in CONFIGS}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    pytest.importorskip("torch.distributed.checkpoint.state_dict",
                        reason="torch.distributed.checkpoint.state_dict is not available")
    out_dir = str(tmp_path_factory.mktemp("dcp"))
    return out_dir, run_in_processes("test_dcp", out_dir)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_dcp_resume_is_bitwise_uninterrupted(results, config):
    _, results = results
    for rank, by_config in enumerate(results):
        out = by_config[config]
        assert "error" not in out, f"rank {rank}:\n{out.get('error')}"
        assert out["saved_keys"] == ["0.bias", "0.weight", "2.bias", "2.weight"]
        assert out["loaded_steps"] == [float(STEPS_BEFORE)] * 4
        straight, resumed = out["straight"], out["resumed"]
        assert resumed["steps"] == straight["steps"] == [float(STEPS_BEFORE + STEPS_AFTER)] * 4
        assert resumed["phase_dtypes"] == straight["phase_dtypes"]
        assert len(resumed["exp_avg_sqs"]) == (4 if CONFIGS[config][1] is INNAprop else 0)
        for what in ("params", "phases", "exp_avg_sqs"):
            assert len(resumed[what]) == len(straight[what])
            for i, (got, want) in enumerate(zip(resumed[what], straight[what])):
                assert got.dtype == want.dtype
                assert torch.equal(got, want), (
                    f"{config}, rank {rank}, {what} {i}: max abs diff "
                    f"{(got.double() - want.double()).abs().max().item():.3e}")
    expected_phase = torch.float64 if config == "float64" else torch.bfloat16
    assert results[0][config]["straight"]["phase_dtypes"] == [expected_phase] * 4


def test_ranks_agree(results):
    _, results = results
    for config in CONFIGS:
        if any("error" in r[config] for r in results):
            pytest.skip(f"{config} failed; its own test reports why")
        for a, b in zip(results[0][config]["resumed"]["params"],
                        results[1][config]["resumed"]["params"]):
            assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_sharded_checkpoint_loads_into_one_unsharded_process(results):
    """DCP reshards on load: the 2-rank checkpoint (written after STEPS_BEFORE steps) resumes in
    a plain single-process model and INNA; STEPS_AFTER steps on the whole batch then give the
    2-rank run's params (to rounding: the gradient all-reduce sums in another order)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)
    out_dir, by_rank = results
    config = "float64"
    if "error" in by_rank[0][config]:
        pytest.skip(f"{config} failed; its own test reports why")
    model = make_model()
    # Other hyper-parameters than the run's: the checkpoint's param groups must replace them.
    opt = INNA(model.parameters(), **dict(optimizer_kwargs(), lr=0.5, alpha=0.9))
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=os.path.join(out_dir, config))  # no process group: one process
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, optim_state_dict=state["optim"])
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["alpha"]) == (0.05, 0.5)
    assert [float(opt.state[p]["step"]) for p in model.parameters()] == [float(STEPS_BEFORE)] * 4
    x, y = global_batch()
    for _ in range(STEPS_AFTER):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    want = by_rank[0][config]["resumed"]
    for i, p in enumerate(model.parameters()):
        torch.testing.assert_close(p.detach(), want["params"][i], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["phase"], want["phases"][i], rtol=1e-10,
                                   atol=1e-12)
