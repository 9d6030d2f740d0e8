"""Per-step fixed cost of INNA(fused=True) against torch.optim.SGD(momentum=0.9, fused=True).

    python bench/step_overhead.py [--steps 400] [--threads 2] [--fresh-grads]

Two workloads where the host cost dominates: a small CNN's 51 tensors (~0.1M params: a stem
convolution with bias, 15 conv + batch-norm blocks in three stages, a dense head) and 2,000
tensors of 8 elements. Every provider owns its tensors (same shapes, same random values) and
takes one untimed first step (state exists). Then steps are interleaved: round r times one step
of each provider, the order alternating, and the medians of `--steps` rounds are printed with the
ratio INNA / SGD (< 1: INNA is faster). `--fresh-grads` gives every param a new gradient tensor
before each step (untimed), as a backward pass with zero_grad(set_to_none=True) does: a cache keyed
on gradient identity then misses every step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# Measure the checkout this script lives in (after any PYTHONPATH entries, before site-packages).
sys.path.insert(1 + len([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import inna_fused  # noqa: E402
from inna_fused import INNA  # noqa: E402


def small_cnn_shapes() -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(16, 3, 3, 3), (16,), (16,), (16,)]  # stem conv + bias, BN
    c_in = 16
    for c in (16, 24, 40):
        for _ in range(5):
            shapes += [(c, c_in, 3, 3), (c,), (c,)]  # conv without bias, BN weight and bias
            c_in = c
    shapes += [(10, c_in), (10,)]
    return shapes


WORKLOADS = {
    "small-cnn": small_cnn_shapes,
    "2000x8": lambda: [(8,)] * 2000,
}


def make_params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


PROVIDERS = {
    "INNA fused": lambda ps: INNA(ps, lr=1e-3, fused=True),
    "SGD(m=0.9) fused": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True),
}


def run(workload: str, steps: int, fresh_grads: bool) -> dict[str, float]:
    shapes = WORKLOADS[workload]()
    setups = {}
    for name, make in PROVIDERS.items():
        params = make_params(shapes)
        opt = make(params)
        opt.step()
        spare = [torch.randn_like(p) for p in params]
        setups[name] = (opt, params, spare)
    names = list(setups)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for r in range(steps + 20):
            for name in (names if r % 2 == 0 else names[::-1]):
                opt, params, spare = setups[name]
                if fresh_grads:  # a new grad tensor per param, as backward() makes them
                    for i, p in enumerate(params):
                        old, p.grad = p.grad, spare[i]
                        spare[i] = old
                start = time.perf_counter()
                opt.step()
                elapsed = time.perf_counter() - start
                if r >= 20:  # the first rounds warm caches and allocators
                    times[name].append(elapsed)
    return {n: statistics.median(v) for n, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh-grads", action="store_true")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"inna_fused from {os.path.dirname(inna_fused.__file__)}")
    print(f"torch {torch.__version__}, {args.threads} threads, medians of {args.steps} "
          f"interleaved steps{', fresh grads every step' if args.fresh_grads else ''}")
    print(f"{'workload':12s} {'tensors':>7s} {'params':>8s} {'INNA fused':>12s} "
          f"{'SGD fused':>12s} {'INNA/SGD':>9s}")
    for workload in args.workloads.split(","):
        shapes = WORKLOADS[workload]()
        numel = sum(torch.Size(s).numel() for s in shapes)
        t = run(workload, args.steps, args.fresh_grads)
        inna, sgd = t["INNA fused"], t["SGD(m=0.9) fused"]
        print(f"{workload:12s} {len(shapes):7d} {numel:8d} {inna * 1e6:9.1f} us "
              f"{sgd * 1e6:9.1f} us {inna / sgd:8.2f}x")


if __name__ == "__main__":
    main()
