"""Running tests' work in 2 processes on the gloo backend (CPU, 127.0.0.1 only), for
test_distributed.py and test_dcp.py.

Starting processes costs far more than training a tiny model, so one pair of processes runs
every entry of a test module's RUNNERS ({name: fn(rank, out_dir) -> dict}); a failure in one is
recorded (its traceback under "error") and reported by that entry's own test.

A worker killed by a signal raised no Python exception: something native aborted (CI once saw
"terminate called without an active exception" from a DCP worker, a torch thread torn down while
running). Each worker logs its progress and, through faulthandler, every thread's Python stack on
a fatal signal; the pair is started again (up to ATTEMPTS times in all) with a warning that
carries both logs, so a flaky native abort is seen without failing the run, while one that
recurs fails the test with the logs. A Python exception is never retried. Workers leave through
os._exit once their results are written and the process group is destroyed, which skips the
interpreter's teardown of torch's native threads.
"""
import datetime
import faulthandler
import importlib
import os
import shutil
import socket
import time
import traceback
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
TIMEOUT_S = 120
ATTEMPTS = 3


def _log_path(out_dir, rank, attempt):
    return os.path.join(out_dir, f"rank{rank}.attempt{attempt}.log")


def worker(rank, port, out_dir, module_name, attempt):
    log = open(_log_path(out_dir, rank, attempt), "w", buffering=1)
    faulthandler.enable(file=log, all_threads=True)

    def progress(what):
        log.write(f"{time.strftime('%H:%M:%S')} rank {rank}: {what}\n")

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    progress("init_process_group")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        for name, run in importlib.import_module(module_name).RUNNERS.items():
            progress(f"runner {name}")
            start = time.perf_counter()
            try:
                results[name] = run(rank, out_dir)
            except Exception:  # recorded, and reported by the entry's own test
                results[name] = dict(error=traceback.format_exc())
            results[name]["seconds"] = time.perf_counter() - start
            progress(f"barrier after {name}")
            dist.barrier()
        path = os.path.join(out_dir, f"rank{rank}.pt")
        torch.save(results, path + ".part")
        os.replace(path + ".part", path)
        progress("results written")
    finally:
        progress("destroy_process_group")
        dist.destroy_process_group()
    progress("done")
    log.close()
    os._exit(0)


def free_local_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _logs(out_dir, attempt):
    texts = []
    for rank in range(WORLD_SIZE):
        try:
            with open(_log_path(out_dir, rank, attempt)) as f:
                texts.append(f.read())
        except OSError:
            texts.append(f"(rank {rank} wrote no log)\n")
    return "".join(texts)


def _start_and_join(module_name, out_dir, attempt):
    context = mp.start_processes(worker, args=(free_local_port(), out_dir, module_name, attempt),
                                 nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail(f"distributed workers did not finish within {TIMEOUT_S} s; their "
                        f"logs:\n{_logs(out_dir, attempt)}")


def _clear_outputs(out_dir):
    """Remove what a failed attempt wrote (results, checkpoints), keeping the logs."""
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif not name.endswith(".log"):
            os.remove(path)


def run_in_processes(module_name, out_dir):
    """Run module_name's RUNNERS on WORLD_SIZE ranks; each rank's {name: result}."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _start_and_join(module_name, out_dir, attempt)
            break
        except mp.ProcessExitedException as e:
            if e.signal_name is None:  # exited with a status: not a native abort
                raise
            report = (f"distributed worker {e.error_index} was killed by {e.signal_name} "
                      f"(attempt {attempt} of {ATTEMPTS}); the workers' logs:\n"
                      f"{_logs(out_dir, attempt)}")
            if attempt == ATTEMPTS:
                pytest.fail(report)
            warnings.warn(report + "starting the workers again")
            _clear_outputs(out_dir)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False)
            for r in range(WORLD_SIZE)]
