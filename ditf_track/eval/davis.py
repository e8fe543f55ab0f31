"""DAVIS semi-supervised J&F: region similarity J and boundary F-measure, as the official tool.

Protocol (facts read in ``davisvideochallenge/davis2017-evaluation`` at commit
``ac7c43fca936f9722837b7fbd337d284ba37004b``: ``davis2017/metrics.py``, ``evaluation.py``,
``davis.py``, ``results.py``, ``utils.py``, ``evaluation_method.py``). Our numbers equal that
tool's to the last bit on the shared OSVOS predictions and on a multi-object case, and our CSVs
equal its CSVs byte for byte (``tests/test_eval_davis.py``, ``benchmarks/eval_davis.py``):

* **Frames scored**: the ground-truth frames of a sequence (``*.png`` sorted by file name),
  without the first and the last one. Only those prediction frames are read.
* **Objects**: the number of objects N is the largest id in the *first* ground-truth frame; ids
  1..N are scored, one row each, named ``<sequence>_<id>``. Ground-truth ids above N in later frames
  are never scored. A prediction id above N is an error (the official tool aborts).
* **Void**: ground-truth 255 is set to 0 before anything else, and the semi-supervised path passes
  no void mask, so void pixels count as background in both J and F.
* **J** = |pred ∩ gt| / |pred ∪ gt| per frame, 1 when the union is empty.
* **F**: one-pixel boundary maps (a pixel is on the boundary when it differs from its right, lower
  or lower-right neighbour; the image border is not a boundary), each dilated by a disk of radius
  ``ceil(0.008 · sqrt(H² + W²))`` (8 px at 480×854; ``bound_th`` ≥ 1 is a radius in pixels);
  precision = matched prediction-boundary pixels / prediction-boundary pixels, recall likewise for
  the ground truth, F = 2PR / (P + R). An empty boundary on one side gives P or R = 1 and the
  other 0; both empty give F = 1. Masks are never resized: ``seg2bmap``'s rescaling branch is
  never reached (it is called without a target size), and a prediction whose size differs from
  the ground truth fails the official tool's shape assertion; here it is an :class:`InputError`.
* **Statistics per object**: Mean; Recall = fraction of frames with a value > 0.5; Decay = mean of
  the first quarter minus mean of the last quarter, with the official quarter edges
  ``round(linspace(1, n, 5) + 1e-10) - 1`` (cast to uint8 there, so they wrap for n > 256; we keep
  that to stay identical). Quarters share their edge frames.
* **Global**: every metric is the mean over all objects of all sequences (not over sequences);
  ``J&F-Mean`` = (J-Mean + F-Mean) / 2.

Two ground-truth styles: ``multi`` (DAVIS-2017 palette PNGs, ids 1..N, as above) and ``binary``
(DAVIS-2016 {0, 255} PNGs: one object, ground truth > 0 against prediction > 0, 255 is the object,
not void; N is 1, or 0 when the first frame is empty).
:func:`~ditf_track.eval.davis_folders.evaluate_davis` picks ``binary``
when every sequence's first ground-truth frame holds only 0 and 255.

Scoring folders of PNGs (the official tool's input, with its process pool) is
:mod:`ditf_track.eval.davis_folders`; this module is the metric on arrays.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, cast

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import InputError

Mode = Literal["multi", "binary"]
MODES: tuple[str, ...] = ("multi", "binary")

BOUND_TH = 0.008
"""Boundary tolerance as a fraction of the image diagonal (official ``bound_th``)."""

VOID_ID = 255
"""DAVIS-2017 void label; set to background in the semi-supervised ground truth."""

METRIC_KEYS: tuple[str, ...] = (
    "J&F-Mean",
    "J-Mean",
    "J-Recall",
    "J-Decay",
    "F-Mean",
    "F-Recall",
    "F-Decay",
)
"""Columns of the official ``global_results-<set>.csv``, in its order."""

PER_SEQUENCE_COLUMNS: tuple[str, ...] = ("Sequence", "J-Mean", "F-Mean")
"""Columns of the official ``per-sequence_results-<set>.csv`` (one row per object)."""

_READABLE_MODES = ("P", "L", "1")
_FRAMES_PER_TASK = 8


# ----------------------------------------------------------------------------- frame metrics


def boundary_map(masks: ArrayLike) -> NDArray[np.bool_]:
    """One-pixel boundary map of binary masks, the official ``seg2bmap`` convention.

    ``masks`` is ``(..., H, W)``, nonzero = object. A pixel is a boundary pixel when it differs from
    its right, lower or lower-right neighbour, so boundaries sit half a pixel towards the origin. On
    the last row only the right neighbour counts, on the last column only the lower one, and the
    bottom-right pixel is never a boundary: the image border itself is no contour.
    Returns ``(..., H, W)`` bool.
    """
    seg = np.asarray(masks).astype(bool, copy=False)
    if seg.ndim < 2:
        raise ValueError(f"masks must be (..., H, W), got shape {seg.shape}")
    bmap = np.zeros_like(seg)
    here = seg[..., :-1, :-1]
    bmap[..., :-1, :-1] = (
        (here != seg[..., :-1, 1:]) | (here != seg[..., 1:, :-1]) | (here != seg[..., 1:, 1:])
    )
    bmap[..., -1, :-1] = seg[..., -1, :-1] != seg[..., -1, 1:]
    bmap[..., :-1, -1] = seg[..., :-1, -1] != seg[..., 1:, -1]
    return bmap


def boundary_radius(height: int, width: int, bound_th: float = BOUND_TH) -> float:
    """Dilation radius in pixels: ``bound_th`` itself when ≥ 1, else ceil(bound_th · diagonal).

    Computed in the same float64 order as the official ``np.ceil(bound_th * norm(shape))``, so the
    ceiling never lands on the other side of an integer.
    """
    if bound_th >= 1:
        return float(bound_th)
    return float(math.ceil(bound_th * math.sqrt(height * height + width * width)))


@cache
def disk_footprint(radius: float) -> NDArray[np.uint8]:
    """The disk structuring element the official tool dilates with (``skimage.morphology.disk``).

    ``(2r+1, 2r+1)`` uint8 for an integer radius r: the offsets (dy, dx) with dy² + dx² ≤ r².
    """
    from skimage.morphology import disk

    footprint = np.ascontiguousarray(disk(radius), dtype=np.uint8)
    footprint.setflags(write=False)
    return footprint


def _as_frames(masks: ArrayLike, name: str) -> NDArray[np.bool_]:
    arr = np.asarray(masks)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (F, H, W) or (H, W), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=bool)


def _check_pair(pred: NDArray[np.bool_], gt: NDArray[np.bool_]) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"pred_masks {pred.shape} and gt_masks {gt.shape} differ in shape")


def region_similarity(pred_masks: ArrayLike, gt_masks: ArrayLike) -> NDArray[np.float64]:
    """J per frame: intersection over union of ``(F, H, W)`` (or ``(H, W)``) binary masks.

    A frame where both masks are empty scores 1, as in the official tool. Returns ``(F,)`` float64.
    """
    pred = _as_frames(pred_masks, "pred_masks")
    gt = _as_frames(gt_masks, "gt_masks")
    _check_pair(pred, gt)
    inter = np.count_nonzero(pred & gt, axis=(1, 2))
    union = np.count_nonzero(pred | gt, axis=(1, 2))
    j = np.ones(len(pred), dtype=np.float64)
    nonempty = union > 0
    j[nonempty] = inter[nonempty] / union[nonempty]
    return j


def _f_from_counts(n_pred: int, n_gt: int, pred_matched: int, gt_matched: int) -> float:
    """F from boundary pixel counts, with the official conventions for empty boundaries."""
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = pred_matched / n_pred
        recall = gt_matched / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _score_pair(
    pred: NDArray[np.bool_], gt: NDArray[np.bool_], footprint: NDArray[np.uint8]
) -> tuple[float, float]:
    """(J, F) of one frame's ``(H, W)`` bool masks, computed on their bounding box only.

    The boundary of a mask lies in its bounding box grown by one pixel up and left (boundaries sit
    half a pixel towards the origin), so the window [y0-1, y1+1] × [x0-1, x1+1] of pred ∪ gt holds
    every boundary pixel of both; its extra last row/column is empty, where the seg2bmap border
    rule and the interior rule agree. Dilating inside the window changes no count, because every
    source and every tested pixel lies inside it.
    """
    union = pred | gt
    x, y, w, h = cv2.boundingRect(union.view(np.uint8))
    if w == 0:
        return 1.0, 1.0
    height, width = union.shape
    y0, y1 = max(y - 1, 0), min(y + h + 1, height)
    x0, x1 = max(x - 1, 0), min(x + w + 1, width)
    pred_win = pred[y0:y1, x0:x1]
    gt_win = gt[y0:y1, x0:x1]
    j = np.count_nonzero(pred_win & gt_win) / np.count_nonzero(union[y0:y1, x0:x1])

    pred_b = boundary_map(pred_win)
    gt_b = boundary_map(gt_win)
    n_pred = int(np.count_nonzero(pred_b))
    n_gt = int(np.count_nonzero(gt_b))
    pred_matched = gt_matched = 0
    if n_pred and n_gt:
        pred_dil = cv2.dilate(pred_b.view(np.uint8), footprint).view(bool)
        gt_dil = cv2.dilate(gt_b.view(np.uint8), footprint).view(bool)
        pred_matched = int(np.count_nonzero(pred_b & gt_dil))
        gt_matched = int(np.count_nonzero(gt_b & pred_dil))
    return float(j), _f_from_counts(n_pred, n_gt, pred_matched, gt_matched)


def boundary_f_measure(
    pred_masks: ArrayLike, gt_masks: ArrayLike, bound_th: float = BOUND_TH
) -> NDArray[np.float64]:
    """F per frame: boundary F-measure of ``(F, H, W)`` (or ``(H, W)``) binary masks.

    ``bound_th`` < 1 is a fraction of the image diagonal, ≥ 1 a radius in pixels (official
    convention). Returns ``(F,)`` float64.
    """
    pred = _as_frames(pred_masks, "pred_masks")
    gt = _as_frames(gt_masks, "gt_masks")
    _check_pair(pred, gt)
    footprint = disk_footprint(boundary_radius(pred.shape[1], pred.shape[2], bound_th))
    return np.array([_score_pair(p, g, footprint)[1] for p, g in zip(pred, gt)], dtype=np.float64)


def jf_statistics(per_frame_values: ArrayLike) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of one object's per-frame J or F values, shape ``(F,)``.

    Recall is the fraction of frames above 0.5; Decay is the mean of the first quarter of the frames
    minus the mean of the last quarter, with the official quarter edges (see the module docstring).
    NaN values are left out of the means, as in the official tool.
    """
    values = np.asarray(per_frame_values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"per_frame_values must be a non-empty (F,) array, got {values.shape}")
    # davis2017/utils.py db_statistics casts these edges to uint8: they wrap modulo 256.
    edges = (np.round(np.linspace(1, values.size, 5) + 1e-10) - 1).astype(np.int64) % 256
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
        first = np.nanmean(values[edges[0] : edges[1] + 1])
        last = np.nanmean(values[edges[3] : edges[4] + 1])
    return float(mean), float(recall), float(first - last)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SequenceResult:
    """Per-frame J and F of one sequence's objects.

    ``j`` and ``f`` are ``(N, F)`` float64: object ids 1..N by scored frame (``frames``, the file
    stems of the ground-truth frames without the first and the last).
    """

    name: str
    frames: tuple[str, ...]
    j: NDArray[np.float64]
    f: NDArray[np.float64]

    @property
    def n_objects(self) -> int:
        return int(self.j.shape[0])

    def object_names(self) -> list[str]:
        """Official row names: ``<sequence>_<id>`` for ids 1..N."""
        return [f"{self.name}_{i + 1}" for i in range(self.n_objects)]

    def object_statistics(self) -> list[dict[str, float]]:
        """Per object: J-/F- Mean, Recall, Decay (keys as in :data:`METRIC_KEYS`, no J&F)."""
        rows = []
        for j_values, f_values in zip(self.j, self.f):
            jm, jr, jd = jf_statistics(j_values)
            fm, fr, fd = jf_statistics(f_values)
            rows.append(
                {
                    "J-Mean": jm,
                    "J-Recall": jr,
                    "J-Decay": jd,
                    "F-Mean": fm,
                    "F-Recall": fr,
                    "F-Decay": fd,
                }
            )
        return rows

    def metrics(self) -> dict[str, float]:
        """The :data:`METRIC_KEYS` of this sequence: means over its objects."""
        return _combine(self.object_statistics())


def _combine(objects: Sequence[dict[str, float]]) -> dict[str, float]:
    """Means over objects, in object order (as ``np.mean`` over the official lists)."""
    out = {key: float(np.mean([o[key] for o in objects])) for key in METRIC_KEYS[1:]}
    return {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2.0, **out}


@dataclass(frozen=True)
class DavisResult:
    """J&F of a set of sequences: global metrics, per sequence and per object.

    ``sequences`` keeps the evaluation order; sequences without objects (an empty first
    ground-truth frame) are left out, as the official tool adds no row for them.
    """

    sequences: tuple[SequenceResult, ...]
    mode: Mode
    bound_th: float = BOUND_TH

    def object_statistics(self) -> list[tuple[str, dict[str, float]]]:
        """``(<sequence>_<id>, statistics)`` for every object, in evaluation order."""
        return [
            (name, stats)
            for seq in self.sequences
            for name, stats in zip(seq.object_names(), seq.object_statistics())
        ]

    def metrics(self) -> dict[str, float]:
        """The global :data:`METRIC_KEYS`: means over all objects of all sequences."""
        return _combine([stats for _, stats in self.object_statistics()])

    def to_json_dict(self) -> dict[str, Any]:
        """``{J&F-Mean, J-Mean, ..., F-Decay, sequences: {<seq>: {same keys}}}``."""
        return {
            **self.metrics(),
            "sequences": {seq.name: seq.metrics() for seq in self.sequences},
        }

    def global_table(self) -> tuple[tuple[str, ...], list[tuple[float, ...]]]:
        """(columns, rows) of the official ``global_results-<set>.csv``: one row."""
        metrics = self.metrics()
        return METRIC_KEYS, [tuple(metrics[key] for key in METRIC_KEYS)]

    def per_sequence_table(self) -> tuple[tuple[str, ...], list[tuple[str, float, float]]]:
        """(columns, rows) of the official ``per-sequence_results-<set>.csv``, a row per object."""
        rows = [
            (name, stats["J-Mean"], stats["F-Mean"]) for name, stats in self.object_statistics()
        ]
        return PER_SEQUENCE_COLUMNS, rows


# ----------------------------------------------------------------------------- scoring


def validate_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise InputError(f"unknown DAVIS mode {mode!r}; use one of {', '.join(MODES)}")
    return cast(Mode, mode)


def object_count(first_gt: NDArray[np.integer[Any]], mode: Mode) -> int:
    if mode == "binary":
        return int(bool(first_gt.any()))
    return int(np.where(first_gt == VOID_ID, 0, first_gt).max())


def score_frame(
    pred: NDArray[np.integer[Any]],
    gt: NDArray[np.integer[Any]],
    n_objects: int,
    mode: Mode,
    footprint: NDArray[np.uint8],
    frame_label: str,
) -> tuple[list[float], list[float]]:
    """J and F of each object 1..N in one frame of ``(H, W)`` label maps."""
    if mode == "binary":
        j, f = _score_pair(pred > 0, gt > 0, footprint)
        return [j], [f]
    top = int(pred.max(initial=0))
    if top > n_objects:
        raise InputError(
            f"prediction {frame_label} holds object id {top} but the first ground-truth frame has "
            f"only {n_objects} object(s); relabel the prediction to ids 0..{n_objects}"
        )
    js: list[float] = []
    fs: list[float] = []
    for obj in range(1, n_objects + 1):
        # Ground-truth 255 never equals an object id, so void counts as background.
        j, f = _score_pair(pred == obj, gt == obj, footprint)
        js.append(j)
        fs.append(f)
    return js, fs


def evaluate_sequence(
    pred_labels: ArrayLike,
    gt_labels: ArrayLike,
    *,
    mode: Mode = "multi",
    bound_th: float = BOUND_TH,
    name: str = "sequence",
    frame_names: Sequence[str] | None = None,
) -> SequenceResult:
    """J and F of one sequence held in memory.

    ``pred_labels`` and ``gt_labels`` are ``(T, H, W)`` integer label maps of *all* T frames
    (0 = background, ids 1..N; 255 = void in multi-mode ground truth). The first and last frame are
    not scored (their predictions are ignored). ``frame_names`` (length T) name the frames in
    results and errors; default: the frame indices.
    """
    mode = validate_mode(mode)
    pred = np.asarray(pred_labels)
    gt = np.asarray(gt_labels)
    if gt.ndim != 3 or pred.shape != gt.shape:
        raise InputError(
            f"sequence {name}: prediction {pred.shape} and ground truth {gt.shape} must both be "
            "(T, H, W) label maps of the same shape; pass one label map per frame"
        )
    names = [str(i) for i in range(len(gt))] if frame_names is None else list(frame_names)
    if len(names) != len(gt):
        raise ValueError(f"frame_names has {len(names)} entries for {len(gt)} frames")
    if len(gt) < 3:
        raise InputError(
            f"sequence {name} has {len(gt)} frame(s); DAVIS scores frames 2..T-1, so pass at "
            "least 3"
        )
    n_objects = object_count(gt[0], mode)
    footprint = disk_footprint(boundary_radius(gt.shape[1], gt.shape[2], bound_th))
    j = np.zeros((n_objects, len(gt) - 2))
    f = np.zeros_like(j)
    for t in range(1, len(gt) - 1):
        js, fs = score_frame(pred[t], gt[t], n_objects, mode, footprint, f"{name}/{names[t]}")
        j[:, t - 1] = js
        f[:, t - 1] = fs
    return SequenceResult(name=name, frames=tuple(names[1:-1]), j=j, f=f)
