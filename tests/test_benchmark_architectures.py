"""The full-size random-weight architectures that the benchmarks measure (real configs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from architectures import TRANSFORMERS, build_random_backbone, empty_transformer

from ditf_track.presets import load_preset


def _params_b(preset: str, k: int | None) -> float:
    _, transformer = empty_transformer(preset, k)
    return sum(p.numel() for p in transformer.parameters()) / 1e9


@pytest.mark.parametrize("preset", sorted(TRANSFORMERS))
def test_parameter_counts_are_the_presets_resources(preset: str) -> None:
    """The sizes the presets declare (and the README's presets table shows) are the real
    configs': the whole transformer and blocks 0..k at the correspondence k."""
    spec = load_preset(preset)
    assert _params_b(preset, None) == pytest.approx(spec.resources.transformer_params_b, abs=0.005)
    assert _params_b(preset, spec.correspondence.k) == pytest.approx(
        spec.resources.blocks_params_b, abs=0.005
    )


def test_random_weights_keep_the_requested_dtype() -> None:
    """accelerate casts a value to the meta parameter's float32 unless told the dtype."""
    backbone = build_random_backbone("pixart-alpha", 0, torch.device("cpu"), torch.bfloat16)
    params = list(backbone.transformer.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16}
    matrices = torch.cat([p.float().flatten() for p in params if p.ndim >= 2])
    assert matrices.std().item() == pytest.approx(0.02, rel=0.05)
    assert len(backbone.transformer.transformer_blocks) == 1
