"""Shared by test_cuda_emulated.py and test_cuda.py: data, the reference run, comparisons.

The kernels keep the phase w = (α − 1/β)θ + ψ/β (csrc/inna_math.h); the oracle,
inna_fused.reference.inna_reference_, is eq. (12) in ψ. The oracle runs in float64 ("truth") and
its (θ, ψ) are converted to (θ, w) in float64 (`psi_to_phase` below) for the comparisons.
"""
from __future__ import annotations

import torch

from inna_fused.reference import inna_reference_

DTYPE_IDS = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16",
             torch.bfloat16: "bf16"}

# Fused (θ in the param dtype, the phase in float32/float64, three steps) vs the float64 truth:
# each step rounds θ to the param dtype once (at most half an ulp; the phase form never feeds that
# rounding back), so θ is within 1.5 ulps (2^-10 relative in float16, 2^-7 in bfloat16), which
# these tolerances cover; the phase depends on θ only through weight decay.
TOLERANCES = {  # dtype: ((θ atol, rtol), (phase atol, rtol))
    torch.float64: ((1e-12, 1e-12), (1e-12, 1e-12)),
    torch.float32: ((2e-6, 2e-6), (2e-6, 2e-6)),
    torch.float16: ((2e-3, 2e-3), (2e-3, 2e-3)),
    torch.bfloat16: ((1.6e-2, 1.6e-2), (1.6e-2, 1.6e-2)),
}
# A bfloat16 phase (any param dtype) rounds w to 2^-8 relative at each store (1.5 ulps after
# three steps, as θ above); θ moves by γ·w with that error: bf16_phase_theta_atol adds it to θ's
# atol.
BF16_PHASE_TOLERANCE = (1.6e-2, 1.6e-2)

HYPER_CASES = {
    "default": dict(lr=0.05),
    "zero-init": dict(lr=0.05, psi_init="zero", alpha=1.3, beta=0.2),
    "decay": dict(lr=0.05, decay_power=0.5),
    "coupled-wd": dict(lr=0.05, weight_decay=0.1),
    "decoupled-wd": dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True),
    "maximize": dict(lr=0.05, maximize=True, decay_power=0.25),
}


def opmath_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """The default phase dtype (and the arithmetic's) of a param dtype."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def psi_to_phase(theta, psi, alpha=0.5, beta=0.1):
    """w = (α − 1/β)θ + ψ/β in float64."""
    return (alpha - 1 / beta) * theta.double() + psi.double() / beta


def phase_to_psi(theta, phase, alpha=0.5, beta=0.1):
    """ψ = β(w − (α − 1/β)θ) in float64 (inverse of psi_to_phase)."""
    return beta * (phase.double() - (alpha - 1 / beta) * theta.double())


def make_tensors(sizes, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
            for n in sizes]


def make_grads(params, step, seed=1):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    return [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.device, p.dtype)
            for p in params]


class Truth:
    """The float64 oracle on the same initial values and grads as a fused run: θ and ψ in float64,
    compared through `phases()`."""

    def __init__(self, init, alpha=0.5, beta=0.1, psis=None):
        self.params = [p.detach().cpu().double().clone() for p in init]
        self.psis = ([psi.detach().cpu().double().clone() for psi in psis] if psis is not None
                     else [torch.empty_like(p) for p in self.params])
        self.alpha, self.beta = alpha, beta

    def step(self, grads, ks, *, lr, alpha=0.5, beta=0.1, decay_power=0.0, weight_decay=0.0,
             decoupled_weight_decay=False, psi_init="paper", maximize=False, inv_scale=None):
        """One step of eq. (12) per tensor; ks[i] is the step count of tensor i. `inv_scale`
        multiplies the gradient (exact in float64 for the power-of-two scales the tests use)."""
        assert (alpha, beta) == (self.alpha, self.beta)
        for p, psi, g, k in zip(self.params, self.psis, grads, ks):
            g = g.detach().cpu().double()
            if inv_scale is not None:
                g = g * inv_scale
            inna_reference_(p, psi, g, int(k), lr=lr, alpha=alpha, beta=beta,
                            decay_power=decay_power, weight_decay=weight_decay,
                            decoupled_weight_decay=decoupled_weight_decay, psi_init=psi_init,
                            maximize=maximize)

    def phases(self):
        return [psi_to_phase(p, psi, self.alpha, self.beta)
                for p, psi in zip(self.params, self.psis)]


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


def bf16_phase_theta_atol(truth_phases, lr, n_steps):
    """What a bfloat16 phase adds to θ's error: n_steps steps of γ·|w|·2^-8 (γ ≤ lr)."""
    w = max((float(t.abs().max()) for t in truth_phases if t.numel()), default=0.0)
    return n_steps * lr * w * 2.0**-8


def assert_matches(params, phases, truth, dtype, what="", lr=0.05, n_steps=3):
    """Fused θ and phase (either phase dtype) against the float64 truth."""
    (pa, pr), (sa, sr) = TOLERANCES[dtype]
    truth_phases = truth.phases()
    for i, (p, w, rp, rw) in enumerate(zip(params, phases, truth.params, truth_phases)):
        theta_atol, (wa, wr) = pa, (sa, sr)
        if w.dtype == torch.bfloat16:
            theta_atol += bf16_phase_theta_atol(truth_phases, lr, n_steps)
            wa, wr = BF16_PHASE_TOLERANCE
        assert_close_report(p, rp, theta_atol, pr, f"{what} param {i} (numel {p.numel()})")
        assert_close_report(w, rw, wa, wr, f"{what} phase {i} (numel {p.numel()}, {w.dtype})")
