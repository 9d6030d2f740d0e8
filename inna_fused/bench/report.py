"""Benchmark report: ratios between providers, the targets (bench/NOTES.md, "Targets"), the table,
INNAprop's ratios (against AdamW(fused), which moves as many bytes, and against the authors' loop)
and the plot."""
from __future__ import annotations

import os
from typing import Optional

from .providers import INNA_PROVIDERS, INNAPROP_PROVIDERS, PROVIDER_LABELS

# (provider, short name): each row's speed-up against these, as "x vs <short>" columns of the
# table (other provider's median time / this row's); a column shows when its baseline ran.
SPEEDUP_BASELINES = (("reference", "ref"), ("foreach", "foreach"), ("innaprop-loop", "authors"),
                     ("innaprop-foreach", "prop-foreach"), ("sgd", "SGD"), ("adam", "Adam"),
                     ("adamw", "AdamW"))

# INNAprop's ratios (time of the first / time of the second), one row per workload and dtype:
# (key, column header, numerator provider, denominator provider).
INNAPROP_RATIOS = (
    ("innaprop_vs_adamw", "INNAprop / AdamW time", "innaprop", "adamw"),
    ("loop_vs_innaprop", "authors' loop / INNAprop time", "innaprop-loop", "innaprop"),
    ("foreach_vs_innaprop", "foreach / INNAprop time", "innaprop-foreach", "innaprop"),
    ("bf16state_vs_innaprop", "bf16 state / fp32 state time", "innaprop-bf16state", "innaprop"),
    ("innaprop_vs_inna", "INNAprop / INNA fused time", "innaprop", "fused"),
)

# The targets, as stated in bench/NOTES.md ("Targets"): "accepted" is the threshold a release must
# meet, "goal" the stricter one aimed at (None: no accepted threshold).
TARGETS = (
    # name, what, accepted, goal, comparison
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
    # INNAprop (its issue's acceptance criteria): AdamW(fused) moves as many bytes (28 B/element).
    ("innaprop_vs_adamw", "INNAprop fused / AdamW(fused) time, largest flat fp32 >= 2^24",
     1.00, 1.00, "<="),
    ("innaprop_vs_adamw_resnet50", "INNAprop fused / AdamW(fused) time, ResNet-50 list",
     1.00, 1.00, "<="),
    ("innaprop_vs_adamw_gpt2", "INNAprop fused / AdamW(fused) time, GPT-2 small list",
     1.00, 1.00, "<="),
    ("innaprop_speedup_vs_authors", "INNAprop fused speed-up over the authors' loop (ResNet-50 "
     "list)", 10.0, 10.0, ">="),
)


def add_ratios(rows: list[dict]) -> None:
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
    largest = _largest_flat(rows, "innaprop", "float32")
    if largest:
        other = _find(rows, "adamw", largest["workload"])
        if other:
            values["innaprop_vs_adamw"] = (largest["median_s"] / other["median_s"],
                                           largest["workload"])
    for key, workload in (("innaprop_vs_adamw_resnet50", "resnet50"),
                          ("innaprop_vs_adamw_gpt2", "gpt2-small")):
        prop, other = _find(rows, "innaprop", workload), _find(rows, "adamw", workload)
        if prop and other:
            values[key] = (prop["median_s"] / other["median_s"], workload)
    prop = _find(rows, "innaprop", "resnet50")
    if prop and prop["speedup"].get("innaprop-loop"):
        values["innaprop_speedup_vs_authors"] = (prop["speedup"]["innaprop-loop"], "resnet50")
    listed, flat = _find(rows, "fused", "resnet50"), _find(rows, "fused", "resnet50-flat")
    if listed and flat:
        values["list_vs_flat"] = (listed["median_s"] / flat["median_s"], "resnet50")
    if listed:
        for key, base in (("speedup_vs_reference", "reference"), ("speedup_vs_foreach", "foreach")):
            if listed["speedup"].get(base):
                values[key] = (listed["speedup"][base], "resnet50")
    checks = []
    for key, what, accepted, goal, comparison in TARGETS:
        if key not in values:
            continue
        value, workload = values[key]

        def meets(limit):
            if limit is None:
                return None
            return value <= limit if comparison == "<=" else value >= limit

        checks.append({"name": key, "what": what, "workload": workload, "value": value,
                       "comparison": comparison, "accepted": accepted, "goal": goal,
                       "meets_accepted": meets(accepted), "meets_goal": meets(goal)})
    return checks


def _fmt(value, spec, missing="-") -> str:
    return missing if value is None else format(value, spec)


def _columns(headers: list[str], body: list[list[str]], keys: list, text_columns: int) -> str:
    """Aligned columns (the first `text_columns` left-aligned, the rest right-aligned), a blank
    line wherever `keys` changes from one body row to the next."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    numeric = [False] * text_columns + [True] * (len(headers) - text_columns)

    def line(cells):
        return "  ".join(str(c).rjust(w) if num else str(c).ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    previous = None
    for key, cells in zip(keys, body):
        if previous is not None and key != previous:
            out.append("")
        previous = key
        out.append(line(cells))
    return "\n".join(out)


def format_table(rows: list[dict]) -> str:
    ran = {row["provider"] for row in rows if row["median_s"] is not None}
    # A speed-up column only for baselines that ran (older rows may lack the newer baselines).
    baselines = [(b, short) for b, short in SPEEDUP_BASELINES if b in ran]
    headers = ["workload", "dtype", "provider", "median ms", "GB/s", "% stream",
               *(f"x vs {short}" for _, short in baselines)]
    body = []
    for row in rows:
        if row["median_s"] is None:
            body.append([row["workload"], row["dtype"], row["label"],
                         f"skipped ({row['skipped'][:40]})", "", "", *[""] * len(baselines)])
            continue
        body.append([row["workload"], row["dtype"], row["label"],
                     _fmt(row["median_s"] * 1e3, ".3f"), _fmt(row["gbps"], ".2f"),
                     _fmt(row["pct_stream"], ".0f"),
                     *(_fmt(row["speedup"].get(b), ".2f") for b, _ in baselines)])
    return _columns(headers, body, [(row["workload"], row["dtype"]) for row in rows], 3)


def innaprop_ratios(rows: list[dict]) -> list[dict]:
    """For each (device, dtype, workload) where fused INNAprop ran: the time ratios of
    INNAPROP_RATIOS (None where one side did not run) and INNAprop's % of the stream yardstick."""
    groups: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        if row["median_s"] is not None:
            groups.setdefault((row["device"], row["dtype"], row["workload"]), {})[
                row["provider"]] = row
    out = []
    for (device, dtype, workload), group in groups.items():
        innaprop = group.get("innaprop")
        if innaprop is None:
            continue
        entry = {"device": device, "dtype": dtype, "workload": workload,
                 "numel": innaprop["numel"], "tensors": innaprop.get("tensors"),
                 "innaprop_pct_stream": innaprop.get("pct_stream")}
        for key, _, numerator, denominator in INNAPROP_RATIOS:
            a, b = group.get(numerator), group.get(denominator)
            entry[key] = a["median_s"] / b["median_s"] if a and b else None
        out.append(entry)
    return out


def format_innaprop(ratios: list[dict]) -> str:
    """INNAprop's ratios as a table (time ratios: below 1 means the first is faster); empty when
    fused INNAprop did not run."""
    if not ratios:
        return ""
    shown = [(key, header) for key, header, _, _ in INNAPROP_RATIOS
             if any(r[key] is not None for r in ratios)]
    headers = ["workload", "dtype", *(header for _, header in shown), "INNAprop % stream"]
    body = [[r["workload"], r["dtype"], *(_fmt(r[key], ".2f") for key, _ in shown),
             _fmt(r["innaprop_pct_stream"], ".0f")] for r in ratios]
    title = ("INNAprop fused against AdamW(fused) (both move 28 B/element in float32) and the "
             "authors' per-parameter loop (time ratios):")
    return title + "\n" + _columns(headers, body, [r["dtype"] for r in ratios], 2)


def format_checks(checks: list[dict]) -> str:
    if not checks:
        return "Targets: none of the target workloads ran (see --workloads)."
    out = ["Targets (accepted / goal; see bench/NOTES.md, \"Targets\"):"]
    for c in checks:
        unit = "%" if c["name"] == "fused_pct_stream" else "x"
        verdict = {True: "met", False: "MISSED", None: "-"}
        accepted = ("" if c["accepted"] is None
                    else f"accepted {c['comparison']} {c['accepted']:g}{unit}: "
                         f"{verdict[c['meets_accepted']]}; ")
        out.append(f"  {c['what']}: {c['value']:.2f}{unit} ({accepted}goal "
                   f"{c['comparison']} {c['goal']:g}{unit}: {verdict[c['meets_goal']]})")
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
        label = PROVIDER_LABELS[provider] + ("" if dtype == "float32" else f" {dtype}")
        if provider == "stream":
            ax.plot(xs, ys, "k--", linewidth=2, label=label + " (yardstick)")
        else:
            style = ("o-" if provider in INNA_PROVIDERS else
                     "^-" if provider in INNAPROP_PROVIDERS else "s:")
            ax.plot(xs, ys, style, linewidth=2.5 if provider in ("fused", "innaprop") else 1.2, label=label)
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
