"""DINOv2 features (tiny Dinov2Config saved and reloaded), the joint PCA and the fusion."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from ditf_track.dinov2 import (
    DINOv2Extractor,
    DINOv2Maps,
    JointPCA,
    fuse_features,
    pca_dim_for,
    reduce_jointly,
)
from ditf_track.errors import ConfigError, ModelLoadError
from ditf_track.features import FeatureMaps
from ditf_track.images import read_image
from ditf_track.match import Matcher

HIDDEN = 24


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-block Dinov2Model with random weights, written with save_pretrained."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=48,
        patch_size=14,
        image_size=56,
    )
    folder = tmp_path_factory.mktemp("dinov2") / "tiny"
    Dinov2Model(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dog(shared_data: Path) -> np.ndarray:
    return read_image(shared_data / "davis/JPEGImages/480p/dog/00010.jpg")  # 480x854


def test_block_output_before_the_final_layernorm(tiny_dinov2: Path, dog: np.ndarray) -> None:
    extractor = DINOv2Extractor.from_pretrained(tiny_dinov2, layer=1, image_size=112)
    maps = extractor.extract(dog)
    assert maps.features.shape == (HIDDEN, 8, 8)
    # 854x480 -> 112x63 on a 112x112 canvas, centred: (112 - 63) // 2 = 24 rows above.
    assert maps.content_box == (24, 0, 63, 112)
    pixels, _ = extractor.preprocess(dog)
    assert pixels.shape == (1, 3, 112, 112)
    # The padding is black before normalisation: -mean/std of ImageNet.
    torch.testing.assert_close(
        pixels[0, :, 0, 0],
        -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225]),
    )
    out = extractor.model(pixel_values=pixels, output_hidden_states=True)
    assert len(out.hidden_states) == 4  # embeddings + 3 blocks
    block1 = out.hidden_states[2][0, 1:].T.reshape(HIDDEN, 8, 8)  # block 1 = hidden_states[2]
    torch.testing.assert_close(maps.features, block1)
    last = DINOv2Extractor.from_pretrained(tiny_dinov2, layer=2, image_size=112).extract(dog)
    torch.testing.assert_close(last.features, out.hidden_states[3][0, 1:].T.reshape(HIDDEN, 8, 8))
    normed = out.last_hidden_state[0, 1:].T.reshape(HIDDEN, 8, 8)
    assert (last.features - normed).abs().max() > 0.1  # not the post-LayerNorm output
    assert extractor.identity()["hidden_state"].startswith("hidden_states[2]")


def test_loader_errors(tiny_dinov2: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="blocks 0..2"):
        DINOv2Extractor.from_pretrained(tiny_dinov2, layer=3)
    with pytest.raises(ConfigError, match="multiple of its patch size 14"):
        DINOv2Extractor.from_pretrained(tiny_dinov2, layer=0, image_size=100)
    with pytest.raises(ModelLoadError, match="does not exist"):
        DINOv2Extractor.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="save_pretrained"):
        DINOv2Extractor.from_pretrained(tmp_path / "empty")
    # HF_HUB_OFFLINE=1 in tests: a hub id not in the cache is one actionable line.
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        DINOv2Extractor.from_pretrained("facebook/dinov2-base")


def test_resampling_onto_the_dit_grid() -> None:
    # A DINOv2 map whose channels are the padded-canvas pixel coordinates (y, x) of each patch
    # centre: sampled at a DiT cell, it must return where that cell's centre lies on the canvas.
    g, patch, size = 8, 14, 112
    centres = (torch.arange(g, dtype=torch.float32) + 0.5) * patch - 0.5
    features = torch.stack(torch.meshgrid(centres, centres, indexing="ij"))  # (2, 8, 8)
    image_hw = (480, 854)
    maps = DINOv2Maps(features, size, patch, (24, 0, 63, 112), image_hw)
    model_hw, stride = (64, 112), 16  # a DiT input of the same image: 4x7 cells
    on_grid = maps.on_grid((4, 7), model_hw, stride)
    assert on_grid.shape == (2, 4, 7)
    for i in range(4):
        for j in range(7):
            frame_y = ((i + 0.5) * stride) * image_hw[0] / model_hw[0] - 0.5
            frame_x = ((j + 0.5) * stride) * image_hw[1] / model_hw[1] - 0.5
            canvas_y = 24 + (frame_y + 0.5) * 63 / 480 - 0.5
            canvas_x = (frame_x + 0.5) * 112 / 854 - 0.5
            # Inside the patch-centre range the bilinear map is the identity.
            if centres[0] <= canvas_y <= centres[-1] and centres[0] <= canvas_x <= centres[-1]:
                torch.testing.assert_close(
                    on_grid[:, i, j], torch.tensor([canvas_y, canvas_x]), atol=1e-4, rtol=0
                )
    # Every sample lies inside the image content, never in the padding rows.
    assert on_grid[0].min() > 24 - 1
    assert on_grid[0].max() < 24 + 63


# ---------------------------------------------------------------------------------------------
# PCA


def _structured(c: int, h: int, w: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    scale = np.linspace(3.0, 0.1, c)[:, None, None]
    return torch.as_tensor(rng.normal(size=(c, h, w)) * scale + shift, dtype=torch.float32)


def test_pca_equals_scikit_learn_up_to_sign() -> None:
    a, b = _structured(32, 6, 7, 0), _structured(32, 5, 8, 1, shift=0.5)
    pca = JointPCA.fit([a, b], 12)
    assert pca.dim == 12
    x = np.concatenate([a.reshape(32, -1).T.numpy(), b.reshape(32, -1).T.numpy()]).astype(
        np.float64
    )
    sk = PCA(n_components=12, svd_solver="full").fit(x)
    signs = np.sign(np.sum(sk.components_ * pca.components.numpy(), axis=1))
    assert np.all(np.abs(signs) == 1)
    np.testing.assert_allclose(pca.components.numpy() * signs[:, None], sk.components_, atol=1e-8)
    np.testing.assert_allclose(pca.explained_variance.numpy(), sk.explained_variance_, rtol=1e-8)
    proj = np.concatenate(
        [pca.transform(a).reshape(12, -1).T.numpy(), pca.transform(b).reshape(12, -1).T.numpy()]
    )
    np.testing.assert_allclose(proj * signs, sk.transform(x), atol=1e-5)
    # batched maps give the same projection as single ones
    torch.testing.assert_close(pca.transform(a[None])[0], pca.transform(a))


def test_pca_is_fitted_on_both_images_jointly() -> None:
    a, b = _structured(32, 6, 7, 0), _structured(32, 5, 8, 1, shift=0.5)
    (ra, rb), pca = reduce_jointly([a, b], 12)
    assert pca is not None
    alone = JointPCA.fit([a], 12)
    # Fitted on A alone, A's projection would differ: the mean and axes come from both images.
    assert not torch.allclose(ra, alone.transform(a), atol=1e-3)
    x = torch.cat([a.reshape(32, -1).T, b.reshape(32, -1).T]).double()
    torch.testing.assert_close(pca.mean, x.mean(0))
    # the joint projections are centred over the pair, not over each image
    joint_mean = torch.cat([ra.reshape(12, -1), rb.reshape(12, -1)], 1).mean(1)
    torch.testing.assert_close(joint_mean, torch.zeros(12), atol=1e-5, rtol=0)
    assert ra.reshape(12, -1).mean(1).abs().max() > 0.05


def test_pca_widths() -> None:
    a, b = _structured(32, 6, 7, 0), _structured(32, 5, 8, 1)
    maps, pca = reduce_jointly([a, b], 1280)  # narrower than the target: left as is
    assert pca is None
    assert maps[0].shape == (32, 6, 7)
    maps, pca = reduce_jointly([a, b], 16)
    assert pca is not None
    assert maps[0].shape == (16, 6, 7)
    assert maps[1].shape == (16, 5, 8)
    maps, pca = reduce_jointly([a, b], None)
    assert pca is None
    # fewer vectors than channels: the width is capped by the number of vectors
    tiny = JointPCA.fit([_structured(32, 2, 3, 5)], 20)
    assert tiny.dim == 6


def test_fusion_width_and_normalisation() -> None:
    dit = _structured(16, 4, 7, 2)
    dino = _structured(24, 4, 7, 3) * 50.0  # scale must not matter
    fused = fuse_features(dit, dino)
    assert fused.shape == (40, 4, 7)
    torch.testing.assert_close(fused.norm(dim=0), torch.ones(4, 7))
    # each half carries half of the squared norm: equal weights
    torch.testing.assert_close(fused[:16].norm(dim=0) ** 2, torch.full((4, 7), 0.5))
    torch.testing.assert_close(fused[:16] * 2**0.5, F.normalize(dit, dim=0))


class _CodeExtractor:
    """Returns fixed code maps in call order, for a matcher with DINOv2 fusion."""

    stride = 16

    def __init__(self, codes: Sequence[torch.Tensor]) -> None:
        self.codes = list(codes)
        self.calls = 0

    def identity(self) -> dict[str, Any]:
        return {"extractor": "codes"}

    def extract(
        self, images: Any, *, massive_channels: Sequence[int] | None = None, noise_ids: Any = None
    ) -> FeatureMaps:
        code = self.codes[self.calls % len(self.codes)]
        self.calls += 1
        assert tuple(images.shape[1:3]) == (code.shape[1] * 16, code.shape[2] * 16)
        return FeatureMaps(code[None], 16, tuple(images.shape[1:3]), ())


def test_matcher_with_dinov2(tiny_dinov2: Path, dog: np.ndarray) -> None:
    dino = DINOv2Extractor.from_pretrained(tiny_dinov2, layer=2, image_size=112)
    # 854x480 at long side 128 -> 128x64 model input (71.9 -> 64), 8x4 cells; 40 > pca_dim 12
    codes = [F.normalize(_structured(40, 4, 8, s), dim=0) for s in (7, 8)]
    matcher = Matcher(_CodeExtractor(codes), long_side=128, dinov2=dino, pca_dim=12)
    flipped = dog[:, ::-1].copy()
    pair = matcher.features_for_pair(dog, flipped)
    assert pair.a.dim == 12 + HIDDEN
    assert pair.meta["pca_dim"] == 12
    assert pair.meta["descriptor_dim"] == 12 + HIDDEN
    for f in (pair.a, pair.b):
        assert f.grid_hw == (4, 8)
        torch.testing.assert_close(f.features.norm(dim=0), torch.ones(4, 8))
    # the DINOv2 half is the block output resampled onto the DiT grid, normalised
    expected = dino.extract(dog).on_grid((4, 8), (64, 128), 16)
    torch.testing.assert_close(pair.a.features[12:] * 2**0.5, F.normalize(expected, dim=0))
    # the DiT half is the joint PCA of both images' codes
    pca = JointPCA.fit(codes, 12)
    torch.testing.assert_close(
        pair.a.features[:12] * 2**0.5, F.normalize(pca.transform(codes[0]), dim=0)
    )
    pred, _ = matcher.match_points_in(pair, np.array([[100.0, 100.0]]))
    assert pred.shape == (1, 2)
    identity = matcher.identity()
    assert identity["dinov2"]["layer"] == 2
    assert identity["pca_dim"] == 12


class _RawCodeExtractor(_CodeExtractor):
    """Unit code maps with per-cell norms (as the DiTF extractor returns), under a preset."""

    def __init__(self, raw: Sequence[torch.Tensor], preset: str | None) -> None:
        super().__init__(raw)
        self.preset = preset

    def identity(self) -> dict[str, Any]:
        return {"extractor": "codes", "preset": self.preset}

    def extract(self, images: Any, **kwargs: Any) -> FeatureMaps:
        maps = super().extract(images, **kwargs)
        raw = maps.features
        maps.features = F.normalize(raw, dim=1)
        maps.norms = raw.norm(dim=1)
        return maps


def test_pca_rule_per_preset_and_fit_on_raw_maps(tiny_dinov2: Path, dog: np.ndarray) -> None:
    """Paper App. C: the PCA to 1280 is fitted jointly on the pair's raw ẑ, for SD3.5 and Flux
    only; PixArt-α and SD3 are concatenated without one. ``pca_dim_for`` reads the rule from
    the preset's ``dinov2_pca_dim``."""
    assert pca_dim_for("flux") == (1280, "preset flux: PCA to 1280")
    assert pca_dim_for("sd3.5")[0] == 1280
    assert pca_dim_for("sd3") == (None, "preset sd3: no PCA (concatenated as is)")
    assert pca_dim_for("pixart-alpha")[0] is None
    assert pca_dim_for(None)[0] == 1280  # a bare --model: reduced when wider
    dino = DINOv2Extractor.from_pretrained(tiny_dinov2, layer=2, image_size=112)
    # raw maps whose cell norms vary 100-fold: a PCA of the unit cells would differ
    scale = torch.logspace(-1, 1, 32).reshape(1, 4, 8)
    raw = [_structured(40, 4, 8, s) * scale for s in (7, 8)]
    flipped = dog[:, ::-1].copy()
    matcher = Matcher(_RawCodeExtractor(raw, "flux"), long_side=128, dinov2=dino, pca_dim=12)
    pair = matcher.features_for_pair(dog, flipped)
    pca = JointPCA.fit(raw, 12)
    torch.testing.assert_close(
        pair.a.features[:12] * 2**0.5,
        F.normalize(pca.transform(raw[0]), dim=0),
        atol=1e-5,
        rtol=1e-4,
    )
    unit = JointPCA.fit([F.normalize(r, dim=0) for r in raw], 12)
    assert (unit.components - pca.components).abs().max() > 1e-2
    assert pair.a.norms is None  # fused cells are unit vectors
    # the preset's rule by default: sd3 concatenates the (normalised) raw map as is
    sd3 = Matcher(_RawCodeExtractor(raw, "sd3"), long_side=128, dinov2=dino)
    assert (sd3.pca_dim, sd3.pca_rule) == (None, "preset sd3: no PCA (concatenated as is)")
    pair = sd3.features_for_pair(dog, flipped)
    assert pair.a.dim == 40 + HIDDEN
    assert pair.meta["pca_dim"] is None
    assert sd3.identity()["pca_rule"] == "preset sd3: no PCA (concatenated as is)"
    flux = Matcher(_RawCodeExtractor(raw, "flux"), long_side=128, dinov2=dino)
    assert flux.pca_dim == 1280
