"""The single-process examples in examples/ run and train (the torchrun ones are covered by
tests/test_distributed.py, which runs the same DDP/ZeRO/FSDP2 setups in two processes)."""
import importlib.util
import pathlib

import pytest
import torch

import inna_fused

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not inna_fused.kernel_available("cpu"), reason="CPU kernel not built")
def test_compile_step_example():
    torch._dynamo.reset()
    losses = load_example("compile_step").main(steps=8, backend="aot_eager")
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_amp_training_example(dtype):
    losses = load_example("amp_training").main(device="cpu", dtype=dtype, steps=25)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("name", ["ddp_torchrun", "fsdp2_torchrun"])
def test_distributed_examples_import(name):
    assert callable(load_example(name).main)
