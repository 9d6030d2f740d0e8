"""One optimizer step per provider × device × dtype × workload (see conftest.py), INNA's and
INNAprop's implementations and the baselines."""
import pytest

from inna_fused import bench as B


def test_step(benchmark, smoke, record_median, device, dtype, workload_name, provider):
    workload = B.make_workload(workload_name)
    if smoke:
        workload = B.shrink(workload)
    try:
        runner = B.make_runner(provider, workload, device, dtype)
    except B.ProviderUnavailable as e:
        pytest.skip(str(e))
    benchmark.group = f"{device} {str(dtype).removeprefix('torch.')} {workload_name}"
    benchmark.extra_info.update(
        provider=provider, label=B.PROVIDER_LABELS[provider], numel=workload.numel,
        tensors=workload.tensors, bytes_per_element=B.bytes_per_element(provider, dtype),
        bytes_per_step=runner.bytes_per_step)
    benchmark(runner.step)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["gbps_median"] = B.effective_gbps(runner.bytes_per_step,
                                                               stats.stats.median)
        record_median(runner, stats.stats.median)
