"""`python -m inna_fused bench`: INNA and INNAprop step times beside torch's fused optimizers.

For each workload, every provider gets its own tensors and the providers are timed interleaved
(round-robin repeats), so that noise from a shared machine hits all of them alike; the table shows
medians. Effective bandwidth = bytes the step must move / median time (see
inna_fused.bench.providers.bytes_per_element); "% stream" compares it with an in-place
`a.add_(b, alpha=s)` (float32, 12 bytes/element) over as many elements, timed in the same rounds.
"x vs <baseline>" columns: the baseline's median time / the row's. A second table gives INNAprop's
time ratios: fused INNAprop / AdamW(fused) (28 bytes/element each in float32), the authors'
per-parameter loop / fused INNAprop, and the opt-in foreach and bf16-state rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from . import report
from .providers import DEFAULT_PROVIDERS, OPT_IN_PROVIDERS, PROVIDERS
from .timing import DEFAULT_MAX_REPEATS, calls_in_round_robin, dtype_name, measure
from .workloads import DEFAULT_WORKLOADS, FLAT_LADDER, make_workload

# Samples per slow provider (the per-parameter loops and the foreach paths take up to seconds per
# step); the rest get --repeats.
MAX_REPEATS = DEFAULT_MAX_REPEATS

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "float64": "float64", "fp64": "float64"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="float32",
                        help="comma-separated: float32, bfloat16, float16, float64 "
                             "(default float32)")
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                        help="comma-separated: flat-2^N, flat-<numel>, resnet50, gpt2-small, "
                             "bert-base, tiny-10000, <model>-flat; 'ladder' = flat 2^16..2^26 "
                             "(default: %(default)s)")
    parser.add_argument("--providers", default=",".join(DEFAULT_PROVIDERS),
                        help="comma-separated, from %(default)s; also "
                             + ", ".join(OPT_IN_PROVIDERS))
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed samples per provider and workload (default %(default)s; the "
                             "per-param loops (INNA's, the authors' INNAprop) get at most 3, "
                             "the foreach paths at most 5)")
    parser.add_argument("--min-time", type=float, default=0.005,
                        help="seconds a timed sample lasts at least: fast steps are batched "
                             "(default %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (default: torch's choice)")
    parser.add_argument("--json", metavar="PATH", help="write machine-readable results here")
    parser.add_argument("--plot", metavar="PATH",
                        help="write a PNG: effective GB/s vs size for the flat workloads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_workloads(text: str) -> list[str]:
    names: list[str] = []
    for item in parse_list(text):
        expanded = FLAT_LADDER if item == "ladder" else (item,)
        names += [n for n in expanded if n not in names]
    for name in names:
        make_workload(name)  # raises ValueError naming an unknown workload
    return names


def parse_dtypes(text: str):
    import torch

    dtypes = []
    for item in parse_list(text):
        if item not in DTYPES:
            raise ValueError(f"unknown dtype {item!r}; choose from {sorted(set(DTYPES.values()))}")
        dtypes.append(getattr(torch, DTYPES[item]))
    return dtypes


def parse_providers(text: str) -> list[str]:
    providers = parse_list(text)
    for p in providers:
        if p not in PROVIDERS:
            raise ValueError(f"unknown provider {p!r}; choose from {PROVIDERS}")
    return providers


def environment(device: str) -> dict:
    import torch

    from .. import __version__, _ops

    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = _cpu_name()
    return {"inna_fused": __version__, "inna_fused_build": _ops.build_info(),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": device, "device_name": device_name, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args) -> int:
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("bench: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    try:
        workloads = parse_workloads(args.workloads)
        dtypes = parse_dtypes(args.dtype)
        providers = parse_providers(args.providers)
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("bench: --repeats must be >= 1", file=sys.stderr)
        return 2
    env = environment(device)
    total = len(dtypes) * len(workloads) * calls_in_round_robin(providers, args.repeats,
                                                                  MAX_REPEATS)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=total, desc="bench", unit="step", file=sys.stderr, leave=False)
    try:
        rows = measure(workloads, providers, dtypes, device, args.repeats, args.min_time,
                       max_repeats=MAX_REPEATS, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    report.add_ratios(rows)
    checks = report.check_targets(rows)
    innaprop = report.innaprop_ratios(rows)
    print(f"inna_fused {env['inna_fused']} ({env['inna_fused_build'].get('cpu_simd')}), "
          f"torch {env['torch']}, {env['device_name']}, {env['threads']} threads; "
          f"medians of {args.repeats} interleaved samples "
          f"(per-param loops <= {MAX_REPEATS['reference']}, "
          f"foreach <= {MAX_REPEATS['foreach']})")
    print(report.format_table(rows))
    print()
    if innaprop:
        print(report.format_innaprop(innaprop))
        print()
    print(report.format_checks(checks))
    if args.json:
        result = {"schema": "inna_fused.bench/2",
                  "command": "python -m inna_fused " + " ".join(sys.argv[1:]),
                  "environment": env,
                  "settings": {"repeats": args.repeats, "min_time_s": args.min_time,
                               "max_repeats": MAX_REPEATS, "workloads": workloads,
                               "providers": providers, "dtypes": [dtype_name(d) for d in dtypes]},
                  "results": rows, "targets": checks, "innaprop": innaprop}
        directory = os.path.dirname(args.json)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.plot:
        report.plot(rows, args.plot, f"INNA / INNAprop step, {env['device_name']}, {env['threads']} threads, "
                              f"torch {env['torch']}")
    return 0
