"""INNA with FSDP2 (torch.distributed.fsdp.fully_shard), launched by torchrun.

    torchrun --nproc_per_node=2 examples/fsdp2_torchrun.py                 # gloo on CPU
    torchrun --nproc_per_node=8 examples/fsdp2_torchrun.py --device cuda   # NCCL

fully_shard turns every param into a DTensor sharded along dim 0. INNA is element-wise, so each
rank steps only its local shard: ψ (created like the param) is a DTensor with the same sharding,
and the fused kernel runs on the local tensors. Params, gradients and ψ are all sharded.
Checkpoints: torch.distributed.checkpoint (DCP) saves the sharded model and optimizer state.
"""
import argparse
import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from inna_fused import INNA


def main(device: str = "cpu", steps: int = 30) -> None:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device(device, local_rank) if device == "cuda" else torch.device("cpu")

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                                torch.nn.Tanh(), torch.nn.Linear(64, 1)).to(dev)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = INNA(model.parameters(), lr=0.05, alpha=0.5, beta=0.1)

    g = torch.Generator().manual_seed(1 + rank)  # each rank draws its own part of the batch
    for step in range(steps):
        x = torch.randn(32, 16, generator=g).to(dev)
        y = 0.5 * x[:, :4].sum(dim=1, keepdim=True)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            dist.all_reduce(loss := loss.detach(), op=dist.ReduceOp.AVG)
            if rank == 0:
                print(f"step {step}: loss {loss.item():.4f}")

    weight = model[0].weight
    psi = opt.state[weight]["psi"]
    print(f"rank {rank}: {type(weight).__name__} {tuple(weight.shape)}, local shard "
          f"{tuple(weight.to_local().shape)}, psi local shard {tuple(psi.to_local().shape)}")
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    main(args.device, args.steps)
