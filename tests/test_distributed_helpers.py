"""The 2-process harness (distributed_helpers.py): a worker killed by a signal is reported
with both workers' logs and the pair is started again."""
import os

import pytest
import torch.distributed as dist

from distributed_helpers import run_in_processes

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def abort_on_first_attempt(rank, out_dir):
    marker = os.path.join(out_dir, "attempted")
    if rank == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os.abort()
    dist.barrier()
    return dict(rank=rank, world=dist.get_world_size())


# test_distributed_helpers.py's runners (distributed_helpers.worker imports this module). The
# marker lives in a directory the harness does not clear between attempts.
RUNNERS = {"abort_once": lambda rank, out_dir: abort_on_first_attempt(
    rank, os.path.dirname(out_dir))}


def test_a_native_abort_is_reported_with_logs_and_retried(tmp_path):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    with pytest.warns(UserWarning) as record:
        results = run_in_processes("test_distributed_helpers", str(out_dir))
    assert [r["abort_once"]["rank"] for r in results] == [0, 1]
    assert all(r["abort_once"]["world"] == 2 for r in results)
    (message,) = [str(w.message) for w in record if "killed by" in str(w.message)]
    assert "worker 1 was killed by SIGABRT (attempt 1 of 3)" in message
    assert "rank 1: runner abort_once" in message
    assert "Fatal Python error: Aborted" in message  # faulthandler's stack of the dead rank
