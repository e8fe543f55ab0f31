"""Masks in and out: formats, palette, void, label grids for propagation, per-object helpers;
lossy (JPEG) masks refused, every real mask of the shared data accepted."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from ditf_track.errors import InputError
from ditf_track.masks import (
    DAVIS_PALETTE,
    VOID_ID,
    davis_palette,
    labels_to_grid,
    merge_objects,
    read_mask,
    require_objects,
    small_objects,
    split_objects,
    write_mask,
)

PALETTE = np.frombuffer(DAVIS_PALETTE, np.uint8).reshape(256, 3)


@pytest.fixture(scope="module")
def bike_packing(shared_data: Path) -> Path:
    annotations = shared_data / "davis2017_firstframe" / "Annotations" / "480p"
    return annotations / "bike-packing" / "00000.png"


# ---- palette -----------------------------------------------------------------------------------


def test_davis_palette_entries(shared_data: Path) -> None:
    assert len(DAVIS_PALETTE) == 768
    assert davis_palette() == DAVIS_PALETTE
    expected = [
        (0, 0, 0),
        (128, 0, 0),
        (0, 128, 0),
        (128, 128, 0),
        (0, 0, 128),
        (128, 0, 128),
        (0, 128, 128),
        (128, 128, 128),
        (64, 0, 0),
        (192, 0, 0),
    ]
    assert [tuple(int(v) for v in c) for c in PALETTE[:10]] == expected
    assert tuple(PALETTE[VOID_ID]) == (224, 224, 192)
    # Identical to the palette of the official DAVIS-2017 results (davis2017-evaluation OSVOS).
    osvos = (
        shared_data / "davis" / "Predictions" / "osvos" / "480p" / "motocross-jump" / "00000.png"
    )
    with Image.open(osvos) as img:
        assert bytes(img.getpalette() or []) == DAVIS_PALETTE


# ---- reading -----------------------------------------------------------------------------------


def test_read_davis2016_binary(shared_data: Path) -> None:
    path = shared_data / "davis" / "Annotations" / "480p" / "blackswan" / "00000.png"
    mask = read_mask(path)
    with Image.open(path) as img:
        assert img.mode == "L"
        raw = np.asarray(img)
    assert mask.source_format == "binary"
    assert mask.object_ids == (1,)
    assert mask.palette is None
    assert not mask.has_void
    assert mask.labels.dtype == np.uint8
    assert mask.labels.shape == (480, 854)
    np.testing.assert_array_equal(mask.labels, (raw == 255).astype(np.uint8))


def test_read_davis2017_palette(bike_packing: Path) -> None:
    mask = read_mask(bike_packing)
    assert mask.source_format == "palette"
    assert mask.object_ids == (1, 2)
    assert mask.palette is not None
    assert len(mask.palette) == 768
    with Image.open(bike_packing) as img:
        np.testing.assert_array_equal(mask.labels, np.asarray(img))
        assert mask.palette == bytes(img.getpalette() or [])


def test_read_vspw_44_objects(shared_data: Path) -> None:
    path = shared_data / "vspw_firstframe" / "Annotations" / "1001_3iEIq5HBY1s" / "00002058.png"
    mask = read_mask(path)
    assert mask.object_ids == tuple(range(1, 45))
    assert mask.labels.shape == (1080, 1920)


def test_palette_round_trip(tmp_path: Path, bike_packing: Path) -> None:
    mask = read_mask(bike_packing)
    out = write_mask(tmp_path / "seq" / "00000.png", mask.labels, mask.palette)
    back = read_mask(out)
    np.testing.assert_array_equal(back.labels, mask.labels)
    assert back.palette == mask.palette  # the input's own palette is kept, not replaced
    with Image.open(out) as img:
        assert img.mode == "P"
    assert [p.name for p in out.parent.iterdir()] == ["00000.png"]  # no temp file left
    # default palette
    default = read_mask(write_mask(tmp_path / "d.png", mask.labels))
    assert default.palette == DAVIS_PALETTE


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_write_read_any_labels(
    tmp_path_factory: pytest.TempPathFactory, labels: np.ndarray
) -> None:
    path = tmp_path_factory.mktemp("masks") / "m.png"
    back = read_mask(write_mask(path, labels))
    np.testing.assert_array_equal(back.labels, labels)
    assert back.has_void == bool((labels == 255).any())
    assert back.object_ids == tuple(sorted(set(labels.ravel().tolist()) - {0, 255}))


def test_void_is_kept_and_not_an_object(tmp_path: Path) -> None:
    labels = np.zeros((6, 8), np.uint8)
    labels[1:3, 1:3] = 2
    labels[4:, :] = VOID_ID
    mask = read_mask(write_mask(tmp_path / "v.png", labels))
    assert mask.has_void
    assert mask.object_ids == (2,)
    grid = labels_to_grid(mask.labels, mask.object_ids, (3, 4), mode="area")
    assert grid[0, 2].sum() == pytest.approx(4.0)  # the void bottom row counts as background
    assert split_objects(mask.labels).keys() == {2}


def test_rgb_mask_first_appearance_with_warning(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[0, 3] = (10, 200, 30)  # first non-black colour in raster order → id 1
    rgb[2, 0] = (250, 250, 0)  # → id 2
    rgb[3, 4] = (10, 200, 30)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.warns(UserWarning, match="first appearance"):
        mask = read_mask(tmp_path / "rgb.png")
    expected = np.zeros((4, 5), np.uint8)
    expected[0, 3] = expected[3, 4] = 1
    expected[2, 0] = 2
    np.testing.assert_array_equal(mask.labels, expected)
    assert mask.source_format == "rgb"
    assert mask.palette is not None
    assert mask.palette[3:9] == bytes((10, 200, 30, 250, 250, 0))  # the user's colours kept


def test_rgb_rendering_of_davis_mask_keeps_ids(tmp_path: Path, bike_packing: Path) -> None:
    mask = read_mask(bike_packing)
    rgba = np.dstack([PALETTE[mask.labels], np.full(mask.labels.shape, 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning, match="DAVIS palette"):
        back = read_mask(tmp_path / "rgba.png")
    np.testing.assert_array_equal(back.labels, mask.labels)


def test_grey_ids_warn_and_mode_1(tmp_path: Path) -> None:
    grey = np.array([[0, 3, 3], [7, 0, 255]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "ids.png")
    with pytest.warns(UserWarning, match="other than 0/255"):
        mask = read_mask(tmp_path / "ids.png")
    assert mask.object_ids == (3, 7)
    assert mask.has_void
    Image.fromarray(np.array([[0, 1], [1, 1]], bool)).save(tmp_path / "bits.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bits = read_mask(tmp_path / "bits.png")
    assert bits.object_ids == (1,)


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_mask(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match=r"bad\.png"):
        read_mask(bad)
    noisy = np.random.default_rng(0).integers(1, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match="more than 254 objects"):
            read_mask(tmp_path / "noisy.png")


def test_require_objects(tmp_path: Path) -> None:
    empty = read_mask(write_mask(tmp_path / "empty.png", np.zeros((5, 5), np.uint8)))
    assert empty.object_ids == ()
    with pytest.raises(InputError, match=r"empty\.png contains no object"):
        require_objects(empty, tmp_path / "empty.png")
    require_objects(np.eye(3, dtype=np.uint8), "eye")


# ---- token grids -------------------------------------------------------------------------------


def _dino_read_seg(path: Path, grid_hw: tuple[int, int]) -> np.ndarray:
    """DINO read_seg: PIL NEAREST resize of the mask to (w, h), then one-hot over 0..max."""
    with Image.open(path) as seg:
        small = np.asarray(seg.resize((grid_hw[1], grid_hw[0]), 0))
    n = int(small.max()) + 1
    return (small[None] == np.arange(n)[:, None, None]).astype(np.float32)


def test_nearest_grid_equals_dino_protocol(bike_packing: Path) -> None:
    mask = read_mask(bike_packing)
    # DINO at 480 with patch 16: frames 480x832 → grid 30x52; DiTF at 960, stride 16: 60x106
    for grid_hw in [(30, 52), (60, 106), (60, 107)]:
        grid = labels_to_grid(mask.labels, mask.object_ids, grid_hw, mode="nearest")
        assert grid.dtype == np.float32
        assert grid.shape == (3, *grid_hw)
        np.testing.assert_array_equal(grid, _dino_read_seg(bike_packing, grid_hw))


def test_area_grid_sums_to_one_and_keeps_small_objects() -> None:
    labels = np.zeros((64, 64), np.uint8)
    labels[20:23, 40:43] = 5  # 9 px, smaller than a 16x16 = 256 px cell
    labels[0:32, 0:32] = 2
    grid = labels_to_grid(labels, [2, 5], (4, 4), mode="area")
    np.testing.assert_allclose(grid.sum(axis=0), 1.0, atol=1e-6)
    assert grid[2, 1, 2] == pytest.approx(9 / 256)  # exact coverage of the cell it lies in
    assert grid[2].sum() == pytest.approx(9 / 256)
    np.testing.assert_allclose(grid[1, :2, :2], 1.0)
    nearest = labels_to_grid(labels, [2, 5], (4, 4), mode="nearest")
    assert nearest[2].sum() == 0  # nearest sampling misses it
    assert small_objects(labels, [2, 5], cell_area_px=16 * 16) == [5]


def test_area_grid_real_mask_non_divisible(shared_data: Path) -> None:
    path = shared_data / "vspw_firstframe" / "Annotations" / "1001_3iEIq5HBY1s" / "00002058.png"
    mask = read_mask(path)
    grid_hw = (68, 120)  # 1080x1920 → 1088x1920 model input at stride 16
    grid = labels_to_grid(mask.labels, mask.object_ids, grid_hw, mode="area")
    assert grid.shape == (45, 68, 120)
    np.testing.assert_allclose(grid.sum(axis=0), 1.0, atol=1e-5)
    area_frac = np.bincount(mask.labels.ravel(), minlength=256)[list(mask.object_ids)] / (
        1080 * 1920
    )
    # each object's total mass over the grid matches its area fraction
    np.testing.assert_allclose(grid[1:].sum(axis=(1, 2)) / grid[0].size, area_frac, atol=2e-4)
    cell = (1080 / 68) * (1920 / 120)
    small = small_objects(mask.labels, mask.object_ids, cell)
    assert small == [35, 43, 44]  # objects with fewer pixels than one cell in this mask
    assert all((mask.labels == i).sum() < cell for i in small)
    for obj in small:
        channel = mask.object_ids.index(obj) + 1
        assert grid[channel].sum() > 0  # survives in area mode


# ---- per-object helpers -------------------------------------------------------------------------


def test_split_merge_round_trip(bike_packing: Path) -> None:
    labels = read_mask(bike_packing).labels
    parts = split_objects(labels)
    assert sorted(parts) == [1, 2]
    assert all(m.dtype == bool for m in parts.values())
    np.testing.assert_array_equal(merge_objects(parts), labels)


def test_merge_overlap_smaller_id_wins() -> None:
    a = np.zeros((3, 3), bool)
    a[:2] = True
    b = np.zeros((3, 3), bool)
    b[1:] = True
    merged = merge_objects({7: b, 2: a})
    np.testing.assert_array_equal(merged, [[2, 2, 2], [2, 2, 2], [7, 7, 7]])
    assert merge_objects({}, shape=(2, 2)).sum() == 0


# -- lossy and real masks (faults) ---------------------------------------------------------------

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
