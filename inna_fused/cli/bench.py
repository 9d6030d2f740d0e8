"""Deprecated alias of `inna_fused.bench.command` (the `bench` command), kept for scripts that
probe this name (bench/gpu_check.sh)."""
import warnings

from ..bench.command import add_arguments, run  # noqa: F401

warnings.warn("inna_fused.cli.bench moved to inna_fused.bench.command", DeprecationWarning,
              stacklevel=2)
