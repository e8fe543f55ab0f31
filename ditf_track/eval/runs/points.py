"""Resumable point-tracking evaluations: TAP-Vid (AJ, δ_avg, OA) and BADJA / JHMDB keypoint PCK.

Both drive a :class:`~ditf_track.tracker.Tracker` through its public API (``init_state`` →
``add_points`` → ``propagate``) and own an output folder like the pair runners (both are
:class:`~ditf_track.eval._run.ResumableRun`): ``config.json`` (options, tracker identity,
versions, the resume fingerprint), ``videos.jsonl`` (one line per finished video: the resume state),
``tracks/<video>.npz`` (the predictions), then ``metrics.json`` and ``per_video.csv``.
Iterating a run yields one outcome per video, replayed from ``videos.jsonl`` when done.

**TAP-Vid resolution.** The protocol scores tracks at 256 × 256 (``ditf_track.eval.tapvid``).
Features are *not* extracted from the 256 × 256 frames — a 16-pixel token grid would have
16 × 16 cells — but from the frames as stored in the pickle (480p for DAVIS), resized by the
tracker to its short side (the preset's video setting; ``--short-side``) with the aspect kept.
Queries are the stored normalised points times the stored frame size (``tapvid_sample(...,
resolution=None)``), and the tracks are mapped to 256 × 256 by the same plain scaling
(:func:`ditf_track.coords.points_to_tapvid_tracks`), so the ground truth equals the
reference loader's ``points × 256``. ``occluded`` is the tracker's ``not visible``.

**BADJA** (the PIPs protocol, :func:`ditf_track.eval.keypoints.badja_pck`): the joints visible
at the first annotated frame are queried there and tracked forward to the last annotated
frame; joints not visible at the query get no track (a miss wherever they are scored). The
benchmark number is the mean over videos of PCK@0.2.

**JHMDB** (the CRW protocol, :func:`ditf_track.eval.keypoints.jhmdb_pck`): the 15 joints of
frame 0 are the queries (clipped into the frame where the annotation lies outside it) and every
later frame is scored; PCK@0.1/0.2 are pooled over all frames of all videos per joint, then
averaged over joints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from ...coords import (
    points_to_tapvid_queries,
    points_to_tapvid_tracks,
    swap_xy,
    write_tracks_npz,
)
from ...errors import ConfigError, InputError
from ...outputs import RunDir, listing_digest
from ...tracker import Tracker
from ...video import VideoSource, open_video, video_from_array
from .._run import CONFIG_FILE, METRICS_FILE, ResumableRun, clip_queries
from ..keypoints import (
    BADJA_ALPHA,
    JHMDB_ALPHAS,
    JHMDB_NUM_JOINTS,
    BadjaFrame,
    badja_pck,
    jhmdb_pck,
    load_badja,
    load_jhmdb_joints,
)
from ..tapvid import (
    TAPVID_THRESHOLDS,
    QueryMode,
    compute_tapvid_metrics,
    iter_tapvid_examples,
    tapvid_sample,
)

LOG_FILE = "videos.jsonl"
VIDEO_FILE = "per_video.csv"
TRACKS_DIR = "tracks"
#: Where a computed record holds its track arrays until the driver writes them (never logged).
TRACKS_RECORD = "_tracks"

#: Per-video TAP-Vid values, in the reference's names.
TAPVID_KEYS: tuple[str, ...] = (
    "average_jaccard",
    "average_pts_within_thresh",
    "occlusion_accuracy",
    *(f"jaccard_{d}" for d in TAPVID_THRESHOLDS),
    *(f"pts_within_{d}" for d in TAPVID_THRESHOLDS),
)


@dataclass(frozen=True)
class VideoOutcome:
    """One scored video: its metrics (benchmark names) and whether it was replayed."""

    video: str
    metrics: dict[str, float]
    num_points: int
    num_frames: int
    resumed: bool


def track_queries(
    tracker: Tracker,
    video: VideoSource,
    frame_idx: np.ndarray,
    points_yx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Track query points ``(Q, 2)`` ``(y, x)`` given on frames ``frame_idx (Q,)`` through
    ``video``: ``tracks (T, Q, 2)`` ``(y, x)``, ``visible (T, Q)`` and the number of queries that
    had to be clipped into the frame (annotations on or beyond the border)."""
    state = tracker.init_state(video)
    inside, clipped = clip_queries(points_yx, state.frame_size, below_edge=1e-6)
    ids = np.arange(len(points_yx))
    for t in np.unique(frame_idx):
        sel = frame_idx == t
        tracker.add_points(state, int(t), inside[sel], ids[sel])
    for _ in tracker.propagate(state):
        pass
    tracks, visible = state.point_tracks()
    order = np.argsort(state.point_ids)  # added frame by frame; back to the queries' order
    return tracks[:, order], visible[:, order], clipped


def _save_tracks(folder: Path, name: str, **arrays: np.ndarray) -> None:
    folder.mkdir(exist_ok=True)
    write_tracks_npz(folder / f"{name.replace('/', '__')}.npz", **arrays)


def _finite_mean(values: Iterable[float]) -> float | None:
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    return float(arr.mean()) if arr.size else None


VideoT = TypeVar("VideoT")


class _PointTrackingEvaluation(ResumableRun[VideoT, VideoOutcome]):
    """What the point-tracking runs share: their files, the tracker as the model a Ray worker
    loads, and ``tracks/<video>.npz`` written by the driver when it commits a record."""

    owned = (CONFIG_FILE, LOG_FILE, METRICS_FILE, VIDEO_FILE, f"{TRACKS_DIR}/*.npz")
    log_file = LOG_FILE
    model_attr = "tracker"

    def _commit(self, record: dict[str, Any]) -> None:
        """``tracks/<video>.npz`` (the arrays a computed record holds under ``TRACKS_RECORD``,
        on the driver: a Ray worker writes nothing), then the record without them in the log."""
        _save_tracks(self.out / TRACKS_DIR, record["key"], **record.pop(TRACKS_RECORD))
        super()._commit(record)


# ----------------------------------------------------------------------------------------------
# TAP-Vid


@dataclass(frozen=True)
class TapVidVideo:
    """One TAP-Vid video as its pickle stores it (``example``: ``video``, ``points``,
    ``occluded``), decoded and its queries sampled only where it is tracked (the driver, or the
    Ray worker it is sent to)."""

    name: str
    example: Mapping[str, Any]


class TapVidEvaluation(_PointTrackingEvaluation[TapVidVideo]):
    """TAP-Vid on a pickle (DAVIS) or a folder of Kinetics shards: iterate, then :meth:`finish`.

    ``query_mode`` is ``"first"`` or ``"strided"``; ``limit`` keeps the first videos only.
    """

    def __init__(
        self,
        data: str | Path,
        tracker: Tracker,
        out: str | Path | RunDir,
        *,
        query_mode: QueryMode = "first",
        limit: int | None = None,
        options: Mapping[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        if query_mode not in ("first", "strided"):
            raise ConfigError(
                f"unknown TAP-Vid query mode {query_mode!r}; use 'first' or 'strided'"
            )
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit {limit} must be at least 1")
        self.data = Path(data)
        if not self.data.exists():
            raise InputError(f"TAP-Vid path {self.data} does not exist; pass tapvid_davis.pkl")
        self.tracker = tracker
        self.query_mode: QueryMode = query_mode
        self.limit = limit
        opts = {**dict(options or {}), "query_mode": query_mode}
        fingerprint = {
            "benchmark": "tapvid",
            **opts,
            "tracker": tracker.identity(),
            "data_digest": listing_digest(self.data),
        }
        config = {
            "benchmark": "tapvid",
            "protocol": "google-deepmind/tapnet tapvid/evaluation_datasets.py; tracks scored at "
            "256x256, features extracted from the stored frames at the tracker's short side",
            **opts,
            "tracker": tracker.identity(),
        }
        self._start(out, "tapvid", fingerprint, config, resume=resume, overwrite=overwrite)
        self._rows: list[dict[str, Any]] = []

    def _check_iterated(self) -> None:
        if not self._rows:
            raise InputError(f"no TAP-Vid video in {self.data}; check --data")

    def _items(self) -> Iterator[TapVidVideo]:
        for count, (name, example) in enumerate(iter_tapvid_examples(self.data)):
            if self.limit is not None and count >= self.limit:
                break
            yield TapVidVideo(name, example)

    def _key(self, item: TapVidVideo) -> str:
        return item.name

    def _score(self, item: TapVidVideo, record: Mapping[str, Any], resumed: bool) -> VideoOutcome:
        metrics = {k: record["metrics"][k] for k in TAPVID_KEYS}
        self._rows.append({"video": item.name, **metrics, **_counts(record)})
        return VideoOutcome(
            item.name,
            {k: (math.nan if v is None else float(v)) for k, v in metrics.items()},
            int(record["num_points"]),
            int(record["num_frames"]),
            resumed,
        )

    def _compute(self, item: TapVidVideo) -> dict[str, Any]:
        sample = tapvid_sample(item.name, item.example, self.query_mode, resolution=None)
        frames = sample.frames
        hw = (int(frames.shape[1]), int(frames.shape[2]))
        query_t = np.round(sample.query_points[:, 0]).astype(np.int64)
        query_yx = sample.query_points[:, 1:]
        video = video_from_array(frames, name=sample.video_name)
        tracks, visible, clipped = track_queries(self.tracker, video, query_t, query_yx)
        pred = points_to_tapvid_tracks(tracks.transpose(1, 0, 2), hw)  # (Q, T, 2) as (x, y)
        gt = points_to_tapvid_tracks(swap_xy(sample.target_points), hw)
        queries = points_to_tapvid_queries(query_t, query_yx, hw)
        result = compute_tapvid_metrics(
            queries[None],
            sample.occluded[None],
            gt[None],
            ~visible.T[None],
            pred[None],
            self.query_mode,
        )
        return {
            TRACKS_RECORD: {
                "query_points": queries.astype(np.float32),
                "tracks": pred.astype(np.float32),
                "occluded": ~visible.T,
                "gt_tracks": gt.astype(np.float32),
                "gt_occluded": sample.occluded,
            },
            "key": sample.video_name,
            "metrics": {k: float(result[k][0]) for k in TAPVID_KEYS},
            "num_points": len(query_t),
            "num_frames": int(frames.shape[0]),
            "frame_size": list(hw),
            "num_clipped": clipped,
        }

    def finish(self) -> dict[str, Any]:
        """Write metrics.json (mean over videos) and per_video.csv; return the metrics."""
        if not self._consumed:
            raise RuntimeError("iterate over the evaluation before calling finish()")
        metrics: dict[str, Any] = {
            "benchmark": "tapvid",
            "query_mode": self.query_mode,
            "num_videos": len(self._rows),
            "num_points": sum(r["num_points"] for r in self._rows),
            "num_clipped": sum(r["num_clipped"] for r in self._rows),
        }
        for key in TAPVID_KEYS:
            metrics[key] = _finite_mean(r[key] for r in self._rows)
        metrics["videos_without_score"] = [
            r["video"] for r in self._rows if r["average_jaccard"] is None
        ]
        metrics["tracker"] = self.tracker.identity()
        columns = ["video", *TAPVID_KEYS, "num_points", "num_frames", "num_clipped"]
        self._write_results(metrics, (VIDEO_FILE, self._rows, columns, "video table"))
        return metrics


def _counts(record: Mapping[str, Any]) -> dict[str, int]:
    return {
        "num_points": int(record["num_points"]),
        "num_frames": int(record["num_frames"]),
        "num_clipped": int(record.get("num_clipped", 0)),
    }


# ----------------------------------------------------------------------------------------------
# BADJA and JHMDB

KeypointDataset = Literal["badja", "jhmdb"]


@dataclass(frozen=True)
class BadjaVideo:
    """One BADJA sequence: its annotation file, DAVIS frame folder and GT mask folder."""

    name: str
    annotations: Path
    frames: Path
    masks: Path


@dataclass(frozen=True)
class JhmdbVideo:
    """One JHMDB video: ``<class>/<video>``, its frame folder and ``joint_positions.mat``."""

    name: str
    frames: Path
    joints: Path


def badja_videos(data: str | Path, frames: str | Path, masks: str | Path) -> list[BadjaVideo]:
    """BADJA sequences from ``data`` = one ``joint_annotations/<seq>.json`` (then ``frames``
    and ``masks`` are that sequence's DAVIS folders, e.g. ``JPEGImages/480p/dog`` and
    ``Annotations/480p/dog``) or a folder of them (then ``frames`` and ``masks`` hold one
    ``<seq>/`` folder per sequence, e.g. ``JPEGImages/480p`` and ``Annotations/480p``)."""
    data, frames, masks = Path(data), Path(frames), Path(masks)
    if data.is_file():
        return [BadjaVideo(data.stem, data, frames, masks)]
    files = sorted(data.glob("*.json")) if data.is_dir() else []
    if not files:
        raise InputError(
            f"{data} is neither a BADJA joint_annotations/<seq>.json file nor a folder of them"
        )
    return [BadjaVideo(f.stem, f, frames / f.stem, masks / f.stem) for f in files]


def jhmdb_videos(root: str | Path, video_list: str | Path | None = None) -> list[JhmdbVideo]:
    """JHMDB videos under ``root`` (``joint_positions/<class>/<video>/joint_positions.mat`` and
    ``Rename_Images/<class>/<video>/*.png``), all of them or those named in ``video_list``
    (one ``<class>/<video>`` per line, or CRW's ``<frames folder> <mat file>`` lines)."""
    root = Path(root)
    if video_list is None:
        mats = sorted((root / "joint_positions").glob("*/*/joint_positions.mat"))
        if not mats:
            raise InputError(
                f"no joint_positions/<class>/<video>/joint_positions.mat under {root}; pass the "
                "JHMDB root (with joint_positions/ and Rename_Images/)"
            )
        names = [f"{m.parent.parent.name}/{m.parent.name}" for m in mats]
        return [
            JhmdbVideo(n, root / "Rename_Images" / n, root / "joint_positions" / n / m.name)
            for n, m in zip(names, mats)
        ]
    try:
        lines = [ln.split() for ln in Path(video_list).read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise InputError(f"cannot read the video list {video_list} ({exc})") from exc
    videos = []
    for parts in lines:
        if len(parts) >= 2:
            frames, mat = Path(parts[0]), Path(parts[1])
            if mat.is_dir():
                mat = mat / "joint_positions.mat"
            videos.append(JhmdbVideo(f"{frames.parent.name}/{frames.name}", frames, mat))
        else:
            name = parts[0].strip("/")
            videos.append(
                JhmdbVideo(
                    name,
                    root / "Rename_Images" / name,
                    root / "joint_positions" / name / "joint_positions.mat",
                )
            )
    return videos


class KeypointEvaluation(_PointTrackingEvaluation[BadjaVideo | JhmdbVideo]):
    """Keypoint tracking PCK on BADJA or JHMDB videos: iterate, then :meth:`finish`."""

    def __init__(
        self,
        dataset: KeypointDataset,
        videos: Sequence[BadjaVideo] | Sequence[JhmdbVideo],
        tracker: Tracker,
        out: str | Path | RunDir,
        *,
        options: Mapping[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        if dataset not in ("badja", "jhmdb"):
            raise ConfigError(f"unknown keypoint dataset {dataset!r}; use 'badja' or 'jhmdb'")
        if not videos:
            raise InputError(f"no {dataset} videos to evaluate; check --data")
        self.dataset: KeypointDataset = dataset
        self.videos: list[BadjaVideo | JhmdbVideo] = list(videos)
        self.tracker = tracker
        opts = {**dict(options or {}), "dataset": dataset}
        files = [
            p
            for v in self.videos
            for p in (
                (v.annotations, v.frames, v.masks)
                if isinstance(v, BadjaVideo)
                else (v.frames, v.joints)
            )
        ]
        fingerprint = {
            "benchmark": "keypoints",
            **opts,
            "tracker": tracker.identity(),
            "data_digest": listing_digest(files),
        }
        protocol = (
            "PIPs test_on_badja.py: PCK@0.2 of sqrt(GT mask area), query = first annotated frame"
            if dataset == "badja"
            else "CRW eval_pck.py: PCK@0.1/0.2 of 0.6 x GT-joint box diagonal, query = frame 0"
        )
        config = {
            "benchmark": "keypoints",
            "protocol": protocol,
            **opts,
            "tracker": tracker.identity(),
        }
        self._start(out, "keypoints", fingerprint, config, resume=resume, overwrite=overwrite)
        self._rows: list[dict[str, Any]] = []
        self._jhmdb: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self.videos)

    def _items(self) -> list[BadjaVideo | JhmdbVideo]:
        return self.videos

    def _key(self, item: BadjaVideo | JhmdbVideo) -> str:
        return item.name

    def _compute(self, item: BadjaVideo | JhmdbVideo) -> dict[str, Any]:
        return self._badja(item) if isinstance(item, BadjaVideo) else self._jhmdb_video(item)

    def _score(
        self, video: BadjaVideo | JhmdbVideo, record: Mapping[str, Any], resumed: bool
    ) -> VideoOutcome:
        if isinstance(video, JhmdbVideo):
            gt = load_jhmdb_joints(video.joints)[: int(record["num_frames"])]
            pred = np.asarray(record["pred_yx"], dtype=np.float64).reshape(gt.shape)
            self._jhmdb.append((pred, gt))
        metrics = {k: float(v) if v is not None else math.nan for k, v in record["metrics"].items()}
        self._rows.append({"video": video.name, **record["metrics"], **_counts(record)})
        return VideoOutcome(
            video.name, metrics, int(record["num_points"]), int(record["num_frames"]), resumed
        )

    def _badja(self, video: BadjaVideo) -> dict[str, Any]:
        frames: list[BadjaFrame] = load_badja(video.annotations, mask_dir=video.masks)
        first, last = frames[0].frame_index, frames[-1].frame_index
        source = open_video(video.frames)
        names = source.frame_names
        source.close()
        missing = [f.frame_name for f in frames if f.frame_name not in names]
        if missing:
            raise InputError(
                f"BADJA {video.name}: frame {missing[0]} is not in {video.frames}; pass the "
                "sequence's DAVIS JPEGImages folder"
            )
        start, end = names.index(frames[0].frame_name), names.index(frames[-1].frame_name) + 1
        clip = open_video(video.frames, start, end)
        mask_hw = _mask_size(frames[0])
        if (clip.height, clip.width) != mask_hw:
            raise InputError(
                f"BADJA {video.name}: frames are {clip.width}x{clip.height} but the masks "
                f"{mask_hw[1]}x{mask_hw[0]}; pass frames and masks of the same resolution"
            )
        query = frames[0]
        positions = np.array([names.index(f.frame_name) - start for f in frames])
        queried = np.flatnonzero(query.visible)
        tracks, visible, clipped = track_queries(
            self.tracker, clip, np.zeros(len(queried), np.int64), query.joints[queried]
        )
        pred = np.full((len(frames), len(query.visible), 2), np.nan)
        pred[:, queried] = tracks[positions]
        pck = badja_pck(pred, frames)
        return {
            TRACKS_RECORD: {
                "tracks": tracks,
                "visible": visible,
                "joints": queried,
                "annotated_frames": np.array([f.frame_index for f in frames]),
            },
            "key": video.name,
            "metrics": pck,
            "num_points": len(queried),
            "num_frames": end - start,
            "first_frame": first,
            "last_frame": last,
            "num_clipped": clipped,
        }

    def _jhmdb_video(self, video: JhmdbVideo) -> dict[str, Any]:
        gt = load_jhmdb_joints(video.joints)
        source = open_video(video.frames)
        n = min(len(source), len(gt))
        source.close()
        clip = open_video(video.frames, 0, n)
        gt = gt[:n]
        tracks, visible, clipped = track_queries(
            self.tracker, clip, np.zeros(JHMDB_NUM_JOINTS, np.int64), gt[0]
        )
        return {
            TRACKS_RECORD: {"tracks": tracks, "visible": visible},
            "key": video.name,
            "metrics": jhmdb_pck(tracks, gt),
            "pred_yx": np.round(tracks, 3).tolist(),
            "num_points": JHMDB_NUM_JOINTS,
            "num_frames": n,
            "num_clipped": clipped,
        }

    def finish(self) -> dict[str, Any]:
        """Write metrics.json and per_video.csv; return the metrics."""
        if len(self._rows) != len(self.videos):
            raise RuntimeError("iterate over the evaluation before calling finish()")
        metrics: dict[str, Any] = {
            "benchmark": "keypoints",
            "dataset": self.dataset,
            "num_videos": len(self._rows),
            "num_points": sum(r["num_points"] for r in self._rows),
            "num_clipped": sum(r["num_clipped"] for r in self._rows),
        }
        if self.dataset == "badja":
            key = f"PCK@{BADJA_ALPHA:g}"
            metrics[key] = _finite_mean(r[key] for r in self._rows)  # mean over videos (PIPs)
            keys = [key]
        else:
            preds, gts = zip(*self._jhmdb)
            metrics.update(jhmdb_pck(list(preds), list(gts)))  # pooled per joint (CRW)
            keys = [f"PCK@{a:g}" for a in JHMDB_ALPHAS]
        metrics["tracker"] = self.tracker.identity()
        columns = ["video", *keys, "num_points", "num_frames", "num_clipped"]
        self._write_results(metrics, (VIDEO_FILE, self._rows, columns, "video table"))
        return metrics


def _mask_size(frame: BadjaFrame) -> tuple[int, int]:
    from PIL import Image

    assert frame.mask_path is not None
    with Image.open(frame.mask_path) as im:
        return im.height, im.width


__all__ = [
    "TAPVID_KEYS",
    "BadjaVideo",
    "JhmdbVideo",
    "KeypointEvaluation",
    "TapVidEvaluation",
    "TapVidVideo",
    "VideoOutcome",
    "badja_videos",
    "jhmdb_videos",
    "track_queries",
]
