"""Nearest neighbours on dense descriptors: bilinear sampling, soft-argmax, mutual matches.

The few operations that the video core (:mod:`ditf_track.propagate`), the pair matcher
(:mod:`ditf_track.match`) and the evaluators (:mod:`ditf_track.eval`) share, kept below all of
them so that no layer imports one above it.

**Sampling.** Two coordinate frames, two samplers, both ``F.grid_sample(align_corners=False)``:

* :func:`sample_descriptors`: ``(y, x)`` pixels of the *original* image, the feature map
  possibly computed on a resized copy (the pair tasks; DIFT's HPatches alignment on request);
  zeros outside, not normalised.
* :func:`sample_grid_descriptors`: continuous token-grid ``(y, x)`` (integers are cell centres,
  :func:`ditf_track.coords.pixel_to_grid`); border cells outside; unit vectors (the trackers).

**Soft-argmax refinement** (:class:`SoftArgmax`): a window of ``(2·radius + 1)²`` cells around
the argmax cell (cells outside the grid excluded), weights ``softmax(cosine / temperature)``
over the window, and the weighted mean cell position. The defaults, radius 7 (a 15×15 window)
and temperature 0.02, are GeoAware-SC's window soft-argmax (github Junyi42/GeoAware-SC
99fd6b6, ``pck_train.py --SOFT_EVAL_WINDOW 7``; ``soft_argmax`` ``beta=0.02`` after SFNet).

**Mutual nearest neighbours**: a pair (i, j) is kept when j is i's most similar descriptor in B
and i is j's most similar in A (cosine). :func:`mutual_nearest_neighbours` works on torch unit
descriptors in chunks (all-cells matching of large grids stays within memory);
:func:`mutual_nearest_neighbours_np` is the HPatches protocol's NumPy form, which normalises
its inputs itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .coords import grid_sample_coords
from .errors import ConfigError, InputError

MNN_CHUNK = 2048


# ----------------------------------------------------------------------------------------------
# Sampling


def check_feature_map(features: torch.Tensor, name: str) -> tuple[int, int, int]:
    """``(C, h, w)`` of a float feature map; an :class:`InputError` naming ``name`` otherwise."""
    if features.ndim != 3 or not features.is_floating_point():
        raise InputError(
            f"{name} must be a float (C, h, w) feature map, got {tuple(features.shape)}"
        )
    c, h, w = (int(s) for s in features.shape)
    return c, h, w


def as_grid_points(grid_yx: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Points as an ``(N, 2)`` float64 tensor on ``device``."""
    pts = torch.as_tensor(
        np.asarray(grid_yx, dtype=np.float64) if not torch.is_tensor(grid_yx) else grid_yx
    )
    return pts.reshape(-1, 2).to(device=device, dtype=torch.float64)


def sample_grid_descriptors(
    features: torch.Tensor, grid_yx: np.ndarray | torch.Tensor
) -> torch.Tensor:
    """Unit bilinear descriptors ``(N, C)`` float32 at continuous grid ``(N, 2)`` ``(y, x)``.

    ``F.grid_sample(align_corners=False)`` at :func:`~ditf_track.coords.grid_sample_coords`: an
    integer position returns that cell's vector; points beyond the outer cell centres take the
    border cells (``padding_mode="border"``).
    """
    c, h, w = check_feature_map(features, "features")
    pts = as_grid_points(grid_yx, features.device)
    if len(pts) == 0:
        return torch.zeros((0, c), device=features.device)
    uv = grid_sample_coords(pts, (h, w)).to(torch.float32).view(1, -1, 1, 2)
    out = F.grid_sample(
        features[None].float(), uv, mode="bilinear", padding_mode="border", align_corners=False
    )
    return F.normalize(out[0, :, :, 0].T, dim=1, eps=1e-12)


@torch.inference_mode()
def sample_descriptors(
    features: torch.Tensor,
    points_yx: np.ndarray | torch.Tensor,
    image_hw: tuple[int, int],
    align: Literal["pixel_centers", "dift"] = "pixel_centers",
) -> torch.Tensor:
    """Bilinearly sample a ``(C, h, w)`` feature map at keypoints of the original image: ``(N, C)``.

    ``points_yx`` are ``(N, 2)`` (y, x) pixels of the original ``image_hw`` = (H, W) image; the
    feature map may come from a resized copy of it (DIFT resizes HPatches to 768×768).
    ``"pixel_centers"`` maps pixel centres consistently (``align_corners=False``);
    ``"dift"`` reproduces DIFT ``eval_hpatches.py``: normalise by ((W−1)/2, (H−1)/2) and sample
    with grid_sample's default ``align_corners=False``.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be (C, h, w), got {tuple(features.shape)}")
    pts = torch.as_tensor(np.asarray(points_yx, dtype=np.float32)).to(features.device)
    pts = pts.reshape(-1, 2)
    height, width = image_hw
    x, y = pts[:, 1], pts[:, 0]
    if align == "dift":
        gx = (x - (width - 1) / 2) / ((width - 1) / 2)
        gy = (y - (height - 1) / 2) / ((height - 1) / 2)
    elif align == "pixel_centers":
        gx = (x + 0.5) / width * 2 - 1
        gy = (y + 0.5) / height * 2 - 1
    else:
        raise ValueError(f"unknown align {align!r}; use 'pixel_centers' or 'dift'")
    grid = torch.stack([gx, gy], dim=-1).to(features.dtype).view(1, -1, 1, 2)
    out = F.grid_sample(features[None], grid, mode="bilinear", align_corners=False)
    return out[0, :, :, 0].T.contiguous()


# ----------------------------------------------------------------------------------------------
# Soft-argmax


@dataclass(frozen=True)
class SoftArgmax:
    """Window soft-argmax on the similarity grid (see the module docstring).

    ``radius`` in cells (window ``2·radius + 1`` wide), ``temperature`` divides the cosine.
    """

    radius: int = 7
    temperature: float = 0.02

    def __post_init__(self) -> None:
        if self.radius < 0:
            raise ConfigError(f"soft-argmax radius {self.radius} must be >= 0 cells")
        if not self.temperature > 0:
            raise ConfigError(f"soft-argmax temperature {self.temperature} must be > 0")


def soft_argmax_window(
    sims: torch.Tensor, grid_hw: tuple[int, int], refine: SoftArgmax
) -> torch.Tensor:
    """Sub-cell positions from similarities ``(N, h·w)``: ``(N, 2)`` continuous grid (y, x)."""
    h, w = grid_hw
    idx = sims.argmax(dim=1)
    iy, ix = idx // w, idx % w
    offsets = torch.arange(-refine.radius, refine.radius + 1, device=sims.device)
    wy = iy[:, None] + offsets  # (N, K)
    wx = ix[:, None] + offsets
    valid = ((wy >= 0) & (wy < h))[:, :, None] & ((wx >= 0) & (wx < w))[:, None, :]
    flat = wy.clamp(0, h - 1)[:, :, None] * w + wx.clamp(0, w - 1)[:, None, :]
    logits = sims.float().gather(1, flat.reshape(len(sims), -1)) / refine.temperature
    logits = logits.masked_fill(~valid.reshape(len(sims), -1), -math.inf)
    weights = torch.softmax(logits, dim=1).reshape(valid.shape)
    y = (weights.sum(dim=2) * wy).sum(dim=1)
    x = (weights.sum(dim=1) * wx).sum(dim=1)
    return torch.stack([y, x], dim=1).double()


# ----------------------------------------------------------------------------------------------
# Mutual nearest neighbours


def mutual_nearest_neighbours(
    desc_a: torch.Tensor, desc_b: torch.Tensor, chunk: int = MNN_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours by cosine of unit descriptors ``(N, C)`` and ``(M, C)``.

    Returns ``(K, 2) int64`` rows (index in a, index in b) in increasing a order and their
    cosines ``(K,) float32``. The similarity matrix is built ``chunk`` rows at a time.
    """
    a = desc_a.float()
    b = desc_b.float().to(a.device)
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    nn_ab = torch.empty(n, dtype=torch.long, device=a.device)
    score_ab = torch.empty(n, device=a.device)
    best_ba = torch.full((m,), -math.inf, device=a.device)
    nn_ba = torch.zeros(m, dtype=torch.long, device=a.device)
    for i0 in range(0, n, chunk):
        s = a[i0 : i0 + chunk] @ b.T
        score_ab[i0 : i0 + chunk], nn_ab[i0 : i0 + chunk] = s.max(dim=1)
        col_best, col_arg = s.max(dim=0)
        better = col_best > best_ba  # strict: the first maximum in a's order wins, as argmax
        best_ba = torch.where(better, col_best, best_ba)
        nn_ba = torch.where(better, col_arg + i0, nn_ba)
    ids = torch.arange(n, device=a.device)
    mutual = nn_ba[nn_ab] == ids
    pairs = torch.stack([ids[mutual], nn_ab[mutual]], dim=1)
    return pairs.cpu().numpy().astype(np.int64), score_ab[mutual].cpu().numpy().astype(np.float32)


def mutual_nearest_neighbours_np(desc_a: np.ndarray, desc_b: np.ndarray) -> np.ndarray:
    """Mutual nearest neighbours by cosine similarity: ``(K, 2) int64`` rows (index in a, in b).

    ``desc_a`` is ``(N, C)``, ``desc_b`` ``(M, C)``; both are L2-normalised here (the HPatches
    protocol's matcher, whole similarity matrix in NumPy float32).
    """
    a = _l2_normalise(np.asarray(desc_a, dtype=np.float32))
    b = _l2_normalise(np.asarray(desc_b, dtype=np.float32))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"descriptors must be (N, C) and (M, C), got {a.shape} and {b.shape}")
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    sim = a @ b.T
    nn_ab = sim.argmax(axis=1)
    nn_ba = sim.argmax(axis=0)
    ids = np.arange(len(a))
    mutual = nn_ba[nn_ab] == ids
    return np.stack([ids[mutual], nn_ab[mutual]], axis=1).astype(np.int64)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


__all__ = [
    "MNN_CHUNK",
    "SoftArgmax",
    "as_grid_points",
    "check_feature_map",
    "mutual_nearest_neighbours",
    "mutual_nearest_neighbours_np",
    "sample_descriptors",
    "sample_grid_descriptors",
    "soft_argmax_window",
]
