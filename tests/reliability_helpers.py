"""Shared by the reliability tests: strided views inside guarded buffers, a phase-form reference
step, and the rounding error an INNA or INNAprop step may honestly have (to compare a fast path
with it)."""
import math

import torch

from inna_fused._contract import default_phase_dtype

# How a view sits in its buffer. "expanded" (stride 0) is only valid for read-only grads.
LAYOUTS = ("contiguous", "offset", "transposed", "step")
GRAD_LAYOUTS = LAYOUTS + ("expanded",)
MARGIN = 16  # poisoned elements on each side of every view
POISON = 1234.5


class GuardedView:
    """A view of `shape` with the given layout, inside a buffer whose other elements are poison.

    After a call, `untouched_outside()` says whether anything outside the view's elements changed.
    """

    def __init__(self, shape, dtype, layout, gen, device="cpu"):
        shape = tuple(shape)
        numel = math.prod(shape)
        if layout == "transposed" and len(shape) >= 2:
            dims = list(range(len(shape)))[::-1]
            stored_shape, make = shape[::-1], (lambda t: t.permute(dims))
        elif layout == "step" and len(shape) >= 1:
            stored_shape, make = shape[:-1] + (2 * shape[-1],), (lambda t: t[..., ::2])
        elif layout == "expanded" and len(shape) >= 1:
            stored_shape, make = shape[:-1] + (1,), (lambda t: t.expand(shape))
        else:
            stored_shape, make = shape, (lambda t: t)
        stored = math.prod(stored_shape)
        offset = MARGIN + (1 if layout == "offset" else 0)  # odd offset: unaligned data pointer
        self.buffer = torch.full((stored + 2 * MARGIN + 1,), POISON, dtype=dtype, device=device)
        block = self.buffer[offset:offset + stored].view(stored_shape)
        block.copy_(torch.randn(stored_shape, generator=gen, dtype=torch.float64).to(dtype))
        self.view = make(block)
        assert tuple(self.view.shape) == shape
        self.before = self.buffer.clone()
        inside = torch.zeros(self.buffer.numel(), dtype=torch.bool)
        if numel:
            inside.as_strided(self.view.shape, self.view.stride(),
                              self.view.storage_offset()).fill_(True)
        self.outside = ~inside

    def untouched_outside(self):
        return torch.equal(self.buffer[self.outside], self.before[self.outside])


def _magnitude(t):
    """|t| in float64; a non-finite input next to a finite output is one the output does not
    depend on, so it adds nothing to the bound."""
    return torch.nan_to_num(t.double().abs(), nan=0.0, posinf=0.0)


def phase_step_reference(theta, grad, phase, k, *, lr, alpha, beta, decay_power=0.0,
                         weight_decay=0.0, decoupled_weight_decay=False, psi_init="paper"):
    """One step of the phase form of eq. (12), written out once more, in the opmath dtype (float32,
    float64 for float64 params) and rounded to nearest into the storage dtypes: the yardstick for
    element-wise behaviour (non-finite values, overflow, denormals). That the phase form is eq. (12)
    is checked against the ψ oracle in test_core.py."""
    compute = default_phase_dtype(theta.dtype)
    t, v = theta.to(compute), grad.to(compute)
    gamma = lr if decay_power == 0 else lr / (k + 1.0) ** decay_power
    w = phase.to(compute)
    if decoupled_weight_decay and weight_decay:
        if k != 0:
            w = w + (1 - alpha * beta) * gamma * weight_decay / beta * t
        t = t * (1 - gamma * weight_decay)
    if k == 0:
        w = (1 - beta) * v if psi_init == "paper" else torch.zeros_like(v)
    theta_step, drive = w + beta * v, v
    if weight_decay and not decoupled_weight_decay:
        theta_step = theta_step + weight_decay * t
        drive = v + weight_decay / beta * t
    new_phase = (1 - alpha * beta) * gamma * drive + (1 - alpha * gamma) * w
    return (t - gamma * theta_step).to(theta.dtype), new_phase.to(phase.dtype)


def error_bounds(theta, grad, phase, k, *, lr, alpha, beta, decay_power=0.0, weight_decay=0.0,
                 decoupled_weight_decay=False, psi_init="paper", grad_factor=1.0):
    """Per-element bounds on |fast − reference| for θ and the phase after one step from (θ, g, w).

    Both paths evaluate the same expression in the opmath type (eps u) with differently ordered
    roundings (fused multiply-adds or not), so the difference is a few u times the magnitudes the
    expression adds up. Add `rounding_slack` for the final rounding into the storage dtype.
    """
    u = torch.finfo(default_phase_dtype(theta.dtype)).eps
    th, v = _magnitude(theta), _magnitude(grad) * abs(grad_factor)
    gamma = lr if decay_power == 0 else lr / (k + 1.0) ** decay_power
    if k == 0:
        w = abs(1 - beta) * v if psi_init == "paper" else torch.zeros_like(v)
    else:
        w = _magnitude(phase)
        if decoupled_weight_decay:
            w = w + abs(1 - alpha * beta) * gamma * weight_decay / beta * th
    drive = v + weight_decay / beta * th
    phase_bound = 16 * u * (abs(1 - alpha * gamma) * w + abs(1 - alpha * beta) * gamma * drive)
    theta_bound = 16 * u * (th + gamma * (w + beta * v + weight_decay * th))
    return theta_bound, phase_bound


def innaprop_error_bounds(theta, grad, phase, exp_avg_sq, k, *, lr, alpha, beta, sigma, eps,
                          weight_decay, grad_factor=1.0):
    """Per-element bounds on |fast − reference| for θ, the phase and exp_avg_sq after one INNAprop
    step from (θ, g, w, v) (w and v unread when k = 0).

    v ← σv + (1 − σ)g² and u = g/(√v/√(1 − σ^t) + ε) add up non-negative terms only, so both paths
    get them within a few u (relative) of each other; u then drives INNA's phase update as its
    gradient (γ = lr, decoupled decay on every step, w = 0 on the first): `error_bounds` with
    |u|, plus u's own error carried into θ (by γβ) and into the phase (by (1 − αβ)γ). Add
    `rounding_slack` for the final rounding into the storage dtype.
    """
    u = torch.finfo(default_phase_dtype(theta.dtype)).eps
    g = _magnitude(grad) * abs(grad_factor)
    v = (1 - sigma) * g * g
    if k != 0:
        v = v + sigma * _magnitude(exp_avg_sq)
    bias = math.sqrt(1.0 - sigma ** (k + 1))
    drive = torch.nan_to_num(g / (v.sqrt() / bias + eps), nan=0.0, posinf=0.0)  # |u|
    w = _magnitude(phase) if k != 0 else torch.zeros_like(drive)
    theta_bound, phase_bound = error_bounds(theta, drive, w, 1, lr=lr, alpha=alpha, beta=beta,
                                            weight_decay=weight_decay,
                                            decoupled_weight_decay=True, psi_init="zero")
    theta_bound = theta_bound + 16 * u * lr * beta * drive
    phase_bound = phase_bound + 16 * u * abs(1 - alpha * beta) * lr * drive
    return theta_bound, phase_bound, 8 * u * v


def rounding_slack(expected, dtype):
    """One rounding of `expected` into `dtype`, denormals included."""
    info = torch.finfo(dtype)
    return info.eps * expected.double().abs() + 2 * info.smallest_normal * info.eps


def nonfinite_kinds(t):
    t = t.double()
    return {"nan": torch.isnan(t), "+inf": t == math.inf, "-inf": t == -math.inf}


def assert_matches(actual, expected, bound, what, exact_kind=True):
    """Same non-finite positions as `expected` (and the same kind — nan, +inf, -inf — unless
    `exact_kind` is False); finite values within `bound` (a tensor of per-element bounds)."""
    a, e = actual.double(), expected.double()
    if exact_kind:
        kinds_a, kinds_e = nonfinite_kinds(a), nonfinite_kinds(e)
        for kind in kinds_a:
            assert torch.equal(kinds_a[kind], kinds_e[kind]), (
                f"{what}: {kind} at {kinds_a[kind].nonzero().flatten().tolist()} vs reference "
                f"{kinds_e[kind].nonzero().flatten().tolist()}")
    else:
        assert torch.equal(torch.isfinite(a), torch.isfinite(e)), (
            f"{what}: non-finite at {(~torch.isfinite(a)).nonzero().flatten().tolist()} vs "
            f"reference {(~torch.isfinite(e)).nonzero().flatten().tolist()}")
    finite = torch.isfinite(a) & torch.isfinite(e)
    bad = finite & ~((a - e).abs() <= bound)
    assert not bad.any(), (f"{what}: at flat {bad.flatten().nonzero().flatten().tolist()[:5]} got "
                           f"{a[bad][:5].tolist()} vs reference {e[bad][:5].tolist()} "
                           f"(bound {bound.expand_as(a)[bad][:5].tolist()})")
