"""INNA with DistributedDataParallel (or ZeRO), launched by torchrun.

    torchrun --nproc_per_node=2 examples/ddp_torchrun.py            # gloo on CPU
    torchrun --nproc_per_node=2 examples/ddp_torchrun.py --zero     # + ZeroRedundancyOptimizer
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
             --nproc_per_node=8 examples/ddp_torchrun.py --device cuda   # multi-node, NCCL

DDP averages the gradients over ranks during backward(); every rank then runs the same INNA
step on identical params, gradients and ψ, so the replicas stay identical. With --zero, each rank
keeps ψ only for its share of the params and broadcasts the updated params.
"""
import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from inna_fused import INNA


def main(device: str = "cpu", zero: bool = False, epochs: int = 5) -> None:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device(device, local_rank) if device == "cuda" else torch.device("cpu")

    torch.manual_seed(0)  # same init on every rank (DDP also broadcasts rank 0's params)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 1)).to(dev)
    model = DistributedDataParallel(model, device_ids=[local_rank] if device == "cuda" else None)
    hyper = dict(lr=0.05, alpha=0.5, beta=0.1)
    if zero:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=INNA, **hyper)
    else:
        opt = INNA(model.parameters(), **hyper)

    x = torch.randn(1024, 16, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(x, 0.5 * x[:, :4].sum(dim=1, keepdim=True))
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=64 // world, sampler=sampler)  # global batch 64

    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros(2, device=dev)
        for xb, yb in loader:
            xb, yb = xb.to(dev), yb.to(dev)
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            opt.step()
            total += torch.stack([loss.detach() * len(xb), torch.tensor(len(xb), device=dev)])
        dist.all_reduce(total)
        if rank == 0:
            print(f"epoch {epoch}: mean loss {float(total[0] / total[1]):.4f} "
                  f"({world} ranks, {'ZeRO' if zero else 'DDP'})")

    if zero:
        opt.consolidate_state_dict(to=0)  # gathers every rank's ψ on rank 0 (a collective)
    if rank == 0:
        checkpoint = {"model": model.module.state_dict(), "opt": opt.state_dict()}
        print(f"rank 0 holds a full checkpoint: {len(checkpoint['opt']['state'])} param states")
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--zero", action="store_true", help="shard INNA's state (ZeRO-1)")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    main(args.device, args.zero, args.epochs)
