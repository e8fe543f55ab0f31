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
not void; N is 1, or 0 when the first frame is empty). :func:`evaluate_davis` picks ``binary``
when every sequence's first ground-truth frame holds only 0 and 255.

Speed: the official tool scores each object on the whole frame; here every (frame, object) is cut to
the bounding box of prediction ∪ ground truth (plus the one-pixel boundary margin), which gives the
same boundary maps, dilations and counts, and chunks of frames are spread over worker processes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import multiprocessing
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image

from ..errors import InputError, OutputError

log = logging.getLogger(__name__)

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


def _validate_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise InputError(f"unknown DAVIS mode {mode!r}; use one of {', '.join(MODES)}")
    return cast(Mode, mode)


def _object_count(first_gt: NDArray[np.integer[Any]], mode: Mode) -> int:
    if mode == "binary":
        return int(bool(first_gt.any()))
    return int(np.where(first_gt == VOID_ID, 0, first_gt).max())


def _score_frame(
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
    mode = _validate_mode(mode)
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
    n_objects = _object_count(gt[0], mode)
    footprint = disk_footprint(boundary_radius(gt.shape[1], gt.shape[2], bound_th))
    j = np.zeros((n_objects, len(gt) - 2))
    f = np.zeros_like(j)
    for t in range(1, len(gt) - 1):
        js, fs = _score_frame(pred[t], gt[t], n_objects, mode, footprint, f"{name}/{names[t]}")
        j[:, t - 1] = js
        f[:, t - 1] = fs
    return SequenceResult(name=name, frames=tuple(names[1:-1]), j=j, f=f)


# ----------------------------------------------------------------------------- files


def _pixels(image: Image.Image) -> NDArray[np.uint8]:
    """``(H, W)`` uint8 copy of a decoded P or L image's pixel values.

    ``np.asarray(image)`` goes through ``tobytes()``, which costs about as much as decoding the
    PNG (0.4 ms per 480p frame). Instead the pixels are pasted once into a numpy buffer that an
    image made by ``Image.frombuffer`` shares (the documented zero-copy "raw" mapping).
    """
    image.load()
    width, height = image.size
    if image.mode not in ("P", "L") or width == 0 or height == 0:
        return np.asarray(image, dtype=np.uint8)
    out = np.empty((height, width), dtype=np.uint8)
    shared = Image.frombuffer(image.mode, (width, height), out, "raw", image.mode, 0, 1)
    shared.im.paste(image.im, (0, 0, width, height))
    return out


def read_label_png(path: Path) -> NDArray[np.uint8]:
    """``(H, W)`` uint8 ids of a palette (P), grayscale (L) or 1-bit PNG (indices, not colours)."""
    try:
        with Image.open(path) as image:
            image_mode = image.mode
            if image_mode in _READABLE_MODES:
                return _pixels(image)
    except FileNotFoundError:
        raise InputError(
            f"mask {path} does not exist; write one PNG per frame named like the ground truth"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read mask {path} ({exc}); save it as a PNG image") from None
    raise InputError(
        f"mask {path} is a {image_mode} image; save object ids as a palette (P) or grayscale (L) "
        "PNG"
    )


def _png_stems(folder: Path) -> list[str]:
    """Frame stems in the official order: ``*.png`` (no hidden files), sorted by file name."""
    names = sorted(
        p.name for p in folder.glob("*.png") if not p.name.startswith(".") and p.is_file()
    )
    return [name[: -len(".png")] for name in names]


@dataclass(frozen=True)
class _SequencePlan:
    """One sequence to score: its folders, all ground-truth frame stems (frames[1:-1] are scored),
    its object count and its frame size ``(H, W)``."""

    name: str
    gt_dir: Path
    pred_dir: Path
    frames: tuple[str, ...]
    n_objects: int
    shape: tuple[int, int]


@dataclass(frozen=True)
class _Task:
    plan: _SequencePlan
    start: int
    stop: int
    mode: Mode
    bound_th: float


def _run_task(task: _Task) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(N, stop-start) J and F of scored frames plan.frames[start:stop]."""
    plan = task.plan
    footprint = disk_footprint(boundary_radius(*plan.shape, task.bound_th))
    j = np.zeros((plan.n_objects, task.stop - task.start))
    f = np.zeros_like(j)
    for col, stem in enumerate(plan.frames[task.start : task.stop]):
        gt_path = plan.gt_dir / f"{stem}.png"
        pred_path = plan.pred_dir / f"{stem}.png"
        gt = read_label_png(gt_path)
        pred = read_label_png(pred_path)
        if gt.shape != plan.shape:
            raise InputError(
                f"ground truth {gt_path} is {gt.shape[1]}x{gt.shape[0]} but the sequence's first "
                f"frame is {plan.shape[1]}x{plan.shape[0]}; all frames must have one size"
            )
        if pred.shape != gt.shape:
            raise InputError(
                f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but its ground truth "
                f"is {gt.shape[1]}x{gt.shape[0]}; save predictions at the ground-truth resolution"
            )
        label = f"frame {plan.name}/{stem}.png"
        j[:, col], f[:, col] = _score_frame(pred, gt, plan.n_objects, task.mode, footprint, label)
    return j, f


def _looks_binary(first_gt: NDArray[np.uint8]) -> bool:
    """DAVIS-2016 style: only 0 and 255, with some 255 (a palette GT with objects has 1..N)."""
    values = np.unique(first_gt)
    return bool(values[-1] == VOID_ID and np.isin(values, (0, VOID_ID)).all())


def _list_sequences(gt_root: Path, sequences: Sequence[str] | None) -> list[str]:
    available = sorted(p.name for p in gt_root.iterdir() if p.is_dir())
    if sequences is None:
        if not available:
            raise InputError(
                f"ground-truth root {gt_root} has no sequence folders; pass the folder that holds "
                "<sequence>/<frame>.png (e.g. DAVIS/Annotations/480p)"
            )
        return available
    names = list(dict.fromkeys(sequences))
    unknown = [s for s in names if s not in available]
    if unknown:
        shown = ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
        raise InputError(
            f"sequence {unknown[0]!r} is not in the ground truth {gt_root}; pick from: {shown}"
        )
    if not names:
        raise InputError("no sequences given; pass names like --sequences blackswan,dog")
    return names


@dataclass(frozen=True)
class _FirstFrame:
    """What the first ground-truth frame decides: the object count in each mode, the style."""

    n_multi: int
    n_binary: int
    looks_binary: bool


def _plan_sequence(gt_root: Path, pred_root: Path, name: str) -> tuple[_SequencePlan, _FirstFrame]:
    gt_dir = gt_root / name
    pred_dir = pred_root / name
    frames = _png_stems(gt_dir)
    if len(frames) < 3:
        raise InputError(
            f"ground truth {gt_dir} has {len(frames)} PNG frame(s); DAVIS scores all but the first "
            "and last, so it needs at least 3"
        )
    if not pred_dir.is_dir():
        if _png_stems(pred_root):  # one sequence's masks (a track --out folder) given as --pred
            fix = (
                f"pass --pred {pred_root.parent}"
                if pred_root.name == name
                else f"write them with --out preds/{name} and pass --pred preds"
            )
            raise InputError(
                f"prediction folder {pred_dir} does not exist, but {pred_root} holds frame PNGs "
                f"itself; --pred takes the folder that holds one folder per sequence: {fix}"
            )
        raise InputError(
            f"prediction folder {pred_dir} does not exist; write <pred>/{name}/<frame>.png for "
            "every evaluated sequence, or leave the sequence out with --sequences"
        )
    for stem in frames[1:-1]:
        if not (pred_dir / f"{stem}.png").is_file():
            raise InputError(
                f"prediction {pred_dir / (stem + '.png')} is missing; write one PNG per "
                "ground-truth frame with the same name"
            )
    first = read_label_png(gt_dir / f"{frames[0]}.png")
    shape = (int(first.shape[0]), int(first.shape[1]))
    info = _FirstFrame(
        n_multi=_object_count(first, "multi"),
        n_binary=_object_count(first, "binary"),
        looks_binary=_looks_binary(first),
    )
    return _SequencePlan(name, gt_dir, pred_dir, tuple(frames), 0, shape), info


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _executor(workers: int) -> Executor:
    """A process pool started by fork on Linux, else a thread pool.

    fork gives workers the parent's imports at no cost and needs no ``__main__`` guard in the
    caller's script (spawn/forkserver would re-import it); it is Linux's long-standing default,
    also for PyTorch's DataLoader. Elsewhere fork is unsafe (macOS) or missing (Windows); there
    threads still overlap PNG decoding and OpenCV, which release the GIL.
    """
    if sys.platform.startswith("linux"):
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


def _chunks(plan: _SequencePlan, mode: Mode, bound_th: float) -> Iterator[_Task]:
    n_scored = len(plan.frames) - 2
    for start in range(0, n_scored, _FRAMES_PER_TASK):
        stop = min(start + _FRAMES_PER_TASK, n_scored)
        yield _Task(plan, start + 1, stop + 1, mode, bound_th)


def evaluate_davis(
    pred_root: str | os.PathLike[str],
    gt_root: str | os.PathLike[str],
    sequences: Iterable[str] | None = None,
    mode: Mode | None = None,
    workers: int | None = None,
    *,
    bound_th: float = BOUND_TH,
    progress: Callable[[int, int, str], None] | None = None,
) -> DavisResult:
    """Score ``pred_root/<seq>/<frame>.png`` against ``gt_root/<seq>/<frame>.png``.

    ``sequences``: names to score, in this order (default: every folder of ``gt_root``, sorted).
    ``mode``: ``"multi"`` (DAVIS-2017 palette ids) or ``"binary"`` (DAVIS-2016 {0, 255}); None picks
    binary when every first ground-truth frame holds only 0 and 255. ``workers``: parallel workers,
    processes on Linux and threads elsewhere (default: the usable CPU cores; 1 runs in this
    process). ``progress(done, total, sequence)`` is called as each sequence finishes.
    """
    pred_dir, gt_dir = Path(pred_root), Path(gt_root)
    if not gt_dir.is_dir():
        raise InputError(f"ground-truth root {gt_dir} is not a folder; pass DAVIS/Annotations/480p")
    if not pred_dir.is_dir():
        raise InputError(f"prediction root {pred_dir} is not a folder; pass the results folder")
    if mode is not None:
        mode = _validate_mode(mode)
    if workers is not None and workers < 1:
        raise InputError(f"workers={workers} must be at least 1")
    names = _list_sequences(gt_dir, None if sequences is None else list(sequences))

    planned = [_plan_sequence(gt_dir, pred_dir, name) for name in names]
    if mode is None:
        binary = [plan.name for plan, first in planned if first.looks_binary]
        palette = [plan.name for plan, first in planned if not first.looks_binary]
        if binary and palette:
            raise InputError(
                f"ground truth mixes DAVIS-2016 binary ({binary[0]}) and palette ({palette[0]}) "
                "sequences; pass --mode binary or --mode multi"
            )
        mode = "binary" if binary else "multi"
        log.info("DAVIS ground truth looks %s", mode)
    plans = []
    for plan, first in planned:
        n_objects = first.n_binary if mode == "binary" else first.n_multi
        if n_objects == 0:
            hint = " (it looks DAVIS-2016 binary: use --mode binary)" if first.looks_binary else ""
            log.warning("sequence %s has no object in its first frame%s; skipped", plan.name, hint)
            continue
        plans.append(dataclasses.replace(plan, n_objects=n_objects))
    if not plans:
        hint = (
            "the ground truth looks DAVIS-2016 binary: pass --mode binary"
            if mode == "multi" and any(first.looks_binary for _, first in planned)
            else "check the ground-truth root"
        )
        raise InputError(
            f"no object to score in {gt_dir}: every first ground-truth frame is empty in {mode} "
            f"mode; {hint}"
        )

    tasks = [task for plan in plans for task in _chunks(plan, mode, bound_th)]
    for plan in plans:  # cached here, so that forked workers inherit it (and skimage's import)
        disk_footprint(boundary_radius(*plan.shape, bound_th))
    n_workers = min(_default_workers() if workers is None else workers, len(tasks))
    pieces: dict[str, list[tuple[NDArray[np.float64], NDArray[np.float64]]]] = {
        p.name: [] for p in plans
    }
    remaining = {p.name: sum(1 for t in tasks if t.plan.name == p.name) for p in plans}
    done = 0

    def collect(task: _Task, piece: tuple[NDArray[np.float64], NDArray[np.float64]]) -> None:
        nonlocal done
        pieces[task.plan.name].append(piece)
        remaining[task.plan.name] -= 1
        if remaining[task.plan.name] == 0:
            done += 1
            if progress is not None:
                progress(done, len(plans), task.plan.name)

    if n_workers <= 1:
        for task in tasks:
            collect(task, _run_task(task))
    else:
        pool = _executor(n_workers)
        try:
            with warnings.catch_warnings():
                # Python >= 3.12 warns on fork in a process with threads, which numpy's and
                # OpenCV's imports always start. The workers only decode PNGs and run numpy and
                # OpenCV on their own arrays (as DataLoader workers do under the same warning).
                warnings.filterwarnings("ignore", ".*fork.*", DeprecationWarning)
                # map keeps task order, so each sequence's chunks arrive in frame order.
                for task, piece in zip(tasks, pool.map(_run_task, tasks)):
                    collect(task, piece)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    results = tuple(
        SequenceResult(
            name=plan.name,
            frames=plan.frames[1:-1],
            j=np.concatenate([j for j, _ in pieces[plan.name]], axis=1),
            f=np.concatenate([f for _, f in pieces[plan.name]], axis=1),
        )
        for plan in plans
    )
    return DavisResult(sequences=results, mode=mode, bound_th=bound_th)


# ----------------------------------------------------------------------------- writers


def _atomic_write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path} ({exc.strerror}); pick a writable location"
        ) from None


def _csv_text(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    # The official CSVs are pandas to_csv(index=False, float_format="%.3f").
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([v if isinstance(v, str) else f"{v:.3f}" for v in row] for row in rows)
    return buf.getvalue()


def davis_csv_names(subset: str = "val") -> tuple[str, str]:
    """The official file names: ``global_results-<set>.csv``, ``per-sequence_results-<set>.csv``."""
    return f"global_results-{subset}.csv", f"per-sequence_results-{subset}.csv"


def write_davis_csvs(
    result: DavisResult, out_dir: str | os.PathLike[str], subset: str = "val"
) -> tuple[Path, Path]:
    """Write the two official CSVs (3 decimals, official names and columns) into ``out_dir``."""
    out = Path(out_dir)
    global_name, per_seq_name = davis_csv_names(subset)
    columns, rows = result.global_table()
    _atomic_write(out / global_name, _csv_text(columns, rows))
    seq_columns, seq_rows = result.per_sequence_table()
    _atomic_write(out / per_seq_name, _csv_text(seq_columns, seq_rows))
    return out / global_name, out / per_seq_name


def write_davis_json(result: DavisResult, path: str | os.PathLike[str]) -> Path:
    """Write :meth:`DavisResult.to_json_dict` to ``path`` (full float precision)."""
    out = Path(path)
    _atomic_write(out, json.dumps(result.to_json_dict(), indent=2) + "\n")
    return out
