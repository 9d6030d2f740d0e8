"""`python -m inna_fused bench`: INNA's step time against torch's fused optimizers, side by side.

For each workload, every provider gets its own tensors and the providers are timed interleaved
(round-robin repeats), so that noise from a shared machine hits all of them alike; the table shows
medians. Effective bandwidth = bytes the step must move / median time (see
inna_fused.benchmarking.bytes_per_element); "% stream" compares it with an in-place
`a.add_(b, alpha=s)` (float32, 12 bytes/element) over as many elements, timed in the same rounds.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
from typing import Optional

from .. import benchmarking as B

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "float64": "float64", "fp64": "float64"}
# The slow providers are capped so that the default run stays around a minute.
DEFAULT_MAX_REPEATS = {"reference": 3, "foreach": 5}
SPEEDUP_BASELINES = (("reference", "ref"), ("foreach", "foreach"), ("sgd", "SGD"), ("adam", "Adam"))

# The core issue's acceptance targets (and the product's, docs/PERFORMANCE.md), as time ratios.
TARGETS = (
    # name, what, accepted, product promise, comparison
    ("fused_vs_sgd", "fused / SGD(m=0.9, fused) time, largest flat fp32 >= 2^24", 1.10, 1.00, "<="),
    ("fused_vs_adam", "fused / Adam(fused) time, largest flat fp32 >= 2^24", 0.85, 0.75, "<="),
    ("fused_pct_stream", "fused effective GB/s as % of stream, largest flat fp32 >= 2^24",
     None, 85.0, ">="),
    ("list_vs_flat", "fused time: ResNet-50 list / one flat tensor of equal size",
     1.20, 1.05, "<="),
    ("speedup_vs_reference", "fused speed-up over the per-parameter loop (ResNet-50 list)",
     8.0, 10.0, ">="),
    ("speedup_vs_foreach", "fused speed-up over foreach (ResNet-50 list)", 3.0, 3.0, ">="),
    ("bf16_state_vs_fp32_state_bf16", "bf16 params: bf16 state / float32 state time (10 vs 14 "
     "B/element), largest flat >= 2^24", 0.80, 0.80, "<="),
    ("bf16_state_vs_fp32_state_fp32", "fp32 params: bf16 state / float32 state time (16 vs 20 "
     "B/element), largest flat >= 2^24", 0.85, 0.85, "<="),
    ("fused_vs_sgd_bf16", "fused / SGD(m=0.9, fused) time, largest flat bf16 >= 2^24",
     1.00, 1.00, "<="),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="float32",
                        help="comma-separated: float32, bfloat16, float16, float64 "
                             "(default float32)")
    parser.add_argument("--workloads", default=",".join(B.DEFAULT_WORKLOADS),
                        help="comma-separated: flat-2^N, flat-<numel>, resnet50, gpt2-small, "
                             "bert-base, tiny-10000, <model>-flat; 'ladder' = flat 2^16..2^26 "
                             "(default: %(default)s)")
    parser.add_argument("--providers", default=",".join(B.DEFAULT_PROVIDERS),
                        help="comma-separated subset of %(default)s")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed samples per provider and workload (default %(default)s; the "
                             "reference loop gets at most 3, foreach at most 5)")
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
        expanded = B.FLAT_LADDER if item == "ladder" else (item,)
        names += [n for n in expanded if n not in names]
    for name in names:
        B.make_workload(name)  # raises ValueError naming an unknown workload
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
        if p not in B.PROVIDERS:
            raise ValueError(f"unknown provider {p!r}; choose from {B.PROVIDERS}")
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


def measure(workload_names, providers, dtypes, device, repeats, min_time=0.005,
            max_repeats=None, progress=None) -> list[dict]:
    """Run the benchmark; one result row per (dtype, workload, provider) that could run."""
    rows = []
    max_repeats = DEFAULT_MAX_REPEATS if max_repeats is None else max_repeats
    for dtype in dtypes:
        for name in workload_names:
            workload = B.make_workload(name)
            runners, skipped = {}, {}
            for provider in providers:
                if progress is not None:
                    progress.set_postfix_str(f"{name} {_dtype_name(dtype)} setup {provider}")
                try:
                    runners[provider] = B.make_runner(provider, workload, device, dtype)
                except (B.ProviderUnavailable, RuntimeError, NotImplementedError) as e:
                    # e.g. a torch fused optimizer without a kernel for this device/dtype
                    skipped[provider] = f"{type(e).__name__}: {e}".splitlines()[0]
            if progress is not None:
                progress.set_postfix_str(f"{name} {_dtype_name(dtype)}")
                for provider in skipped:  # their samples will never come
                    progress.update(min(repeats, max_repeats.get(provider, repeats)))
            times = B.round_robin({p: r.step for p, r in runners.items()}, repeats,
                                  max_repeats=max_repeats, min_time=min_time,
                                  no_warmup=set(max_repeats),  # make_runner took a first step
                                  on_call=(lambda _: progress.update(1)) if progress else None)
            for provider in providers:
                row = {"workload": name, "kind": workload.kind, "numel": workload.numel,
                       "tensors": workload.tensors, "dtype": _dtype_name(dtype),
                       "device": str(device), "provider": provider,
                       "label": B.PROVIDER_LABELS[provider],
                       "bytes_per_element": B.bytes_per_element(provider, dtype),
                       "bytes_per_step": B.bytes_per_step(provider, dtype, workload)}
                if provider in skipped:
                    row.update(skipped=skipped[provider], times_s=[], median_s=None, gbps=None)
                else:
                    median = B.median(times[provider])
                    row.update(times_s=times[provider], median_s=median,
                               gbps=B.effective_gbps(row["bytes_per_step"], median))
                rows.append(row)
            del runners
            gc.collect()
    _add_ratios(rows)
    return rows


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _add_ratios(rows: list[dict]) -> None:
    """% of the stream yardstick and speed-ups against the baselines of the same workload."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_key.setdefault((row["device"], row["dtype"], row["workload"]), {})[row["provider"]] = row
    for group in by_key.values():
        stream = group.get("stream")
        for row in group.values():
            ok = row["median_s"] is not None
            row["pct_stream"] = (100.0 * row["gbps"] / stream["gbps"]
                                 if ok and stream and stream["gbps"] else None)
            row["speedup"] = {}
            for baseline, _ in SPEEDUP_BASELINES:
                other = group.get(baseline)
                row["speedup"][baseline] = (other["median_s"] / row["median_s"]
                                            if ok and other and other["median_s"] else None)


def _find(rows, provider, workload, dtype="float32") -> Optional[dict]:
    for row in rows:
        if (row["provider"], row["workload"], row["dtype"]) == (provider, workload, dtype):
            return row if row["median_s"] is not None else None
    return None


def _largest_flat(rows, provider, dtype) -> Optional[dict]:
    flats = [r for r in rows if r["kind"] == "flat" and r["dtype"] == dtype
             and r["provider"] == provider and r["numel"] >= 1 << 24
             and r["workload"].startswith("flat-") and r["median_s"] is not None]
    return max(flats, key=lambda r: r["numel"]) if flats else None


def check_targets(rows: list[dict]) -> list[dict]:
    """The acceptance targets that these results can answer, each with its measured value."""
    flats = sorted((r for r in rows if r["kind"] == "flat" and r["dtype"] == "float32"
                    and r["provider"] == "fused" and r["numel"] >= 1 << 24
                    and r["workload"].startswith("flat-") and r["median_s"] is not None),
                   key=lambda r: r["numel"])
    values: dict[str, tuple[float, str]] = {}
    if flats:
        fused = flats[-1]
        w = fused["workload"]
        for key, base in (("fused_vs_sgd", "sgd"), ("fused_vs_adam", "adam")):
            other = _find(rows, base, w)
            if other:
                values[key] = (fused["median_s"] / other["median_s"], w)
        if fused["pct_stream"] is not None:
            values["fused_pct_stream"] = (fused["pct_stream"], w)
    for dtype, key in (("bfloat16", "bf16_state_vs_fp32_state_bf16"),
                       ("float32", "bf16_state_vs_fp32_state_fp32")):
        largest = _largest_flat(rows, "fused-bf16state", dtype)
        if largest:
            other = _find(rows, "fused", largest["workload"], dtype)
            if other:
                values[key] = (largest["median_s"] / other["median_s"], largest["workload"])
    largest = _largest_flat(rows, "fused", "bfloat16")
    if largest:
        other = _find(rows, "sgd", largest["workload"], "bfloat16")
        if other:
            values["fused_vs_sgd_bf16"] = (largest["median_s"] / other["median_s"],
                                           largest["workload"])
    listed, flat = _find(rows, "fused", "resnet50"), _find(rows, "fused", "resnet50-flat")
    if listed and flat:
        values["list_vs_flat"] = (listed["median_s"] / flat["median_s"], "resnet50")
    if listed:
        for key, base in (("speedup_vs_reference", "reference"), ("speedup_vs_foreach", "foreach")):
            if listed["speedup"].get(base):
                values[key] = (listed["speedup"][base], "resnet50")
    checks = []
    for key, what, accepted, product, comparison in TARGETS:
        if key not in values:
            continue
        value, workload = values[key]

        def meets(limit):
            if limit is None:
                return None
            return value <= limit if comparison == "<=" else value >= limit

        checks.append({"name": key, "what": what, "workload": workload, "value": value,
                       "comparison": comparison, "accepted": accepted, "product": product,
                       "meets_accepted": meets(accepted), "meets_product": meets(product)})
    return checks


def _fmt(value, spec, missing="-") -> str:
    return missing if value is None else format(value, spec)


def format_table(rows: list[dict]) -> str:
    headers = ["workload", "dtype", "provider", "median ms", "GB/s", "% stream",
               *(f"x vs {short}" for _, short in SPEEDUP_BASELINES)]
    body = []
    for row in rows:
        if row["median_s"] is None:
            body.append([row["workload"], row["dtype"], row["label"],
                         f"skipped ({row['skipped'][:40]})", "", "",
                         *[""] * len(SPEEDUP_BASELINES)])
            continue
        body.append([row["workload"], row["dtype"], row["label"],
                     _fmt(row["median_s"] * 1e3, ".3f"), _fmt(row["gbps"], ".2f"),
                     _fmt(row["pct_stream"], ".0f"),
                     *(_fmt(row["speedup"][b], ".2f") for b, _ in SPEEDUP_BASELINES)])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    numeric = [False, False, False] + [True] * (len(headers) - 3)

    def line(cells):
        return "  ".join(str(c).rjust(w) if num else str(c).ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    previous = None
    for row, cells in zip(rows, body):
        key = (row["workload"], row["dtype"])
        if previous is not None and key != previous:
            out.append("")
        previous = key
        out.append(line(cells))
    return "\n".join(out)


def format_checks(checks: list[dict]) -> str:
    if not checks:
        return "Targets: none of the target workloads ran (see --workloads)."
    out = ["Targets (accepted / product promise):"]
    for c in checks:
        unit = "%" if c["name"] == "fused_pct_stream" else "x"
        verdict = {True: "met", False: "MISSED", None: "-"}
        accepted = ("" if c["accepted"] is None
                    else f"accepted {c['comparison']} {c['accepted']:g}{unit}: "
                         f"{verdict[c['meets_accepted']]}; ")
        out.append(f"  {c['what']}: {c['value']:.2f}{unit} ({accepted}product "
                   f"{c['comparison']} {c['product']:g}{unit}: {verdict[c['meets_product']]})")
    return "\n".join(out)


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flat = [r for r in rows if r["workload"].startswith("flat-") and r["median_s"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in flat:
        series.setdefault((r["provider"], r["dtype"]), []).append((r["numel"], r["gbps"]))
    for (provider, dtype), points in series.items():
        points.sort()
        xs, ys = zip(*points)
        label = B.PROVIDER_LABELS[provider] + ("" if dtype == "float32" else f" {dtype}")
        if provider == "stream":
            ax.plot(xs, ys, "k--", linewidth=2, label=label + " (yardstick)")
        else:
            style = "o-" if provider in B.INNA_PROVIDERS else "s:"
            ax.plot(xs, ys, style, linewidth=2.5 if provider == "fused" else 1.2, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("elements (one flat tensor)")
    ax.set_ylabel("effective GB/s\n(bytes the step must move / median time)", fontsize=9)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


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
    total = len(dtypes) * len(workloads) * B.calls_in_round_robin(providers, args.repeats,
                                                                  DEFAULT_MAX_REPEATS)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=total, desc="bench", unit="step", file=sys.stderr, leave=False)
    try:
        rows = measure(workloads, providers, dtypes, device, args.repeats, args.min_time,
                       progress=progress)
    finally:
        if progress is not None:
            progress.close()
    checks = check_targets(rows)
    print(f"inna_fused {env['inna_fused']} ({env['inna_fused_build'].get('cpu_simd')}), "
          f"torch {env['torch']}, {env['device_name']}, {env['threads']} threads; "
          f"medians of {args.repeats} interleaved samples "
          f"(per-param loop <= {DEFAULT_MAX_REPEATS['reference']}, "
          f"foreach <= {DEFAULT_MAX_REPEATS['foreach']})")
    print(format_table(rows))
    print()
    print(format_checks(checks))
    if args.json:
        result = {"schema": "inna_fused.bench/1",
                  "command": "python -m inna_fused " + " ".join(sys.argv[1:]),
                  "environment": env,
                  "settings": {"repeats": args.repeats, "min_time_s": args.min_time,
                               "max_repeats": DEFAULT_MAX_REPEATS, "workloads": workloads,
                               "providers": providers, "dtypes": [_dtype_name(d) for d in dtypes]},
                  "results": rows, "targets": checks}
        directory = os.path.dirname(args.json)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.plot:
        plot(rows, args.plot, f"INNA step, {env['device_name']}, {env['threads']} threads, "
                              f"torch {env['torch']}")
    return 0
