"""DiT families behind one protocol (:class:`~ditf_track.backbones.base.DiTBackbone`).

A new family is one module here, one preset file in ``configs/`` and one tiny-model
test.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..hub import ModelSource
from .base import TOKEN_STRIDE, BackbonePlan, BlockCapture, DiTBackbone
from .flux import FluxBackbone
from .pixart import PixArtBackbone
from .sd3 import SD3Backbone
from .text import TextCondition

BACKBONES: dict[str, type[DiTBackbone]] = {
    "pixart": PixArtBackbone,
    "sd3": SD3Backbone,
    "flux": FluxBackbone,
}


def backbone_class(family: str) -> type[DiTBackbone]:
    """The backbone class of a DiT family (``pixart``, ``sd3`` or ``flux``)."""
    try:
        return BACKBONES[family]
    except KeyError:
        raise ConfigError(
            f"unknown model family {family!r}; use one of {', '.join(BACKBONES)} "
            "(SD3.5 is family sd3)"
        ) from None


__all__ = [
    "BACKBONES",
    "TOKEN_STRIDE",
    "BackbonePlan",
    "BlockCapture",
    "DiTBackbone",
    "FluxBackbone",
    "ModelSource",
    "PixArtBackbone",
    "SD3Backbone",
    "TextCondition",
    "backbone_class",
]
