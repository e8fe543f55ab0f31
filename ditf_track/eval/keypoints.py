"""Sparse keypoint PCK for tracked keypoints: the BADJA and JHMDB protocols, and their readers.

A keypoint counts as correct when its distance to the ground truth is within α times a per-frame
size. The two benchmarks differ in that size, the comparison and the pooling, so each has its own
wrapper; both build on :func:`pck`. All coordinates are ``(y, x)`` pixels (the API's order); the
readers convert from the files' orders. Values are fractions in [0, 1] (papers print ×100).

BADJA (keypoint tracking as evaluated by PIPs, aharley/pips ``test_on_badja.py`` and
``badjadataset.py``, commit a05a120bd3896eeb1ab28346c00e78543ff83df5):

* Annotations: benjiebob/BADJA ``joint_annotations/<seq>.json`` (commit
  bc8be92afc003a8e6985d2c2e19cf0f2401caa51), a list of ``{image_path, segmentation_path,
  joints: 37 × [row, col], visibility: 37 × 0/1}``; rows/cols are pixels of the DAVIS
  Full-Resolution frames (1920×1080). Only the 20 slots of ``SMALJointInfo.annotated_classes``
  (BADJA ``code/joint_catalog.py``) are annotated; both PIPs and this reader keep those 20.
* The track starts at the first annotated frame (the query); every later annotated frame is
  scored, for each joint visible in that frame (even one that was invisible at the query, which
  PIPs still tracks from the (0, 0) slot: give it a NaN prediction and it counts as a miss).
* Correct when ``distance < 0.2 · sqrt(area)`` (strict), ``area`` = number of non-zero pixels of
  that frame's GT segmentation at the resolution the distances are measured in (PIPs resizes the
  mask with nearest neighbour to its working size and takes ``segs > 0``). The PCK of a video is
  pooled over all scored (frame, joint) pairs; the benchmark number is the mean over videos.
* WLDO (benjiebob/WLDO ``wldo_regressor/metrics.py``) uses the same ``dist / sqrt(seg area) <
  thresh`` form, with α = 0.15, for single-image pose; the video-tracking papers use α = 0.2.

JHMDB (keypoint propagation as evaluated by CRW, ajabri/videowalk ``code/eval/eval_pck.py``,
commit 047f3f40135a4b1be2f837793b89c3dbfe7a6683, the protocol of TimeCycle/UVC/CRW):

* ``joint_positions.mat``: ``pos_img`` of shape (2, 15, T) holds MATLAB 1-based (x, y) pixels of the
  original frames; CRW subtracts 1, so :func:`load_jhmdb_joints` returns 0-based ``(y, x)``.
* Size = 0.6 × the diagonal of the bounding box of the frame's GT joints
  (``0.6 · ||(max x − min x, max y − min y)||``); correct when ``distance / size <= α``
  (inclusive); α ∈ {0.1, 0.2} is what is reported (CRW prints 0.1 … 0.5).
* The first frame (given as the query labels) is not scored; every joint of every later frame is
  (CRW's visibility flag comes from the prediction being non-negative, i.e. all joints in practice).
* Pooling: per joint over all frames of all videos, then the mean over the 15 joints.
* tapnet's own JHMDB PCK (``tapnet/training/supervised_point_prediction.py`` ``pck_evaluate``) uses
  the same size and ``<=`` but scores frame 0 too and drops joints outside the image at frame 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import scipy.io
from PIL import Image

from ditf_track.errors import InputError

#: (H, W) of the DAVIS Full-Resolution frames BADJA's joints are annotated in.
BADJA_FULL_RESOLUTION: tuple[int, int] = (1080, 1920)
#: The 20 annotated joint slots of the 37 (BADJA ``code/joint_catalog.py``, annotated_classes).
BADJA_JOINT_IDS: tuple[int, ...] = (
    8, 9, 10, 12, 13, 14, 15, 18, 19, 20, 22, 23, 24, 25, 28, 31, 32, 33, 35, 36,
)  # fmt: skip
#: Their names, in the same order (BADJA ``code/joint_catalog.py``, SMALJointCatalog).
BADJA_JOINT_NAMES: tuple[str, ...] = (
    "upper_right_1", "upper_right_2", "upper_right_3",
    "upper_left_1", "upper_left_2", "upper_left_3",
    "neck_lower",
    "lower_right_1", "lower_right_2", "lower_right_3",
    "lower_left_1", "lower_left_2", "lower_left_3",
    "tail_0", "tail_3", "tail_6",
    "jaw", "nose", "right_ear", "left_ear",
)  # fmt: skip
#: PCK threshold as a fraction of sqrt(GT mask area) (PIPs ``test_on_badja.py``).
BADJA_ALPHA = 0.2
#: JHMDB thresholds as fractions of 0.6 × the GT-joint box diagonal (CRW ``eval_pck.py``).
JHMDB_ALPHAS: tuple[float, ...] = (0.1, 0.2)
JHMDB_NUM_JOINTS = 15


class PCKCounts(TypedDict):
    """What :func:`pck` returns; the counts let callers pool over videos their own way."""

    PCK: float  # pooled over all visible (frame, joint) pairs; NaN when none is visible
    correct: np.ndarray  # (F, J) bool, False where not visible
    num_correct_per_joint: np.ndarray  # (J,) int
    num_visible_per_joint: np.ndarray  # (J,) int


def pck(
    pred_yx: np.ndarray,
    gt_yx: np.ndarray,
    visible: np.ndarray,
    thresholds: np.ndarray | float,
    *,
    inclusive: bool = False,
) -> PCKCounts:
    """Percentage of correct keypoints with a per-frame pixel threshold.

    Args:
        pred_yx: ``(F, J, 2)`` predicted ``(y, x)``; NaN counts as a miss.
        gt_yx: ``(F, J, 2)`` ground-truth ``(y, x)``.
        visible: ``(F, J)`` bool, which GT joints are scored.
        thresholds: ``(F,)`` pixels (or one number for all frames).
        inclusive: ``distance <= threshold`` (JHMDB/CRW) instead of ``<`` (BADJA/PIPs).
    """
    pred_yx = np.asarray(pred_yx, dtype=np.float64)
    gt_yx = np.asarray(gt_yx, dtype=np.float64)
    visible = np.asarray(visible, dtype=bool)
    if gt_yx.ndim != 3 or gt_yx.shape[-1] != 2:
        raise InputError(f"gt keypoints have shape {gt_yx.shape}; expected (F, J, 2) as (y, x)")
    if pred_yx.shape != gt_yx.shape or visible.shape != gt_yx.shape[:2]:
        raise InputError(
            f"predicted keypoints {pred_yx.shape} and visibility {visible.shape} do not match "
            f"the ground truth {gt_yx.shape}; pass (F, J, 2) and (F, J) for the same frames"
        )
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), gt_yx.shape[:1])
    dist = np.linalg.norm(pred_yx - gt_yx, axis=-1)
    close = dist <= thr[:, None] if inclusive else dist < thr[:, None]
    correct = close & visible
    num_visible = int(visible.sum())
    return {
        "PCK": correct.sum() / num_visible if num_visible else float("nan"),
        "correct": correct,
        "num_correct_per_joint": correct.sum(axis=0),
        "num_visible_per_joint": visible.sum(axis=0),
    }


# ------------------------------------------------------------------------------------- BADJA


@dataclass(frozen=True)
class BadjaFrame:
    """One annotated frame of a BADJA sequence.

    Attributes:
        frame_name: file stem of the frame, e.g. ``"00003"``.
        frame_index: the same as an int: the frame's index in the DAVIS sequence.
        joints: ``(20, 2)`` float64 ``(y, x)`` pixels at the chosen resolution, order of
            :data:`BADJA_JOINT_IDS`; meaningless where not visible.
        visible: ``(20,)`` bool.
        mask_path: the GT segmentation used for the area, or None if none was given.
        mask_area: non-zero pixels of that mask (at the same resolution as ``joints``), or None.
    """

    frame_name: str
    frame_index: int
    joints: np.ndarray
    visible: np.ndarray
    mask_path: Path | None
    mask_area: int | None


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except OSError as err:
        raise InputError(
            f"cannot read GT mask {path} ({err}); point mask_dir at the sequence's DAVIS "
            "Annotations folder (e.g. Annotations/480p/<seq>)"
        ) from err


def load_badja(
    json_path: str | Path,
    *,
    mask_dir: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    source_size: tuple[int, int] = BADJA_FULL_RESOLUTION,
) -> list[BadjaFrame]:
    """Read a BADJA ``joint_annotations/<seq>.json`` into frames sorted by index.

    Args:
        json_path: the BADJA annotation file.
        mask_dir: folder with the GT masks ``<frame_name>.png`` at the resolution to evaluate in
            (e.g. DAVIS ``Annotations/480p/dog``); gives each frame its ``mask_area``.
        image_size: (H, W) to express the joints in. None takes each mask's own size, or
            ``source_size`` without masks. The joints are scaled per axis, ``row · H / 1080`` and
            ``col · W / 1920``: for DAVIS 480p (854×480) that is 480/1080 and 854/1920, which
            differ by < 0.7 px at the right edge; all 191 visible joints of ``dog`` lie within
            3 px of the 480p GT mask either way (and only 34 do if read as (x, y)).
        source_size: (H, W) the annotations refer to (DAVIS Full-Resolution, 1080×1920).
    """
    json_path = Path(json_path)
    try:
        records = json.loads(json_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(
            f"cannot read BADJA annotations {json_path} ({err}); pass a joint_annotations/"
            "<seq>.json file from the BADJA repository"
        ) from err
    if not isinstance(records, list) or not records:
        raise InputError(f"BADJA file {json_path} holds no list of annotated frames")
    ids = np.array(BADJA_JOINT_IDS)
    frames = []
    for record in records:
        try:
            stem = Path(record["image_path"]).stem
            joints_rc = np.asarray(record["joints"], dtype=np.float64)[ids]
            visible = np.asarray(record["visibility"]).astype(bool)[ids]
            index = int(stem)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise InputError(
                f"BADJA file {json_path} has an entry that is not {{image_path: .../NNNNN.jpg, "
                f"joints: 37 x [row, col], visibility: 37 x 0/1}} ({err!r})"
            ) from err
        mask_path: Path | None = None
        mask_area: int | None = None
        size = image_size or source_size
        if mask_dir is not None:
            mask_path = Path(mask_dir) / f"{stem}.png"
            mask = _read_mask(mask_path)
            if image_size is not None and mask.shape[:2] != tuple(image_size):
                raise InputError(
                    f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image_size is "
                    f"{image_size[1]}x{image_size[0]}; give masks at the evaluation resolution "
                    "or leave image_size out to use theirs"
                )
            size = mask.shape[:2]
            mask_area = int(np.count_nonzero(mask))
        scale = np.array(size, dtype=np.float64) / np.array(source_size, dtype=np.float64)
        frames.append(BadjaFrame(stem, index, joints_rc * scale, visible, mask_path, mask_area))
    return sorted(frames, key=lambda f: f.frame_index)


def badja_pck(
    pred_yx: np.ndarray,
    frames: Sequence[BadjaFrame],
    *,
    alphas: Sequence[float] = (BADJA_ALPHA,),
    skip_query_frame: bool = True,
) -> dict[str, float]:
    """PCK of one BADJA video, ``{"PCK@0.2": ...}``: the PIPs protocol (see module docstring).

    Args:
        pred_yx: ``(F, 20, 2)`` predicted ``(y, x)`` at the annotated frames, in the order of
            ``frames`` (e.g. ``tracks[[f.frame_index for f in frames]]``), same resolution.
        frames: from :func:`load_badja` with ``mask_dir`` (the threshold needs the mask area).
        alphas: fractions of sqrt(mask area).
        skip_query_frame: do not score ``frames[0]``, where the track is initialised.
    """
    if not frames:
        raise InputError("no BADJA frames given; load them with load_badja(json, mask_dir=...)")
    if any(f.mask_area is None for f in frames):
        raise InputError(
            "BADJA PCK needs each frame's GT mask area; load the annotations with "
            "load_badja(..., mask_dir=<DAVIS Annotations/<res>/<seq>>)"
        )
    gt_yx = np.stack([f.joints for f in frames])
    visible = np.stack([f.visible for f in frames])
    if skip_query_frame:
        visible[0] = False
    area = np.array([f.mask_area for f in frames], dtype=np.float64)
    return {
        f"PCK@{alpha:g}": pck(pred_yx, gt_yx, visible, alpha * np.sqrt(area))["PCK"]
        for alpha in alphas
    }


# ------------------------------------------------------------------------------------- JHMDB


def load_jhmdb_joints(mat_path: str | Path) -> np.ndarray:
    """Read a JHMDB ``joint_positions.mat``: ``(T, 15, 2)`` float64 0-based ``(y, x)`` pixels.

    The file's ``pos_img`` is (2, 15, T) of 1-based (x, y); CRW's evaluation subtracts 1.
    """
    mat_path = Path(mat_path)
    try:
        pos_img = np.asarray(scipy.io.loadmat(mat_path)["pos_img"], dtype=np.float64)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(
            f"cannot read 'pos_img' from {mat_path} ({err!r}); pass a JHMDB "
            "joint_positions/<class>/<video>/joint_positions.mat"
        ) from err
    if pos_img.ndim != 3 or pos_img.shape[:2] != (2, JHMDB_NUM_JOINTS):
        raise InputError(
            f"'pos_img' in {mat_path} has shape {pos_img.shape}; expected (2, 15, T) as (x, y)"
        )
    return np.transpose(pos_img[::-1], (2, 1, 0)) - 1.0


def jhmdb_box_size(gt_yx: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """``(F,)`` 0.6 × the diagonal of each frame's box around its (visible) GT joints."""
    gt_yx = np.asarray(gt_yx, dtype=np.float64)
    vis = np.ones(gt_yx.shape[:2], bool) if visible is None else np.asarray(visible, bool)
    lo = np.where(vis[..., None], gt_yx, np.inf).min(axis=1)
    hi = np.where(vis[..., None], gt_yx, -np.inf).max(axis=1)
    return 0.6 * np.linalg.norm(hi - lo, axis=-1)


def jhmdb_pck(
    pred_yx: Sequence[np.ndarray] | np.ndarray,
    gt_yx: Sequence[np.ndarray] | np.ndarray,
    *,
    alphas: Sequence[float] = JHMDB_ALPHAS,
    visible: Sequence[np.ndarray] | None = None,
    skip_query_frame: bool = True,
) -> dict[str, float]:
    """JHMDB PCK over a set of videos, ``{"PCK@0.1": ..., "PCK@0.2": ...}`` (CRW protocol).

    Args:
        pred_yx: per video ``(T, 15, 2)`` predicted ``(y, x)`` pixels of the original frames
            (one array of that shape is taken as a single video).
        gt_yx: per video ``(T, 15, 2)`` from :func:`load_jhmdb_joints`.
        alphas: fractions of 0.6 × the GT-joint box diagonal.
        visible: optional per video ``(T, 15)`` bool (default: every joint, as CRW).
        skip_query_frame: do not score frame 0, whose labels seed the propagation.

    Each joint's PCK is pooled over all scored frames of all videos; the result is the mean over
    joints (a joint never scored is left out of the mean).
    """
    preds = [pred_yx] if isinstance(pred_yx, np.ndarray) and pred_yx.ndim == 3 else pred_yx
    gts = [gt_yx] if isinstance(gt_yx, np.ndarray) and gt_yx.ndim == 3 else gt_yx
    if len(preds) != len(gts) or (visible is not None and len(visible) != len(gts)):
        raise InputError(
            f"got predictions for {len(preds)} videos and ground truth for {len(gts)}; pass one "
            "(T, 15, 2) array per video in the same order"
        )
    for gt in gts:
        if np.ndim(gt) != 3 or np.shape(gt)[1:] != (JHMDB_NUM_JOINTS, 2):
            raise InputError(
                f"JHMDB ground truth has shape {np.shape(gt)}; expected (T, 15, 2) as (y, x) "
                "from load_jhmdb_joints"
            )
    result = {}
    for alpha in alphas:
        hits = np.zeros(JHMDB_NUM_JOINTS, np.int64)
        total = np.zeros(JHMDB_NUM_JOINTS, np.int64)
        for i, (pred, gt) in enumerate(zip(preds, gts)):
            gt = np.asarray(gt, dtype=np.float64)
            vis = np.ones(gt.shape[:2], bool) if visible is None else np.array(visible[i], bool)
            size = jhmdb_box_size(gt, vis)
            if skip_query_frame:
                vis[0] = False
            counts = pck(pred, gt, vis, alpha * size, inclusive=True)
            hits += counts["num_correct_per_joint"]
            total += counts["num_visible_per_joint"]
        scored = total > 0
        result[f"PCK@{alpha:g}"] = (
            float(np.mean(hits[scored] / total[scored])) if scored.any() else float("nan")
        )
    return result
