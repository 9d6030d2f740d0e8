"""Where one fused INNA step spends its time on a list of many small tensors (bench/NOTES.md).

    python bench/profile_many_tensors.py [--tensors 10000] [--numel 1000]

Measures CPU time of the calling thread (time.thread_time) with one torch thread, so the figures
say how much work each layer adds per tensor and are less disturbed by other processes than wall
time. Layers, outermost first: INNA.step (param groups and state), functional.inna (grouping by
device and dtype), the op (dispatcher, then validation, then the kernel).
"""
import argparse
import time

import torch

import os
import sys

# Measure the checkout this script lives in (after any PYTHONPATH entries, before site-packages).
sys.path.insert(1 + len([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from inna_fused import bench as B  # noqa: E402
from inna_fused import functional  # noqa: E402


def cpu_time(fn) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=10_000)
    parser.add_argument("--numel", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.tensors
    many = B.Workload("many", ((args.numel,),) * n, "list")
    flat = B.Workload("flat", ((args.numel * n,),), "flat")
    runner = B.make_runner("fused", many)
    optimizer = runner._step.__self__
    params = optimizer.param_groups[0]["params"]
    grads = [p.grad for p in params]
    psis = [optimizer.state[p]["phase"] for p in params]
    steps = [optimizer.state[p]["step"] for p in params]
    hyper = dict(lr=B.LR, alpha=0.5, beta=0.1, decay_power=0.0, weight_decay=0.0,
                 decoupled_weight_decay=False, paper_init=True, maximize=False)
    skip = torch.ones(())
    bad_first = [torch.ones(2)] + steps[1:]  # the op raises at the first tensor's check...
    bad_last = steps[:-1] + [torch.ones(2)]  # ...or after checking all but the last one

    def op(step_list, **extra):
        def call():
            try:
                torch.ops.inna_fused.fused_inna_(params, grads, psis, step_list, **hyper, **extra)
            except ValueError:
                pass
        return call

    optimizer.step()  # a second step: the planned path (if this version has one) is in use
    direct = getattr(functional, "_DIRECT", None)
    scalars = (0.5, 0.1, 0.0, 0.0, False, True, False, True, 0)
    state = optimizer.state

    def gather():
        grads_now = [p.grad for p in params]
        states = [state[p] for p in params]
        return grads_now, [st["phase"] for st in states], [st["step"] for st in states]

    calls = {
        "INNA.step": runner.step,
        "planned step: gather grads and state": gather,
        "functional.inna": lambda: functional.inna(params, grads, psis, steps, lr=B.LR,
                                                   alpha=0.5, beta=0.1),
        "op": op(steps),
        "op without kernel (found_inf=1)": op(steps, found_inf=skip),
        "op checks all tensors, then raises": op(bad_last),
        "op raises at the first tensor": op(bad_first),
        **({"op unboxed (fused_inna_direct)": lambda: direct(params, grads, psis, steps, B.LR,
                                                             scalars, None, None),
            "op unboxed, found_inf=1": lambda: direct(params, grads, psis, steps, B.LR, scalars,
                                                      None, skip)}
           if direct is not None else {}),
        "fused step, one flat tensor": B.make_runner("fused", flat).step,
        "torch SGD(fused) step": B.make_runner("sgd", many).step,
    }
    with torch.no_grad():
        times = B.round_robin(calls, args.repeats, min_time=0.05, timer=cpu_time)
    t = {name: B.median(v) for name, v in times.items()}
    print(f"{n} tensors of {args.numel} elements, 1 thread, CPU time of the calling thread, "
          f"medians of {args.repeats}")
    for name, seconds in t.items():
        print(f"  {name:38s} {seconds * 1e3:8.2f} ms  {seconds / n * 1e6:6.2f} us/tensor")
    layers = {
        "optimizer (groups, state), full path": t["INNA.step"] - t["functional.inna"],
        "functional (grouping, views)": t["functional.inna"] - t["op"],
        "dispatcher (4 lists in)": t["op raises at the first tensor"],
        "per-tensor checks": t["op checks all tensors, then raises"]
        - t["op raises at the first tensor"],
        "overlap check (sort spans)": t["op without kernel (found_inf=1)"]
        - t["op checks all tensors, then raises"],
        "kernel": t["op"] - t["op without kernel (found_inf=1)"],
    }
    if direct is not None:
        del layers["optimizer (groups, state), full path"]  # INNA.step no longer runs the rest
        layers.update({
            "planned step: rest of INNA.step": t["INNA.step"]
            - t["planned step: gather grads and state"] - t["op unboxed (fused_inna_direct)"],
            "unboxed op: unpack + validation": t["op unboxed, found_inf=1"],
            "unboxed op: kernel": t["op unboxed (fused_inna_direct)"]
            - t["op unboxed, found_inf=1"],
        })
    print("per layer (differences of the above; the full-path layers are for functional.inna "
          "and torch.ops, which a planned INNA.step skips):")
    for name, seconds in layers.items():
        print(f"  {name:38s} {seconds * 1e3:8.2f} ms  {seconds / n * 1e6:6.2f} us/tensor")


if __name__ == "__main__":
    main()
