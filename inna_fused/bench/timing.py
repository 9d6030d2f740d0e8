"""Benchmark timing: interleaved (round-robin) repeats so that machine noise hits every provider
alike, and `measure()`, which times every provider on every workload and dtype.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from typing import Callable, Iterable, Optional, Sequence

from .providers import (PROVIDER_LABELS, ProviderUnavailable, bytes_per_element, bytes_per_step,
                        make_runner)
from .workloads import make_workload

# The slow providers are capped so that the default run stays around a minute.
DEFAULT_MAX_REPEATS = {"reference": 3, "foreach": 5, "innaprop-loop": 3, "innaprop-foreach": 5}


def time_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call (`fn` synchronises its device itself)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def round_robin(calls: dict[str, Callable[[], object]], repeats: int, *,
                max_repeats: Optional[dict[str, int]] = None, min_time: float = 0.0,
                no_warmup: Iterable[str] = (), on_call: Optional[Callable[[str], None]] = None,
                timer: Callable[[Callable[[], object]], float] = time_call
                ) -> dict[str, list[float]]:
    """Median-ready timings of several callables, interleaved so that slow drifts in machine load
    hit all of them alike: round r times each callable once, the order rotating by one per round.

    Each callable is called once untimed first (warm-up; its duration calibrates the batch). A
    timed sample is the mean over a batch of ceil(min_time / warm-up time) calls, so that
    microsecond steps are not drowned by timer resolution. `max_repeats` caps some callables (e.g.
    a slow reference loop) at fewer samples; names in `no_warmup` (slow ones the caller has already
    run once) get no warm-up call and batches of one. Returns the seconds per call, per name."""
    names = list(calls)
    limit = {name: min(repeats, (max_repeats or {}).get(name, repeats)) for name in names}
    batch = {name: 1 for name in names}
    for name in names:
        if name not in no_warmup:
            warm = timer(calls[name])
            batch[name] = max(1, math.ceil(min_time / warm)) if warm > 0 else 1

    def timed_batch(name: str) -> Callable[[], None]:
        def run() -> None:
            for _ in range(batch[name]):
                calls[name]()
        return run

    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if len(times[name]) < limit[name]:
                times[name].append(timer(timed_batch(name)) / batch[name])
                if on_call is not None:
                    on_call(name)
    return times


def calls_in_round_robin(names: Iterable[str], repeats: int,
                         max_repeats: Optional[dict[str, int]] = None) -> int:
    """How many timed calls round_robin() will make (for a progress bar)."""
    return sum(min(repeats, (max_repeats or {}).get(n, repeats)) for n in names)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def effective_gbps(bytes_moved: int, seconds: float) -> float:
    return bytes_moved / seconds / 1e9


def measure(workload_names, providers, dtypes, device, repeats, min_time=0.005,
            max_repeats=None, progress=None) -> list[dict]:
    """Run the benchmark; one result row per (dtype, workload, provider) that could run."""
    rows = []
    max_repeats = DEFAULT_MAX_REPEATS if max_repeats is None else max_repeats
    for dtype in dtypes:
        for name in workload_names:
            workload = make_workload(name)
            runners, skipped = {}, {}
            for provider in providers:
                if progress is not None:
                    progress.set_postfix_str(f"{name} {dtype_name(dtype)} setup {provider}")
                try:
                    runners[provider] = make_runner(provider, workload, device, dtype)
                except (ProviderUnavailable, RuntimeError, NotImplementedError) as e:
                    # e.g. a torch fused optimizer without a kernel for this device/dtype
                    skipped[provider] = f"{type(e).__name__}: {e}".splitlines()[0]
            if progress is not None:
                progress.set_postfix_str(f"{name} {dtype_name(dtype)}")
                for provider in skipped:  # their samples will never come
                    progress.update(min(repeats, max_repeats.get(provider, repeats)))
            times = round_robin({p: r.step for p, r in runners.items()}, repeats,
                                  max_repeats=max_repeats, min_time=min_time,
                                  no_warmup=set(max_repeats),  # make_runner took a first step
                                  on_call=(lambda _: progress.update(1)) if progress else None)
            for provider in providers:
                row = {"workload": name, "kind": workload.kind, "numel": workload.numel,
                       "tensors": workload.tensors, "dtype": dtype_name(dtype),
                       "device": str(device), "provider": provider,
                       "label": PROVIDER_LABELS[provider],
                       "bytes_per_element": bytes_per_element(provider, dtype),
                       "bytes_per_step": bytes_per_step(provider, dtype, workload)}
                if provider in skipped:
                    row.update(skipped=skipped[provider], times_s=[], median_s=None, gbps=None)
                else:
                    median_s = median(times[provider])
                    row.update(times_s=times[provider], median_s=median_s,
                               gbps=effective_gbps(row["bytes_per_step"], median_s))
                rows.append(row)
            del runners
            gc.collect()
    return rows


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")
