"""Conversions between the paper's state ψ and the phase w this package stores.

    w = (α − 1/β)·θ + ψ/β          ψ = β·w − (αβ − 1)·θ

Both directions are computed in float64 (complex128 for complex tensors): ψ is θ-sized and, for the
usual β = 0.1, the two terms of w nearly cancel, so lower precision would lose the state.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._contract import phase_dtype_for

__all__ = ["psi_to_phase", "phase_to_psi"]


def _wide(t: Tensor) -> Tensor:
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64)


def psi_to_phase(theta: Tensor, psi: Tensor, alpha: float, beta: float, *,
                 dtype: Optional[torch.dtype] = None) -> Tensor:
    """The phase w = (α − 1/β)·θ + ψ/β of a param θ whose paper state is ψ, as a new tensor of
    `dtype` (default: float32, float64 for float64 params) on ψ's device."""
    theta_wide = _wide(theta).to(psi.device)
    phase = (alpha - 1.0 / beta) * theta_wide + _wide(psi) / beta
    return phase.to(dtype or phase_dtype_for(theta, None))


def phase_to_psi(theta: Tensor, phase: Tensor, alpha: float, beta: float, *,
                 dtype: Optional[torch.dtype] = None) -> Tensor:
    """The paper's state ψ = β·w − (αβ − 1)·θ of a param θ whose phase is w, as a new tensor of
    `dtype` (default: float32, float64 for float64 params) on the phase's device."""
    theta_wide = _wide(theta).to(phase.device)
    psi = beta * _wide(phase) - (alpha * beta - 1.0) * theta_wide
    return psi.to(dtype or phase_dtype_for(theta, None))
