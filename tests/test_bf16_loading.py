"""bfloat16 through the real loader: every family, the API and the CLI.

``--dtype auto`` is bfloat16 on a GPU of compute capability ≥ 8, so this is the default path on
an A100/H100. The truncated loader once cast each weight to bf16 and accelerate cast it back to
the meta parameter's float32, so the first Linear failed on mixed dtypes; the CPU benchmarks
built their models from config and never took this path. Here the tiny hub-layout folders go
through exactly the loader a user's download does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ditf_track.extractor import DiTFExtractor

# (tiny folder, family, k): Flux k=3 is a single-stream block, SD3.5 has dual attention.
CASES = [("pixart", "pixart", 2), ("sd3", "sd3", 1), ("sd3.5", "sd3", 1), ("flux", "flux", 3)]


def frames(n: int = 2) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (n, 64, 96, 3), dtype=np.uint8)


@pytest.mark.parametrize(("tiny", "family", "k"), CASES)
def test_bf16_load_keeps_bf16_and_extracts(
    tiny_model: Callable[..., Path], tmp_path: Path, tiny: str, family: str, k: int
) -> None:
    folder = tiny_model(tiny)
    kwargs = {"family": family, "t": 200, "k": k, "cache_dir": tmp_path}
    bf16 = DiTFExtractor.from_pretrained(folder, dtype="bfloat16", **kwargs)
    transformer = bf16.backbone.transformer
    assert {p.dtype for p in transformer.parameters()} == {torch.bfloat16}
    floating = {b.dtype for b in transformer.buffers() if b.is_floating_point()}
    assert floating <= {torch.bfloat16}
    assert {p.dtype for p in bf16.backbone.vae.parameters()} == {torch.float32}
    # the weights are the checkpoint's, rounded: not a re-initialisation
    fp32 = DiTFExtractor.from_pretrained(folder, dtype="float32", **kwargs)
    for (name, p16), (_, p32) in zip(
        transformer.named_parameters(), fp32.backbone.transformer.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p16, p32.to(torch.bfloat16), msg=name)
    images = frames()
    maps = bf16.extract(images).features
    assert maps.dtype == torch.bfloat16
    assert torch.isfinite(maps.float()).all()
    ref = fp32.extract(images).features
    cosine = torch.nn.functional.cosine_similarity(maps.float(), ref, dim=1)
    assert cosine.mean() > 0.95, f"bf16 features differ from float32 ({cosine.mean():.3f})"
