"""Semantic correspondence on image pairs: PCK and loaders for SPair-71k, PF-PASCAL and AP-10K.

A prediction is one target-image location per source keypoint. It is correct at level α when its
distance to the ground-truth target keypoint is within α times a reference length, the
*threshold size*. The benchmarks differ in that length, in the comparison at the boundary and in
the α they report; :class:`PCKProtocol` carries those choices and the constants below fix them.
Every loader yields :class:`CorrespondencePair` records with points as **(y, x) pixels of the
original images** (the files store x, y; the conversion happens in the loaders and nowhere else).

Conventions, each checked in the code named (read for facts; nothing copied):

* SPair-71k — DIFT ``eval_spair.py`` (github Tsingularity/dift, commit 9421eb2) and the DiTF copy of
  it (github ganchaofan0000/DiTF ``eval_spair.py``, commit 08658e6):

  - split ``PairAnnotation/test``; ``src_kps``/``trg_kps`` hold only the keypoints visible in both
    images, as integer [x, y] pixels at the original resolution (DIFT indexes its full-size
    feature map with them directly, so they are 0-based);
  - threshold size = max(x2 − x1, y2 − y1) of the *target* ``trg_bndbox`` = [x1, y1, x2, y2], with
    no +1;
  - a point is correct when ``distance / size <= α`` (inclusive);
  - "per image" = mean over all pairs of each pair's accuracy; "per point" = correct points over
    all points; DiTF additionally prints the unweighted mean over the 18 categories of each
    ("Mean per image/point"), reported here as ``*_category_mean``.
  - GeoAware-SC (github Junyi42/GeoAware-SC ``utils/utils_dataset.py`` and ``pck_train.py``,
    commit 99fd6b6) uses the same bbox size but a *strict* ``distance < α·size``; its overall
    numbers are category results weighted by pair (per image) or point (per point) counts, which
    equal the pooled means reported here.

* PF-PASCAL — GeoAware-SC ``load_pascal_data`` and ``pck_train.py``: the threshold size is the
  **image** size, max(H, W) of the target image (``BBOX_THRE`` is forced off for ``pascal``; the
  threshold is α·``ANNO_SIZE`` on images resized so that the long side is ``ANNO_SIZE``, i.e.
  α·max(H, W) at the original resolution); strict ``<``; α ∈ {0.05, 0.10, 0.15}.
  Pairs come from ``test_pairs_pf_pascal.csv`` (the CNNGeometric/weakalign split, downloaded by
  GeoAware-SC ``data/prepare_pfpascal.sh``), read by column position as weakalign
  ``data/pf_dataset.py`` (commit 52505ea) and GeoAware-SC do: source image, target image, class
  id (1-based, PASCAL VOC order), then XA, YA, XB, YB, each a ``;``-separated list of pixel
  coordinates. Image paths are relative to the folder that holds ``PF-dataset-PASCAL``. The test
  and val CSVs carry no ``flip`` column (only the training list does, and it has no points).
  Coordinates are used as stored (PF-PASCAL's MATLAB annotations), like every loader above.
  weakalign's own "scnet" procedure resizes both images anisotropically to 224×224 and uses 224;
  that is a different protocol and is not used here.

* AP-10K — GeoAware-SC ``prepare_ap10k.ipynb`` (the published pair split) and ``load_ap10k_data``:
  per-image annotations ``ImageAnnotation/<family>/<species>/<id>.json`` (a COCO annotation merged
  with its image entry: ``keypoints`` = 17 × [x, y, v], ``bbox`` = [x, y, w, h], ``width``,
  ``height``), images at the same path under ``JPEGImages`` with ``.jpg``, and one file per pair
  ``PairAnnotation/<split>/<src>-<trg>:<category>.json`` holding ``src_json_path`` and
  ``trg_json_path`` (paths written relative to the GeoAware-SC checkout, ``data/ap-10k/…``).
  Splits: ``test`` (intra-species; category = species), ``test_cross_species`` (category =
  family) and ``test_cross_family`` (category = ``all``); a keypoint counts when visible in both
  images (v > 0); threshold size = max(w, h) of the target bbox; strict ``<``; reported per image
  at α ∈ {0.01, 0.05, 0.10}.

Metric values are fractions in [0, 1]; papers print them × 100.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..errors import InputError

ThresholdReference = Literal["target_bbox", "target_image"]
BBox = tuple[float, float, float, float]

SPAIR_CATEGORIES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
)  # fmt: skip
SPAIR_SPLITS: tuple[str, ...] = ("trn", "val", "test")

# PASCAL VOC class order; the CSV's class column is the 1-based index into it.
PF_PASCAL_CATEGORIES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

AP10KSubset = Literal["intra-species", "cross-species", "cross-family"]
AP10K_SUBSETS: tuple[str, ...] = ("intra-species", "cross-species", "cross-family")
_AP10K_SPLIT_SUFFIX = {
    "intra-species": "",
    "cross-species": "_cross_species",
    "cross-family": "_cross_family",
}


@dataclass(frozen=True)
class PCKProtocol:
    """How one benchmark scores PCK.

    ``threshold_reference`` names what the threshold size of a pair is measured on;
    ``inclusive`` is True for ``distance / size <= α`` (DIFT) and False for
    ``distance < α·size`` (GeoAware-SC).
    """

    benchmark: str
    alphas: tuple[float, ...]
    threshold_reference: ThresholdReference
    inclusive: bool
    source: str

    @property
    def distance_rule(self) -> str:
        return "distance / size <= alpha" if self.inclusive else "distance < alpha * size"


SPAIR_PROTOCOL = PCKProtocol(
    benchmark="spair-71k",
    alphas=(0.01, 0.05, 0.10, 0.15),
    threshold_reference="target_bbox",
    inclusive=True,
    source="DIFT eval_spair.py (Tsingularity/dift 9421eb2); DiTF eval_spair.py (08658e6)",
)
PF_PASCAL_PROTOCOL = PCKProtocol(
    benchmark="pf-pascal",
    alphas=(0.05, 0.10, 0.15),
    threshold_reference="target_image",
    inclusive=False,
    source="GeoAware-SC pck_train.py / utils/utils_dataset.py (Junyi42/GeoAware-SC 99fd6b6)",
)
AP10K_PROTOCOL = PCKProtocol(
    benchmark="ap-10k",
    alphas=(0.01, 0.05, 0.10),
    threshold_reference="target_bbox",
    inclusive=False,
    source="GeoAware-SC pck_train.py / utils/utils_dataset.py (Junyi42/GeoAware-SC 99fd6b6)",
)

PROTOCOLS: dict[str, PCKProtocol] = {
    p.benchmark: p for p in (SPAIR_PROTOCOL, PF_PASCAL_PROTOCOL, AP10K_PROTOCOL)
}


@dataclass(frozen=True, eq=False)
class CorrespondencePair:
    """One annotated image pair.

    ``source_points`` and ``target_points`` are ``(N, 2) float64`` as (y, x) pixels of the
    original images, row i of one corresponding to row i of the other; ``valid`` is ``(N,) bool``
    (the keypoint is annotated in both images). ``threshold_size`` is the PCK reference length in
    target-image pixels (α multiplies it). Boxes are (y0, x0, y1, x1) in original pixels, or None
    where the dataset's protocol does not use one. ``*_hw`` are the original image sizes (H, W).
    """

    pair_id: str
    category: str
    source_image: Path
    target_image: Path
    source_points: np.ndarray
    target_points: np.ndarray
    valid: np.ndarray
    threshold_size: float
    source_hw: tuple[int, int]
    target_hw: tuple[int, int]
    source_bbox: BBox | None = None
    target_bbox: BBox | None = None

    @property
    def num_valid(self) -> int:
        return int(np.count_nonzero(self.valid))


def bbox_size(bbox_yxyx: Sequence[float]) -> float:
    """Threshold size of a (y0, x0, y1, x1) box: max(y1 − y0, x1 − x0), without +1.

    DIFT and GeoAware-SC both take the plain coordinate differences of SPair's box.
    """
    y0, x0, y1, x1 = (float(v) for v in bbox_yxyx)
    return max(y1 - y0, x1 - x0)


def pck_key(kind: str, alpha: float) -> str:
    """Metric key for one α, e.g. ``pck_key("pck_per_point", 0.1) == "pck_per_point@0.10"``."""
    return f"{kind}@{alpha:.2f}"


def correct_keypoints(
    pred_yx: np.ndarray,
    gt_yx: np.ndarray,
    threshold_size: float | np.ndarray,
    alphas: Sequence[float],
    *,
    inclusive: bool = True,
) -> np.ndarray:
    """Which predictions are correct at each α: ``(A, N) bool``.

    ``pred_yx`` and ``gt_yx`` are ``(N, 2)`` as (y, x) in the same image's pixels;
    ``threshold_size`` is a scalar or ``(N,)``. ``inclusive`` picks DIFT's
    ``distance / size <= α`` (True) or GeoAware-SC's ``distance < α·size`` (False); the two forms
    are kept literally so that ties at the boundary resolve as in each reference.
    """
    pred = np.asarray(pred_yx, dtype=np.float64).reshape(-1, 2)
    gt = np.asarray(gt_yx, dtype=np.float64).reshape(-1, 2)
    if pred.shape != gt.shape:
        raise ValueError(f"pred_yx {pred.shape} and gt_yx {gt.shape} must have the same shape")
    size = np.asarray(threshold_size, dtype=np.float64)
    if np.any(size <= 0):
        raise ValueError(f"threshold_size must be positive, got {threshold_size!r}")
    dist = np.sqrt(np.sum((pred - gt) ** 2, axis=1))
    alpha = np.asarray(alphas, dtype=np.float64)[:, None]
    if inclusive:
        return np.asarray((dist / size)[None, :] <= alpha)
    return np.asarray(dist[None, :] < alpha * size)


def pck_correspondence(
    pred_yx: np.ndarray,
    gt_yx: np.ndarray,
    threshold_size: float | np.ndarray,
    alphas: Sequence[float] = (0.10,),
    *,
    valid: np.ndarray | None = None,
    inclusive: bool = True,
) -> np.ndarray:
    """Fraction of correct keypoints of one pair at each α: ``(A,) float64``.

    Points with ``valid`` False are ignored; with no point left every entry is 0.0 (nothing was
    found). Arguments as in :func:`correct_keypoints`.
    """
    correct = correct_keypoints(pred_yx, gt_yx, threshold_size, alphas, inclusive=inclusive)
    if valid is not None:
        correct = correct[:, np.asarray(valid, dtype=bool).reshape(-1)]
    if correct.shape[1] == 0:
        return np.zeros(len(alphas))
    return np.asarray(correct.mean(axis=1), dtype=np.float64)


@dataclass(frozen=True)
class PairRecord:
    """What the accumulator keeps per pair: correct counts per α out of ``num_points``."""

    pair_id: str
    category: str
    num_points: int
    num_correct: tuple[int, ...]


@dataclass
class PCKAccumulator:
    """Collects per-pair PCK and produces the benchmark's summary.

    ``add(pair, pred)`` scores one pair; :meth:`result` returns a flat dict (see there) from which
    the runner writes ``metrics.json``, and :meth:`category_rows` the per-category CSV rows.
    """

    protocol: PCKProtocol
    records: list[PairRecord] = field(default_factory=list)

    def add(self, pair: CorrespondencePair, pred_target_yx: np.ndarray) -> np.ndarray:
        """Score predicted target points ``(N, 2)`` (y, x) for ``pair``; returns ``(A,)``."""
        return self.add_points(
            pair.category,
            pred_target_yx,
            pair.target_points,
            pair.threshold_size,
            valid=pair.valid,
            pair_id=pair.pair_id,
        )

    def add_points(
        self,
        category: str,
        pred_yx: np.ndarray,
        gt_yx: np.ndarray,
        threshold_size: float,
        *,
        valid: np.ndarray | None = None,
        pair_id: str | None = None,
    ) -> np.ndarray:
        """Score one pair given its arrays; returns its ``(A,)`` accuracy (0.0 with no points)."""
        correct = correct_keypoints(
            pred_yx, gt_yx, threshold_size, self.protocol.alphas, inclusive=self.protocol.inclusive
        )
        if valid is not None:
            correct = correct[:, np.asarray(valid, dtype=bool).reshape(-1)]
        counts = tuple(int(c) for c in correct.sum(axis=1))
        n = int(correct.shape[1])
        self.records.append(
            PairRecord(pair_id or f"pair{len(self.records):06d}", category, n, counts)
        )
        return np.array(counts, dtype=np.float64) / n if n else np.zeros(len(counts))

    def result(self) -> dict[str, Any]:
        """The summary, keyed for ``metrics.json``.

        Keys: ``benchmark``, ``alphas``, ``threshold_reference``, ``distance_rule``,
        ``num_pairs``, ``num_points``, ``num_categories``, ``num_pairs_without_points`` (skipped in
        the per-image means), and for each α (``pck_key`` format, e.g. ``@0.10``):
        ``pck_per_point@α`` (pooled over all points), ``pck_per_image@α`` (mean over pairs),
        ``pck_per_point_category_mean@α`` and ``pck_per_image_category_mean@α`` (unweighted means
        over categories); ``per_category`` maps each category to ``num_pairs``, ``num_points`` and
        its own ``pck_per_point@α`` / ``pck_per_image@α``.
        """
        if not self.records:
            raise InputError(
                f"no {self.protocol.benchmark} pairs were scored; check the dataset root and split"
            )
        alphas = self.protocol.alphas
        by_cat: dict[str, list[PairRecord]] = {}
        for rec in self.records:
            by_cat.setdefault(rec.category, []).append(rec)

        overall = _summarise(self.records, alphas)
        per_category = {cat: _summarise(recs, alphas) for cat, recs in sorted(by_cat.items())}
        out: dict[str, Any] = {
            "benchmark": self.protocol.benchmark,
            "alphas": list(alphas),
            "threshold_reference": self.protocol.threshold_reference,
            "distance_rule": self.protocol.distance_rule,
            "num_pairs": overall["num_pairs"],
            "num_points": overall["num_points"],
            "num_categories": len(per_category),
            "num_pairs_without_points": sum(1 for r in self.records if r.num_points == 0),
        }
        for alpha in alphas:
            for kind in ("pck_per_point", "pck_per_image"):
                key = pck_key(kind, alpha)
                out[key] = overall[key]
                values = [v[key] for v in per_category.values() if not math.isnan(v[key])]
                out[pck_key(f"{kind}_category_mean", alpha)] = (
                    float(np.mean(values)) if values else math.nan
                )
        out["per_category"] = per_category
        return out

    def category_rows(self) -> list[dict[str, Any]]:
        """One row per category (``category``, counts, ``pck_per_*@α``) for a CSV table."""
        per_category = self.result()["per_category"]
        return [{"category": cat, **vals} for cat, vals in per_category.items()]


def _summarise(records: Sequence[PairRecord], alphas: Sequence[float]) -> dict[str, Any]:
    num_points = sum(r.num_points for r in records)
    scored = [r for r in records if r.num_points > 0]
    out: dict[str, Any] = {"num_pairs": len(records), "num_points": num_points}
    for i, alpha in enumerate(alphas):
        correct = sum(r.num_correct[i] for r in records)
        out[pck_key("pck_per_point", alpha)] = correct / num_points if num_points else math.nan
        out[pck_key("pck_per_image", alpha)] = (
            float(np.mean([r.num_correct[i] / r.num_points for r in scored]))
            if scored
            else math.nan
        )
    return out


# ----------------------------------------------------------------------------------------------
# Loaders


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read annotation {path}: {exc}; re-extract the dataset") from exc


def _xy_to_yx(points_xy: Any, where: Path | str) -> np.ndarray:
    arr = np.asarray(points_xy, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"keypoints in {where} have shape {arr.shape}, expected (N, 2) x, y pairs")
    return arr[:, ::-1].copy()


def _require_dir(path: Path, what: str, fix: str) -> None:
    if not path.is_dir():
        raise InputError(f"{what} not found at {path}; {fix}")


def load_spair_pairs(
    root: str | Path, split: str = "test", categories: Iterable[str] | None = None
) -> list[CorrespondencePair]:
    """SPair-71k pairs from ``root/PairAnnotation/<split>/*.json``, sorted by file name.

    Images are ``root/JPEGImages/<category>/<imname>``. Every pair keypoint is valid (SPair lists
    only keypoints annotated in both images). ``threshold_size`` = :func:`bbox_size` of the
    target box; ``pair_id`` is the annotation file's stem.
    """
    root = Path(root)
    if split not in SPAIR_SPLITS:
        raise InputError(f"unknown SPair-71k split {split!r}; use one of {', '.join(SPAIR_SPLITS)}")
    pair_dir = root / "PairAnnotation" / split
    _require_dir(pair_dir, "SPair-71k pair annotations", "pass the SPair-71k folder as the root")
    wanted = set(categories) if categories is not None else None
    pairs = []
    for path in sorted(pair_dir.glob("*.json")):
        data = _read_json(path)
        try:
            category = str(data["category"])
            src_pts = _xy_to_yx(data["src_kps"], path)
            trg_pts = _xy_to_yx(data["trg_kps"], path)
            src_box = _spair_box(data["src_bndbox"])
            trg_box = _spair_box(data["trg_bndbox"])
            src_w, src_h = (int(v) for v in data["src_imsize"][:2])
            trg_w, trg_h = (int(v) for v in data["trg_imsize"][:2])
            src_name, trg_name = str(data["src_imname"]), str(data["trg_imname"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"SPair-71k annotation {path} lacks or mangles field {exc}; re-extract the dataset"
            ) from exc
        if wanted is not None and category not in wanted:
            continue
        if src_pts.shape != trg_pts.shape:
            raise InputError(
                f"{path} has {len(src_pts)} source but {len(trg_pts)} target keypoints; "
                "re-extract the dataset"
            )
        pairs.append(
            CorrespondencePair(
                pair_id=path.stem,
                category=category,
                source_image=root / "JPEGImages" / category / src_name,
                target_image=root / "JPEGImages" / category / trg_name,
                source_points=src_pts,
                target_points=trg_pts,
                valid=np.ones(len(src_pts), dtype=bool),
                threshold_size=bbox_size(trg_box),
                source_hw=(src_h, src_w),
                target_hw=(trg_h, trg_w),
                source_bbox=src_box,
                target_bbox=trg_box,
            )
        )
    return pairs


def _spair_box(box_xyxy: Sequence[float]) -> BBox:
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return (y1, x1, y2, x2)


def load_pf_pascal_pairs(
    root: str | Path,
    split: str = "test",
    csv_path: str | Path | None = None,
    categories: Iterable[str] | None = None,
) -> list[CorrespondencePair]:
    """PF-PASCAL pairs from ``<root>/<split>_pairs_pf_pascal.csv`` (or ``csv_path``), in CSV order.

    ``root`` is the ``PF-dataset-PASCAL`` folder. Image paths in the CSV are relative to its
    parent (``PF-dataset-PASCAL/JPEGImages/…``); a bare ``root/JPEGImages/<name>`` is accepted
    too. ``threshold_size`` = max(H, W) of the target image (read from the file header), and
    ``pair_id`` = ``<row>:<source stem>-<target stem>`` with the 0-based data-row index.
    """
    root = Path(root)
    csv_file = Path(csv_path) if csv_path is not None else root / f"{split}_pairs_pf_pascal.csv"
    if not csv_file.is_file():
        raise InputError(
            f"PF-PASCAL pair list not found at {csv_file}; download {csv_file.name} "
            "(CNNGeometric split) into the PF-dataset-PASCAL folder or pass csv_path"
        )
    wanted = set(categories) if categories is not None else None
    with csv_file.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise InputError(f"{csv_file} is empty; download the PF-PASCAL split CSV again")
    pairs = []
    for index, row in enumerate(rows[1:]):  # row 0 is the header
        where = f"{csv_file} data row {index}"
        if len(row) < 7:
            raise InputError(
                f"{where} has {len(row)} columns, expected source, target, class, XA, YA, XB, YB; "
                "use the test/val pair CSV (the training list has no keypoints)"
            )
        try:
            class_id = int(float(row[2]))
            xa, ya, xb, yb = (_coordinate_list(cell) for cell in row[3:7])
        except ValueError as exc:
            raise InputError(f"{where} has a non-numeric class or coordinate: {exc}") from exc
        if not 1 <= class_id <= len(PF_PASCAL_CATEGORIES):
            raise InputError(f"{where} has class id {class_id}; PF-PASCAL ids are 1..20")
        if not len(xa) == len(ya) == len(xb) == len(yb):
            raise InputError(f"{where} has coordinate lists of different lengths")
        category = PF_PASCAL_CATEGORIES[class_id - 1]
        if wanted is not None and category not in wanted:
            continue
        src_image = _pf_pascal_image(root, row[0], where)
        trg_image = _pf_pascal_image(root, row[1], where)
        src_hw, trg_hw = _image_hw(src_image), _image_hw(trg_image)
        pairs.append(
            CorrespondencePair(
                pair_id=f"{index}:{src_image.stem}-{trg_image.stem}",
                category=category,
                source_image=src_image,
                target_image=trg_image,
                source_points=np.stack([ya, xa], axis=1),
                target_points=np.stack([yb, xb], axis=1),
                valid=np.ones(len(xa), dtype=bool),
                threshold_size=float(max(trg_hw)),
                source_hw=src_hw,
                target_hw=trg_hw,
            )
        )
    return pairs


def _coordinate_list(cell: str) -> np.ndarray:
    return np.array([float(v) for v in cell.split(";") if v.strip()], dtype=np.float64)


def _pf_pascal_image(root: Path, name: str, where: str) -> Path:
    for candidate in (root.parent / name, root / "JPEGImages" / Path(name).name):
        if candidate.is_file():
            return candidate
    raise InputError(
        f"image {name!r} of {where} not found under {root.parent} or {root / 'JPEGImages'}; "
        "unzip PF-dataset-PASCAL.zip next to the CSV"
    )


def _image_hw(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc}; re-extract the dataset") from exc
    return int(h), int(w)


def load_ap10k_pairs(
    root: str | Path, subset: AP10KSubset = "intra-species", split: str = "test"
) -> list[CorrespondencePair]:
    """AP-10K pairs of GeoAware-SC's split, sorted by pair file name.

    ``root`` is the ``ap-10k`` folder with ``ImageAnnotation``, ``JPEGImages`` and
    ``PairAnnotation``. ``subset`` picks ``PairAnnotation/<split>``, ``<split>_cross_species`` or
    ``<split>_cross_family``; ``category`` is the suffix after ``:`` in the pair file name
    (species, family or ``all``). All 17 keypoints are returned; ``valid`` marks those visible in
    both images. ``threshold_size`` = max(w, h) of the target COCO bbox.
    """
    root = Path(root)
    if subset not in _AP10K_SPLIT_SUFFIX:
        raise InputError(f"unknown AP-10K subset {subset!r}; use one of {', '.join(AP10K_SUBSETS)}")
    pair_dir = root / "PairAnnotation" / f"{split}{_AP10K_SPLIT_SUFFIX[subset]}"
    _require_dir(
        pair_dir,
        "AP-10K pair annotations",
        "build the pair split with GeoAware-SC's prepare_ap10k.ipynb and pass the ap-10k folder",
    )
    pairs = []
    for path in sorted(pair_dir.glob("*.json")):
        if ":" not in path.stem:
            raise InputError(
                f"AP-10K pair file {path.name} has no ':<category>' suffix; "
                "use the split written by GeoAware-SC's prepare_ap10k.ipynb"
            )
        category = path.stem.rsplit(":", 1)[1]
        data = _read_json(path)
        try:
            src_json = _ap10k_annotation_path(root, str(data["src_json_path"]), path)
            trg_json = _ap10k_annotation_path(root, str(data["trg_json_path"]), path)
        except KeyError as exc:
            raise InputError(f"AP-10K pair file {path} lacks {exc}; rebuild the split") from exc
        src, trg = _ap10k_image_annotation(src_json), _ap10k_image_annotation(trg_json)
        valid = (src["visibility"] > 0) & (trg["visibility"] > 0)
        pairs.append(
            CorrespondencePair(
                pair_id=path.stem,
                category=category,
                source_image=_ap10k_image_path(root, src_json),
                target_image=_ap10k_image_path(root, trg_json),
                source_points=src["points"],
                target_points=trg["points"],
                valid=valid,
                threshold_size=trg["size"],
                source_hw=src["hw"],
                target_hw=trg["hw"],
                source_bbox=src["bbox"],
                target_bbox=trg["bbox"],
            )
        )
    return pairs


def _ap10k_annotation_path(root: Path, stored: str, pair_file: Path) -> Path:
    # GeoAware-SC stores paths relative to its checkout ("data/ap-10k/ImageAnnotation/..."):
    # keep the part from ImageAnnotation on and place it under this root.
    parts = Path(stored).parts
    if "ImageAnnotation" not in parts:
        raise InputError(
            f"{pair_file} points at {stored!r}, not under ImageAnnotation; rebuild the split"
        )
    rel = Path(*parts[parts.index("ImageAnnotation") + 1 :])
    path = root / "ImageAnnotation" / rel
    if not path.is_file():
        raise InputError(f"{pair_file} refers to missing annotation {path}; rebuild the split")
    return path


def _ap10k_image_path(root: Path, annotation: Path) -> Path:
    rel = annotation.relative_to(root / "ImageAnnotation").with_suffix(".jpg")
    return root / "JPEGImages" / rel


def _ap10k_image_annotation(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    try:
        kps = np.asarray(data["keypoints"], dtype=np.float64).reshape(-1, 3)
        x, y, w, h = (float(v) for v in data["bbox"])
        hw = (int(data["height"]), int(data["width"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"AP-10K annotation {path} lacks or mangles {exc}; rebuild it") from exc
    return {
        "points": kps[:, 1::-1].copy(),  # x, y → (y, x)
        "visibility": kps[:, 2],
        "bbox": (y, x, y + h, x + w),
        "size": max(w, h),
        "hw": hw,
    }
