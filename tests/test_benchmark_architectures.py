"""The full-size random-weight architectures that the benchmarks measure (real configs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from architectures import TRANSFORMERS, build_random_backbone

from ditf_track.backbones import backbone_class
from ditf_track.presets import load_preset

FAMILY = {"pixart-alpha": "pixart", "sd3": "sd3", "sd3.5": "sd3", "flux": "flux"}


def _params_b(preset: str, k: int | None) -> float:
    import diffusers
    from accelerate import init_empty_weights

    cls = backbone_class(FAMILY[preset])
    with init_empty_weights():
        model = getattr(diffusers, cls.transformer_class_name).from_config(TRANSFORMERS[preset])
    if k is not None:
        cls.truncate(model, k)
    return sum(p.numel() for p in model.parameters()) / 1e9


@pytest.mark.parametrize(
    ("preset", "whole", "blocks"),
    [
        ("pixart-alpha", 0.61, 0.33),
        ("sd3", 2.03, 0.86),
        ("sd3.5", 8.06, 5.14),
        ("flux", 11.90, 7.92),
    ],
)
def test_parameter_counts_are_the_readme_presets_table(
    preset: str, whole: float, blocks: float
) -> None:
    """The README's sizes: the whole transformer and blocks 0..k at the correspondence k."""
    k = load_preset(preset).correspondence.k
    assert _params_b(preset, None) == pytest.approx(whole, abs=0.005)
    assert _params_b(preset, k) == pytest.approx(blocks, abs=0.005)


def test_random_weights_keep_the_requested_dtype() -> None:
    """accelerate casts a value to the meta parameter's float32 unless told the dtype."""
    backbone = build_random_backbone("pixart-alpha", 0, torch.device("cpu"), torch.bfloat16)
    params = list(backbone.transformer.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16}
    matrices = torch.cat([p.float().flatten() for p in params if p.ndim >= 2])
    assert matrices.std().item() == pytest.approx(0.02, rel=0.05)
    assert len(backbone.transformer.transformer_blocks) == 1
