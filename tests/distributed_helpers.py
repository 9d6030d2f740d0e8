"""Running tests' work in 2 processes on the gloo backend (CPU, 127.0.0.1 only), for
test_distributed.py and test_dcp.py.

Starting processes costs far more than training a tiny model, so one pair of processes runs
every entry of a test module's RUNNERS ({name: fn(rank, out_dir) -> dict}); a failure in one is
recorded (its traceback under "error") and reported by that entry's own test.
"""
import datetime
import importlib
import os
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
TIMEOUT_S = 120


def worker(rank, port, out_dir, module_name):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        for name, run in importlib.import_module(module_name).RUNNERS.items():
            start = time.perf_counter()
            try:
                results[name] = run(rank, out_dir)
            except Exception:  # recorded, and reported by the entry's own test
                results[name] = dict(error=traceback.format_exc())
            results[name]["seconds"] = time.perf_counter() - start
            dist.barrier()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_local_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_in_processes(module_name, out_dir):
    """Run module_name's RUNNERS on WORLD_SIZE ranks; each rank's {name: result}."""
    context = mp.start_processes(worker, args=(free_local_port(), out_dir, module_name),
                                 nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail(f"distributed workers did not finish within {TIMEOUT_S} s")
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False)
            for r in range(WORLD_SIZE)]
