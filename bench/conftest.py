"""pytest-benchmark suite of the INNA and INNAprop steps (not part of the default `pytest tests`
run).

    pytest bench                                   # everything (minutes; GPT-2/BERT rows are big)
    pytest bench -m "not slow"                     # the quicker subset
    pytest bench --benchmark-disable -m "not slow" # CI smoke run: tiny sizes, each step run once

Rows are grouped per (device, dtype, workload), so pytest-benchmark's table puts the providers of
one workload side by side; each row's extra_info holds the bytes one step must move, so effective
GB/s = extra_info["bytes_per_step"] / time (also stored as extra_info["gbps_median"]).

Every provider runs, the opt-in ones of the CLI included (INNAprop foreach, the authors' INNAprop
loop, round to nearest). After a timed run the terminal summary adds INNAprop's time ratios, as the
CLI prints them: fused INNAprop / AdamW(fused), the authors' loop / fused INNAprop, ...
"""
import pytest
import torch

from inna_fused import bench as B
from inna_fused.bench import report

# Medians of the timed rows of this session, for the INNAprop ratios of the terminal summary.
_MEDIANS: list[dict] = []

# Big or many-tensor workloads; the per-parameter loop on them takes seconds per step.
SLOW_WORKLOADS = {"flat-2^26", "gpt2-small", "bert-base", "tiny-10000", "gpt2-small-flat",
                  "bert-base-flat"}
WORKLOADS = B.FLAT_LADDER + ("resnet50", "resnet50-flat", "gpt2-small", "bert-base", "tiny-10000")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: big workloads, left out of the CI smoke run")


def _devices_and_dtypes():
    rows = [("cpu", torch.float32), ("cpu", torch.bfloat16)]
    # Collection-time question to the driver only; no CUDA context is created here.
    if torch.cuda.is_available():
        rows += [("cuda", torch.float32), ("cuda", torch.bfloat16), ("cuda", torch.float16)]
    return rows


def pytest_generate_tests(metafunc):
    if not {"device", "dtype", "workload_name", "provider"} <= set(metafunc.fixturenames):
        return
    params = []
    for device, dtype in _devices_and_dtypes():
        for workload in WORKLOADS:
            for provider in B.PROVIDERS:
                marks = [pytest.mark.slow] if workload in SLOW_WORKLOADS else []
                dtype_name = str(dtype).removeprefix("torch.")
                # "^" cannot appear in a -k expression: flat-2^16 is spelled flat-2pow16 in ids.
                test_id = f"{device}-{dtype_name}-{workload.replace('^', 'pow')}-{provider}"
                params.append(pytest.param(device, dtype, workload, provider, marks=marks,
                                           id=test_id))
    metafunc.parametrize(("device", "dtype", "workload_name", "provider"), params)


@pytest.fixture
def smoke(request) -> bool:
    """True under --benchmark-disable: the run only checks that every row still works, on tiny
    stand-ins of the workloads."""
    return bool(request.config.getoption("benchmark_disable"))


@pytest.fixture
def record_median():
    """record(runner, median_s): keep a timed row's median for the terminal summary's ratios."""
    def record(runner, median_s: float) -> None:
        _MEDIANS.append({"device": str(runner.device), "dtype": B.dtype_name(runner.dtype),
                         "workload": runner.workload.name, "kind": runner.workload.kind,
                         "numel": runner.workload.numel, "tensors": runner.workload.tensors,
                         "provider": runner.provider, "median_s": median_s,
                         "gbps": B.effective_gbps(runner.bytes_per_step, median_s)})
    return record


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter):
    if not _MEDIANS:  # smoke run (--benchmark-disable) or no INNAprop row
        return
    rows = [dict(row) for row in _MEDIANS]
    report.add_ratios(rows)
    table = report.format_innaprop(report.innaprop_ratios(rows))
    if table:
        terminalreporter.write_sep("-", "INNAprop ratios (medians of the rows above)")
        terminalreporter.write_line(table)
