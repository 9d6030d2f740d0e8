"""`python -m inna_fused info`: what is installed and what was compiled."""
from __future__ import annotations

import json
import platform


def collect() -> dict:
    import torch

    import inna_fused
    from inna_fused import _ops

    info = {"inna_fused": inna_fused.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "cuda_available": torch.cuda.is_available(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    info.update(_ops.build_info())
    return info


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0
