"""Image-pair correspondence: DiTF features of two images, nearest neighbours, mutual matches.

One path serves every pair task (the ``match`` command, SPair-71k / PF-PASCAL / AP-10K PCK,
HPatches homographies)::

    image (H,W,3) uint8 ──resize: long side L (aspect kept, sides multiples of 16) or S×S──▶
      extractor ──▶ (C, h, w) modulated map on the token grid (unit cells + per-cell norms)
      ──[+ DINOv2: joint PCA of the raw maps, concatenation]──▶ ImageFeatures
    source points (y, x) ──bilinear sample, L2──▶ (N, C) ──cosine──▶ argmax over the target
      (its grid cells, or every pixel of the target upsampled to its original size)

**Coordinates** in this API are ``(y, x)`` pixels of the ORIGINAL images, pixel centres at
integers (:mod:`ditf_track.coords`); only files use x, y columns.

**Image size.** Either both images keep their aspect ratio, the long side becomes
``long_side`` and each side is rounded to a multiple of the 16-px token stride
(:func:`ditf_track.images.model_input_size`), or both become ``square`` × ``square`` (aspect
ignored). ``resize`` is the method of :func:`ditf_track.images.resize_image` (``auto``: area
when shrinking, bilinear when enlarging; ``pil-bicubic``: PIL's). A bare ``Matcher`` (and the
``match`` command) uses the preset's ``pair_long_side`` (960) with ``auto``; the evaluators use
the profile's pair protocol (:func:`ditf_track.presets.resolve_pair_protocol`): ``official``
for FLUX.1-dev is the authors' SPair script (long side 640, PIL bicubic, 8 draws), ``paper``
the paper's appendix (960×960). Two details of that script are not reproduced: it rounds each
side with Python's ``round`` (halves to even; here halves up, which differs only when a scaled
side falls exactly on an odd multiple of 8) and casts the map to fp16 before upsampling (here
float32).

**Massive channels** are found on image A (the source) and held for image B, so both maps lose
the same channels and their cosine similarities stay comparable; ``PairFeatures`` records them.

**Descriptors and search** (``upsample``, ``upsample_from``):

* ``upsample=True`` (default; the official DiTF/DIFT SPair protocol): the target map is
  bilinearly upsampled (``align_corners=False``) to the target's original size, each pixel
  L2-normalised, and the argmax is taken over every pixel, so predictions are whole pixels.
  ``upsample_from="raw"`` (default; the authors' script and the paper) upsamples the
  *unnormalised* modulated map, ``"unit"`` its L2-normalised cells (ditf-track before 0.x; a
  cell of large norm then weighs no more than a small one). The official script materialises
  that map (a 3072-channel map at 500×375 is ~1.1 GB in fp16, per image). Here the same
  cosines come from the grid: the numerator is the upsampled similarity map and the pixel's
  norm a quadratic form in its four cells' dot products (see ``_nearest_pixel``; the
  unnormalised cells are the unit ones times the norms the extractor returns), so memory is
  ``N × H × W`` floats (chunked over queries to ``chunk_bytes``) and the cost does not grow
  with C per pixel.
* ``upsample=False``: the argmax is over the target's grid cells (16 model-input pixels), the
  prediction is the cell centre, or a sub-cell position with ``refine=SoftArgmax()``. Much
  cheaper; quantised to cells unless refined.

Source descriptors are always sampled bilinearly from the source grid (the unnormalised map
with ``upsample_from="raw"``) at the query point (pixel centres aligned,
:func:`ditf_track.nn.sample_descriptors`) and L2-normalised, which for whole-pixel points is
exactly the official "upsample, then index" descriptor.

**DINOv2 fusion**: a PCA fitted jointly on the pair's raw maps (where the preset's
``dinov2_pca_dim`` asks for one), then ``concat(normalise(DiT), normalise(DINOv2)) / √2``:
unit cells, so both upsampling modes coincide on fused maps.

**Soft-argmax refinement** (:class:`~ditf_track.nn.SoftArgmax`, grid search only) and
**mutual nearest neighbours** (``match_dense``, ``match_keypoints``) are the shared ones of
:mod:`ditf_track.nn` (GeoAware-SC's 15×15 window at temperature 0.02; chunked so that
all-cells matching of large grids stays within memory).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import TOKEN_STRIDE
from .coords import grid_to_frame, read_points_text
from .dinov2 import DINOv2Extractor, fuse_features, pca_dim_for, reduce_jointly
from .errors import ConfigError, InputError
from .extractor import DiTFExtractor, build_extractor
from .features import FeatureExtractor, FeatureMaps
from .images import Interpolation, model_input_size, resize_image
from .nn import (
    SoftArgmax,
    mutual_nearest_neighbours,
    sample_descriptors,
    soft_argmax_window,
)
from .noise import image_noise_id
from .presets import RESIZE_METHODS, UPSAMPLE_FROM
from .viz.matches import MAX_DRAWN_LINES as MAX_DRAWN_LINES
from .viz.matches import draw_matches as draw_matches

DEFAULT_PAIR_LONG_SIDE = 960  # the default pair_long_side of the presets (match's input)
UPSAMPLE_CHUNK_BYTES = 256 * 2**20


@dataclass
class ImageFeatures:
    """Unit descriptors of one image on its feature grid.

    ``features`` is ``(C, h, w)`` float32, L2-normalised over C; the grid covers the model input
    ``input_hw`` (the whole original image of ``image_hw`` resized) in cells of ``stride``
    model-input pixels. ``norms`` ``(h, w)`` are the cells' norms before the normalisation
    (None: unit cells, e.g. the lab baseline or fused maps). ``discarded_channels`` are the DiT
    channels zeroed (held for the pair), ``found_channels`` the massive channels found on this
    image (or the held ones).
    """

    features: torch.Tensor
    image_hw: tuple[int, int]
    input_hw: tuple[int, int]
    stride: int
    discarded_channels: tuple[int, ...] = ()
    found_channels: tuple[int, ...] = ()
    norms: torch.Tensor | None = None

    @property
    def grid_hw(self) -> tuple[int, int]:
        return int(self.features.shape[-2]), int(self.features.shape[-1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[0])

    def flat(self) -> torch.Tensor:
        """``(h·w, C)`` descriptors in row-major cell order."""
        return self.features.flatten(1).T

    def cell_centres(self) -> np.ndarray:
        """Cell centres as ``(h·w, 2)`` (y, x) original-image pixels, row-major."""
        h, w = self.grid_hw
        ys, xs = np.meshgrid(
            np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
        )
        cells = np.stack([ys.reshape(-1), xs.reshape(-1)], axis=1)
        return grid_to_frame(cells, self.image_hw, self.input_hw, self.stride)

    def grid_to_image(self, grid_yx: np.ndarray) -> np.ndarray:
        """Continuous grid ``(N, 2)`` (y, x) (integers = cell centres) → original pixels."""
        return grid_to_frame(
            np.asarray(grid_yx, dtype=np.float64), self.image_hw, self.input_hw, self.stride
        )

    def raw(self) -> torch.Tensor:
        """The unnormalised map ``(C, h, w)`` float32: unit cells times their norms."""
        f = self.features.float()
        return f if self.norms is None else f * self.norms.to(f.device, torch.float32)[None]

    def descriptors_at(self, points_yx: np.ndarray, *, raw: bool = False) -> torch.Tensor:
        """Bilinear descriptors at ``(N, 2)`` (y, x) original pixels: ``(N, C)`` unit vectors,
        sampled from the unit cells or (``raw``) the unnormalised map, then normalised."""
        grid = self.raw() if raw else self.features
        desc = sample_descriptors(grid, np.asarray(points_yx), self.image_hw)
        return F.normalize(desc.float(), dim=1, eps=1e-12)


@dataclass
class PairFeatures:
    """Descriptors of image A (source) and image B (target) with what produced them."""

    a: ImageFeatures
    b: ImageFeatures
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def discarded_channels(self) -> tuple[int, ...]:
        return self.a.discarded_channels


# ----------------------------------------------------------------------------------------------
# Matching on features


def nearest_in_target(
    queries: torch.Tensor,
    target: ImageFeatures,
    *,
    upsample: bool = True,
    refine: SoftArgmax | None = None,
    chunk_bytes: int = UPSAMPLE_CHUNK_BYTES,
    raw: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Best target location for each query descriptor ``(N, C)`` (unit vectors).

    Returns ``points (N, 2) float64`` as (y, x) original target pixels and ``scores (N,)
    float32`` (the cosine at the best location). See the module docstring for ``upsample``;
    ``raw`` upsamples the unnormalised target map (``upsample_from="raw"``).
    """
    if refine is not None and upsample:
        raise ConfigError(
            "soft-argmax refinement works on grid matches; pass upsample=False "
            "(--no-upsample) with refine"
        )
    q = queries.float().to(target.features.device)
    if len(q) == 0:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.float32)
    if upsample:
        return _nearest_pixel(q, target, chunk_bytes, raw=raw)
    sims = q @ target.flat().T  # (N, h·w)
    scores, idx = sims.max(dim=1)
    h, w = target.grid_hw
    if refine is None:
        cells = torch.stack([idx // w, idx % w], dim=1).double().cpu().numpy()
    else:
        cells = soft_argmax_window(sims, (h, w), refine).cpu().numpy()
    return target.grid_to_image(cells), scores.cpu().numpy().astype(np.float32)


def _nearest_pixel(
    q: torch.Tensor, target: ImageFeatures, chunk_bytes: int, *, raw: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Argmax of the cosine over every pixel of the target map upsampled to its image size.

    Bilinear upsampling is linear, so the cosine of a query with the upsampled, re-normalised
    vector ``v = Σ w_k F_k`` (the 4 corner cells, border-clamped as ``F.interpolate`` does) is
    ``Σ w_k (q·F_k) / ‖Σ w_k F_k‖``: the numerator is the bilinear upsampling of the grid's
    similarity map, and ``‖v‖² = Σ_kl w_k w_l (F_k·F_l)`` needs only the dot products of each
    cell with its right, lower and two diagonal neighbours. Same numbers as materialising the
    ``(C, H, W)`` map, without its ``C × H × W`` memory and time. Nothing here assumes unit
    cells: with ``raw`` the ``F_k`` are the unnormalised cells (unit cells times their norms).
    """
    height, width = target.image_hw
    h, w = target.grid_hw
    f = target.raw() if raw else target.features.float()
    # Dot products of each cell with its neighbours, the grid padded by replicating its last
    # row and column (the border clamp of the upsampling).
    pad = F.pad(f[None], (0, 1, 0, 1), mode="replicate")[0]  # (C, h + 1, w + 1)
    c00, c01 = pad[:, :h, :w], pad[:, :h, 1:]
    c10, c11 = pad[:, 1:, :w], pad[:, 1:, 1:]
    self_dot = (c00 * c00).sum(0)
    right = (c00 * c01).sum(0)
    down = (c00 * c10).sum(0)
    diag = (c00 * c11).sum(0)
    anti = (c01 * c10).sum(0)
    y0, y1, wy = _source_index(height, h, f.device)
    x0, x1, wx = _source_index(width, w, f.device)
    a, b = (1 - wy)[:, None], wy[:, None]
    cw, dw = (1 - wx)[None, :], wx[None, :]
    w00, w01, w10, w11 = a * cw, a * dw, b * cw, b * dw  # (H, W) bilinear weights

    def at(grid: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        return grid[ys[:, None], xs[None, :]]

    norm2 = (
        w00**2 * at(self_dot, y0, x0)
        + w01**2 * at(self_dot, y0, x1)
        + w10**2 * at(self_dot, y1, x0)
        + w11**2 * at(self_dot, y1, x1)
        + 2 * w00 * w01 * at(right, y0, x0)
        + 2 * w10 * w11 * at(right, y1, x0)
        + 2 * w00 * w10 * at(down, y0, x0)
        + 2 * w01 * w11 * at(down, y0, x1)
        + 2 * w00 * w11 * at(diag, y0, x0)
        + 2 * w01 * w10 * at(anti, y0, x0)
    )
    inv_norm = 1.0 / norm2.clamp_min(0).sqrt().clamp_min(1e-12)
    sims = (q @ f.flatten(1)).reshape(len(q), h, w)
    step = max(1, int(chunk_bytes // max(1, height * width * 4)))
    best, best_idx = [], []
    for i in range(0, len(q), step):
        up = F.interpolate(
            sims[i : i + step, None], size=(height, width), mode="bilinear", align_corners=False
        )
        value, index = (up[:, 0] * inv_norm).flatten(1).max(dim=1)
        best.append(value)
        best_idx.append(index)
    idx = torch.cat(best_idx).cpu().numpy()
    points = np.stack([idx // width, idx % width], axis=1).astype(np.float64)
    return points, torch.cat(best).cpu().numpy().astype(np.float32)


def _source_index(
    out_size: int, in_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear source cells and weight of ``F.interpolate(align_corners=False)`` per output."""
    src = (
        (torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * in_size / out_size
        - 0.5
    ).clamp_min(0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    return i0, i1, (src - i0).float()


def grid_points(image_hw: tuple[int, int], n: int) -> np.ndarray:
    """About ``n`` points on a regular grid over an image: ``(rows·cols, 2)`` (y, x) pixels.

    Rows and columns follow the aspect ratio; points sit at the centres of equal tiles.
    """
    if n < 1:
        raise ConfigError(f"--dense {n} must be at least 1 point")
    height, width = image_hw
    rows = max(1, min(height, round(math.sqrt(n * height / width))))
    cols = max(1, min(width, round(n / rows)))
    ys = (np.arange(rows) + 0.5) * height / rows - 0.5
    xs = (np.arange(cols) + 0.5) * width / cols - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.reshape(-1), xx.reshape(-1)], axis=1)


def check_points(
    points_yx: np.ndarray, image_hw: tuple[int, int], what: str = "image A"
) -> np.ndarray:
    """Validate ``(N, 2)`` (y, x) points inside an image of ``image_hw``; returns float64."""
    pts = np.asarray(points_yx, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"points must be (N, 2) (y, x), got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InputError(f"points on {what} must be finite numbers")
    height, width = image_hw
    outside = (
        (pts[:, 0] < -0.5)
        | (pts[:, 0] > height - 0.5)
        | (pts[:, 1] < -0.5)
        | (pts[:, 1] > width - 0.5)
    )
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        y, x = pts[i]
        raise InputError(
            f"point {i} (x={x:g}, y={y:g}) lies outside {what} ({width}x{height} pixels, x in "
            f"0..{width - 1}, y in 0..{height - 1}); give pixel coordinates of that image"
        )
    return pts


def check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """An ``(H, W, 3) uint8`` RGB array, or an InputError."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or 0 in arr.shape:
        raise InputError(
            f"{what} must be an (H, W, 3) uint8 RGB array, got shape {arr.shape} {arr.dtype}; "
            "read it with ditf_track.images.read_image"
        )
    return arr


# ----------------------------------------------------------------------------------------------
# The matcher


class Matcher:
    """Features for image pairs and point / dense / keypoint matching between them.

    ``extractor`` is any :class:`~ditf_track.features.FeatureExtractor` (DiTF or ``lab``).
    The model input is ``long_side`` (default: the preset's ``pair_long_side``, else 960),
    aspect kept, or ``square`` × ``square``, resized with ``resize`` (see the module
    docstring; the evaluators pass the profile's pair protocol). ``upsample``,
    ``upsample_from`` and ``refine`` choose the target search; ``dinov2`` adds DINOv2
    features, after a PCA of the raw DiT maps to ``pca_dim`` fitted jointly on the pair
    (``"auto"``: the preset's ``dinov2_pca_dim``, :func:`~ditf_track.dinov2.pca_dim_for`;
    None: no PCA).
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        long_side: int | None = None,
        square: int | None = None,
        resize: Interpolation = "auto",
        upsample: bool = True,
        upsample_from: str = "raw",
        refine: SoftArgmax | None = None,
        dinov2: DINOv2Extractor | None = None,
        pca_dim: int | str | None = "auto",
        chunk_bytes: int = UPSAMPLE_CHUNK_BYTES,
    ) -> None:
        if long_side is not None and square is not None:
            raise ConfigError("give one of --long-side and --square, not both")
        if square is None:
            side = long_side if long_side is not None else _preset_pair_long_side(extractor)
        else:
            side = square
        if side < 16:
            raise ConfigError(f"input side {side} is too small; use at least 16 pixels")
        if upsample_from not in UPSAMPLE_FROM:
            raise ConfigError(f"unknown upsample_from {upsample_from!r}; use raw or unit")
        if resize not in RESIZE_METHODS:
            raise ConfigError(f"unknown resize {resize!r}; use one of {', '.join(RESIZE_METHODS)}")
        preset = extractor.identity().get("preset")
        if pca_dim == "auto":
            pca_dim, self.pca_rule = pca_dim_for(str(preset) if preset else None)
        elif pca_dim is None:
            self.pca_rule = "none (given)"
        elif isinstance(pca_dim, str) or pca_dim < 1:
            raise ConfigError(f"PCA dimension {pca_dim} must be at least 1 (or None for none)")
        else:
            self.pca_rule = f"PCA to {pca_dim} (given)"
        self.extractor = extractor
        self.long_side = int(side) if square is None else None
        self.square = int(square) if square is not None else None
        self.resize: Interpolation = resize
        self.upsample = upsample
        self.upsample_from = upsample_from
        self.refine = refine
        self.dinov2 = dinov2
        self.pca_dim: int | None = pca_dim
        self.chunk_bytes = chunk_bytes

    @classmethod
    def from_preset(
        cls,
        preset: str | None = None,
        *,
        model: str | os.PathLike[str] | None = None,
        family: str | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        long_side: int | None = None,
        square: int | None = None,
        resize: Interpolation = "auto",
        upsample: bool = True,
        upsample_from: str = "raw",
        refine: SoftArgmax | None = None,
        dinov2: bool | str | os.PathLike[str] | DINOv2Extractor = False,
        pca_dim: int | str | None = "auto",
        **extractor_kwargs: Any,
    ) -> Matcher:
        """A matcher on a preset's correspondence settings (``"lab"`` = the colour baseline).

        ``dinov2`` is False, True (``facebook/dinov2-base``), a hub id / folder, or a loaded
        :class:`~ditf_track.dinov2.DINOv2Extractor`. ``extractor_kwargs`` go to
        :func:`~ditf_track.extractor.build_extractor` (``t``, ``k``, ``feature_mode``, ...).
        """
        extractor = build_extractor(
            preset,
            "correspondence",
            model=model,
            family=family,
            device=device,
            dtype=dtype,
            **extractor_kwargs,
        )
        fusion: DINOv2Extractor | None = None
        if isinstance(dinov2, DINOv2Extractor):
            fusion = dinov2
        elif dinov2 is not False:
            from .dinov2 import DINOV2_MODEL

            fusion = DINOv2Extractor.from_pretrained(
                DINOV2_MODEL if dinov2 is True else dinov2,
                device=device,
                dtype=dtype,
                local_files_only=extractor_kwargs.get("local_files_only"),
                cache_dir=None,
            )
        return cls(
            extractor,
            long_side=long_side,
            square=square,
            resize=resize,
            upsample=upsample,
            upsample_from=upsample_from,
            refine=refine,
            dinov2=fusion,
            pca_dim=pca_dim,
        )

    # -- description ---------------------------------------------------------------------------
    @property
    def input_multiple(self) -> int:
        """Both model-input sides are multiples of this (the DiT token stride)."""
        if isinstance(self.extractor, DiTFExtractor):
            return TOKEN_STRIDE
        return int(self.extractor.stride)

    def identity(self) -> dict[str, Any]:
        """Everything that changes the matches (config.json, resume checks)."""
        return {
            "extractor": self.extractor.identity(),
            "long_side": self.long_side,
            "square": self.square,
            "resize": self.resize,
            "upsample": self.upsample,
            "upsample_from": self.upsample_from,
            "refine": dataclasses.asdict(self.refine) if self.refine is not None else None,
            "dinov2": self.dinov2.identity() if self.dinov2 is not None else None,
            "pca_dim": self.pca_dim if self.dinov2 is not None else None,
            "pca_rule": self.pca_rule if self.dinov2 is not None else None,
            "massive_channels": "found on image A (the source), held for image B",
        }

    def input_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Model input (H', W') of an image: long side ``long_side``, aspect kept, or
        ``square`` × ``square``."""
        return model_input_size(
            int(image_hw[0]),
            int(image_hw[1]),
            long_side=self.long_side,
            square=self.square,
            multiple=self.input_multiple,
        )

    @property
    def raw_upsampling(self) -> bool:
        """Whether descriptors and the upsampled target come from the unnormalised map."""
        return self.upsample_from == "raw"

    def descriptors_at(self, features: ImageFeatures, points_yx: np.ndarray) -> torch.Tensor:
        """``features``' unit descriptors at ``(N, 2)`` (y, x) original pixels, sampled from
        the map this matcher upsamples (``upsample_from``)."""
        return features.descriptors_at(points_yx, raw=self.raw_upsampling)

    # -- features ------------------------------------------------------------------------------
    @torch.inference_mode()
    def image_features(
        self,
        image: np.ndarray,
        *,
        massive_channels: Sequence[int] | None = None,
        prompt: str | None = None,
    ) -> ImageFeatures:
        """Extractor features of one image (no DINOv2) on its grid; channels found or held.

        The image's noise is seeded by its content (:func:`~ditf_track.noise.image_noise_id`):
        a pair's source and target draw different noise, the same image twice the same.
        ``prompt`` is this image's own text condition (a caption); None: the extractor's.
        """
        arr = check_image(image)
        hw = (int(arr.shape[0]), int(arr.shape[1]))
        size = self.input_size(hw)
        model_input = resize_image(arr, size, self.resize)
        ids = [image_noise_id(model_input)]
        maps: FeatureMaps
        if prompt is not None and isinstance(self.extractor, DiTFExtractor):
            maps = self.extractor.extract(
                model_input[None],
                massive_channels=massive_channels,
                noise_ids=ids,
                prompts=[prompt],
            )
        else:  # the lab baseline takes no text
            maps = self.extractor.extract(
                model_input[None], massive_channels=massive_channels, noise_ids=ids
            )
        found = maps.meta.get("massive_channels", maps.discarded_channels)
        return ImageFeatures(
            features=F.normalize(maps.features[0].float(), dim=0, eps=1e-12),
            norms=maps.norms[0].float() if maps.norms is not None else None,
            image_hw=hw,
            input_hw=size,
            stride=int(maps.stride),
            discarded_channels=tuple(int(c) for c in maps.discarded_channels),
            found_channels=tuple(int(c) for c in found),
        )

    @torch.inference_mode()
    def features_for_pair(
        self,
        image_a: np.ndarray,
        image_b: np.ndarray,
        *,
        features_a: ImageFeatures | None = None,
        prompt_a: str | None = None,
        prompt_b: str | None = None,
    ) -> PairFeatures:
        """Descriptors of both images; massive channels found on A and held for B.

        ``features_a`` reuses image A's :meth:`image_features` (e.g. HPatches image 1 against
        images 2–6). With DINOv2, the raw DiT maps are PCA-reduced jointly on the pair first
        (where :attr:`pca_dim` asks for it), then fused into unit cells.
        ``prompt_a``/``prompt_b``: each image's own text condition (None: the extractor's).
        """
        fa = features_a if features_a is not None else self.image_features(image_a, prompt=prompt_a)
        fb = self.image_features(image_b, massive_channels=fa.discarded_channels, prompt=prompt_b)
        meta: dict[str, Any] = {
            "discarded_channels": list(fa.discarded_channels),
            "massive_channels_found": list(fa.found_channels),
            "input_hw": [list(fa.input_hw), list(fb.input_hw)],
            "grid_hw": [list(fa.grid_hw), list(fb.grid_hw)],
        }
        if self.dinov2 is None:
            return PairFeatures(fa, fb, meta)
        (ra, rb), pca = reduce_jointly([fa.raw(), fb.raw()], self.pca_dim)
        fused = []
        for image, f, reduced in ((image_a, fa, ra), (image_b, fb, rb)):
            dino = self.dinov2.extract(check_image(image)).on_grid(f.grid_hw, f.input_hw, f.stride)
            fused.append(dataclasses.replace(f, features=fuse_features(reduced, dino), norms=None))
        meta["pca_dim"] = pca.dim if pca is not None else None
        meta["pca_rule"] = self.pca_rule
        meta["descriptor_dim"] = fused[0].dim
        return PairFeatures(fused[0], fused[1], meta)

    # -- matching ------------------------------------------------------------------------------
    @torch.inference_mode()
    def match_points(
        self, image_a: np.ndarray, image_b: np.ndarray, points_a_yx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Match points of A into B: ``points_b (N, 2)`` (y, x) and ``scores (N,)`` cosines."""
        pts = check_points(points_a_yx, check_image(image_a, "image A").shape[:2])
        return self.match_points_in(self.features_for_pair(image_a, image_b), pts)

    @torch.inference_mode()
    def match_points_in(
        self, pair: PairFeatures, points_a_yx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`match_points` on precomputed :class:`PairFeatures`."""
        pts = check_points(points_a_yx, pair.a.image_hw)
        return nearest_in_target(
            self.descriptors_at(pair.a, pts),
            pair.b,
            upsample=self.upsample,
            refine=self.refine,
            chunk_bytes=self.chunk_bytes,
            raw=self.raw_upsampling,
        )

    @torch.inference_mode()
    def match_dense(
        self, image_a: np.ndarray, image_b: np.ndarray, n: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mutual nearest neighbours from A to B: ``matches (K, 4)`` and ``scores (K,)``.

        Rows are ``(ya, xa, yb, xb)`` original pixels. ``n`` points on a regular grid over A
        (bilinear descriptors), or every cell of A's grid when ``n`` is None, are matched
        against every cell of B; B positions are cell centres (refined with ``refine``).
        """
        return self.match_dense_in(self.features_for_pair(image_a, image_b), n)

    @torch.inference_mode()
    def match_dense_in(
        self, pair: PairFeatures, n: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`match_dense` on precomputed :class:`PairFeatures`."""
        if n is None:
            pts_a = pair.a.cell_centres()
            desc_a = pair.a.flat()
        else:
            pts_a = grid_points(pair.a.image_hw, n)
            desc_a = self.descriptors_at(pair.a, pts_a)
        desc_b = pair.b.flat()
        idx, scores = mutual_nearest_neighbours(desc_a, desc_b)
        if self.refine is not None and len(idx):
            sims = desc_a[torch.as_tensor(idx[:, 0], device=desc_a.device)] @ desc_b.T
            pts_b = pair.b.grid_to_image(
                soft_argmax_window(sims, pair.b.grid_hw, self.refine).cpu().numpy()
            )
        else:
            pts_b = pair.b.cell_centres()[idx[:, 1]]
        matches = np.concatenate([pts_a[idx[:, 0]], pts_b], axis=1).reshape(-1, 4)
        return matches, scores

    @torch.inference_mode()
    def match_keypoints(
        self,
        image_a: np.ndarray,
        image_b: np.ndarray,
        keypoints_a_yx: np.ndarray,
        keypoints_b_yx: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mutual nearest neighbours between detected keypoints: ``(K, 2)`` indices, scores."""
        pair = self.features_for_pair(image_a, image_b)
        kp_a = check_points(keypoints_a_yx, pair.a.image_hw, "image A")
        kp_b = check_points(keypoints_b_yx, pair.b.image_hw, "image B")
        return mutual_nearest_neighbours(
            self.descriptors_at(pair.a, kp_a), self.descriptors_at(pair.b, kp_b)
        )


def _preset_pair_long_side(extractor: FeatureExtractor) -> int:
    from .presets import load_preset

    name = extractor.identity().get("preset")
    if name:
        side = load_preset(str(name)).correspondence.pair_long_side
        if side:
            return int(side)
    return DEFAULT_PAIR_LONG_SIDE


# ----------------------------------------------------------------------------------------------
# Files of the ``match`` command


def read_match_points(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """A ``match`` points file, header ``x,y[,id]`` (pixels of image A) → ``(N, 2)`` (y, x), ids.

    No frame column and free-text ids (``nose``), unlike a video's
    :func:`~ditf_track.coords.read_points_csv`. Column order is free; other columns are
    ignored. ``ids`` is None without an ``id`` column.
    """
    import csv

    p = Path(path)
    text = read_points_text(p, "check --points")
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"points file {p} is empty; write a header x,y and one row per point")
    header = [c.strip().lower() for c in rows[0]]
    missing = [c for c in ("x", "y") if c not in header]
    if missing:
        raise InputError(
            f"points file {p} lacks column(s) {', '.join(missing)} in its header {rows[0]}; "
            "use the header x,y (and optionally id)"
        )
    ix, iy = header.index("x"), header.index("y")
    iid = header.index("id") if "id" in header else None
    yx, ids = [], []
    for n, row in enumerate(rows[1:], start=2):
        try:
            yx.append((float(row[iy]), float(row[ix])))
            if iid is not None:
                ids.append(row[iid].strip())
        except (ValueError, IndexError) as exc:
            raise InputError(
                f"points file {p} line {n} {row} is not x,y numbers ({exc}); fix or remove it"
            ) from exc
    if not yx:
        raise InputError(f"points file {p} has a header but no points; add rows x,y")
    return np.asarray(yx, dtype=np.float64), (np.asarray(ids) if iid is not None else None)


def write_matches_csv(
    path: str | os.PathLike[str],
    matches_yx: np.ndarray,
    scores: np.ndarray,
    ids: np.ndarray | None = None,
) -> Path:
    """``matches (K, 4)`` as (ya, xa, yb, xb) → CSV ``[id,]xa,ya,xb,yb,score``, atomically."""
    from .outputs import write_csv

    m = np.asarray(matches_yx, dtype=np.float64).reshape(-1, 4)
    rows = []
    for k, (ya, xa, yb, xb) in enumerate(m):
        row: dict[str, Any] = {
            "xa": _num(xa),
            "ya": _num(ya),
            "xb": _num(xb),
            "yb": _num(yb),
            "score": f"{float(scores[k]):.6f}",
        }
        if ids is not None:
            row["id"] = ids[k]
        rows.append(row)
    columns = (["id"] if ids is not None else []) + ["xa", "ya", "xb", "yb", "score"]
    return write_csv(path, rows, columns, "matches file")


def _num(v: float) -> str:
    return f"{float(v):.3f}".rstrip("0").rstrip(".") if math.isfinite(v) else ""
