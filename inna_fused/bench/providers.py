"""Benchmark providers: the INNA and INNAprop implementations and the baselines they are compared
with, each built as a `Runner` whose `step()` is the timed callable (it synchronises CUDA itself),
and the bytes one step must move per element (effective bandwidth = bytes / step time).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from ..reference import AuthorsINNAprop
from .workloads import Shape, Workload

INNA_PROVIDERS = ("reference", "foreach", "fused", "fused-bf16state", "fused-nearest")
# "innaprop-loop" is the authors' per-parameter step, literally (inna_fused.reference.
# innaprop_reference_ on each param with a grad, state kept per param as their class keeps it).
INNAPROP_PROVIDERS = ("innaprop-loop", "innaprop-foreach", "innaprop", "innaprop-bf16state")
BASELINE_PROVIDERS = ("sgd", "adam", "adamw", "stream")
PROVIDERS = INNA_PROVIDERS + INNAPROP_PROVIDERS + BASELINE_PROVIDERS
# Run when asked for: "fused-nearest" only differs from "fused" for 16-bit params;
# "innaprop-foreach" was up to 3x slower than the authors' loop on flat tensors here (seconds per
# step on the largest default workloads), for a row whose kind INNA's foreach row already shows.
# The authors' loop is in the default set: about as slow as INNA's per-param loop, capped at as
# few samples (timing.DEFAULT_MAX_REPEATS), it gives the fused INNAprop's speed-up over theirs.
OPT_IN_PROVIDERS = ("fused-nearest", "innaprop-foreach")
DEFAULT_PROVIDERS = tuple(p for p in PROVIDERS if p not in OPT_IN_PROVIDERS)
FUSED_INNAPROP_PROVIDERS = ("innaprop", "innaprop-bf16state")
PROVIDER_LABELS = {
    "reference": "INNA per-param loop",
    "foreach": "INNA foreach",
    "fused": "INNA fused",
    "fused-bf16state": "INNA fused, bf16 state",
    "fused-nearest": "INNA fused, round to nearest",
    "innaprop-loop": "INNAprop authors' loop",
    "innaprop-foreach": "INNAprop foreach",
    "innaprop": "INNAprop fused",
    "innaprop-bf16state": "INNAprop fused, bf16 state",
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
    ("fused-bf16state"; float32 params: 16, bf16: 10). INNAprop also reads and writes exp_avg_sq
    (in the phase's dtype): 3·e + 4·state, i.e. float32: 28 (as AdamW), bf16: 22; with bfloat16
    state ("innaprop-bf16state") float32: 20, bf16: 14.
    SGD with momentum reads θ, g, buf and writes θ, buf; Adam/AdamW read θ, g, m, v and
    write θ, m, v, their state in the param dtype (as torch keeps it). The stream op reads a, b
    and writes a. Per-tensor scalars (step counts) are ignored. The slower paths (per-param loop,
    foreach, the authors' INNAprop loop, whose state is in the param dtype) are charged what the
    fused step of the same algorithm must move: their extra traffic is their inefficiency.
    """
    e = torch.empty((), dtype=dtype).element_size()
    wide = 8 if dtype == torch.float64 else 4  # the default state dtype's size
    if provider == "fused-bf16state":
        return 3 * e + 2 * 2
    if provider in INNA_PROVIDERS:
        return 3 * e + 2 * wide
    if provider == "innaprop-bf16state":
        return 3 * e + 4 * 2
    if provider in INNAPROP_PROVIDERS:
        return 3 * e + 2 * wide + 2 * wide
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
# INNAprop's hyperparameters: the defaults of inna_fused.INNAprop (the authors' defaults).
INNAPROP_HYPER = dict(alpha=0.1, beta=0.9, sigma=0.999, eps=1e-8, weight_decay=0.01)


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
    """The optimizer behind a provider (INNA or INNAprop in one of their implementations, the
    authors' INNAprop loop, or a torch baseline)."""
    from ..innaprop import INNAprop
    from ..optimizer import INNA

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
    if provider == "innaprop-loop":
        return AuthorsINNAprop(params, lr=LR, **INNAPROP_HYPER)
    if provider == "innaprop-foreach":
        return INNAprop(params, lr=LR, **INNAPROP_HYPER, foreach=True, fused=False)
    if provider == "innaprop":
        return INNAprop(params, lr=LR, **INNAPROP_HYPER, fused=True)
    if provider == "innaprop-bf16state":
        return INNAprop(params, lr=LR, **INNAPROP_HYPER, fused=True, state_dtype=torch.bfloat16)
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
    from .. import _ops

    device = torch.device(device)
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")
    if provider.startswith("fused") and not _ops.kernel_available(device.type):
        raise ProviderUnavailable(_ops.unavailable_reason(device.type))
    if provider in FUSED_INNAPROP_PROVIDERS and not _ops.op_kernel_available(
            _ops.INNAPROP_OP_NAME, device.type):
        raise ProviderUnavailable(_ops.op_unavailable_reason(_ops.INNAPROP_OP_NAME, device.type))
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
