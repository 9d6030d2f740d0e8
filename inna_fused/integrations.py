"""Hooks into other libraries' optimizer registries. Each library stays optional: importing
inna_fused (or this module) imports none of them; a hook imports its library when called.

    import inna_fused, timm.optim
    inna_fused.register_timm_optimizers()
    opt = timm.optim.create_optimizer_v2(model, "inna", lr=0.1, alpha=0.5, beta=0.1)

HF transformers' Trainer, Lightning and torch.distributed.checkpoint take INNA as it is (a
torch.optim.Optimizer); the README section "Using INNA with timm, HF Trainer, Lightning and DCP"
shows how.
"""
from __future__ import annotations

import importlib
from typing import Optional

__all__ = ["register_timm_optimizers", "timm_optimizer_names"]


def _optional_classes() -> dict:
    """timm name -> class, for the optimizers this package has (INNAprop once it exists)."""
    import inna_fused
    classes = {"inna": inna_fused.INNA}
    for attr in ("INNAprop", "INNAProp"):
        cls = getattr(inna_fused, attr, None)
        if cls is not None:
            classes["innaprop"] = cls
            break
    return classes


def timm_optimizer_names() -> list[str]:
    """The names register_timm_optimizers() registers (no timm needed to ask)."""
    return sorted(_optional_classes())


def register_timm_optimizers(registry: Optional[object] = None) -> list[str]:
    """Register INNA (and INNAprop, when this version has it) in timm's optimizer registry.

    After this, ``timm.optim.create_optimizer_v2(model, "inna", lr=..., alpha=..., beta=...)``
    returns an :class:`inna_fused.INNA`; timm's own options work as for its optimizers:
    ``weight_decay`` (with timm's no-decay groups for biases and norms), ``layer_decay``,
    ``foreach``, and the ``"lookahead_inna"`` wrapper (timm splits names on ``"_"``, so the
    registered names have none). Other keyword arguments go to the INNA constructor.

    Calling it again is harmless (the entries are replaced, quietly). `registry` defaults to
    timm's default registry. Returns the registered names.

    Raises ImportError, saying how to install it, when timm is not installed.
    """
    try:
        factory = importlib.import_module("timm.optim._optim_factory")
    except ImportError as e:
        raise ImportError(
            "inna_fused.register_timm_optimizers() needs timm (with a timm that has "
            "timm.optim._optim_factory, i.e. timm>=1.0): pip install timm, or "
            "pip install 'inna_fused[integrations]'") from e
    registry = factory.default_registry if registry is None else registry
    names = []
    for name, cls in _optional_classes().items():
        # INNA has no eps, betas or momentum: timm then drops those generic kwargs. INNAprop
        # takes eps (timm's opt_eps); its sigma is not timm's betas.
        info = factory.OptimInfo(name=name, opt_class=cls,
                                 description=f"inna_fused.{cls.__name__}: "
                                             f"{(cls.__doc__ or '').strip().splitlines()[0]}",
                                 has_eps=name == "innaprop", has_momentum=False, has_betas=False)
        # register() logs a warning when overwriting; re-registering our own entry is expected.
        getattr(registry, "_optimizers", {}).pop(name, None)
        registry.register(info)
        names.append(name)
    return names
