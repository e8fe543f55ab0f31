"""Masks in and out: DAVIS palette PNGs, binary and colour masks, label grids for propagation.

A label map is ``(H, W) uint8``: 0 background, 1..254 object ids, 255 void (DAVIS: "unlabelled",
scored as background by the official semi-supervised evaluation). Object ids are the palette
indices of the DAVIS format, so reading and writing a DAVIS annotation keeps every id.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ._atomic import atomic_path
from .errors import ConfigError, InputError

__all__ = [
    "BACKGROUND_ID",
    "DAVIS_PALETTE",
    "MAX_OBJECT_ID",
    "VOID_ID",
    "LabelMask",
    "davis_palette",
    "labels_to_grid",
    "merge_objects",
    "read_mask",
    "require_objects",
    "small_objects",
    "split_objects",
    "write_mask",
]

BACKGROUND_ID = 0
VOID_ID = 255
MAX_OBJECT_ID = 254  # ids 1..254; 255 is void
_GREY_MODES = ("L", "LA", "I;16", "I;16B", "I;16L", "I")
# JPEG is lossy whatever its quality: it invents colours along every edge of a mask.
_LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
_LOSSY_FORMATS = ("JPEG", "MPO")  # PIL's names for JPEG content, whatever the file is called
_LOSSLESS_FIX = (
    "save the mask losslessly as a PNG: a palette PNG with one id per object "
    "(or 0/255 grey for one object)"
)


def davis_palette() -> bytes:
    """The DAVIS / PASCAL-VOC colour map: 256 RGB triplets as 768 bytes.

    Entry ``i`` spreads the bits of ``i`` over the channels from the high bit down: bit 0 of
    ``i`` sets bit 7 of R, bit 1 bit 7 of G, bit 2 bit 7 of B, bit 3 bit 6 of R, and so on.
    0 = (0,0,0), 1 = (128,0,0), 2 = (0,128,0), 3 = (128,128,0), 4 = (0,0,128), 8 = (64,0,0);
    255 (void) = (224,224,192). Same colours as the DAVIS annotations and SAM2's
    ``DAVIS_PALETTE`` (``tools/vos_inference.py``).
    """
    index = np.arange(256)
    rgb = np.zeros((256, 3), dtype=np.int64)
    for level in range(8):  # level 0 fills the high bit (128), level 7 the low bit (1)
        for channel in range(3):
            bit = (index >> (3 * level + channel)) & 1
            rgb[:, channel] |= bit << (7 - level)
    return rgb.astype(np.uint8).tobytes()


DAVIS_PALETTE: bytes = davis_palette()


@dataclass(frozen=True, eq=False)
class LabelMask:
    """A mask read from a file.

    Attributes:
        labels: ``(H, W) uint8``: 0 background, 1..254 object ids, 255 void.
        palette: 768 bytes (256 RGB triplets) from the file (palette PNG) or built from the
            colours of an RGB mask; ``None`` for grey/binary masks (writers then use
            :data:`DAVIS_PALETTE`).
        object_ids: sorted ids present, excluding 0 and 255.
        has_void: whether any pixel is 255 (void).
        source_format: ``"palette"``, ``"binary"``, ``"ids"`` (grey values used as ids) or
            ``"rgb"``.
    """

    labels: np.ndarray
    palette: bytes | None
    object_ids: tuple[int, ...]
    has_void: bool
    source_format: Literal["palette", "binary", "ids", "rgb"]

    @property
    def height(self) -> int:
        return int(self.labels.shape[0])

    @property
    def width(self) -> int:
        return int(self.labels.shape[1])


def _present_ids(labels: np.ndarray) -> tuple[int, ...]:
    counts = np.bincount(labels.ravel(), minlength=256)
    counts[BACKGROUND_ID] = counts[VOID_ID] = 0
    return tuple(int(i) for i in np.flatnonzero(counts))


def _pad_palette(palette: Sequence[int] | bytes) -> bytes:
    raw = bytes(palette)[:768]
    return raw + DAVIS_PALETTE[len(raw) :]


def _fringe_labels(index: np.ndarray) -> tuple[int, int]:
    """``(fringe, total)`` labels of ``index (H, W)``, dense label numbers ``0..total-1``.

    A fringe label covers under 1% of the pixels and fewer than half of its pixels have all
    four neighbours (inside the image) in the same label. JPEG compression and antialiasing
    invent such colours in thin bands along the edges between the real regions, while real
    objects, even ones of a few dozen pixels, are mostly interior (the 44-object VSPW mask
    has 3 fringe labels of 45; a JPEG of a one-object DAVIS mask has 14 of 16 at quality 95).
    """
    counts = np.bincount(index.ravel())
    interior = np.ones(index.shape, bool)
    interior[1:] &= index[1:] == index[:-1]
    interior[:-1] &= index[:-1] == index[1:]
    interior[:, 1:] &= index[:, 1:] == index[:, :-1]
    interior[:, :-1] &= index[:, :-1] == index[:, 1:]
    inside = np.bincount(index[interior], minlength=len(counts))
    fringe = (2 * inside < counts) & (100 * counts < index.size)
    return int(fringe.sum()), int((counts > 0).sum())


def _refuse_lossy(index: np.ndarray, path: Path, what: str) -> None:
    """Raise if ``index (H, W)`` (dense label numbers) looks like a lossy or antialiased mask.

    Lossy: at least 2 fringe labels (see :func:`_fringe_labels`) making up at least a
    quarter of all labels; every mask in the shared DAVIS/VSPW data has at most 3 of 45.
    """
    fringe, total = _fringe_labels(index)
    if fringe >= 2 and 4 * fringe >= total:
        raise InputError(
            f"mask {path} looks lossy (JPEG-compressed or antialiased): {fringe} of its "
            f"{total} {what} are only thin fringes along edges and would be read as objects; "
            f"{_LOSSLESS_FIX}"
        )


def _rgb_to_labels(rgb: np.ndarray, path: Path) -> tuple[np.ndarray, bytes]:
    """Colour-coded mask → ids. DAVIS colours keep their palette index; else first-appearance."""
    codes = (
        rgb[..., 0].astype(np.uint32) << 16
        | rgb[..., 1].astype(np.uint32) << 8
        | rgb[..., 2].astype(np.uint32)
    ).ravel()
    colours, first_at, inverse = np.unique(codes, return_index=True, return_inverse=True)
    davis = np.frombuffer(DAVIS_PALETTE, np.uint8).reshape(256, 3).astype(np.uint32)
    davis_codes = davis[:, 0] << 16 | davis[:, 1] << 8 | davis[:, 2]
    lookup = {int(c): i for i, c in enumerate(davis_codes)}
    palette = bytearray(DAVIS_PALETTE)
    ids = np.zeros(len(colours), dtype=np.int64)
    if all(int(c) in lookup for c in colours):
        # An RGB rendering of a DAVIS mask: the colours give back the original ids (and void).
        ids[:] = [lookup[int(c)] for c in colours]
        how = "mapped DAVIS palette colours to their palette index"
    else:
        objects = [k for k in np.argsort(first_at) if colours[k] != 0]
        if len(objects) > MAX_OBJECT_ID:
            raise InputError(
                f"mask {path} has {len(objects)} distinct non-black colours, more than "
                f"{MAX_OBJECT_ID} objects (a lossy or antialiased mask has that many); "
                f"{_LOSSLESS_FIX}"
            )
        _refuse_lossy(inverse.reshape(rgb.shape[:2]), path, "colours")
        for new_id, k in enumerate(objects, start=1):
            ids[k] = new_id
            c = int(colours[k])
            palette[3 * new_id : 3 * new_id + 3] = bytes((c >> 16 & 255, c >> 8 & 255, c & 255))
        how = "numbered non-black colours 1..N in order of first appearance (raster order)"
    warnings.warn(
        f"RGB mask {path} was converted to object ids: {how}; save a palette PNG to control "
        "the ids",
        UserWarning,
        stacklevel=3,
    )
    return ids[inverse].reshape(rgb.shape[:2]).astype(np.uint8), bytes(palette)


def read_mask(path: str | os.PathLike[str]) -> LabelMask:
    """Read a mask image into ids.

    Accepted formats:

    * palette PNG (mode ``P``, DAVIS-2017): pixel values are the ids (0 background,
      1..254 objects, 255 void); the palette is kept for writing outputs;
    * binary grey (mode ``L`` with values {0, 255}, the DAVIS-2016 format, or mode ``1``):
      one object, id 1;
    * other grey images (mode ``L``/``I;16``): the values are taken as ids as they are
      (255 void), with a warning;
    * RGB/RGBA colour-coded masks (with a warning): if every colour is a DAVIS palette colour,
      the id is its palette index (an RGB rendering of a DAVIS mask keeps its ids); otherwise
      each distinct non-black colour gets an id 1..N in order of first appearance in raster
      order (row by row from the top-left), and the returned palette holds those colours.
      RGBA pixels with alpha 0 are background.

    Lossy masks are refused: JPEG files (by extension or content), and grey or colour masks
    whose extra values are thin fringes along edges (JPEG-compressed then re-saved, or
    antialiased), which would otherwise each become an object. Palette PNGs are taken as
    they are.

    An empty mask (no object) is returned as such; see :func:`require_objects`.

    Raises:
        InputError: missing or unreadable file, lossy mask, more than 254 objects, 16-bit ids
            above 255.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"mask {p} does not exist; check the path")
    if p.is_dir():
        raise InputError(f"mask {p} is a folder; pass one mask image (e.g. 00000.png)")
    if p.suffix.lower() in _LOSSY_SUFFIXES:
        raise InputError(
            f"mask {p} is a JPEG, whose lossy compression invents colours along every edge "
            f"(each read as an object); {_LOSSLESS_FIX}"
        )
    try:
        with Image.open(p) as opened:
            if opened.format in _LOSSY_FORMATS:
                raise InputError(
                    f"mask {p} holds JPEG data (despite its name), whose lossy compression "
                    f"invents colours along every edge; {_LOSSLESS_FIX}"
                )
            opened.load()
            mode = opened.mode
            raw_palette = opened.getpalette() if mode in ("P", "PA") else None
            img: Image.Image = opened
            if mode == "PA":
                img = opened.convert("P")
            elif mode not in _GREY_MODES and mode not in ("P", "1", "RGB", "RGBA"):
                img, mode = opened.convert("RGB"), "RGB"  # CMYK, YCbCr, ... → RGB
            arr = np.array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"mask {p} cannot be read as an image ({exc}); save it as a PNG") from exc

    palette: bytes | None = None
    fmt: Literal["palette", "binary", "ids", "rgb"]
    if mode in ("P", "PA"):
        labels = arr.astype(np.uint8)
        palette = _pad_palette(raw_palette) if raw_palette is not None else None
        fmt = "palette"
    elif mode == "1":
        labels = arr.astype(np.uint8)
        fmt = "binary"
    elif mode in _GREY_MODES:
        grey = arr[..., 0] if arr.ndim == 3 else arr
        values = np.unique(grey)
        value_set = set(values.tolist())
        if value_set <= {0, 255} or (mode.startswith("I") and value_set <= {0, 65535}):
            labels = (grey > 0).astype(np.uint8)
            fmt = "binary"
        else:
            _refuse_lossy(np.searchsorted(values, grey), p, "grey values")
            if int(values.max()) > 255:
                raise InputError(
                    f"mask {p} holds values up to {int(values.max())}; ids must be 0..254 "
                    "(255 void): save an 8-bit palette PNG"
                )
            labels = grey.astype(np.uint8)
            fmt = "ids"
            if not value_set <= {0, 1}:
                shown = ", ".join(str(int(v)) for v in values[:8])
                more = ", ..." if len(values) > 8 else ""
                warnings.warn(
                    f"grey mask {p} has values other than 0/255 ({shown}{more}): read them as "
                    "object ids (255 void); if it is a soft or JPEG binary mask, threshold it "
                    "and save a PNG",
                    UserWarning,
                    stacklevel=2,
                )
    else:  # RGB, RGBA
        rgb = arr[..., :3]
        if mode == "RGBA":
            rgb = np.where(arr[..., 3:4] == 0, 0, rgb)
        labels, palette = _rgb_to_labels(np.asarray(rgb, np.uint8), p)
        fmt = "rgb"

    return LabelMask(
        labels=np.ascontiguousarray(labels),
        palette=palette,
        object_ids=_present_ids(labels),
        has_void=bool((labels == VOID_ID).any()),
        source_format=fmt,
    )


def require_objects(mask: LabelMask | np.ndarray, name: str | os.PathLike[str]) -> None:
    """Raise :class:`InputError` if ``mask`` has no object (all background or void)."""
    labels = mask.labels if isinstance(mask, LabelMask) else np.asarray(mask)
    if not _present_ids(labels.astype(np.uint8)):
        void = " and void (255)" if (labels == VOID_ID).any() else ""
        raise InputError(
            f"mask {name} contains no object (all background{void}); paint at least one object"
        )


def write_mask(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    palette: bytes | Sequence[int] | None = None,
) -> Path:
    """Write ``labels (H, W)`` (ids 0..255) as a palette PNG (mode ``P``), atomically.

    ``palette`` (768 bytes, e.g. the input mask's) sets the display colours; ``None`` uses
    :data:`DAVIS_PALETTE`. The file is written under a temporary name in the same folder and
    then renamed over ``path`` (``os.replace``), so readers never see a partial PNG. Parent
    folders are created.

    Raises:
        OutputError: the folder cannot be created or written.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"labels must be (H,W), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"labels must be ids in 0..255, got {arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint8)
    pal = _pad_palette(DAVIS_PALETTE if palette is None else palette)
    out = Path(path)
    img = Image.fromarray(np.ascontiguousarray(arr))  # mode L
    img.putpalette(pal)  # an L image given a palette becomes mode P, pixel values untouched
    with atomic_path(out, "mask") as tmp:
        img.save(tmp, format="PNG")
    return out


# --------------------------------------------------------------------------------------------
# Token-grid labels for propagation


def _check_ids(object_ids: Sequence[int]) -> list[int]:
    ids = [int(i) for i in object_ids]
    bad = [i for i in ids if not 1 <= i <= MAX_OBJECT_ID]
    if bad or len(set(ids)) != len(ids):
        raise ConfigError(f"object_ids {ids} must be distinct ids in 1..{MAX_OBJECT_ID}")
    return ids


def labels_to_grid(
    labels: np.ndarray,
    object_ids: Sequence[int],
    grid_hw: tuple[int, int],
    mode: Literal["nearest", "area"] = "nearest",
) -> np.ndarray:
    """Labels ``(H, W) uint8`` → per-cell label distributions ``(K, h, w) float32``.

    Channel 0 is background and channel ``i`` is ``object_ids[i-1]``, ``K = 1 + len(object_ids)``.
    Void (255) and ids not in ``object_ids`` count as background.

    * ``"nearest"`` reproduces DINO's ``eval_video_segmentation.py`` (``read_seg``): the mask is
      resized to ``(w, h)`` with ``PIL.Image.resize(..., NEAREST)`` and one-hot encoded, so
      each cell takes the id of one sampled pixel and objects smaller than a cell may vanish.
    * ``"area"`` gives each cell the fraction of its area each label covers (OpenCV
      ``INTER_AREA``: exact pixel-area averaging), so cells sum to 1 and an object smaller than
      a cell keeps a nonzero share.

    ``grid_hw = (h, w)`` is the token grid, ``(H' / stride, W' / stride)`` of the model input.
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H,W), got shape {labels.shape}")
    if h < 1 or w < 1:
        raise ConfigError(f"grid size {grid_hw} (h,w) must be positive")
    ids = _check_ids(object_ids)
    lab = np.ascontiguousarray(labels, dtype=np.uint8)
    # id → channel; everything else (background, void, unlisted ids) → channel 0
    channel_of = np.zeros(256, dtype=np.int64)
    channel_of[ids] = np.arange(1, len(ids) + 1)
    out = np.zeros((1 + len(ids), h, w), dtype=np.float32)
    if mode == "nearest":
        small = np.asarray(Image.fromarray(lab).resize((w, h), Image.Resampling.NEAREST))
        ch = channel_of[small]
        np.put_along_axis(out, ch[None], 1.0, axis=0)
        return out
    if mode != "area":
        raise ConfigError(f"mode={mode!r} is not one of 'nearest', 'area'")
    # One object at a time keeps memory at one float (H, W) plane (a 1080p mask with 44
    # objects would need ~370 MB as a full one-hot stack).
    interp = cv2.INTER_AREA if h <= lab.shape[0] and w <= lab.shape[1] else cv2.INTER_LINEAR
    for c, obj in enumerate(ids, start=1):
        plane = (lab == obj).astype(np.float32)
        out[c] = cv2.resize(plane, (w, h), interpolation=interp)
    out[0] = np.clip(1.0 - out[1:].sum(axis=0), 0.0, 1.0)
    out /= out.sum(axis=0, keepdims=True)
    return out


def small_objects(labels: np.ndarray, object_ids: Iterable[int], cell_area_px: float) -> list[int]:
    """Ids in ``object_ids`` whose pixel area in ``labels`` is below ``cell_area_px``.

    ``cell_area_px`` is one token cell measured in ``labels``' pixels, e.g.
    ``(H / h) * (W / w)``. Such objects can vanish on the token grid with ``"nearest"``; the
    caller warns or switches to ``"area"``. Ids absent from ``labels`` (area 0) are included.
    """
    counts = np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=256)
    return [int(i) for i in object_ids if counts[int(i)] < cell_area_px]


# --------------------------------------------------------------------------------------------
# Per-object masks (SAM2 works with one bool mask per object)


def split_objects(
    labels: np.ndarray, object_ids: Iterable[int] | None = None
) -> dict[int, np.ndarray]:
    """``{id: (H, W) bool}`` for each object (default: the ids present, void excluded)."""
    lab = np.asarray(labels, np.uint8)
    ids = _present_ids(lab) if object_ids is None else tuple(int(i) for i in object_ids)
    return {i: lab == i for i in ids}


def merge_objects(
    masks: Mapping[int, np.ndarray], shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Per-object bool masks → labels ``(H, W) uint8``; where masks overlap the smaller id wins.

    The overlap rule follows SAM2's ``tools/vos_inference.py`` (``put_per_obj_mask`` paints
    ids in decreasing order). ``shape`` is needed only when ``masks`` is empty.
    """
    if not masks and shape is None:
        raise ValueError("merge_objects needs shape=(H, W) when masks is empty")
    ids = _check_ids(list(masks))
    if shape is not None:
        out = np.zeros(shape, dtype=np.uint8)
    else:
        out = np.zeros(np.asarray(next(iter(masks.values()))).shape, dtype=np.uint8)
    for i in sorted(ids, reverse=True):
        m = np.asarray(masks[i], dtype=bool)
        if m.shape != out.shape:
            raise ValueError(f"mask of object {i} is {m.shape}, expected {out.shape}")
        out[m] = i
    return out
