"""Resumable benchmark runs: PCK on SPair-71k / PF-PASCAL / AP-10K and HPatches homographies.

A run owns an output folder with

* ``config.json`` — resolved options, the pair protocol (profile, input size, resize,
  ensemble, upsampling, DINOv2 PCA rule, and whether they are assumed for this benchmark:
  :func:`~ditf_track.presets.resolve_pair_protocol`), the matcher's identity (model, revision,
  t, k, feature mode, sizes, DINOv2), versions, and a ``fingerprint`` that a resumed run must
  match;
* ``pairs.jsonl`` — one line per finished pair (predictions, scores, discarded channels, or the
  corner error), appended and flushed as each pair finishes: the resume state;
* ``metrics.json`` (with the protocol and the matcher's identity again) and
  ``per_category.csv`` (HPatches also ``per_pair.csv``), written at the end.

Iterating a run yields one outcome per pair — replayed from ``pairs.jsonl`` when already done
(nothing is recomputed), else computed — so the CLI can show progress; :meth:`finish` writes
the summary files and returns the metrics (the protocol of
:class:`~ditf_track.eval._run.ResumableRun`). Library code prints nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from ...errors import ConfigError, InputError
from ...images import read_image
from ...match import ImageFeatures, Matcher
from ...outputs import RunDir
from ...prompts import PromptRule
from .._run import CONFIG_FILE, METRICS_FILE, ResumableRun, clip_queries
from .._run import open_eval_dir as open_eval_dir  # the CLI opens the folder before the model
from ..correspondence import (
    AP10K_PROTOCOL,
    PF_PASCAL_PROTOCOL,
    SPAIR_PROTOCOL,
    CorrespondencePair,
    PCKAccumulator,
    PCKProtocol,
    pck_key,
)
from ..hpatches import (
    MAX_KEYPOINTS,
    HomographyAccuracy,
    HomographyMethod,
    HPatchesSequence,
    evaluate_homography_pair,
    select_top_keypoints,
)

PCK_PROTOCOLS: dict[str, PCKProtocol] = {
    "spair": SPAIR_PROTOCOL,
    "pf-pascal": PF_PASCAL_PROTOCOL,
    "ap-10k": AP10K_PROTOCOL,
}
Detector = Literal["sift", "orb"]
DETECTORS: tuple[str, ...] = ("sift", "orb")

LOG_FILE = "pairs.jsonl"
CATEGORY_FILE = "per_category.csv"
PAIR_FILE = "per_pair.csv"
PAIR_COLUMNS = (
    "sequence",
    "kind",
    "target",
    "corner_error",
    "num_matches",
    "num_keypoints_1",
    "num_keypoints_k",
)


# ----------------------------------------------------------------------------------------------
# PCK: SPair-71k, PF-PASCAL, AP-10K


@dataclass(frozen=True)
class PairOutcome:
    """One scored pair: its PCK per α (``pck_key`` names), and whether it was replayed."""

    index: int
    pair_id: str
    category: str
    pck: dict[str, float]
    resumed: bool


class PCKEvaluation(ResumableRun[tuple[int, CorrespondencePair], PairOutcome]):
    """Score ``pairs`` with ``matcher``: iterate for per-pair outcomes, then :meth:`finish`.

    ``benchmark`` is ``"spair"``, ``"pf-pascal"`` or ``"ap-10k"`` (its protocol fixes the α and
    the threshold rule); ``options`` (data root, split, subset, ...) go into config.json and,
    with the matcher identity, into the resume fingerprint. ``protocol`` is the resolved pair
    protocol (:meth:`~ditf_track.presets.ResolvedPairProtocol.to_dict`) the matcher was built
    with: config.json and metrics.json record it (:func:`protocol_record`). ``prompts`` gives
    each image its own prompt (a template on the category, or a captions file; checked for
    every pair before the first is run); its :meth:`~ditf_track.prompts.PromptRule.record` is
    part of config.json, metrics.json and the fingerprint.
    """

    owned = (CONFIG_FILE, LOG_FILE, METRICS_FILE, CATEGORY_FILE)
    log_file = LOG_FILE
    model_attr = "matcher"

    def __init__(
        self,
        benchmark: str,
        pairs: Sequence[CorrespondencePair],
        matcher: Matcher,
        out: str | Path | RunDir,
        *,
        options: Mapping[str, Any] | None = None,
        protocol: Mapping[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        prompts: PromptRule | None = None,
    ) -> None:
        if benchmark not in PCK_PROTOCOLS:
            raise ConfigError(f"unknown benchmark {benchmark!r}; use one of {list(PCK_PROTOCOLS)}")
        if not pairs:
            raise InputError(f"no {benchmark} pairs to evaluate; check --data and the split")
        self.benchmark = benchmark
        self.protocol = PCK_PROTOCOLS[benchmark]
        self.pairs = list(pairs)
        self.matcher = matcher
        self.pair_protocol = protocol_record(matcher, protocol)
        self.prompts = prompts or PromptRule()
        self.prompts.check_pairs(self.pairs)
        opts = {
            **dict(options or {}),
            "pair_protocol": self.pair_protocol,
            "prompts": self.prompts.record(),
        }
        fingerprint = {"benchmark": benchmark, **opts, "matcher": matcher.identity()}
        self._start(
            out,
            benchmark,
            fingerprint,
            {"benchmark": benchmark, "protocol": self.protocol.source, **opts},
            resume=resume,
            overwrite=overwrite,
        )
        self._acc = PCKAccumulator(self.protocol)
        self._extra: Counter[str] = Counter()
        self._channels: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self.pairs)

    def _items(self) -> Iterable[tuple[int, CorrespondencePair]]:
        return enumerate(self.pairs)

    def _key(self, item: tuple[int, CorrespondencePair]) -> str:
        return item[1].pair_id

    def _compute(self, item: tuple[int, CorrespondencePair]) -> dict[str, Any]:
        pair = item[1]
        image_a = _read_sized(pair.source_image, pair.source_hw)
        image_b = _read_sized(pair.target_image, pair.target_hw)
        valid = np.asarray(pair.valid, dtype=bool)
        inside, clipped = clip_queries(pair.source_points[valid], pair.source_hw)
        features = self.matcher.features_for_pair(
            image_a,
            image_b,
            prompt_a=self.prompts.prompt_for(pair.category, pair.source_image),
            prompt_b=self.prompts.prompt_for(pair.category, pair.target_image),
        )
        pred, scores = self.matcher.match_points_in(features, inside)
        return {
            "key": pair.pair_id,
            "category": pair.category,
            "pred_yx": np.round(pred, 3).tolist(),
            "scores": np.round(scores.astype(np.float64), 5).tolist(),
            "num_clipped": clipped,
            "discarded_channels": list(features.discarded_channels),
        }

    def _score(
        self, item: tuple[int, CorrespondencePair], record: Mapping[str, Any], resumed: bool
    ) -> PairOutcome:
        index, pair = item
        valid = np.asarray(pair.valid, dtype=bool)
        pred = np.zeros_like(pair.source_points)
        stored = np.asarray(record["pred_yx"], dtype=np.float64).reshape(-1, 2)
        if len(stored) != int(valid.sum()):
            raise InputError(
                f"{self.out / LOG_FILE} has {len(stored)} predictions for pair {pair.pair_id} "
                f"but the dataset has {int(valid.sum())} points; the data changed, pass --overwrite"
            )
        pred[valid] = stored
        acc = self._acc.add(pair, pred)
        self._extra["num_points_clipped"] += int(record.get("num_clipped", 0))
        self._channels.update(int(c) for c in record.get("discarded_channels", []))
        pck = {pck_key("pck", a): float(v) for a, v in zip(self.protocol.alphas, acc)}
        return PairOutcome(index, pair.pair_id, pair.category, pck, resumed)

    def finish(self) -> dict[str, Any]:
        """Write metrics.json and per_category.csv once every pair is scored; return metrics."""
        if len(self._acc.records) != len(self.pairs):
            raise RuntimeError("iterate over the evaluation before calling finish()")
        metrics = self._acc.result()
        metrics["num_points_clipped"] = self._extra["num_points_clipped"]
        metrics["discarded_channels_pairs"] = {str(c): n for c, n in sorted(self._channels.items())}
        metrics["pair_protocol"] = self.pair_protocol
        metrics["matcher"] = self.matcher.identity()
        metrics["prompts"] = self.prompts.record()
        alphas = self.protocol.alphas
        columns = ["category", "num_pairs", "num_points"]
        columns += [pck_key("pck_per_point", a) for a in alphas]
        columns += [pck_key("pck_per_image", a) for a in alphas]
        self._write_results(
            metrics, (CATEGORY_FILE, self._acc.category_rows(), columns, "category table")
        )
        return metrics


def protocol_record(matcher: Matcher, protocol: Mapping[str, Any] | None) -> dict[str, Any]:
    """What config.json and metrics.json say about the pair protocol: the resolved profile
    settings given (None: the matcher was built directly, without a profile), and the settings
    the matcher actually uses, which a run's results depend on."""
    ensemble = matcher.extractor.identity().get("ensemble")
    return {
        "profile": dict(protocol) if protocol is not None else None,
        "long_side": matcher.long_side,
        "square": matcher.square,
        "resize": matcher.resize,
        "ensemble": ensemble,
        "upsample_from": matcher.upsample_from,
        "dinov2_pca": matcher.pca_rule if matcher.dinov2 is not None else None,
    }


def _read_sized(path: Path, hw: tuple[int, int]) -> np.ndarray:
    image = read_image(path)
    if tuple(image.shape[:2]) != tuple(hw):
        raise InputError(
            f"image {path} is {image.shape[1]}x{image.shape[0]} but its annotation says "
            f"{hw[1]}x{hw[0]}; re-extract the dataset"
        )
    return image


# ----------------------------------------------------------------------------------------------
# HPatches


def detect_keypoints(
    image: np.ndarray, detector: Detector = "sift", max_keypoints: int = MAX_KEYPOINTS
) -> np.ndarray:
    """The ``max_keypoints`` strongest keypoints of an OpenCV detector: ``(N, 2)`` (y, x).

    The paper (after DIFT) uses SuperPoint's top 1,000; SuperPoint needs weights that do not
    ship with any dependency here, so the default is OpenCV's SIFT (``nfeatures`` = the cap,
    then the strongest by response, since OpenCV may keep a few extra on ties). Detection runs
    on the greyscale original image; OpenCV's (x, y) pixel convention equals ours.
    """
    if detector not in DETECTORS:
        raise ConfigError(f"unknown detector {detector!r}; use one of {', '.join(DETECTORS)}")
    if max_keypoints < 4:
        raise ConfigError(f"max keypoints {max_keypoints} must be at least 4 (a homography)")
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    if detector == "sift":
        det = cv2.SIFT_create(nfeatures=max_keypoints)  # type: ignore[attr-defined]
    else:
        det = cv2.ORB_create(nfeatures=max_keypoints)  # type: ignore[attr-defined]
    keypoints = det.detect(grey, None)
    if not keypoints:
        return np.zeros((0, 2))
    yx = np.array([kp.pt for kp in keypoints], dtype=np.float64)[:, ::-1]
    keep = select_top_keypoints(yx, np.array([kp.response for kp in keypoints]), max_keypoints)
    return yx[keep].copy()


@dataclass(frozen=True)
class HomographyOutcome:
    """One scored HPatches pair (image 1 → image ``target``)."""

    sequence: str
    target: int
    corner_error: float
    num_matches: int
    resumed: bool


class HPatchesEvaluation(ResumableRun[tuple[HPatchesSequence, int], HomographyOutcome]):
    """Homography accuracy on HPatches: iterate for per-pair outcomes, then :meth:`finish`.

    Per sequence, image 1's keypoints and features are computed once (its massive channels are
    held for images 2–6); each pair samples descriptors at both images' keypoints, matches them
    by mutual nearest neighbours, fits ``method`` (LMEDS) and scores the corner error.
    """

    owned = (CONFIG_FILE, LOG_FILE, METRICS_FILE, CATEGORY_FILE, PAIR_FILE)
    log_file = LOG_FILE
    model_attr = "matcher"

    def __init__(
        self,
        sequences: Sequence[HPatchesSequence],
        matcher: Matcher,
        out: str | Path | RunDir,
        *,
        detector: Detector = "sift",
        max_keypoints: int = MAX_KEYPOINTS,
        method: HomographyMethod = "LMEDS",
        options: Mapping[str, Any] | None = None,
        protocol: Mapping[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        if detector not in DETECTORS:
            raise ConfigError(f"unknown detector {detector!r}; use one of {', '.join(DETECTORS)}")
        if not sequences:
            raise InputError("no HPatches sequences to evaluate; check --data")
        self.sequences = list(sequences)
        self.matcher = matcher
        self.detector = detector
        self.max_keypoints = max_keypoints
        self.method = method
        self.pair_protocol = protocol_record(matcher, protocol)
        opts = {
            **dict(options or {}),
            "pair_protocol": self.pair_protocol,
            "detector": detector,
            "max_keypoints": max_keypoints,
            "method": method,
        }
        fingerprint = {"benchmark": "hpatches", **opts, "matcher": matcher.identity()}
        self._start(
            out,
            "hpatches",
            fingerprint,
            {"benchmark": "hpatches", **opts},
            resume=resume,
            overwrite=overwrite,
        )
        self._acc = HomographyAccuracy(method=method)
        self._rows: list[dict[str, Any]] = []
        # image 1 of the sequence being computed: (name, image, keypoints, features)
        self._first: tuple[str, np.ndarray, np.ndarray, ImageFeatures] | None = None

    def __len__(self) -> int:
        return 5 * len(self.sequences)

    def _items(self) -> Iterable[tuple[HPatchesSequence, int]]:
        return ((seq, k) for seq in self.sequences for k in range(2, 7))

    def _key(self, item: tuple[HPatchesSequence, int]) -> str:
        return f"{item[0].name}/{item[1]}"

    def _compute(self, item: tuple[HPatchesSequence, int]) -> dict[str, Any]:
        """Image 1's keypoints and features are computed once per sequence, when first needed."""
        seq, k = item
        if self._first is None or self._first[0] != seq.name:
            image1 = seq.read_image(1)
            kp1 = detect_keypoints(image1, self.detector, self.max_keypoints)
            self._first = (seq.name, image1, kp1, self.matcher.image_features(image1))
        _, image1, kp1, features1 = self._first
        image_k = seq.read_image(k)
        kp_k = detect_keypoints(image_k, self.detector, self.max_keypoints)
        pair = self.matcher.features_for_pair(image1, image_k, features_a=features1)
        desc1 = self.matcher.descriptors_at(pair.a, kp1).cpu().numpy()
        desc_k = self.matcher.descriptors_at(pair.b, kp_k).cpu().numpy()
        result = evaluate_homography_pair(
            kp1, desc1, kp_k, desc_k, seq.homography(k), seq.image_hw(1), method=self.method
        )
        err = result.corner_error
        return {
            "key": f"{seq.name}/{k}",
            "sequence": seq.name,
            "target": k,
            "corner_error": err if math.isfinite(err) else None,
            "num_matches": result.num_matches,
            "num_keypoints": [len(kp1), len(kp_k)],
            "homography": result.homography.tolist() if result.homography is not None else None,
            "discarded_channels": list(pair.discarded_channels),
        }

    def _score(
        self, item: tuple[HPatchesSequence, int], record: Mapping[str, Any], resumed: bool
    ) -> HomographyOutcome:
        seq, k = item
        err = record.get("corner_error")
        error = math.inf if err is None else float(err)
        self._acc.add(seq.name, k, error)
        self._rows.append(
            {
                "sequence": seq.name,
                "kind": seq.kind,
                "target": k,
                "corner_error": error,
                "num_matches": int(record["num_matches"]),
                "num_keypoints_1": int(record["num_keypoints"][0]),
                "num_keypoints_k": int(record["num_keypoints"][1]),
            }
        )
        return HomographyOutcome(seq.name, k, error, int(record["num_matches"]), resumed)

    def finish(self) -> dict[str, Any]:
        """Write metrics.json, per_category.csv (all / illumination / viewpoint), per_pair.csv."""
        if len(self._rows) != len(self):
            raise RuntimeError("iterate over the evaluation before calling finish()")
        metrics = self._acc.result()
        metrics["detector"] = self.detector
        metrics["max_keypoints"] = self.max_keypoints
        metrics["pair_protocol"] = self.pair_protocol
        metrics["matcher"] = self.matcher.identity()
        eps = metrics["thresholds_px"]
        rows = []
        for group in ("all", "illumination", "viewpoint"):
            row: dict[str, Any] = {
                "category": group,
                "num_pairs": metrics["num_pairs"][group],
                "num_sequences": metrics["num_sequences"][group],
                "num_failed": metrics["num_failed"][group],
                "mean_corner_error": metrics["mean_corner_error"][group],
            }
            row.update({f"accuracy@{e}px": metrics[group][e] for e in eps})
            rows.append(row)
        columns = ["category", *(f"accuracy@{e}px" for e in eps)]
        columns += ["num_pairs", "num_sequences", "num_failed", "mean_corner_error"]
        self._write_results(
            metrics,
            (CATEGORY_FILE, rows, columns, "category table"),
            (PAIR_FILE, self._rows, PAIR_COLUMNS, "pair table"),
        )
        return metrics
