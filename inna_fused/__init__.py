"""inna_fused: the Inertial Newton Algorithm (INNA) for PyTorch, with fused CPU and CUDA kernels.

    from inna_fused import INNA
    opt = INNA(model.parameters(), lr=0.1, alpha=0.5, beta=0.1)

INNAprop (INNA with RMSprop scaling): `inna_fused.INNAprop`, functional API in
`innaprop_functional`.

Modules: `optimizer` (the INNA class), `functional` (the list-level step and its implementations),
`_contract` (the rules: dtypes, hyper-parameter checks, step size, gradient factor), `reference`
(eq. (12) in plain torch, the oracle), `conversions` (ψ ↔ phase), `rounding` (the deterministic
stochastic rounding), `_ops` (the compiled op and its fake impl). Subpackages, not imported here:
`cli` (`python -m inna_fused`), `bench` (the benchmark harness), `experiments` (the paper's runs).
See docs/ARCHITECTURE.md.
"""
from . import conversions, functional, reference, rounding
from ._ops import build_info, kernel_available, load_error
from .conversions import phase_to_psi, psi_to_phase
from .functional import inna
from .integrations import register_timm_optimizers
from .optimizer import INNA
from .innaprop import INNAprop
from . import innaprop_functional

__version__ = "0.3.0"
__all__ = ["INNA", "inna", "INNAprop", "innaprop_functional", "functional", "reference",
           "conversions", "rounding", "psi_to_phase", "phase_to_psi", "kernel_available",
           "load_error", "build_info", "__version__", "register_timm_optimizers"]
