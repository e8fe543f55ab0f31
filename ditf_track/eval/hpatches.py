"""HPatches homography accuracy: mutual-nearest-neighbour matches, a homography, corner error.

For each sequence, image 1 is matched to images 2–6 (5 pairs per sequence). Keypoints are
matched by mutual nearest neighbours on cosine similarity, a homography is fitted with OpenCV,
and the pair is scored by the mean distance between the four corners of image 1 mapped by the
estimated and by the ground-truth homography. Accuracy at ε is the fraction of pairs whose corner
error is at most ε pixels, for all pairs and for the illumination (``i_*``) and viewpoint
(``v_*``) sequences separately.

Conventions, checked in DIFT ``eval_homography.py`` and ``eval_hpatches.py`` (github
Tsingularity/dift, commit 9421eb2) and D2-Net ``hpatches_sequences/`` (github
mihaidusmanu/d2-net, commit 0a3356c); read for facts, nothing copied:

* Layout (official ``hpatches-sequences-release``): ``<seq>/1.ppm … 6.ppm`` and text files
  ``H_1_2 … H_1_6``, each a 3×3 homography mapping image-1 pixels (x, y, 1) to image k.
* Keypoints live at the *original* resolution throughout: DIFT reads SuperPoint top-1k keypoints
  detected on the original images and samples descriptors from the feature map of the 768×768
  resized image with ``F.grid_sample`` at coordinates normalised by ((W−1)/2, (H−1)/2) of the
  original image, so nothing is scaled back. :func:`ditf_track.nn.sample_descriptors` offers
  that normalisation (``align="dift"``) and the pixel-centre one (``align="pixel_centers"``,
  the default).
* Duplicate keypoint coordinates are dropped per image (DIFT ``np.unique(..., axis=0)``); a
  duplicate has the same sampled descriptor, so which copy survives does not matter.
* Matching: mutual nearest neighbours of the cosine similarity of L2-normalised descriptors
  (:func:`ditf_track.nn.mutual_nearest_neighbours_np`).
* ``cv2.findHomography(pts_a, pts_b, cv2.LMEDS, ransacReprojThreshold=3)`` with (x, y) points
  (DIFT's default for DIFT-SD; its ADM variant uses ``cv2.RANSAC`` with the same threshold).
  OpenCV documents the threshold as used by RANSAC and RHO only, so LMEDS ignores it.
* Corner error: the corners (0, 0), (w−1, 0), (0, h−1), (w−1, h−1) of image 1 at its original
  size, mapped by the estimate and by ``H_1_k``; mean Euclidean distance; correct when
  ``error <= ε`` for ε = 1, 3, 5 px. Overall accuracy pools all pairs.
* Failures: DIFT does not handle them (a None homography would crash its script). Here a pair
  with fewer than 4 matches or no homography from OpenCV gets an infinite corner error, counts as
  wrong at every ε and is reported in ``num_failed``.
* Sequence set: the release has 116 sequences. D2-Net's ``download.sh`` deletes the 8 whose
  images exceed 1600×1200 (:data:`HIGH_RESOLUTION_SEQUENCES`: 5 ``i_``, 3 ``v_``), and its
  notebook counts the rest as ``n_i = 52``, ``n_v = 56`` (so the release has 57 ``i_`` and 59
  ``v_``). DIFT's default ``--hpatches_path`` is ``…/d2-net/hpatches_sequences/
  hpatches-sequences-release``, where that script leaves the 108. ditf-track uses all 116 by
  default and leaves the 8 out with ``exclude_high_res=True`` (compare numbers only on one set).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from ..errors import InputError
from ..nn import mutual_nearest_neighbours_np
from ..nn import sample_descriptors as sample_descriptors  # its DIFT alignment, re-exported

# Spelled as in the release (D2-Net hpatches_sequences/download.sh removes exactly these).
HIGH_RESOLUTION_SEQUENCES: tuple[str, ...] = (
    "i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
    "v_artisans", "v_astronautis", "v_talent",
)  # fmt: skip
NUM_SEQUENCES = 116
NUM_SEQUENCES_WITHOUT_HIGH_RES = 108
THRESHOLDS_PX: tuple[int, ...] = (1, 3, 5)
MAX_KEYPOINTS = 1000  # DIFT and the DiTF paper: SuperPoint's top 1,000 keypoints per image
REPROJ_THRESHOLD_PX = 3.0

HomographyMethod = Literal["LMEDS", "RANSAC"]
_CV2_METHODS = {"LMEDS": cv2.LMEDS, "RANSAC": cv2.RANSAC}
SequenceKind = Literal["illumination", "viewpoint"]


@dataclass(frozen=True, eq=False)
class HPatchesSequence:
    """One sequence: six image paths (index 0 is image 1) and ``H_1_k`` for k = 2..6.

    ``homographies[k - 2]`` is the ``(3, 3) float64`` homography from image 1 to image k in
    (x, y, 1) pixel coordinates, as stored in the release.
    """

    name: str
    images: tuple[Path, ...]
    homographies: tuple[np.ndarray, ...]

    @property
    def kind(self) -> SequenceKind:
        return "illumination" if self.name.startswith("i_") else "viewpoint"

    def image_hw(self, index: int) -> tuple[int, int]:
        """(H, W) of image ``index`` (1..6), read from the file header."""
        with Image.open(self.images[index - 1]) as im:
            w, h = im.size
        return int(h), int(w)

    def read_image(self, index: int) -> np.ndarray:
        """Image ``index`` (1..6) as ``(H, W, 3) uint8`` RGB."""
        with Image.open(self.images[index - 1]) as im:
            return np.asarray(im.convert("RGB"))

    def homography(self, index: int) -> np.ndarray:
        """``H_1_<index>`` for index 2..6."""
        return self.homographies[index - 2]


def load_hpatches(root: str | Path, exclude_high_res: bool = False) -> list[HPatchesSequence]:
    """Sequences under ``root`` (the ``hpatches-sequences-release`` folder), sorted by name.

    Every sub-folder must be an ``i_*`` or ``v_*`` sequence with ``1.ppm … 6.ppm`` and
    ``H_1_2 … H_1_6``. With ``exclude_high_res`` the 8 sequences of
    :data:`HIGH_RESOLUTION_SEQUENCES` are left out. Warns when the full set is asked for but some
    of those 8 are missing (as in D2-Net's trimmed download), because the count then is not 116.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"HPatches folder not found at {root}; pass hpatches-sequences-release")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    sequences = []
    for folder in folders:
        if not folder.name.startswith(("i_", "v_")):
            raise InputError(
                f"{folder} is not an HPatches sequence (names start with i_ or v_); "
                "pass the hpatches-sequences-release folder itself"
            )
        if exclude_high_res and folder.name in HIGH_RESOLUTION_SEQUENCES:
            continue
        sequences.append(_load_sequence(folder))
    if not sequences:
        raise InputError(f"no HPatches sequences under {root}; pass hpatches-sequences-release")
    names = {s.name for s in sequences}
    missing = [n for n in HIGH_RESOLUTION_SEQUENCES if n not in names]
    if not exclude_high_res and missing:
        warnings.warn(
            f"{len(missing)} of the 8 high-resolution HPatches sequences are missing under {root} "
            f"({len(sequences)} sequences loaded, not {NUM_SEQUENCES}); "
            "use the full release or pass exclude_high_res=True",
            stacklevel=2,
        )
    return sequences


def _load_sequence(folder: Path) -> HPatchesSequence:
    images = tuple(folder / f"{i}.ppm" for i in range(1, 7))
    for path in images:
        if not path.is_file():
            raise InputError(f"HPatches image {path} is missing; re-extract the release")
    homographies = []
    for k in range(2, 7):
        path = folder / f"H_1_{k}"
        try:
            h = np.loadtxt(path, dtype=np.float64)
        except (OSError, ValueError) as exc:
            raise InputError(
                f"cannot read homography {path}: {exc}; re-extract the release"
            ) from exc
        if h.shape != (3, 3):
            raise InputError(f"homography {path} has shape {h.shape}, expected 3x3")
        homographies.append(h)
    return HPatchesSequence(folder.name, images, tuple(homographies))


def deduplicate_keypoints(
    keypoints_yx: np.ndarray, descriptors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated keypoint coordinates, keeping the first: ``(K, 2)``, ``(K, C)``."""
    kp = np.asarray(keypoints_yx)
    _, first = np.unique(kp, axis=0, return_index=True)
    keep = np.sort(first)
    return kp[keep], np.asarray(descriptors)[keep]


def select_top_keypoints(
    keypoints_yx: np.ndarray, scores: np.ndarray, k: int = MAX_KEYPOINTS
) -> np.ndarray:
    """Indices of the ``k`` highest-scoring keypoints, best first: ``(min(k, N),) int64``."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return order[: min(k, len(keypoints_yx))]


def estimate_homography(
    kp_a_yx: np.ndarray,
    kp_b_yx: np.ndarray,
    matches: np.ndarray,
    method: HomographyMethod = "LMEDS",
    reproj_threshold: float = REPROJ_THRESHOLD_PX,
) -> np.ndarray | None:
    """Homography from image a to image b, ``(3, 3) float64`` in (x, y, 1) pixels, or None.

    ``kp_*_yx`` are ``(N, 2)`` / ``(M, 2)`` keypoints as (y, x); ``matches`` is ``(K, 2)`` index
    pairs. None when there are fewer than 4 matches or OpenCV finds no homography.
    """
    if method not in _CV2_METHODS:
        raise ValueError(f"unknown homography method {method!r}; use LMEDS or RANSAC")
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if len(matches) < 4:
        return None
    # OpenCV wants (x, y)
    pts_a = np.asarray(kp_a_yx, dtype=np.float32)[matches[:, 0]][:, ::-1].reshape(-1, 1, 2)
    pts_b = np.asarray(kp_b_yx, dtype=np.float32)[matches[:, 1]][:, ::-1].reshape(-1, 1, 2)
    h, _ = cv2.findHomography(
        np.ascontiguousarray(pts_a),
        np.ascontiguousarray(pts_b),
        _CV2_METHODS[method],
        ransacReprojThreshold=reproj_threshold,
    )
    if h is None or not np.all(np.isfinite(h)):
        return None
    return np.asarray(h, dtype=np.float64)


def image_corners_xy(h: int, w: int) -> np.ndarray:
    """Corners of an (h, w) image, ``(4, 2)`` (x, y): (0,0), (w−1,0), (0,h−1), (w−1,h−1)."""
    return np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)


def _warp_xy(homography: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
    homog = np.concatenate([points_xy, np.ones((len(points_xy), 1))], axis=1) @ homography.T
    return homog[:, :2] / homog[:, 2:]


def corner_error(H_est: np.ndarray | None, H_gt: np.ndarray, h: int, w: int) -> float:
    """Mean distance in pixels between image-1 corners mapped by ``H_est`` and by ``H_gt``.

    ``h, w`` are image 1's original size; both homographies map (x, y, 1) of image 1 to image k.
    A missing estimate (None) gives ``inf``.
    """
    if H_est is None:
        return math.inf
    corners = image_corners_xy(h, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = _warp_xy(np.asarray(H_est, dtype=np.float64), corners) - _warp_xy(
            np.asarray(H_gt, dtype=np.float64), corners
        )
        err = float(np.mean(np.linalg.norm(diff, axis=1)))
    return err if math.isfinite(err) else math.inf


@dataclass(frozen=True)
class HomographyPairResult:
    """One scored pair: corner error (``inf`` on failure), matches used, the estimate or None."""

    corner_error: float
    num_matches: int
    homography: np.ndarray | None


def evaluate_homography_pair(
    kp_a_yx: np.ndarray,
    desc_a: np.ndarray,
    kp_b_yx: np.ndarray,
    desc_b: np.ndarray,
    H_gt: np.ndarray,
    image_a_hw: tuple[int, int],
    method: HomographyMethod = "LMEDS",
    deduplicate: bool = True,
) -> HomographyPairResult:
    """The whole per-pair protocol: de-duplicate, MNN match, fit, corner error.

    Keypoints are ``(N, 2)`` (y, x) at the original resolution of their images, descriptors
    ``(N, C)``; ``image_a_hw`` is image 1's (H, W).
    """
    if deduplicate:
        kp_a_yx, desc_a = deduplicate_keypoints(kp_a_yx, desc_a)
        kp_b_yx, desc_b = deduplicate_keypoints(kp_b_yx, desc_b)
    matches = mutual_nearest_neighbours_np(desc_a, desc_b)
    h_est = estimate_homography(kp_a_yx, kp_b_yx, matches, method=method)
    err = corner_error(h_est, H_gt, *image_a_hw)
    return HomographyPairResult(err, len(matches), h_est)


@dataclass
class HomographyAccuracy:
    """Collects per-pair corner errors and reports accuracy at each ε.

    :meth:`result` returns ``{"all": {1: acc, 3: acc, 5: acc}, "illumination": {...},
    "viewpoint": {...}, "method": "LMEDS", "reproj_threshold_px": 3.0, "thresholds_px": [1, 3, 5],
    "num_pairs": {"all": n, "illumination": n_i, "viewpoint": n_v}, "num_sequences": {...},
    "num_failed": {...}, "mean_corner_error": {...}}``. Accuracies are fractions in [0, 1] keyed
    by the integer ε (``json.dump`` writes those keys as strings); a group with no pairs has NaN.
    ``mean_corner_error`` averages the finite errors only.
    """

    method: HomographyMethod = "LMEDS"
    thresholds_px: tuple[int, ...] = THRESHOLDS_PX
    reproj_threshold_px: float = REPROJ_THRESHOLD_PX
    records: list[tuple[str, int, float]] = field(default_factory=list)

    def add(self, sequence: str, target_index: int, error: float) -> None:
        """Record the corner error of pair (1, ``target_index``) of sequence ``i_*``/``v_*``."""
        if not sequence.startswith(("i_", "v_")):
            raise ValueError(f"sequence name {sequence!r} must start with i_ or v_")
        self.records.append((sequence, int(target_index), float(error)))

    def result(self) -> dict[str, Any]:
        if not self.records:
            raise InputError("no HPatches pairs were scored; check the dataset root")
        groups: dict[str, list[tuple[str, int, float]]] = {
            "all": self.records,
            "illumination": [r for r in self.records if r[0].startswith("i_")],
            "viewpoint": [r for r in self.records if r[0].startswith("v_")],
        }
        out: dict[str, Any] = {}
        for group, recs in groups.items():
            errors = np.array([r[2] for r in recs], dtype=np.float64)
            out[group] = {
                eps: float(np.mean(errors <= eps)) if len(errors) else math.nan
                for eps in self.thresholds_px
            }
        out["method"] = self.method
        out["reproj_threshold_px"] = self.reproj_threshold_px
        out["thresholds_px"] = list(self.thresholds_px)
        out["num_pairs"] = {g: len(r) for g, r in groups.items()}
        out["num_sequences"] = {g: len({s for s, _, _ in r}) for g, r in groups.items()}
        out["num_failed"] = {g: sum(1 for *_, e in r if math.isinf(e)) for g, r in groups.items()}
        out["mean_corner_error"] = {g: _finite_mean([e for *_, e in r]) for g, r in groups.items()}
        return out


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan
