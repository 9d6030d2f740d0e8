"""GPU benchmark of the fused INNA and INNAprop steps (run by bench/gpu_check.sh on a GPU machine).

Measured side by side in one run (medians of CUDA-event timings after warm-up):
  - device-to-device copy bandwidth (bytes read + written) and an in-place `a.add_(b, alpha)`;
  - the fused INNA step on a GPT-2-XL-shaped parameter list (≥ 1e9 float32 elements): effective
    bandwidth (20 bytes/element) as a % of the copy bandwidth, eager and CUDA-graph replay;
  - the op alone (CUDA-graph replay) on the same list for each param × phase dtype pair, with
    stochastic rounding on: fp32 θ,g + fp32 phase (20 B/element), fp32 + bf16 phase (16 B),
    bf16 θ,g + fp32 phase (14 B), bf16 + bf16 phase (10 B);
  - torch.optim.Adam(fused=True) and INNA's foreach path on the same list (time ratios);
  - the fused INNAprop step against torch.optim.AdamW(fused=True) on the same list, eager and
    CUDA-graph replay: both move 28 bytes/element in float32 (INNAprop reads θ, g, phase,
    exp_avg_sq and writes θ, phase, exp_avg_sq; AdamW reads θ, g, m, v and writes θ, m, v);
  - INNAprop's op alone for each param × state dtype pair (phase and exp_avg_sq): fp32 + fp32
    state (28 B/element), fp32 + bf16 state (20 B), bf16 + fp32 state (22 B), bf16 + bf16 (14 B);
  - 10,000 tensors × 1,000 elements against one flat tensor of 1e7 (per-element time ratio);
  - kernel launches per step (torch.profiler; falls back to "n/a" where CUPTI is unavailable).

    python bench/gpu_bench.py [--md table.md] [--json results.json]
    python bench/gpu_bench.py --device cpu --layers 1 --d-model 64 --vocab 512 --ctx 64 \
        --small-count 100 --small-numel 100 --reps 2 --warmup 1      # smoke run, no GPU

Targets (bench/NOTES.md, "Targets"): ≥ 90% of copy bandwidth, ≥ 1.3× faster than Adam(fused=True),
≥ 3× faster than foreach, 10k×1000 list within 1.5× of the flat tensor's per-element time.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the source tree's inna_fused

import inna_fused  # noqa: E402
from inna_fused import INNA  # noqa: E402

BYTES_PER_ELEMENT = {"inna_f32": 20, "inna_bf16": 14, "adam_f32": 28, "innaprop_f32": 28,
                     "copy": 8, "add": 12}

# The op's traffic per element for (param dtype, phase dtype): θ read + written, g read, the phase
# read + written.
STATE_DTYPE_PAIRS = {
    "fp32 θ,g + fp32 phase": (torch.float32, torch.float32, 20),
    "fp32 θ,g + bf16 phase": (torch.float32, torch.bfloat16, 16),
    "bf16 θ,g + fp32 phase": (torch.bfloat16, torch.float32, 14),
    "bf16 θ,g + bf16 phase": (torch.bfloat16, torch.bfloat16, 10),
}


# INNAprop's op per element for (param dtype, state dtype): θ read + written, g read, the phase
# and exp_avg_sq (both in the state dtype) read + written.
INNAPROP_STATE_DTYPE_PAIRS = {
    "fp32 θ,g + fp32 state": (torch.float32, torch.float32, 3 * 4 + 4 * 4),
    "fp32 θ,g + bf16 state": (torch.float32, torch.bfloat16, 3 * 4 + 4 * 2),
    "bf16 θ,g + fp32 state": (torch.bfloat16, torch.float32, 3 * 2 + 4 * 4),
    "bf16 θ,g + bf16 state": (torch.bfloat16, torch.bfloat16, 3 * 2 + 4 * 2),
}
INNAPROP_HYPER = dict(alpha=0.1, beta=0.9, sigma=0.999, eps=1e-8, weight_decay=0.01)


def gpt2_shapes(layers: int, d: int, vocab: int, ctx: int) -> list[tuple[int, ...]]:
    """Parameter shapes of a GPT-2 model (HF layout): 48 layers, d=1600 is GPT-2 XL (1.56e9)."""
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,),
                   (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


class Timer:
    """Median time of a callable in ms: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device, reps: int, warmup: int):
        self.device, self.reps, self.warmup = device, reps, warmup

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn, reps=None) -> float:
        reps = reps or self.reps
        for _ in range(self.warmup):
            fn()
        self.sync()
        if self.device.type == "cuda":
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(reps)]
            for start, end in events:
                start.record()
                fn()
                end.record()
            self.sync()
            times = [start.elapsed_time(end) for start, end in events]
        else:
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def make_params(shapes, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, dtype=dtype, device=device, generator=gen))
        p.grad = torch.randn(shape, dtype=dtype, device=device, generator=gen)
        params.append(p)
    return params


def graph_of(step, device):
    """Capture step() in a CUDA graph (after a warm-up on a side stream); None on the CPU."""
    if device.type != "cuda":
        return None
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def count_kernels(step, device, functor="InnaFunctor") -> dict | None:
    """Kernels one step launches (by name), from torch.profiler; None if nothing was recorded.
    `functor`: the main kernel's functor (InnaFunctor, InnapropFunctor)."""
    if device.type != "cuda":
        return None
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize(device)
    except Exception as e:  # CUPTI missing or refused
        print(f"profiler unavailable: {e}", file=sys.stderr)
        return None
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not names:
        return None
    inna = [n for n in names if "inna_" in n]
    return {"all_kernels": len(names), "inna_kernels": len(inna),
            "inna_main": sum("multi_tensor_kernel" in n and functor in n for n in inna),
            "inna_step_increment": sum("step_increment_kernel" in n for n in inna)}


def free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_bandwidth(n, device, timer):
    a = torch.randn(n, device=device)
    b = torch.randn(n, device=device)
    copy_ms = timer(lambda: a.copy_(b))
    add_ms = timer(lambda: a.add_(b, alpha=1e-3))
    del a, b
    free()
    return {"copy_ms": copy_ms, "copy_GBps": BYTES_PER_ELEMENT["copy"] * n / copy_ms / 1e6,
            "add_ms": add_ms, "add_GBps": BYTES_PER_ELEMENT["add"] * n / add_ms / 1e6}


def bench_model_list(shapes, device, timer, args):
    n = sum(math.prod(s) for s in shapes)
    out = {"tensors": len(shapes), "elements": n}
    params = make_params(shapes, torch.float32, device)
    lr = torch.tensor(1e-4, device=device)
    inna = INNA(params, lr=lr, fused=True, capturable=device.type == "cuda")
    out["inna_ms"] = timer(inna.step)
    out["inna_GBps"] = BYTES_PER_ELEMENT["inna_f32"] * n / out["inna_ms"] / 1e6
    out["inna_launches"] = count_kernels(inna.step, device)
    graph = graph_of(inna.step, device)
    if graph is not None:
        out["inna_graph_ms"] = timer(graph.replay)
        out["inna_graph_GBps"] = BYTES_PER_ELEMENT["inna_f32"] * n / out["inna_graph_ms"] / 1e6
        del graph
    del inna
    free()

    adam = torch.optim.Adam(params, lr=1e-4, fused=True)
    out["adam_ms"] = timer(adam.step)
    del adam
    free()

    foreach = INNA(params, lr=1e-4, foreach=True, fused=False)
    out["foreach_ms"] = timer(foreach.step, reps=max(3, args.reps // 3))
    del foreach, params
    free()

    if not args.no_bf16:
        params = make_params(shapes, torch.bfloat16, device)
        inna = INNA(params, lr=1e-4, fused=True)
        out["inna_bf16_ms"] = timer(inna.step)
        out["inna_bf16_GBps"] = BYTES_PER_ELEMENT["inna_bf16"] * n / out["inna_bf16_ms"] / 1e6
        del inna, params
        free()
    return out


def bench_op_state_dtypes(shapes, device, timer, args, innaprop=False):
    """An op alone (no optimizer class: INNA's, or INNAprop's with `innaprop`) for each param ×
    phase dtype pair, stochastic rounding on: eager, and CUDA-graph replay where there is a GPU.
    Steps start past the first (k = 1), so the state is read as in every later step."""
    n = sum(math.prod(s) for s in shapes)
    out = {}
    pairs = INNAPROP_STATE_DTYPE_PAIRS if innaprop else STATE_DTYPE_PAIRS
    for name, (dtype, phase_dtype, bytes_per_element) in pairs.items():
        if args.no_bf16 and dtype == torch.bfloat16:
            continue
        gen = torch.Generator(device=device).manual_seed(0)
        params = [torch.randn(s, dtype=dtype, device=device, generator=gen) for s in shapes]
        grads = [torch.randn(s, dtype=dtype, device=device, generator=gen) for s in shapes]
        phases = [torch.zeros(s, dtype=phase_dtype, device=device) for s in shapes]
        steps = [torch.ones((), device=device) for _ in shapes]
        lr = torch.tensor(1e-4, device=device)
        if innaprop:
            exp_avg_sqs = [torch.rand(s, device=device, generator=gen).to(phase_dtype)
                           for s in shapes]

            def step():
                torch.ops.inna_fused.fused_innaprop_.tensor_lr(
                    params, grads, phases, exp_avg_sqs, steps, lr=lr, maximize=False,
                    stochastic_rounding=True, seed=0, **INNAPROP_HYPER)
        else:
            def step():
                torch.ops.inna_fused.fused_inna_.tensor_lr(
                    params, grads, phases, steps, lr=lr, alpha=0.5, beta=0.1, decay_power=0.0,
                    weight_decay=0.0, decoupled_weight_decay=False, paper_init=True,
                    maximize=False, stochastic_rounding=True, seed=0)

        row = {"bytes_per_element": bytes_per_element, "ms": timer(step)}
        row["GBps"] = bytes_per_element * n / row["ms"] / 1e6
        graph = graph_of(step, device)
        if graph is not None:
            row["graph_ms"] = timer(graph.replay)
            row["graph_GBps"] = bytes_per_element * n / row["graph_ms"] / 1e6
            del graph
        out[name] = row
        del params, grads, phases, steps, step
        free()
    return out


def innaprop_available(device) -> bool:
    from inna_fused import _ops

    return _ops.op_kernel_available(_ops.INNAPROP_OP_NAME, device.type)


def bench_innaprop_list(shapes, device, timer, args):
    """Fused INNAprop against AdamW(fused=True) on the same fp32 list (28 B/element each): eager,
    and CUDA-graph replay where there is a GPU (both capturable, with a tensor lr)."""
    n = sum(math.prod(s) for s in shapes)
    bpe = BYTES_PER_ELEMENT["innaprop_f32"]
    out = {"tensors": len(shapes), "elements": n, "bytes_per_element": bpe}
    capturable = device.type == "cuda"
    params = make_params(shapes, torch.float32, device)
    for name, make in (
            ("innaprop", lambda lr: inna_fused.INNAprop(params, lr=lr, fused=True,
                                                        capturable=capturable, **INNAPROP_HYPER)),
            ("adamw", lambda lr: torch.optim.AdamW(params, lr=lr, fused=True,
                                                   capturable=capturable, weight_decay=0.01))):
        opt = make(torch.tensor(1e-4, device=device) if capturable else 1e-4)
        out[f"{name}_ms"] = timer(opt.step)
        out[f"{name}_GBps"] = bpe * n / out[f"{name}_ms"] / 1e6
        if name == "innaprop":
            out["innaprop_launches"] = count_kernels(opt.step, device, "InnapropFunctor")
        graph = graph_of(opt.step, device)
        if graph is not None:
            out[f"{name}_graph_ms"] = timer(graph.replay)
            out[f"{name}_graph_GBps"] = bpe * n / out[f"{name}_graph_ms"] / 1e6
            del graph
        del opt
        free()
    if not args.no_authors_loop:
        # The authors' per-parameter loop (their step literally; eager only: it reads its step
        # counts on the host).
        from inna_fused.bench.providers import AuthorsINNAprop

        opt = AuthorsINNAprop(params, lr=1e-4, **INNAPROP_HYPER)
        out["authors_ms"] = timer(opt.step)
        del opt
        free()
    del params
    free()
    return out


def bench_small_tensors(count, numel, device, timer):
    out = {"count": count, "numel": numel}
    for name, shapes in (("list", [(numel,)] * count), ("flat", [(count * numel,)])):
        params = make_params(shapes, torch.float32, device)
        opt = INNA(params, lr=torch.tensor(1e-4, device=device), fused=True,
                   capturable=device.type == "cuda")
        out[f"{name}_ms"] = timer(opt.step)
        graph = graph_of(opt.step, device)
        if graph is not None:
            out[f"{name}_graph_ms"] = timer(graph.replay)
            del graph
        if name == "list":
            out["list_launches"] = count_kernels(opt.step, device)
        del opt, params
        free()
    return out


def summarise(results):
    """Rows (measurement, value, target, verdict) of the markdown table."""
    bw, model, small = results["bandwidth"], results["model"], results["small"]
    rows = [
        ("device-to-device copy (read + write)", f"{bw['copy_GBps']:.0f} GB/s", "", ""),
        ("in-place add_ (12 B/elem)", f"{bw['add_GBps']:.0f} GB/s", "", ""),
    ]

    def ratio_row(name, value, target=None, higher_is_better=True, fmt="{:.2f}x"):
        if target is None:  # shown for information; the target applies to another row
            rows.append((name, fmt.format(value), "", ""))
            return
        ok = value >= target if higher_is_better else value <= target
        sign = ">=" if higher_is_better else "<="
        rows.append((name, fmt.format(value), f"{sign} {fmt.format(target)}", "PASS" if ok else "MISS"))

    # Kernel-level targets are judged on CUDA-graph replays (GPU time only) where there are any;
    # eager figures include the host's work and are shown beside them.
    graphs = "inna_graph_ms" in model

    label = f"{model['tensors']} tensors, {model['elements'] / 1e9:.2f}e9 fp32 elements"
    rows.append((f"fused INNA step ({label})",
                 f"{model['inna_ms']:.2f} ms, {model['inna_GBps']:.0f} GB/s", "", ""))
    ratio_row("fused INNA effective BW / copy BW, eager", 100 * model["inna_GBps"] / bw["copy_GBps"],
              None if graphs else 90, fmt="{:.1f}%")
    if graphs:
        rows.append(("fused INNA step, CUDA graph replay",
                     f"{model['inna_graph_ms']:.2f} ms, {model['inna_graph_GBps']:.0f} GB/s", "", ""))
        ratio_row("fused INNA effective BW / copy BW, CUDA graph",
                  100 * model["inna_graph_GBps"] / bw["copy_GBps"], 90, fmt="{:.1f}%")
    ratio_row("Adam(fused=True) time / fused INNA time", model["adam_ms"] / model["inna_ms"], 1.3)
    ratio_row("foreach INNA time / fused INNA time", model["foreach_ms"] / model["inna_ms"], 3.0)
    if "inna_bf16_ms" in model:
        rows.append(("fused INNA step, bf16 params (14 B/elem)",
                     f"{model['inna_bf16_ms']:.2f} ms, {model['inna_bf16_GBps']:.0f} GB/s", "", ""))
    def op_alone_rows(what, pairs):
        for name, row in pairs.items():
            kind, ms, gbps = ("CUDA graph", row["graph_ms"], row["graph_GBps"]) \
                if "graph_ms" in row else ("eager", row["ms"], row["GBps"])
            rows.append((f"{what}, {name} ({row['bytes_per_element']} B/elem, SR on), {kind}",
                         f"{ms:.2f} ms, {gbps:.0f} GB/s, "
                         f"{100 * gbps / bw['copy_GBps']:.1f}% of copy", "", ""))

    op_alone_rows("op alone", results.get("state_dtypes", {}))
    prop = results.get("innaprop")
    if prop:
        # INNAprop's targets (bench/NOTES.md): <= 1.0x AdamW(fused)'s time, >= 10x the authors' loop.
        bpe = prop["bytes_per_element"]
        for name, what in (("innaprop", "fused INNAprop step"), ("adamw", "AdamW(fused=True) step")):
            rows.append((f"{what} ({bpe} B/elem), eager",
                         f"{prop[name + '_ms']:.2f} ms, {prop[name + '_GBps']:.0f} GB/s, "
                         f"{100 * prop[name + '_GBps'] / bw['copy_GBps']:.1f}% of copy", "", ""))
            if name + "_graph_ms" in prop:
                rows.append((f"{what} ({bpe} B/elem), CUDA graph replay",
                             f"{prop[name + '_graph_ms']:.2f} ms, "
                             f"{prop[name + '_graph_GBps']:.0f} GB/s, "
                             f"{100 * prop[name + '_graph_GBps'] / bw['copy_GBps']:.1f}% of copy",
                             "", ""))
        ratio_row("fused INNAprop time / AdamW(fused) time, eager",
                  prop["innaprop_ms"] / prop["adamw_ms"], 1.0, higher_is_better=False)
        if "authors_ms" in prop:
            rows.append(("INNAprop authors' per-parameter loop, eager",
                         f"{prop['authors_ms']:.2f} ms", "", ""))
            ratio_row("authors' loop time / fused INNAprop time, eager",
                      prop["authors_ms"] / prop["innaprop_ms"], 10.0)
        if "innaprop_graph_ms" in prop and "adamw_graph_ms" in prop:
            ratio_row("fused INNAprop time / AdamW(fused) time, CUDA graph",
                      prop["innaprop_graph_ms"] / prop["adamw_graph_ms"])
    elif "innaprop_skipped" in results:
        rows.append(("fused INNAprop", f"skipped: {results['innaprop_skipped']}", "", ""))
    op_alone_rows("INNAprop op alone", results.get("innaprop_state_dtypes", {}))
    tag = f"{small['count']} x {small['numel']}"
    ratio_row(f"{tag} list / flat per-element time, eager (host-bound)",
              small["list_ms"] / small["flat_ms"], None if "list_graph_ms" in small else 1.5,
              higher_is_better=False)
    if "list_graph_ms" in small:
        ratio_row(f"{tag} list / flat per-element time, CUDA graph",
                  small["list_graph_ms"] / small["flat_graph_ms"], 1.5, higher_is_better=False)
    launches = [(label, model.get("inna_launches")), (tag, small.get("list_launches"))]
    if prop:
        launches.append((f"{label}, INNAprop", prop.get("innaprop_launches")))
    for what, counts in launches:
        value = "n/a (no profiler data)" if not counts else (
            f"{counts['inna_main']} main + {counts['inna_step_increment']} step-increment "
            f"({counts['all_kernels']} kernels in all)")
        rows.append((f"launches per step, {what}", value, "", ""))
    return rows


def markdown(rows, header):
    lines = [header, "", "| measurement | value | target | verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--d-model", type=int, default=1600)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--small-count", type=int, default=10_000)
    p.add_argument("--small-numel", type=int, default=1_000)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 param lists")
    p.add_argument("--no-innaprop", action="store_true",
                   help="skip INNAprop (vs AdamW(fused) and its op alone)")
    p.add_argument("--no-authors-loop", action="store_true",
                   help="skip the authors' per-parameter INNAprop loop")
    p.add_argument("--md", type=Path, help="write the markdown table here")
    p.add_argument("--json", type=Path, help="write all measurements here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and inna_fused.kernel_available("cuda")):
        print(f"no CUDA device or CUDA kernel: {inna_fused.build_info()}", file=sys.stderr)
        return 2
    timer = Timer(device, args.reps, args.warmup)
    shapes = gpt2_shapes(args.layers, args.d_model, args.vocab, args.ctx)
    n = sum(math.prod(s) for s in shapes)
    t0 = time.perf_counter()
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "build": inna_fused.build_info()}
    results["bandwidth"] = bench_bandwidth(n, device, timer)
    print(f"bandwidth done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    results["model"] = bench_model_list(shapes, device, timer, args)
    print(f"model list done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    results["state_dtypes"] = bench_op_state_dtypes(shapes, device, timer, args)
    print(f"param x phase dtypes done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if args.no_innaprop:
        results["innaprop_skipped"] = "--no-innaprop"
    elif not innaprop_available(device):
        from inna_fused import _ops

        results["innaprop_skipped"] = _ops.op_unavailable_reason(_ops.INNAPROP_OP_NAME,
                                                                 device.type)
    else:
        results["innaprop"] = bench_innaprop_list(shapes, device, timer, args)
        print(f"INNAprop vs AdamW done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        results["innaprop_state_dtypes"] = bench_op_state_dtypes(shapes, device, timer, args,
                                                                 innaprop=True)
        print(f"INNAprop param x phase dtypes done ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr)
    results["small"] = bench_small_tensors(args.small_count, args.small_numel, device, timer)
    print(f"small tensors done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    clock = "CUDA-event" if device.type == "cuda" else "wall-clock"
    header = (f"INNA and INNAprop fused steps on {results['device']} (torch {results['torch']}); medians of "
              f"{args.reps} {clock} timings after {args.warmup} warm-up steps")
    table = markdown(summarise(results), header)
    print(table)
    if args.md:
        args.md.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
