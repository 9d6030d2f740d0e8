"""Shared by test_cuda_emulated.py and test_cuda.py: data, the reference run, comparisons."""
from __future__ import annotations

import torch

from inna_fused.reference import inna_reference_, psi_dtype

DTYPE_IDS = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16",
             torch.bfloat16: "bf16"}

# Fused vs the reference computed in the same dtypes (θ in the param dtype, ψ and the arithmetic
# in float32/float64). Both round the same float32 result to 16 bits, except where a contracted
# multiply-add moves the float32 value across a rounding boundary: one ulp of θ (2^-10 relative in
# float16, 2^-7 in bfloat16), which the next steps carry into ψ scaled by γ(α − 1/β) ≈ 0.5.
TOLERANCES = {  # dtype: ((θ atol, rtol), (ψ atol, rtol))
    torch.float64: ((1e-12, 1e-12), (1e-12, 1e-12)),
    torch.float32: ((2e-6, 2e-6), (2e-6, 2e-6)),
    torch.float16: ((2e-3, 2e-3), (2e-3, 2e-3)),
    torch.bfloat16: ((1.6e-2, 1.6e-2), (1.6e-2, 1.6e-2)),
}

HYPER_CASES = {
    "default": dict(lr=0.05),
    "zero-init": dict(lr=0.05, psi_init="zero", alpha=1.3, beta=0.2),
    "decay": dict(lr=0.05, decay_power=0.5),
    "coupled-wd": dict(lr=0.05, weight_decay=0.1),
    "decoupled-wd": dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True),
    "maximize": dict(lr=0.05, maximize=True, decay_power=0.25),
}


def make_tensors(sizes, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
            for n in sizes]


def make_grads(params, step, seed=1):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    return [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.device, p.dtype)
            for p in params]


def reference_step(params, psis, grads, ks, *, lr, alpha=0.5, beta=0.1, decay_power=0.0,
                   weight_decay=0.0, decoupled_weight_decay=False, psi_init="paper",
                   maximize=False, inv_scale=None):
    """One step of eq. (12) per tensor with inna_reference_; ks[i] is the step count of tensor i.
    `inv_scale` unscales the gradient in ψ's precision, as the fused kernels do."""
    for p, psi, g, k in zip(params, psis, grads, ks):
        if inv_scale is not None:
            g = g.to(psi_dtype(p.dtype)) * inv_scale
        inna_reference_(p, psi, g, int(k), lr=lr, alpha=alpha, beta=beta,
                        decay_power=decay_power, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, psi_init=psi_init,
                        maximize=maximize)


def assert_close_report(actual, expected, atol, rtol, what=""):
    """assert_close with the worst element's position and values in the message."""
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    if actual.numel():
        err = (actual - expected).abs()
        idx = int(torch.nan_to_num(err, nan=float("inf")).argmax())
        msg = (f"{what}: max abs err {err.flatten()[idx].item():.3e} at flat index {idx} "
               f"(actual {actual.flatten()[idx].item()!r}, expected "
               f"{expected.flatten()[idx].item()!r})")
    else:
        msg = what
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=False,
                               msg=lambda _: msg)


def assert_matches(params, psis, ref_params, ref_psis, dtype, what=""):
    (pa, pr), (sa, sr) = TOLERANCES[dtype]
    for i, (p, psi, rp, rpsi) in enumerate(zip(params, psis, ref_params, ref_psis)):
        assert_close_report(p, rp, pa, pr, f"{what} param {i} (numel {p.numel()})")
        assert_close_report(psi, rpsi, sa, sr, f"{what} psi {i} (numel {p.numel()})")
