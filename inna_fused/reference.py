"""The INNA update of Castera, Bolte, Févotte, Pauwels (JMLR 2021), eq. (12), one tensor at a time.

This is the oracle the implementations are tested against (they keep the phase
w = (α − 1/β)θ + ψ/β instead of ψ; `inna_fused.conversions` converts in float64). It is the
literal eq. (12), deliberately plain torch, with its cancellation (see `inna_fused.functional`):

    θ_{k+1} = θ_k + γ_k ((1/β − α) θ_k − ψ_k/β − β v_k)
    ψ_{k+1} = ψ_k + γ_k ((1/β − α) θ_k − ψ_k/β)

with γ_k = lr / (k + 1)^decay_power, k the number of steps this parameter has taken. The arithmetic
runs in ψ's dtype (float32 for 16-bit params, the param's dtype otherwise).

It imports nothing from the package: the rules the implementations share live in
`inna_fused._contract`, and the oracle states its own. `AuthorsINNAprop` runs the authors'
INNAprop step over param groups as their class does (the tests' oracle optimizer and the
benchmarks' "authors' loop").
"""
from __future__ import annotations

import torch


def inna_reference_(
    param: torch.Tensor,
    psi: torch.Tensor,
    grad: torch.Tensor,
    k: int,
    *,
    lr: float,
    alpha: float,
    beta: float,
    decay_power: float = 0.0,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    psi_init: str = "paper",
    maximize: bool = False,
) -> None:
    """One INNA step for one parameter, in place on `param` and `psi`.

    `k` is the number of steps already taken; when it is 0, ψ is initialised first:
    psi_init="paper": ψ₀ = (1 − αβ)θ₀ − (β² − β)v₀ (the first step is one SGD step);
    psi_init="zero":  ψ₀ = (1 − αβ)θ₀ (the authors' PyTorch code).
    """
    gamma = lr if decay_power == 0 else lr / (k + 1.0) ** decay_power
    theta = param.detach().to(torch.float64 if param.dtype == torch.float64 else torch.float32)
    v = grad.detach().to(theta.dtype)
    if maximize:
        v = -v
    if decoupled_weight_decay and weight_decay != 0:
        theta = theta * (1 - gamma * weight_decay)
    if k == 0:
        psi0 = (1 - alpha * beta) * theta
        if psi_init == "paper":
            psi0 = psi0 - (beta * beta - beta) * v
        psi.copy_(psi0)
    phase = (alpha - 1 / beta) * theta + psi / beta
    theta_step = phase + beta * v
    if weight_decay != 0 and not decoupled_weight_decay:
        theta_step = theta_step + weight_decay * theta
    psi.sub_(gamma * phase)
    param.detach().copy_(theta - gamma * theta_step)


def innaprop_reference_(
    param: torch.Tensor,
    psi: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    t: int,
    *,
    lr: float,
    alpha: float,
    beta: float,
    sigma: float,
    eps: float,
    weight_decay: float,
    maximize: bool = False,
) -> None:
    """One INNAprop step (Bolte, Boustany, Pauwels, Purica 2024), the authors' code literally, in
    place on `param`, `psi` and `exp_avg_sq`, in the tensors' dtype. `t` = 1, 2, ... is the step
    being taken; when it is 1, ψ is initialised first to (1 − αβ)θ (before the weight decay) and
    exp_avg_sq to 0:

        θ ← (1 − γλ)θ;  v ← σv + (1 − σ)g²;  d = √v/√(1 − σ^t) + ε
        ψ ← (1 − γ/β)ψ + γ(1/β − α)θ
        θ ← (1 + γ(1 − αβ)/(β − γ))θ − γ/(β − γ)·ψ − γβ·g/d
    """
    import math

    p = param.detach()
    g = grad.detach()
    if maximize:
        g = -g
    if t == 1:
        psi.copy_((1 - alpha * beta) * p)
        exp_avg_sq.zero_()
    p.mul_(1 - lr * weight_decay)
    exp_avg_sq.mul_(sigma).addcmul_(g, g, value=1 - sigma)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - sigma ** t)).add_(eps)
    psi.mul_(1 - lr / beta).add_(p, alpha=lr * (1 / beta - alpha))
    p.mul_(1 + lr * (1 - alpha * beta) / (beta - lr)).add_(psi, alpha=-lr / (beta - lr))
    p.addcdiv_(g, denom, value=-lr * beta)


class AuthorsINNAprop(torch.optim.Optimizer):
    """The authors' INNAprop class as far as its step and state go: for each param with a grad,
    state (int ``step``, ``psi`` and ``exp_avg_sq`` in the param's dtype) created on its first
    step, then their step literally (`innaprop_reference_`, which initialises ψ at t = 1): one
    tensor at a time, with their in-place ops and temporaries."""

    def __init__(self, params, lr=1e-3, alpha=0.1, beta=0.9, sigma=0.999, eps=1e-8,
                 weight_decay=0.01):
        super().__init__(params, dict(lr=lr, alpha=alpha, beta=beta, sigma=sigma, eps=eps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hyper = {k: group[k] for k in ("lr", "alpha", "beta", "sigma", "eps", "weight_decay")}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["psi"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                innaprop_reference_(p, state["psi"], state["exp_avg_sq"], p.grad, state["step"],
                                    **hyper)
        return loss
