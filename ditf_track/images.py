"""Image-level I/O and sizing: read an RGB image, pick the model input size, resize.

Conventions used everywhere in ditf-track:

* images are ``(H, W, 3) uint8`` RGB arrays (never BGR, never CHW) until a backbone turns them
  into tensors;
* sizes are ``(height, width)`` tuples, in that order (OpenCV and PIL take ``(width, height)``;
  the conversion happens only inside this module);
* the model input size has both sides a multiple of the backbone's token stride (``multiple``),
  so the token grid is ``(H' / stride, W' / stride)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, InputError

__all__ = [
    "Interpolation",
    "Rounding",
    "image_size",
    "model_input_size",
    "read_image",
    "resize_image",
    "round_to_multiple",
]

Rounding = Literal["nearest", "floor"]
Interpolation = Literal["auto", "area", "bilinear", "bicubic", "nearest", "pil-bicubic"]

_CV2_INTERPOLATION = {
    "area": cv2.INTER_AREA,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}

# EXIF orientation values 5–8 transpose the image, so the stored width and height swap.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


def _open_pil(path: str | os.PathLike[str], what: str) -> Image.Image:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist; check the path")
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder, not an image file; pass an image file")
    try:
        return Image.open(p)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(
            f"{what} {p} cannot be read as an image ({exc}); re-save it as PNG or JPEG"
        ) from exc


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey (e.g. some microscopy or depth frames): keep the top 8 bits.
        arr = np.asarray(img, dtype=np.int64)
        scale = 257 if arr.max(initial=0) > 255 else 1
        grey = np.clip(arr // scale, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")  # drops alpha; expands L, P, CMYK, 1
    return np.asarray(img, dtype=np.uint8).copy()


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as ``(H, W, 3) uint8`` RGB with its EXIF orientation applied.

    Phone photos store pixels unrotated plus an EXIF orientation tag; applying it here gives
    the image as viewers show it, so masks and points drawn on that view line up. Grey, palette
    and RGBA images are converted to RGB (alpha is dropped); 16-bit grey keeps its top 8 bits.

    Raises:
        InputError: the file is missing, is a folder, or cannot be decoded (e.g. truncated).
    """
    img = _open_pil(path, "image")
    try:
        with img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb_uint8(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"image {Path(path)} cannot be decoded ({exc}); the file is corrupt or truncated, "
            "re-export it"
        ) from exc


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(height, width)`` of an image as :func:`read_image` returns it, from its header only."""
    img = _open_pil(path, "image")
    with img:
        width, height = img.size
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a malformed EXIF block: PIL's exif_transpose ignores it too
            orientation = 1
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return width, height
    return height, width


def round_to_multiple(value: float, multiple: int, rounding: Rounding = "nearest") -> int:
    """Round ``value`` to a positive multiple of ``multiple``.

    ``"nearest"`` rounds halves up (``floor(v / m + 0.5) * m``); ``"floor"`` rounds down
    (``floor(v / m) * m``, the DINO/DIFT/DiTF rule). The result is never 0: values below one
    multiple give ``multiple``.
    """
    if multiple < 1:
        raise ConfigError(f"multiple={multiple} must be a positive integer (the token stride)")
    if rounding == "nearest":
        n = int(np.floor(value / multiple + 0.5))
    elif rounding == "floor":
        n = int(np.floor(value / multiple))
    else:
        raise ConfigError(f"rounding={rounding!r} is not one of 'nearest', 'floor'")
    return max(1, n) * multiple


def model_input_size(
    height: int,
    width: int,
    *,
    short_side: int | None = None,
    long_side: int | None = None,
    square: int | None = None,
    multiple: int = 16,
    long_multiple: int | None = None,
    rounding: Rounding = "nearest",
) -> tuple[int, int]:
    """The ``(H', W')`` a frame of size ``(height, width)`` is resized to before the backbone.

    Give at most one of:

    * ``short_side``: scale so the short side is ``short_side`` pixels, aspect ratio kept;
    * ``long_side``: scale so the long side is ``long_side`` pixels, aspect ratio kept;
    * ``square``: ``(square, square)``, aspect ratio ignored (DIFT's SPair protocol at 768, the
      DiTF paper's appendix at 960; the authors' SPair script keeps the aspect at long side 640);
    * none: keep the original size.

    Each side is then rounded to a multiple of the token stride ``multiple`` by ``rounding``
    (see :func:`round_to_multiple`; ``"nearest"`` is our default, so each side is within half a
    stride of the exact scaled size and never 0). ``long_multiple`` (default ``multiple``) is
    the multiple used for the long side only, which reproduces the reference protocols, that
    keep the short side exact and floor the long side:

    * DINO ``eval_video_segmentation.py``: ``short_side=480, long_multiple=64,
      rounding="floor"``: 854×480 → (480, 832);
    * DiTF ``eval_davis.py``: ``short_side=960, long_multiple=32, rounding="floor"``:
      854×480 → (960, 1696).

    Our default for 854×480 at ``short_side=960`` is (960, 1712) (1708 → nearest 16).
    """
    if height < 1 or width < 1:
        raise InputError(f"image size {height}x{width} (HxW) is empty; check the input frames")
    given = [v for v in (short_side, long_side, square) if v is not None]
    if len(given) > 1:
        raise ConfigError(
            f"short_side={short_side}, long_side={long_side}, square={square}: give at most one"
        )
    if any(v < 1 for v in given):
        raise ConfigError(f"target side {given[0]} must be a positive number of pixels")
    long_mult = multiple if long_multiple is None else long_multiple
    if square is not None:
        side = round_to_multiple(square, multiple, rounding)
        return side, side
    # (side * target) / reference, in DINO's operation order, so "floor" matches it exactly.
    if short_side is not None:
        target, reference = short_side, min(height, width)
    elif long_side is not None:
        target, reference = long_side, max(height, width)
    else:
        target = reference = 1
    h_mult, w_mult = (long_mult, multiple) if height > width else (multiple, long_mult)
    if height == width:
        h_mult = w_mult = multiple
    return (
        round_to_multiple(height * target / reference, h_mult, rounding),
        round_to_multiple(width * target / reference, w_mult, rounding),
    )


def resize_image(
    image: np.ndarray, size: tuple[int, int], interpolation: Interpolation = "auto"
) -> np.ndarray:
    """Resize ``(H, W)`` or ``(H, W, C)`` to ``size = (H', W')`` with OpenCV, dtype kept.

    ``"auto"`` uses ``cv2.INTER_AREA`` when neither side grows (exact pixel-area averaging,
    i.e. antialiased, so thin structures do not alias away when shrinking 1080p to a token
    grid) and ``cv2.INTER_LINEAR`` otherwise. ``"bilinear"`` is what DINO and DiTF use for
    DAVIS frames (``cv2.resize`` default). ``"pil-bicubic"`` is PIL's ``Image.resize`` with its
    bicubic filter (widened when shrinking, so antialiased, unlike OpenCV's ``INTER_CUBIC``):
    what the authors' SPair script gets from ``Image.resize``'s default; uint8 RGB / grey only.
    Returns ``image`` itself when the size is unchanged.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H,W) or (H,W,C), got shape {image.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise ConfigError(f"target size {size} (H,W) must be positive")
    in_h, in_w = image.shape[:2]
    if (in_h, in_w) == (out_h, out_w):
        return image
    if interpolation == "pil-bicubic":
        return _pil_resize(image, (out_h, out_w))
    if interpolation == "auto":
        flag = cv2.INTER_AREA if out_h <= in_h and out_w <= in_w else cv2.INTER_LINEAR
    elif interpolation in _CV2_INTERPOLATION:
        flag = _CV2_INTERPOLATION[interpolation]
    else:
        raise ConfigError(
            f"interpolation={interpolation!r} is not one of auto, area, bilinear, bicubic, "
            "nearest, pil-bicubic"
        )
    src = np.ascontiguousarray(image)
    if src.ndim == 3 and src.shape[2] > 4:
        # OpenCV resizes at most 4 channels per call in some builds; split into chunks.
        chunks = [
            cv2.resize(src[:, :, c : c + 4], (out_w, out_h), interpolation=flag)
            for c in range(0, src.shape[2], 4)
        ]
        chunks = [c[:, :, None] if c.ndim == 2 else c for c in chunks]
        return np.concatenate(chunks, axis=2)
    out = cv2.resize(src, (out_w, out_h), interpolation=flag)
    if src.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel axis
        out = out[:, :, None]
    return out


def _pil_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL's bicubic resize of a uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` array."""
    if image.dtype != np.uint8 or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ConfigError(
            f"pil-bicubic resizes uint8 RGB or grey images, not {image.dtype} {image.shape}; "
            "use another interpolation"
        )
    grey = image.ndim == 3 and image.shape[2] == 1
    pil = Image.fromarray(np.ascontiguousarray(image[:, :, 0] if grey else image))
    out = np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BICUBIC))
    return out[:, :, None] if grey else out
