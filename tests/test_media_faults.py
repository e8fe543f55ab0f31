"""Media faults: lossy masks, damaged videos, native decoder chatter, overlay codec, CLI sizes."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditf_track.errors import InputError
from ditf_track.masks import DAVIS_PALETTE, read_mask

PALETTE = np.frombuffer(DAVIS_PALETTE, np.uint8).reshape(256, 3)
DOG_MASK = "davis/Annotations/480p/dog/00000.png"  # one object, binary L {0, 255}
BIKE_MASK = "davis2017_firstframe/Annotations/480p/bike-packing/00000.png"  # 2 objects, P
# Lossy colour masks with more than 254 colours fail on the object limit, with the same fix.
LOSSY = r"(looks lossy|more than 254 objects \(a lossy).*palette PNG with one id per object"
MASK_FOLDERS = (
    "davis/Annotations/480p",
    "davis/Predictions/osvos/480p",
    "davis2017_firstframe/Annotations/480p",
    "vspw_firstframe/Annotations",
)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded.load()
        return decoded.copy()


def _renderings(path: Path) -> list[Image.Image]:
    """The mask as stored, and as an RGB image in its DAVIS colours (a colour-coded mask)."""
    with Image.open(path) as image:
        image.load()
        labels = np.asarray(image.convert("L") if image.mode == "L" else image)
    ids = (labels > 0).astype(np.uint8) if image.mode == "L" else labels
    return [image, Image.fromarray(PALETTE[ids])]


def _all_masks(shared_data: Path) -> list[Path]:
    return sorted(p for folder in MASK_FOLDERS for p in (shared_data / folder).rglob("*.png"))


# ---- lossy masks ------------------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.parametrize("source", [DOG_MASK, BIKE_MASK])
@pytest.mark.parametrize("quality", [75, 95, 100])
def test_jpeg_mask_is_refused_as_jpg_and_as_resaved_png(
    tmp_path: Path, shared_data: Path, source: str, quality: int
) -> None:
    rgb = _renderings(shared_data / source)[1]
    grey = rgb.convert("L")
    rgb.save(tmp_path / "mask.jpg", "JPEG", quality=quality)
    with pytest.raises(InputError, match=r"mask\.jpg is a JPEG.*palette PNG"):
        read_mask(tmp_path / "mask.jpg")
    rgb.save(tmp_path / "disguised.png", "JPEG", quality=quality)
    with pytest.raises(InputError, match=r"holds JPEG data.*palette PNG"):
        read_mask(tmp_path / "disguised.png")
    for name, image in (("rgb.png", rgb), ("grey.png", grey)):
        _jpeg(image, quality).save(tmp_path / name)  # decoded JPEG re-saved losslessly
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(InputError, match=LOSSY) as info:
                read_mask(tmp_path / name)
        assert "\n" not in str(info.value)


def test_real_masks_first_and_last_accepted_also_as_rgb(tmp_path: Path, shared_data: Path) -> None:
    folders = sorted({p.parent for p in _all_masks(shared_data)})
    assert len(folders) == 12
    for folder in folders:
        files = sorted(folder.glob("*.png"))
        for path in {files[0], files[-1]}:
            rgb = _renderings(path)[1]
            expected = read_mask(path)
            rgb.save(tmp_path / "rgb.png")
            with pytest.warns(UserWarning, match="DAVIS palette"):
                back = read_mask(tmp_path / "rgb.png")
            np.testing.assert_array_equal(back.labels, expected.labels)


@pytest.mark.slow
def test_every_real_mask_accepted(tmp_path: Path, shared_data: Path) -> None:
    masks = _all_masks(shared_data)
    assert len(masks) == 462
    for path in masks:
        mask = read_mask(path)
        assert mask.object_ids, path
