"""Shared by the feature-cache tests: a Flux-shaped extractor identity, keys, frames whose
values identify them, and the feature files of a cache root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ditf_track.cache import FeatureCache, clip_key, feature_key
from ditf_track.features import DiTFSettings

SHAPE = (32, 8, 12)  # (C, h, w): 6144 B in bf16, 12288 B in float32
VIDEO = "0" * 64
SIZE = (128, 192)


def identity(**changes: Any) -> dict[str, Any]:
    """An extractor identity of the shape DiTFExtractor.identity() returns (Flux), for the key
    mechanics; test_cache_keys.py checks what a real extractor's identity holds."""
    backbone = {
        "extractor": "ditf",
        "preset": "flux",
        "family": "flux",
        "model": "black-forest-labs/FLUX.1-dev",
        "revision": "abc123",
        "dtype": "bfloat16",
        "stride": 16,
    }
    settings = {k: v for k, v in changes.items() if k in DiTFSettings.__dataclass_fields__}
    backbone.update({k: v for k, v in changes.items() if k not in settings})
    return {**backbone, **DiTFSettings(**{"t": 261, "k": 15, **settings}).to_dict()}


def key(i: int, **changes: Any) -> str:
    return feature_key(identity(**changes), VIDEO, i, SIZE)


def frame(i: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A map whose values identify it (i, then a ramp), so a wrong entry cannot pass."""
    ramp = torch.arange(int(np.prod(SHAPE)), dtype=torch.float32).reshape(SHAPE) / 1000
    return (ramp + i).to(dtype)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def feature_files(root: Path) -> list[Path]:
    return sorted((root / "features").glob("*.safetensors"))


def populate(root: Path) -> tuple[int, int]:
    with FeatureCache(root) as cache:
        for i in range(3):
            cache.put(key(i), frame(i, torch.float32))
        cache.put_clip_meta(clip_key(identity(), VIDEO, SIZE), {"massive_channels": [1]})
    text = root / "text"
    text.mkdir()
    (text / "prompt.safetensors").write_bytes(b"t" * 1234)
    (root / "notes.txt").write_text("not the cache's")
    (root / "features" / "README").write_text("not the cache's either")
    return sum(p.stat().st_size for p in feature_files(root)), 1234
