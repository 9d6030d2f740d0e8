"""torch.distributed: DDP, ZeroRedundancyOptimizer and FSDP2 (fully_shard) with INNA, DDP and FSDP2
with INNAprop, 2 processes on the gloo backend (CPU, 127.0.0.1 only).

Each strategy trains the same model on the same global batch (each rank takes half of it) and
must reach the params of single-process training on the whole batch. One pair of processes runs
every strategy (distributed_helpers.py) and the tests compare what the ranks wrote.
"""
import pytest
import torch
import torch.distributed as dist

from distributed_helpers import WORLD_SIZE, run_in_processes

from inna_fused import INNA, INNAprop, kernel_available
from inna_fused.innaprop_functional import fused_available as innaprop_fused_available

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

STEPS = 3
HYPER = dict(lr=0.05, alpha=0.5, beta=0.1, decaypower=0.5, weight_decay=0.01)
PROP_HYPER = dict(lr=0.01, alpha=0.1, beta=0.9, sigma=0.99, eps=1e-8, weight_decay=0.01)


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(),
                               torch.nn.Linear(7, 3)).double()


def global_batch():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(8, 5, generator=g, dtype=torch.float64),
            torch.randn(8, 3, generator=g, dtype=torch.float64))


def local_batch(rank):
    x, y = global_batch()
    rows = slice(rank * len(x) // WORLD_SIZE, (rank + 1) * len(x) // WORLD_SIZE)
    return x[rows], y[rows]


def train(model, opt, x, y):
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def optimizer_kwargs():
    return dict(HYPER, fused=True if kernel_available("cpu") else None)


def innaprop_kwargs():
    return dict(PROP_HYPER, fused=True if innaprop_fused_available("cpu") else None)


def make_optimizer(cls, params):
    return cls(params, **(optimizer_kwargs() if cls is INNA else innaprop_kwargs()))


def run_ddp(rank, out_dir=None, cls=INNA):
    from torch.nn.parallel import DistributedDataParallel
    model = DistributedDataParallel(make_model())
    opt = make_optimizer(cls, model.parameters())
    train(model, opt, *local_batch(rank))
    return dict(params=[p.detach().clone() for p in model.module.parameters()])


def run_zero(rank, out_dir=None):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel
    model = DistributedDataParallel(make_model())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=INNA, **optimizer_kwargs())
    train(model, opt, *local_batch(rank))
    return dict(params=[p.detach().clone() for p in model.module.parameters()],
                local_states=len(opt.optim.state))


def run_fsdp2(rank, out_dir=None, cls=INNA):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    model = make_model()
    fully_shard(model[0])
    fully_shard(model)
    opt = make_optimizer(cls, model.parameters())
    train(model, opt, *local_batch(rank))
    states = [opt.state[p][key] for p in model.parameters()
              for key in ("phase", "exp_avg_sq") if key in opt.state[p]]
    return dict(params=[p.full_tensor().detach() for p in model.parameters()],
                params_are_dtensors=all(isinstance(p, DTensor) for p in model.parameters()),
                phases_are_dtensors=all(isinstance(t, DTensor) for t in states),
                full_states=[t.full_tensor() for t in states],
                local_numel=sum(p.to_local().numel() for p in model.parameters()))


RUNNERS = {"ddp": run_ddp, "zero": run_zero, "fsdp2": run_fsdp2,
           "ddp_innaprop": lambda rank, out_dir: run_ddp(rank, cls=INNAprop),
           "fsdp2_innaprop": lambda rank, out_dir: run_fsdp2(rank, cls=INNAprop)}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_in_processes("test_distributed", str(tmp_path_factory.mktemp("distributed")))


def train_single_process(cls):
    model = make_model()
    opt = make_optimizer(cls, model.parameters())
    train(model, opt, *global_batch())
    return model, opt


@pytest.fixture(scope="module")
def single_process():
    return train_single_process(INNA)


@pytest.fixture(scope="module")
def single_process_innaprop():
    return train_single_process(INNAprop)


def check_strategy(results, single_process, name):
    model, _ = single_process
    initial = make_model()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), initial.parameters()))
    for rank, by_strategy in enumerate(results):
        outcome = by_strategy[name]
        assert "error" not in outcome, f"rank {rank}:\n{outcome.get('error')}"
        for i, (got, want) in enumerate(zip(outcome["params"], model.parameters())):
            torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"{name}, rank {rank}, param {i}: {m}")
    return [r[name] for r in results]


def test_ddp_matches_single_process(results, single_process):
    check_strategy(results, single_process, "ddp")


def test_zero_redundancy_optimizer_matches_single_process(results, single_process):
    outcomes = check_strategy(results, single_process, "zero")
    n_params = len(list(single_process[0].parameters()))
    # Each rank keeps INNA state for its own partition only.
    assert sum(o["local_states"] for o in outcomes) == n_params
    assert all(0 < o["local_states"] < n_params for o in outcomes)


def check_fsdp2(results, single_process, name):
    outcomes = check_strategy(results, single_process, name)
    model, opt = single_process
    assert all(o["params_are_dtensors"] and o["phases_are_dtensors"] for o in outcomes)
    # The shards partition the params: each rank updated only its part.
    assert sum(o["local_numel"] for o in outcomes) == sum(p.numel() for p in model.parameters())
    want = [opt.state[p][key] for p in model.parameters()
            for key in ("phase", "exp_avg_sq") if key in opt.state[p]]
    assert len(outcomes[0]["full_states"]) == len(want)
    for i, (got, state) in enumerate(zip(outcomes[0]["full_states"], want)):
        torch.testing.assert_close(got, state, rtol=1e-10, atol=1e-12,
                                   msg=lambda m: f"{name} state {i}: {m}")


def test_fsdp2_updates_local_shards_and_matches_single_process(results, single_process):
    check_fsdp2(results, single_process, "fsdp2")


def test_innaprop_ddp_matches_single_process(results, single_process_innaprop):
    check_strategy(results, single_process_innaprop, "ddp_innaprop")


def test_innaprop_fsdp2_updates_local_shards_and_matches_single_process(
        results, single_process_innaprop):
    check_fsdp2(results, single_process_innaprop, "fsdp2_innaprop")
