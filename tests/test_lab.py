"""The weight-free lab baseline extractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2lab

from ditf_track.errors import ConfigError, InputError
from ditf_track.features import FeatureExtractor, FeatureMaps
from ditf_track.lab import LAB_SCALE, LabExtractor


def _frames(shared: Path, n: int = 2) -> np.ndarray:
    folder = shared / "davis" / "JPEGImages" / "480p" / "dog"
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.jpg"))[:n]]
    return np.stack([f[:480, :848] for f in frames])  # 480x848: a multiple of 16


def test_lab_maps_shape_norm_and_identity(shared_data: Path) -> None:
    images = _frames(shared_data)
    extractor = LabExtractor()
    assert isinstance(extractor, FeatureExtractor)
    maps = extractor.extract(images)
    assert isinstance(maps, FeatureMaps)
    assert maps.features.shape == (2, 3, 30, 53)
    assert maps.features.dtype == torch.float32
    assert torch.allclose(maps.features.norm(dim=1), torch.ones(2, 30, 53), atol=1e-5)
    assert maps.stride == 16
    assert maps.input_size == (480, 848)
    assert maps.grid_size == (30, 53)
    assert maps.discarded_channels == ()
    again = extractor.extract(torch.from_numpy(images))
    assert torch.equal(again.features, maps.features)  # deterministic, numpy or torch input
    ident = extractor.identity()
    assert ident["extractor"] == "lab"
    assert ident["stride"] == 16
    assert ident["lightness_offset"] == extractor.lightness_offset
    assert LabExtractor(lightness_offset=0.0).identity() != ident


def test_lab_cell_is_the_mean_lab_colour_of_its_pixels() -> None:
    """Against scikit-image's CIE-Lab (D65) on a random image, by hand for one cell."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    extractor = LabExtractor(16, lightness_offset=100.0)
    maps = extractor.extract(image[None]).features[0]
    lab = rgb2lab(image[16:32, 16:32]).reshape(-1, 3).mean(0)
    vec = (lab + np.asarray([100.0, 0.0, 0.0])) / LAB_SCALE
    vec = vec / np.linalg.norm(vec)
    assert np.allclose(maps[:, 1, 1].numpy(), vec, atol=1e-2)  # OpenCV vs skimage Lab


def test_lab_discards_requested_channels_and_validates() -> None:
    image = np.full((1, 16, 32, 3), 200, np.uint8)
    image[..., 0] = 30
    maps = LabExtractor().extract(image, massive_channels=[0])
    assert maps.discarded_channels == (0,)
    assert (maps.features[:, 0] == 0).all()
    with pytest.raises(InputError, match="multiple of the stride"):
        LabExtractor().extract(np.zeros((1, 20, 32, 3), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        LabExtractor().extract(np.zeros((1, 16, 32, 3), np.float32))
    with pytest.raises(ConfigError, match="stride"):
        LabExtractor(0)
    with pytest.raises(ConfigError, match="massive_channels"):
        LabExtractor().extract(image, massive_channels=[3])
