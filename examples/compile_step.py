"""INNA under torch.compile: the fused step compiles into one graph, with no graph break.

The lr is a 0-d tensor written in place each step (here by a cosine schedule), so changing it
never recompiles; a Python float lr would be baked into the graph as a constant.

    python examples/compile_step.py [--steps 30] [--backend inductor]
"""
import argparse
import math

import torch

import inna_fused
from inna_fused import INNA


def main(steps: int = 30, backend: str = "inductor") -> list[float]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    x = torch.randn(256, 16)
    y = torch.sin(x.sum(dim=1, keepdim=True))

    lr0 = 0.1
    lr = torch.tensor(lr0)
    opt = INNA(model.parameters(), lr=lr, alpha=0.5, beta=0.1)
    # fullgraph=True asserts there is no graph break. It needs the compiled kernel: the
    # pure-PyTorch fallback reads step counts on the host (.item()), which breaks the graph.
    compiled_step = torch.compile(opt.step, backend=backend,
                                  fullgraph=inna_fused.kernel_available("cpu"))

    losses = []
    for k in range(steps):
        lr.fill_(lr0 * 0.5 * (1 + math.cos(math.pi * k / steps)))
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        compiled_step()
        losses.append(loss.item())
    print(f"compiled INNA step ({backend}): loss {losses[0]:.4f} -> {losses[-1]:.4f} "
          f"in {steps} steps")
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    main(args.steps, args.backend)
