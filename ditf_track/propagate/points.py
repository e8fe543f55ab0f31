"""Point tracking on dense features: query-point matching and heat-map propagation.

Two ways to carry a point ``(y, x)`` of a query frame through the other frames of a video, both
pure functions of ``(C, h, w)`` L2-normalised feature maps (the tracker adds extraction,
caching and the frame order). Positions here are **continuous token-grid** ``(y, x)``: integers
are cell centres (:func:`ditf_track.coords.pixel_to_grid`); the tracker converts them to and
from pixels of the original frame with :mod:`ditf_track.coords`.

**Query points** (the TAP-Vid protocol for frozen features, as DIFT-style trackers do it): the
point's descriptor is the bilinear sample of the query frame's map at the point, and in every
other frame its position is the best match, :func:`locate`:

1. the argmax of the cosine between the descriptor and every cell of the frame (a matmul in
   torch, chunked over points; or, searching the whole frame, an exact FAISS inner-product
   top-1 when ``knn_backend`` resolves to faiss), optionally only within ``radius`` cells of the
   point's position in the previous frame of the sequence;
2. refined below the token stride by a window soft-argmax on the cosine map around that argmax
   (:class:`~ditf_track.nn.SoftArgmax`, the refinement the pair matcher uses, here on the
   3 × 3 cells around the argmax with temperature 0.1: on a smooth random field whose cosine
   falls off over one cell, the mean error of 20 × 30 sub-cell motions was 0.33 cells with the
   pair matcher's 0.02 and 0.13 cells with 0.1; a 5 × 5 window was no better);
3. visibility: the point is visible when its best cosine reaches ``min_similarity`` and the
   match is **cycle consistent** — the best cell's vector, matched back into the query frame
   over its whole grid (same refinement), lands within ``cycle_threshold`` cells of the query.

**Windowed search with re-detection** (``radius`` and ``redetect``; :meth:`PointParams.motion`,
the default of ``ditf-track track`` and of the napari widget): the search stays within
``radius`` cells of the previous position, so a point cannot hop to a look-alike across the
frame, and falls back to the whole frame when the window has lost the point. The drop rule
compares peak heights above the frame's mean cosine ``μ`` (the level of an unrelated cell,
which differs by orders of magnitude between 3-channel colours and DiT features): the window
has lost the point when ``s_window − μ < redetect · (s_frame − μ)``, i.e. the window's best
cell stands less than ``redetect`` times as high above the background as the frame's best. The
frame's best match is taken only if it passes the visibility rule of step 3 (so a re-detection
never lands on a match that would be hidden); otherwise the point stays at the window's best.
On the BADJA dog with ``lab`` features (short side 960) the global search moves a track more
than 4 cells between consecutive frames in 792 of 884 steps, the window with re-detection in
none, and PCK@0.2 rises from 10.9 to 16.1 % (``benchmarks/keypoints_motion.py``). The
evaluation runners keep the whole-frame search of the TAP-Vid protocol (``PointParams()``).

**Heat maps** (the JHMDB pose-propagation protocol of TimeCycle/UVC/CRW): each point becomes a
Gaussian label map on the grid, peak 1 at the point, ``sigma`` cells (CRW
``code/data/jhmdb.py``: ``sigma=0.5`` on its feature grid, unnormalised, cut off beyond 3σ),
plus a background channel that is 1 where no point's map reaches (CRW: ``sum == 0``). The maps
go through :func:`~ditf_track.propagate.labels.propagate_sequence` exactly like mask labels
(reference frame + n last frames, window r, top-k, τ). A point's position in a frame is the
weighted mean of the cells of its propagated channel within ``readout_radius`` cells of the
channel's maximum (the ``readout_topk`` largest of them when set): a 5 × 5 centroid by
default, since propagation blurs the maps beyond their σ (on the shifted-frame test video the
mean error was 3.6 model pixels with a 3 × 3 centroid, 2.9 with 5 × 5, 4.4 with CRW's rule;
lab's BADJA dog PCK@0.2 rose from 11.5 % to 13.2 %). CRW (``code/utils/test_utils.py``
``process_pose``) takes the 3 largest cells of the whole map (``readout_radius=None,
readout_topk=3``) and maps cell ``c`` to pixel ``c·stride``; here cell centres map through
:mod:`~ditf_track.coords` (``(c + 0.5)·stride − 0.5``). A point is visible while its channel's
peak stays at least ``min_peak`` times its peak in the query frame.

Label aggregation is linear per channel, so a point's heat map does not depend on the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ..nn import (
    SoftArgmax,
    as_grid_points,
    check_feature_map,
    soft_argmax_window,
)
from ..nn import sample_grid_descriptors as sample_descriptors
from .knn import KNN_BACKENDS, KnnBackend, knn_search, matmul_f32, resolve_knn_backend
from .labels import propagate_sequence
from .params import PropagationParams
from .search import NeighbourSearch

# Cosine scores of one chunk of points against one frame are materialised in float32; 256 MiB
# holds 10,000 points against a 106 x 60 grid.
_SIMS_CHUNK_BYTES = 256 * 2**20

# The window of ditf-track track and the napari widget, in cells. The BADJA dog's joints move at
# most 3.1 cells per frame at the presets' short side 960 (90th percentile 2.3; 1.3 median), so
# a window of 3 holds the fastest of them, and a diagonal step (at most 3·√2 cells plus the
# sub-cell refinement) stays near the 4-cell jump of benchmarks/keypoints_motion.py. With lab
# features the dog's PCK@0.2 was 21.3 / 16.1 / 18.4 % at radius 2 / 3 / 4 (global: 10.9 %); lab's
# three colour channels are too weak to rank these radii, the motion decides.
MOTION_RADIUS = 3
# The drop rule's ratio (see the module docstring). Features descriptive enough to re-detect
# from: for points whose content jumped 20 cells (smooth 64-channel random fields), the window's
# relative peak had a median 0.24 and a 99th percentile 0.44 over 2,000 points, so 0.5 catches
# them. Weak features: on the lab dog (radius 3, short side 960) the window's peak fell below
# 0.5 of the frame's in 1 of 884 steps (0.9: 7, 0.99: 102; three colour channels always hold a
# look-alike near the point), no frame match of ratios up to 0.9 passed the visibility rule,
# and PCK stayed 16.1 %; at 0.99, 6 re-detections and 6 jumps.
REDETECT_RATIO = 0.5


@dataclass(frozen=True)
class PointParams:
    """Settings of point tracking (cells are token-grid cells, 16 model-input pixels for DiTs).

    Query mode: ``radius`` — search only within this many cells (Chebyshev) of the point's
    position in the previous frame of its sequence (``None``: the whole frame, every frame
    independent of the others); ``redetect`` — with ``radius``, search the whole frame when the
    window's peak falls below this fraction of the frame's (heights above the frame's mean
    cosine; ``None``: never; see the module docstring); ``refine_radius`` /
    ``refine_temperature`` — the soft-argmax window (cells) and temperature on the cosine;
    ``min_similarity`` — a point with a lower best cosine is not visible; ``cycle_threshold`` —
    cells the back-match may land from the query and still count as visible (``None``: no cycle
    check); ``knn_backend`` — the exact search of a whole frame (``"auto"``: torch on CPU,
    faiss-gpu on CUDA when installed).

    Heat-map mode: ``sigma`` — Gaussian width in cells; ``readout_radius`` / ``readout_topk``
    — which cells around a channel's maximum give the position (``None``: the whole map / all
    of them); ``min_peak`` — visibility threshold relative to the query frame's peak. The
    propagation itself uses the tracker's :class:`~.params.PropagationParams`.

    The defaults are the TAP-Vid protocol the evaluation runners implement (every frame
    searched whole); :meth:`motion` is the windowed search with re-detection of ``ditf-track
    track`` and the napari widget. The visibility thresholds are set by reasoning, not tuned on
    a benchmark (no TAP-Vid data was at hand); tune them on the target data with
    ``ditf-track eval tapvid``.
    """

    radius: int | None = None
    redetect: float | None = None
    refine_radius: int = 1
    refine_temperature: float = 0.1
    min_similarity: float = 0.5
    cycle_threshold: float | None = 1.5
    knn_backend: KnnBackend = "auto"
    sigma: float = 0.5
    readout_radius: int | None = 2
    readout_topk: int | None = None
    min_peak: float = 0.1

    def __post_init__(self) -> None:
        def positive_int(name: str, value: object, minimum: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")

        if self.radius is not None:
            positive_int("radius", self.radius, 1)
        positive_int("refine_radius", self.refine_radius, 0)
        if self.readout_radius is not None:
            positive_int("readout_radius", self.readout_radius, 0)
        if self.readout_topk is not None:
            positive_int("readout_topk", self.readout_topk, 1)
        for name, value in (
            ("refine_temperature", self.refine_temperature),
            ("sigma", self.sigma),
        ):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={value!r} must be a finite number > 0")
        if not (isinstance(self.min_similarity, (int, float)) and -1 <= self.min_similarity <= 1):
            raise ConfigError(
                f"min_similarity={self.min_similarity!r} must be a cosine in [-1, 1] (-1: never "
                "hide a point for its similarity)"
            )
        if self.cycle_threshold is not None and not (
            isinstance(self.cycle_threshold, (int, float)) and self.cycle_threshold >= 0
        ):
            raise ConfigError(
                f"cycle_threshold={self.cycle_threshold!r} must be >= 0 cells, or None for no "
                "cycle check"
            )
        if self.redetect is not None:
            if not (isinstance(self.redetect, (int, float)) and 0 < self.redetect <= 1):
                raise ConfigError(
                    f"redetect={self.redetect!r} must be a fraction in (0, 1] of the frame's "
                    f"peak (default {REDETECT_RATIO}), or None for no re-detection"
                )
            if self.radius is None:
                raise ConfigError(
                    f"redetect={self.redetect!r} needs a search window: set radius (e.g. "
                    f"{MOTION_RADIUS}); without one every frame is searched whole"
                )
        if not (isinstance(self.min_peak, (int, float)) and 0 <= self.min_peak <= 1):
            raise ConfigError(f"min_peak={self.min_peak!r} must be in [0, 1]")
        if self.knn_backend not in KNN_BACKENDS:
            raise ConfigError(
                f"unknown k-NN backend {self.knn_backend!r}; use one of {KNN_BACKENDS}"
            )

    @classmethod
    def motion(cls) -> PointParams:
        """The windowed search with re-detection that ``ditf-track track`` and the napari
        widget use: radius :data:`MOTION_RADIUS`, ratio :data:`REDETECT_RATIO`."""
        return cls(radius=MOTION_RADIUS, redetect=REDETECT_RATIO)

    @property
    def refine(self) -> SoftArgmax:
        return SoftArgmax(self.refine_radius, self.refine_temperature)


class Match(NamedTuple):
    """Best matches: ``grid_yx (N, 2) float64`` refined continuous grid ``(y, x)``,
    ``score (N,) float32`` the cosine at the best cell, ``cell (N, 2) int64`` that cell's
    ``(row, col)``."""

    grid_yx: np.ndarray
    score: np.ndarray
    cell: np.ndarray


class PointEstimate(NamedTuple):
    """Points in one frame: ``grid_yx (N, 2) float64`` continuous grid ``(y, x)``,
    ``visible (N,) bool`` and ``score (N,) float32`` (best cosine, or heat-map peak);
    ``redetected (N,) bool``: found by the whole-frame re-detection (None: none was asked)."""

    grid_yx: np.ndarray
    visible: np.ndarray
    score: np.ndarray
    redetected: np.ndarray | None = None


def _operands(queries: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and ``(C, h·w)`` cells in one dtype: half stays half on CUDA (fp32 accumulate)."""
    c = int(features.shape[0])
    cells = features.reshape(c, -1)
    if features.device.type == "cuda" and features.dtype in (torch.bfloat16, torch.float16):
        return queries.to(device=features.device, dtype=features.dtype), cells
    return queries.to(device=features.device, dtype=torch.float32), cells.float()


def _window_mask(centre: torch.Tensor, radius: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """``(n, h·w)`` bool: cells within ``radius`` (Chebyshev) of the nearest cell to ``centre``."""
    h, w = grid_hw
    cy = torch.floor(centre[:, 0] + 0.5).clamp(0, h - 1)
    cx = torch.floor(centre[:, 1] + 0.5).clamp(0, w - 1)
    ys = torch.arange(h, device=centre.device, dtype=centre.dtype)
    xs = torch.arange(w, device=centre.device, dtype=centre.dtype)
    near_y = (ys[None, :] - cy[:, None]).abs() <= radius
    near_x = (xs[None, :] - cx[:, None]).abs() <= radius
    return (near_y[:, :, None] & near_x[:, None, :]).reshape(len(centre), h * w)


@torch.inference_mode()
def locate(
    queries: torch.Tensor,
    features: torch.Tensor,
    *,
    refine: SoftArgmax | None = None,
    centre: np.ndarray | torch.Tensor | None = None,
    radius: int | None = None,
    knn_backend: KnnBackend = "auto",
) -> Match:
    """Best match of each unit descriptor ``(N, C)`` in a ``(C, h, w)`` map.

    Returns a :class:`Match`: the refined position, the cosine at the argmax cell and that
    cell. ``refine`` (default: the argmax cell itself) is the soft-argmax window around the
    argmax; ``centre (N, 2)`` grid ``(y, x)`` with ``radius`` cells restricts the search to a
    square window around each point's centre.
    """
    c, h, w = check_feature_map(features, "features")
    if queries.ndim != 2 or int(queries.shape[1]) != c:
        raise InputError(
            f"descriptors {tuple(queries.shape)} do not match a feature map of {c} channels"
        )
    refine = refine or SoftArgmax(radius=0)
    n = int(queries.shape[0])
    if n == 0:
        return Match(np.zeros((0, 2)), np.zeros(0, np.float32), np.zeros((0, 2), np.int64))
    windowed = centre is not None and radius is not None
    if not windowed and resolve_knn_backend(knn_backend, features.device) == "faiss":
        return _locate_faiss(queries, features, refine)
    q, cells = _operands(queries, features)
    centres = as_grid_points(centre, features.device) if centre is not None and windowed else None
    step = max(1, _SIMS_CHUNK_BYTES // (4 * h * w))
    positions, scores, best = [], [], []
    for start in range(0, n, step):
        sims = matmul_f32(q[start : start + step], cells)  # (n, h·w)
        if centres is not None:
            assert radius is not None
            allowed = _window_mask(centres[start : start + step], radius, (h, w))
            sims = sims.masked_fill(~allowed, -math.inf)
        score, index = sims.max(dim=1)
        scores.append(score)
        best.append(index)
        positions.append(soft_argmax_window(sims, (h, w), refine))
    flat = torch.cat(best).cpu().numpy()
    return Match(
        torch.cat(positions).cpu().numpy().astype(np.float64),
        torch.cat(scores).float().cpu().numpy(),
        np.stack([flat // w, flat % w], axis=1).astype(np.int64),
    )


def _locate_faiss(queries: torch.Tensor, features: torch.Tensor, refine: SoftArgmax) -> Match:
    """Exact top-1 with FAISS, then the soft-argmax on the cosines of the window around it.

    The window's cosines are computed for its cells only, so no ``N × h·w`` score matrix is
    formed; the refinement is :func:`~ditf_track.nn.soft_argmax_window` on that small grid.
    """
    c, h, w = (int(s) for s in features.shape)
    cells = features.reshape(c, h * w).t()
    scores, index = knn_search(queries.float(), cells.float(), 1, backend="faiss")
    best = index[:, 0].to(features.device)
    r = refine.radius
    side = 2 * r + 1
    offsets = torch.arange(-r, r + 1, device=features.device)
    wy = (best // w)[:, None] + offsets
    wx = (best % w)[:, None] + offsets
    valid = ((wy >= 0) & (wy < h))[:, :, None] & ((wx >= 0) & (wx < w))[:, None, :]
    flat = (wy.clamp(0, h - 1)[:, :, None] * w + wx.clamp(0, w - 1)[:, None, :]).reshape(
        -1, side**2
    )
    q = queries.to(device=features.device, dtype=torch.float32)
    local = torch.empty(flat.shape, device=features.device)
    step = max(1, _SIMS_CHUNK_BYTES // (4 * c * side**2))
    for start in range(0, len(flat), step):
        window = cells[flat[start : start + step]].float()  # (n, side², C)
        local[start : start + step] = torch.einsum("nkc,nc->nk", window, q[start : start + step])
    local = local.masked_fill(~valid.reshape(-1, side**2), -math.inf)
    # The argmax of the window is its centre (the global best), so the refinement on the small
    # (side x side) grid is the one on the frame, shifted by the window's corner.
    offset = torch.stack([best // w - r, best % w - r], dim=1).double()
    positions = soft_argmax_window(local, (side, side), refine) + offset
    cell = torch.stack([best // w, best % w], dim=1)
    return Match(
        positions.cpu().numpy(),
        scores[:, 0].float().cpu().numpy(),
        cell.cpu().numpy().astype(np.int64),
    )


class Redetection(NamedTuple):
    """One frame searched both ways: ``window`` (around each point's previous position),
    ``frame`` (the whole frame) and ``dropped (N,) bool``, where the window has lost the point."""

    window: Match
    frame: Match
    dropped: np.ndarray


@torch.inference_mode()
def locate_redetect(
    queries: torch.Tensor,
    features: torch.Tensor,
    *,
    centre: np.ndarray | torch.Tensor,
    radius: int,
    ratio: float,
    refine: SoftArgmax | None = None,
) -> Redetection:
    """Best matches of unit descriptors ``(N, C)`` within ``radius`` cells of ``centre (N, 2)``
    grid ``(y, x)`` and in the whole ``(C, h, w)`` map, from one score matrix, with the drop
    rule ``s_window − μ < ratio · (s_frame − μ)`` (``μ``: the descriptor's mean cosine over the
    frame; see the module docstring). Torch only: the window needs every score anyway.
    """
    c, h, w = check_feature_map(features, "features")
    if queries.ndim != 2 or int(queries.shape[1]) != c:
        raise InputError(
            f"descriptors {tuple(queries.shape)} do not match a feature map of {c} channels"
        )
    refine = refine or SoftArgmax(radius=0)
    n = int(queries.shape[0])
    q, cells = _operands(queries, features)
    centres = as_grid_points(centre, features.device)
    step = max(1, _SIMS_CHUNK_BYTES // (4 * h * w))
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("w_pos", "w_score", "w_best", "f_pos", "f_score", "f_best", "dropped")
    }
    for start in range(0, n, step):
        sims = matmul_f32(q[start : start + step], cells)  # (n, h·w)
        mean = sims.mean(dim=1)
        allowed = _window_mask(centres[start : start + step], radius, (h, w))
        windowed = sims.masked_fill(~allowed, -math.inf)
        w_score, w_best = windowed.max(dim=1)
        f_score, f_best = sims.max(dim=1)
        parts["w_pos"].append(soft_argmax_window(windowed, (h, w), refine))
        parts["f_pos"].append(soft_argmax_window(sims, (h, w), refine))
        parts["w_score"].append(w_score)
        parts["w_best"].append(w_best)
        parts["f_score"].append(f_score)
        parts["f_best"].append(f_best)
        parts["dropped"].append(w_score - mean < ratio * (f_score - mean))
    out = {k: torch.cat(v).cpu() for k, v in parts.items()} if n else None

    def match(kind: str) -> Match:
        if out is None:
            return Match(np.zeros((0, 2)), np.zeros(0, np.float32), np.zeros((0, 2), np.int64))
        flat = out[f"{kind}_best"].numpy()
        return Match(
            out[f"{kind}_pos"].numpy().astype(np.float64),
            out[f"{kind}_score"].float().numpy(),
            np.stack([flat // w, flat % w], axis=1).astype(np.int64),
        )

    dropped = np.zeros(0, bool) if out is None else out["dropped"].numpy().astype(bool)
    return Redetection(match("w"), match("f"), dropped)


def cycle_distance(
    matched_features: torch.Tensor,
    matched_cell: np.ndarray,
    query_features: torch.Tensor,
    query_grid_yx: np.ndarray,
    params: PointParams,
) -> np.ndarray:
    """Cells between each query and its best cell matched back into the query frame: ``(N,)``.

    The best cell's own vector (not a bilinear blend) is located in the whole query frame with
    the same refinement; a consistent match comes back to the query.
    """
    cell = torch.as_tensor(np.asarray(matched_cell, dtype=np.int64), device=matched_features.device)
    back_desc = F.normalize(matched_features[:, cell[:, 0], cell[:, 1]].T.float(), dim=1, eps=1e-12)
    back = locate(back_desc, query_features, refine=params.refine, knn_backend=params.knn_backend)
    return np.linalg.norm(back.grid_yx - np.asarray(query_grid_yx, dtype=np.float64), axis=1)


@torch.inference_mode()
def track_query_points(
    query_features: torch.Tensor,
    query_grid_yx: np.ndarray,
    frames: Iterable[torch.Tensor],
    params: PointParams | None = None,
) -> Iterator[PointEstimate]:
    """Track points of one query frame through ``frames`` (in sequence order), one estimate each.

    ``query_features`` ``(C, h, w)`` is the query frame's map and ``query_grid_yx (N, 2)`` the
    points on its grid; ``frames`` yields ``(C, h, w)`` maps, e.g. forward from the query frame
    or, reversed, backward. With ``params.radius`` each frame is searched around the previous
    frame's estimate (the query in the first), and with ``params.redetect`` also whole where the
    window has lost the point; without, every frame is searched whole.
    """
    params = params or PointParams()
    check_feature_map(query_features, "query features")
    query = np.asarray(query_grid_yx, dtype=np.float64).reshape(-1, 2)
    descriptors = sample_descriptors(query_features, query)
    previous = query
    for features in frames:
        if params.radius is not None and params.redetect is not None:
            found = locate_redetect(
                descriptors,
                features,
                centre=previous,
                radius=params.radius,
                ratio=params.redetect,
                refine=params.refine,
            )
            estimate = _redetect_step(found, features, query_features, query, params)
        else:
            match = locate(
                descriptors,
                features,
                refine=params.refine,
                centre=previous if params.radius is not None else None,
                radius=params.radius,
                knn_backend=params.knn_backend,
            )
            visible = _visible(match, features, query_features, query, params)
            estimate = PointEstimate(match.grid_yx, visible, match.score)
        yield estimate
        previous = estimate.grid_yx


def _visible(
    match: Match,
    features: torch.Tensor,
    query_features: torch.Tensor,
    query_grid_yx: np.ndarray,
    params: PointParams,
) -> np.ndarray:
    """The visibility rule: best cosine >= ``min_similarity`` and cycle consistent. ``(N,)``."""
    visible = match.score >= params.min_similarity
    if params.cycle_threshold is not None and len(query_grid_yx):
        distance = cycle_distance(features, match.cell, query_features, query_grid_yx, params)
        visible &= distance <= params.cycle_threshold
    return visible


def _redetect_step(
    found: Redetection,
    features: torch.Tensor,
    query_features: torch.Tensor,
    query: np.ndarray,
    params: PointParams,
) -> PointEstimate:
    """One frame of the windowed search: the window's match, or the whole frame's where the
    window dropped and the frame's match passes the visibility rule."""
    grid_yx = found.window.grid_yx.copy()
    score = found.window.score.copy()
    visible = _visible(found.window, features, query_features, query, params)
    redetected = np.zeros(len(query), dtype=bool)
    candidates = np.flatnonzero(found.dropped)
    if len(candidates):
        frame = Match(*(a[candidates] for a in found.frame))
        taken = candidates[_visible(frame, features, query_features, query[candidates], params)]
        grid_yx[taken] = found.frame.grid_yx[taken]
        score[taken] = found.frame.score[taken]
        visible[taken] = True
        redetected[taken] = True
    return PointEstimate(grid_yx, visible, score, redetected)


def gaussian_label_maps(
    grid_yx: np.ndarray, grid_hw: tuple[int, int], sigma: float
) -> torch.Tensor:
    """Heat-map labels ``(1 + N, h, w)`` float32: background, then one Gaussian per point.

    Channel ``1 + i`` is ``exp(−d² / 2σ²)`` of the distance ``d`` (cells) from cell centres to
    point ``i``, zero beyond ``3σ``; channel 0 is 1 where every point channel is 0 (CRW's
    ``code/data/jhmdb.py``: a Gaussian of peak 1, not normalised, cut at 3σ; background =
    ``sum == 0``). A point whose nearest cell centre is farther than 3σ still gets that cell.
    """
    h, w = grid_hw
    pts = np.asarray(grid_yx, dtype=np.float64).reshape(-1, 2)
    ys = np.arange(h, dtype=np.float64)[None, :, None]
    xs = np.arange(w, dtype=np.float64)[None, None, :]
    d2 = (ys - pts[:, 0, None, None]) ** 2 + (xs - pts[:, 1, None, None]) ** 2
    maps = np.exp(-d2 / (2 * sigma**2))
    maps[d2 > (3 * sigma) ** 2] = 0.0
    for i, (y, x) in enumerate(pts):  # a point far off the grid keeps its nearest cell
        if not maps[i].any():
            cy, cx = (
                int(np.clip(np.floor(y + 0.5), 0, h - 1)),
                int(np.clip(np.floor(x + 0.5), 0, w - 1)),
            )
            maps[i, cy, cx] = np.exp(-((cy - y) ** 2 + (cx - x) ** 2) / (2 * sigma**2))
    background = (maps.sum(axis=0) == 0).astype(np.float64)[None]
    return torch.from_numpy(np.concatenate([background, maps]).astype(np.float32))


def heatmap_peaks(
    maps: torch.Tensor, readout_radius: int | None = 2, readout_topk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Position ``(N, 2)`` float64 grid ``(y, x)`` and peak ``(N,)`` of each ``(N, h, w)`` map.

    The weighted mean of the cells within ``readout_radius`` cells (Chebyshev) of the maximum —
    the ``readout_topk`` largest of them if set — with the (non-negative) map values as weights.
    ``readout_radius=None, readout_topk=3`` is CRW's rule.
    """
    if maps.ndim != 3:
        raise InputError(f"heat maps must be (N, h, w), got {tuple(maps.shape)}")
    n, h, w = (int(s) for s in maps.shape)
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0, np.float32)
    flat = maps.float().reshape(n, h * w).clamp_min(0)
    peak, best = flat.max(dim=1)
    ys = torch.arange(h, device=flat.device).repeat_interleave(w).double()
    xs = torch.arange(w, device=flat.device).repeat(h).double()
    weights = flat.double()
    if readout_radius is not None:
        near = ((ys[None] - ys[best][:, None]).abs() <= readout_radius) & (
            (xs[None] - xs[best][:, None]).abs() <= readout_radius
        )
        weights = weights * near
    if readout_topk is not None and readout_topk < h * w:
        kth = weights.topk(readout_topk, dim=1).values[:, -1:]
        keep = weights >= kth
        # Exactly k cells: among ties at the k-th value, the first ones in row-major order.
        rank = torch.cumsum(keep.long(), dim=1)
        weights = weights * (keep & (rank <= readout_topk))
    total = weights.sum(dim=1, keepdim=True)
    at_best = torch.stack([ys[best], xs[best]], dim=1)
    mean = torch.stack([(weights * ys).sum(1), (weights * xs).sum(1)], dim=1) / total.clamp_min(
        1e-300
    )
    positions = torch.where(total > 0, mean, at_best)
    return positions.cpu().numpy(), peak.cpu().numpy().astype(np.float32)


@torch.inference_mode()
def track_heatmaps(
    query_features: torch.Tensor,
    query_grid_yx: np.ndarray,
    frames: Iterable[torch.Tensor],
    propagation: PropagationParams | None = None,
    params: PointParams | None = None,
    *,
    search: NeighbourSearch | None = None,
) -> Iterator[PointEstimate]:
    """Propagate one Gaussian heat map per point from the query frame through ``frames``.

    Same inputs as :func:`track_query_points`; ``propagation`` are the label-propagation
    settings (context frames, window, top-k, τ) and ``search`` an optional prepared search.
    """
    params = params or PointParams()
    _, h, w = check_feature_map(query_features, "query features")
    query = np.asarray(query_grid_yx, dtype=np.float64).reshape(-1, 2)
    labels = gaussian_label_maps(query, (h, w), params.sigma).to(query_features.device)
    reference_peak = labels[1:].flatten(1).amax(dim=1).cpu().numpy()
    stream = propagate_sequence(query_features, labels, frames, propagation, search=search)
    for soft in stream:
        grid_yx, peak = heatmap_peaks(soft[1:], params.readout_radius, params.readout_topk)
        visible = peak >= params.min_peak * reference_peak
        yield PointEstimate(grid_yx, visible, peak)


__all__ = [
    "MOTION_RADIUS",
    "REDETECT_RATIO",
    "Match",
    "PointEstimate",
    "PointParams",
    "cycle_distance",
    "gaussian_label_maps",
    "heatmap_peaks",
    "locate",
    "locate_redetect",
    "sample_descriptors",
    "track_heatmaps",
    "track_query_points",
]
