import pytest
import torch

import inna_fused

IMPLS = ["fused", "foreach", "reference"]
DTYPE_IDS = {torch.float64: "f64", torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}

requires_cpu_kernel = pytest.mark.skipif(
    not inna_fused.kernel_available("cpu"),
    reason=f"CPU kernel not built: {inna_fused.load_error()}")

# The CUDA kernels and their emulation fuse every multiply-add of inna_math.h; so does the CPU
# kernel when it is built with FMA (AVX2 or AVX-512). A baseline build (no FMA instructions)
# rounds twice in at::vec's fmadd, so its results differ in the last bit from theirs: the
# emulated-versus-CPU bitwise tests do not apply to it.
requires_fma_cpu_kernel = pytest.mark.skipif(
    (inna_fused.build_info()["cpu_simd"] or "").startswith("baseline"),
    reason="the CPU kernel was built without FMA (INNA_FUSED_SIMD=baseline)")


def impl_kwargs(impl):
    """INNA constructor switches selecting one implementation."""
    return {"fused": dict(fused=True), "foreach": dict(fused=False, foreach=True),
            "reference": dict(fused=False, foreach=False)}[impl]


def impl_params(impls=IMPLS):
    return [pytest.param(i, marks=requires_cpu_kernel) if i == "fused" else i for i in impls]


def assert_close_report(actual, expected, atol, rtol, what=""):
    """torch.testing.assert_close with the worst element's position in the message."""
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).abs()
    if err.numel():
        idx = int(torch.nan_to_num(err, nan=float("inf")).argmax())
        msg = (f"{what}: max abs err {err.flatten()[idx].item():.3e} at flat index {idx} "
               f"(actual {actual.flatten()[idx].item()!r}, expected {expected.flatten()[idx].item()!r})")
    else:
        msg = what
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True,
                               msg=lambda _: msg)
