"""Images (images.py): EXIF orientation, resizing, the model input size of each protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ditf_track.errors import ConfigError, InputError
from ditf_track.images import image_size, model_input_size, read_image, resize_image
from ditf_track.video import (
    resize_frames,
)


def test_read_image_exif_orientation_and_errors(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels must be rotated 90° clockwise for display
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = read_image(path)
    assert image.shape == (40, 20, 3)
    assert image_size(path) == (40, 20)
    assert image[:20].mean() > 200
    assert image[20:].mean() < 50

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match=r"broken\.jpg"):
        read_image(broken)
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_resize_area_and_frames() -> None:
    image = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    small = resize_image(image, (2, 2))  # area: exact 2×2 block means
    np.testing.assert_array_equal(small, [[25, 45], [105, 125]])
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    out = resize_frames(frames, (32, 48))
    assert out.shape == (3, 32, 48, 3)
    assert out.dtype == np.uint8
    constant = np.full((2, 30, 50, 3), 77, np.uint8)
    assert (resize_frames(constant, (64, 96)) == 77).all()  # enlarging: bilinear


def test_model_input_size_reference_protocols() -> None:
    assert model_input_size(480, 854, short_side=960) == (960, 1712)  # 1708 → nearest 16
    # DINO eval_video_segmentation.py: short side 480, long side floored to a multiple of 64
    assert model_input_size(480, 854, short_side=480, long_multiple=64, rounding="floor") == (
        480,
        832,
    )
    # DiTF eval_davis.py: short side --img_size, long side floored to a multiple of 32
    assert model_input_size(480, 854, short_side=960, long_multiple=32, rounding="floor") == (
        960,
        1696,
    )
    assert model_input_size(854, 480, short_side=960) == (1712, 960)  # portrait
    assert model_input_size(1080, 1920, long_side=1024) == (576, 1024)
    assert model_input_size(480, 854, square=768) == (768, 768)
    assert model_input_size(480, 854) == (480, 848)
    assert model_input_size(3, 1000, short_side=4) == (16, 1328)  # never 0
    with pytest.raises(ConfigError):
        model_input_size(480, 854, short_side=480, long_side=960)


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 4000),
    w=st.integers(1, 4000),
    target=st.integers(16, 2048),
    multiple=st.sampled_from([8, 14, 16, 32, 64]),
    which=st.sampled_from(["short_side", "long_side"]),
)
def test_model_input_size_properties(
    h: int, w: int, target: int, multiple: int, which: str
) -> None:
    sides: dict[str, Any] = {which: target}
    out_h, out_w = model_input_size(h, w, multiple=multiple, **sides)
    assert out_h % multiple == 0
    assert out_w % multiple == 0
    assert out_h > 0
    assert out_w > 0
    scale = target / (min(h, w) if which == "short_side" else max(h, w))
    for got, exact in ((out_h, h * scale), (out_w, w * scale)):
        # nearest multiple: within half a stride, unless lifted to the minimum of one stride
        assert abs(got - exact) <= multiple / 2 + 1e-9 or got == multiple
    floor_h, floor_w = model_input_size(h, w, multiple=multiple, rounding="floor", **sides)
    assert floor_h <= max(h * scale, multiple) + 1e-9
    assert floor_w <= max(w * scale, multiple) + 1e-9


def test_pil_bicubic_resize_is_pils() -> None:
    # issue 18: the authors' SPair script resizes with PIL's Image.resize (bicubic by default)
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    for size in ((480, 640), (240, 320), (37, 50)):
        ours = resize_image(image, size, "pil-bicubic")
        theirs = np.asarray(Image.fromarray(image).resize((size[1], size[0])))
        np.testing.assert_array_equal(ours, theirs)  # exact: PIL's own filter
        assert ours.shape == (*size, 3)
    # OpenCV's bicubic is another filter: shrinking 2x, PIL's antialiases and OpenCV's does not
    cv = resize_image(image, (187, 250), "bicubic")
    assert np.abs(cv.astype(int) - resize_image(image, (187, 250), "pil-bicubic")).max() > 10
    grey = image[:, :, :1]
    assert resize_image(grey, (30, 40), "pil-bicubic").shape == (30, 40, 1)
    with pytest.raises(ConfigError, match="pil-bicubic resizes uint8"):
        resize_image(image.astype(np.float32), (30, 40), "pil-bicubic")
    assert model_input_size(375, 500, long_side=640) == (480, 640)  # the official SPair size
    assert model_input_size(375, 500, square=960) == (960, 960)  # the paper's appendix
