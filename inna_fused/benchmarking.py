"""Shared pieces of the benchmarks (bench/ and `python -m inna_fused bench`).

- Workloads: parameter shapes of a flat tensor, of real models (generated from their layer shapes,
  nothing is downloaded) or of many tiny tensors. `<name>-flat` is one flat tensor with the same
  number of elements as `<name>`, to measure what splitting a model into many tensors costs.
- Providers: the INNA implementations and the baselines they are compared with, each built as a
  `Runner` whose `step()` is the timed callable (it synchronises CUDA itself).
- Bytes per element: what one step must read and write; effective bandwidth = bytes / step time.
- `round_robin()`: interleaved repeats so that machine noise hits every provider alike.
"""
from __future__ import annotations

import dataclasses
import math
import re
import statistics
import time
from typing import Callable, Iterable, Optional, Sequence

import torch

Shape = tuple[int, ...]

# ---------------------------------------------------------------------------------------------
# Workloads


def resnet50_shapes() -> list[Shape]:
    """Trainable parameter shapes of torchvision's ResNet-50 (25,557,032 elements, 161 tensors)."""
    shapes: list[Shape] = [(64, 3, 7, 7), (64,), (64,)]  # stem conv + batch norm weight, bias
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,),
                       (planes, planes, 3, 3), (planes,), (planes,),
                       (planes * 4, planes, 1, 1), (planes * 4,), (planes * 4,)]
            if block == 0:  # projection shortcut
                shapes += [(planes * 4, inplanes, 1, 1), (planes * 4,), (planes * 4,)]
            inplanes = planes * 4
    shapes += [(1000, 2048), (1000,)]
    return shapes


def gpt2_small_shapes() -> list[Shape]:
    """GPT-2 small (124,439,808 elements; the LM head is tied to the token embedding).
    Weights as Hugging Face stores them (Conv1D: in × out)."""
    width, hidden = 768, 3072
    shapes: list[Shape] = [(50257, width), (1024, width)]  # token and position embeddings
    for _ in range(12):
        shapes += [(width,), (width,),                      # ln_1
                   (width, 3 * width), (3 * width,),        # attention q, k, v (fused)
                   (width, width), (width,),                # attention output projection
                   (width,), (width,),                      # ln_2
                   (width, hidden), (hidden,),              # MLP in
                   (hidden, width), (width,)]               # MLP out
    shapes += [(width,), (width,)]  # ln_f
    return shapes


def bert_base_shapes() -> list[Shape]:
    """BERT-base, uncased vocabulary, with pooler (109,482,240 elements)."""
    width, hidden = 768, 3072
    shapes: list[Shape] = [(30522, width), (512, width), (2, width),  # word, position, token type
                           (width,), (width,)]                        # embedding layer norm
    for _ in range(12):
        shapes += [(width, width), (width,)] * 3              # query, key, value
        shapes += [(width, width), (width,), (width,), (width,),   # attention output + norm
                   (hidden, width), (hidden,),                # intermediate
                   (width, hidden), (width,), (width,), (width,)]  # output + norm
    shapes += [(width, width), (width,)]  # pooler
    return shapes


def tiny_shapes(count: int = 10_000, numel: int = 1_000) -> list[Shape]:
    """`count` tensors of `numel` elements: the many-small-tensors case."""
    return [(numel,)] * count


MODELS: dict[str, Callable[[], list[Shape]]] = {
    "resnet50": resnet50_shapes,
    "gpt2-small": gpt2_small_shapes,
    "bert-base": bert_base_shapes,
    "tiny-10000": tiny_shapes,
}


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    shapes: tuple[Shape, ...]
    kind: str  # "flat" (one tensor) or "list"

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)


_FLAT_NAME = re.compile(r"flat-2\^(\d+)$")


def flat_name(numel: int) -> str:
    exponent = int(math.log2(numel))
    return f"flat-2^{exponent}" if 1 << exponent == numel else f"flat-{numel}"


def make_workload(name: str) -> Workload:
    """`flat-2^N`, `flat-<numel>`, a model name (see MODELS) or `<model>-flat`."""
    match = _FLAT_NAME.match(name)
    if match:
        return Workload(name, ((1 << int(match.group(1)),),), "flat")
    if name.startswith("flat-") and name[5:].isdigit():
        return Workload(name, ((int(name[5:]),),), "flat")
    if name in MODELS:
        return Workload(name, tuple(MODELS[name]()), "list")
    if name.endswith("-flat") and name[:-5] in MODELS:
        total = make_workload(name[:-5]).numel
        return Workload(name, ((total,),), "flat")
    raise ValueError(f"unknown workload {name!r}: use flat-2^N, flat-<numel>, one of "
                     f"{sorted(MODELS)} or <model>-flat")


def shrink(workload: Workload, max_tensors: int = 32, max_numel: int = 256) -> Workload:
    """A tiny stand-in with the same name and kind (for smoke runs that only check the plumbing)."""
    shapes = tuple((min(math.prod(s), max_numel),) for s in workload.shapes[:max_tensors])
    return Workload(workload.name, shapes, workload.kind)


FLAT_LADDER = tuple(f"flat-2^{e}" for e in (16, 18, 20, 22, 24, 25, 26))
DEFAULT_WORKLOADS = ("flat-2^16", "flat-2^18", "flat-2^20", "flat-2^22", "flat-2^24", "flat-2^25",
                     "resnet50", "resnet50-flat")

# ---------------------------------------------------------------------------------------------
# Providers and bytes

INNA_PROVIDERS = ("reference", "foreach", "fused", "fused-bf16state", "fused-nearest")
BASELINE_PROVIDERS = ("sgd", "adam", "adamw", "stream")
PROVIDERS = INNA_PROVIDERS + BASELINE_PROVIDERS
# "fused-nearest" only differs from "fused" for 16-bit params: it runs when asked for.
DEFAULT_PROVIDERS = tuple(p for p in PROVIDERS if p != "fused-nearest")
PROVIDER_LABELS = {
    "reference": "INNA per-param loop",
    "foreach": "INNA foreach",
    "fused": "INNA fused",
    "fused-bf16state": "INNA fused, bf16 state",
    "fused-nearest": "INNA fused, round to nearest",
    "sgd": "torch SGD(m=0.9, fused)",
    "adam": "torch Adam(fused)",
    "adamw": "torch AdamW(fused)",
    "stream": "stream a.add_(b) fp32",
}
# The yardstick is a memory bandwidth measurement: always float32, 12 bytes per element.
STREAM_DTYPE = torch.float32


def bytes_per_element(provider: str, dtype: torch.dtype) -> int:
    """Bytes one step must read plus write per parameter element (what the memory has to move).

    INNA reads θ, g, its state (the phase) and writes θ and the state; the state is float32 for
    16-bit params (float32: 20, bf16: 14), or bfloat16 with `state_dtype=torch.bfloat16`
    ("fused-bf16state"; float32 params: 16, bf16: 10). SGD with momentum reads θ, g, buf and writes θ, buf; Adam/AdamW read θ, g, m, v and
    write θ, m, v, their state in the param dtype (as torch keeps it). The stream op reads a, b
    and writes a. Per-tensor scalars (step counts) are ignored.
    """
    e = torch.empty((), dtype=dtype).element_size()
    if provider == "fused-bf16state":
        return 3 * e + 2 * 2
    if provider in INNA_PROVIDERS:
        state = 8 if dtype == torch.float64 else 4
        return 3 * e + 2 * state
    if provider == "sgd":
        return 5 * e
    if provider in ("adam", "adamw"):
        return 7 * e
    if provider == "stream":
        return 3 * torch.empty((), dtype=STREAM_DTYPE).element_size()
    raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")


def bytes_per_step(provider: str, dtype: torch.dtype, workload: Workload) -> int:
    return bytes_per_element(provider, dtype) * workload.numel


class ProviderUnavailable(RuntimeError):
    """The provider cannot run here (e.g. no compiled kernel for the device)."""


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Runner:
    """One provider on one workload: owns its tensors; `step()` runs one synchronised step."""
    provider: str
    workload: Workload
    device: torch.device
    dtype: torch.dtype
    _step: Callable[[], object]

    def step(self) -> None:
        self._step()
        _synchronize(self.device)

    @property
    def bytes_per_step(self) -> int:
        return bytes_per_step(self.provider, self.dtype, self.workload)


LR = 1e-3  # small, so that parameters stay in a normal range over hundreds of timed steps


def _random_params(shapes: Sequence[Shape], device, dtype, generator) -> list[torch.nn.Parameter]:
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float32)
                               .to(device=device, dtype=dtype))
        p.grad = torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device,
                                                                                 dtype=dtype)
        params.append(p)
    return params


def make_optimizer(provider: str, params) -> torch.optim.Optimizer:
    """The optimizer behind a provider (INNA in one of its implementations, or a torch baseline)."""
    from .optimizer import INNA

    if provider == "reference":
        return INNA(params, lr=LR, fused=False, foreach=False)
    if provider == "foreach":
        return INNA(params, lr=LR, foreach=True)
    if provider == "fused":
        return INNA(params, lr=LR, fused=True)
    if provider == "fused-bf16state":
        return INNA(params, lr=LR, fused=True, state_dtype=torch.bfloat16)
    if provider == "fused-nearest":  # no stochastic rounding (only 16-bit stores differ)
        return INNA(params, lr=LR, fused=True, stochastic_rounding=False)
    if provider == "sgd":
        return torch.optim.SGD(params, lr=LR, momentum=0.9, fused=True)
    if provider == "adam":
        return torch.optim.Adam(params, lr=LR, fused=True)
    if provider == "adamw":
        return torch.optim.AdamW(params, lr=LR, fused=True)
    raise ValueError(f"unknown optimizer provider {provider!r}")


def make_runner(provider: str, workload: Workload, device="cpu", dtype=torch.float32,
                seed: int = 0) -> Runner:
    """Allocate the workload's tensors (random, never zeros) and take one untimed first step,
    so that state (ψ, momentum, moments) exists and the timed steps are steady-state ones."""
    from . import _ops

    device = torch.device(device)
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")
    if provider.startswith("fused") and not _ops.kernel_available(device.type):
        raise ProviderUnavailable(_ops.unavailable_reason(device.type))
    generator = torch.Generator().manual_seed(seed)
    if provider == "stream":
        a, b = (torch.randn(workload.numel, generator=generator).to(device, STREAM_DTYPE)
                for _ in range(2))
        step = lambda: a.add_(b, alpha=LR)  # noqa: E731
    else:
        optimizer = make_optimizer(provider, _random_params(workload.shapes, device, dtype,
                                                            generator))
        step = optimizer.step
    runner = Runner(provider, workload, device, dtype, step)
    runner.step()
    return runner


# ---------------------------------------------------------------------------------------------
# Timing


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
