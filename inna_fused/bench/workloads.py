"""Benchmark workloads: parameter shapes of a flat tensor, of real models (generated from their
layer shapes, nothing is downloaded) or of many tiny tensors. `<name>-flat` is one flat tensor with
the same number of elements as `<name>`, to measure what splitting a model into many tensors costs.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

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
