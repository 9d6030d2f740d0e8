"""The benchmark harness behind `python -m inna_fused bench` and bench/ (pytest-benchmark).

- `workloads`: parameter shapes (flat tensors, real models' layer shapes, many tiny tensors);
- `providers`: the INNA and INNAprop implementations (and the authors' INNAprop loop) and torch
  baselines as timed runners, and the bytes one step must move per element;
- `timing`: interleaved (round-robin) timing and `measure()`;
- `report`: ratios, the targets (bench/NOTES.md, "Targets"), the table, INNAprop's ratios (against
  AdamW(fused) and the authors' loop) and the plot;
- `command`: the `bench` command's arguments and `run()`.

This package exports the names of `workloads`, `providers` and `timing`.
"""
from .providers import (BASELINE_PROVIDERS, DEFAULT_PROVIDERS, INNA_PROVIDERS, INNAPROP_HYPER,
                        INNAPROP_PROVIDERS, LR, OPT_IN_PROVIDERS, PROVIDER_LABELS, PROVIDERS,
                        STREAM_DTYPE, AuthorsINNAprop, ProviderUnavailable, Runner,
                        bytes_per_element, bytes_per_step, make_optimizer, make_runner)
from .timing import (DEFAULT_MAX_REPEATS, calls_in_round_robin, dtype_name, effective_gbps,
                     measure, median, round_robin, time_call)
from .workloads import (DEFAULT_WORKLOADS, FLAT_LADDER, MODELS, Shape, Workload,
                        bert_base_shapes, flat_name, gpt2_small_shapes, make_workload,
                        resnet50_shapes, shrink, tiny_shapes)
