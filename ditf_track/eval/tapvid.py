"""TAP-Vid point-tracking metrics (AJ, δ_avg, OA) and the TAP-Vid-DAVIS / -Kinetics readers.

Everything here follows the reference evaluator, ``tapnet/tapvid/evaluation_datasets.py`` in
google-deepmind/tapnet (commit c2cbab81cc06092b5f05bfe2da7bfec54e2079c9): the metric definitions
of ``compute_tapvid_metrics``, the query sampling of ``sample_queries_first`` /
``sample_queries_strided`` and the scaling of ``create_davis_dataset`` /
``create_kinetics_dataset``. It is a re-implementation (vectorised numpy), not a copy.

Coordinate layout (the benchmark's own, kept as is at this boundary; the mapping to the API's
``(y, x)`` pixels of the original frame lives in ``coords.py``):

* ``query_points`` ``(N, 3)`` as ``(t, y, x)``; ``target_points`` ``(N, T, 2)`` as ``(x, y)``;
  ``occluded`` ``(N, T)`` bool, True = not visible.
* Positions are pixels of the resized video (256×256 by default): the pickles store ``(x, y)``
  normalised to [0, 1] and the reference multiplies them by ``(W, H)`` of the resized frames,
  i.e. by (256, 256) — not by (W−1, H−1), and with no half-pixel shift. For Kinetics,
  ``generate_tapvid.py`` in the same repo stores ``(u·W − 0.5) / W`` for an annotation ``u`` in
  [0, 1] across a ``W``-wide original frame: ``x_norm · W`` is the pixel-index coordinate of the
  original frame (pixel centres at integers), so a 256-space coordinate ``c`` is the original
  pixel coordinate times 256 / W, and maps back as ``c · W / 256`` (plain scaling, per axis).
  The DAVIS pickle ships without its generator, so its sub-pixel convention is not documented.
* Frames are resized with a Lanczos filter (the reference calls ``mediapy.resize_video``, which
  resizes each uint8 frame with PIL's LANCZOS); here PIL is called directly, the same operation.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ditf_track.errors import ConfigError, InputError

QueryMode = Literal["first", "strided"]

#: δ thresholds in pixels at 256×256 (reference: ``compute_tapvid_metrics``).
TAPVID_THRESHOLDS: tuple[int, ...] = (1, 2, 4, 8, 16)
#: Frames the benchmark is scored at, (H, W).
TAPVID_RESOLUTION: tuple[int, int] = (256, 256)
#: In "strided" mode a query is taken every this many frames (reference default).
TAPVID_QUERY_STRIDE = 5
#: TAP-Vid-Kinetics shard names (reference: ``create_kinetics_dataset``).
KINETICS_SHARD_GLOB = "*_of_0010.pkl"


def _check_query_mode(query_mode: str) -> None:
    if query_mode not in ("first", "strided"):
        raise ConfigError(f"unknown TAP-Vid query mode {query_mode!r}; use 'first' or 'strided'")


def compute_tapvid_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: str,
    get_trackwise_metrics: bool = False,
) -> dict[str, np.ndarray]:
    """TAP-Vid metrics per video, as the reference ``compute_tapvid_metrics`` defines them.

    Args:
        query_points: ``(B, N, 3)`` as ``(t, y, x)``; only ``t`` is used (rounded half-to-even).
        gt_occluded: ``(B, N, T)`` bool, True = occluded.
        gt_tracks: ``(B, N, T, 2)`` as ``(x, y)`` pixels at 256×256.
        pred_occluded: ``(B, N, T)`` bool, the tracker's occlusion prediction.
        pred_tracks: ``(B, N, T, 2)`` as ``(x, y)``, same frame as ``gt_tracks``.
        query_mode: ``"first"`` scores only frames after each query's frame (the protocol assumes
            the point is occluded before its first visible frame); ``"strided"`` scores every
            frame except the query's own.
        get_trackwise_metrics: return ``(B, N)`` per-track values instead of ``(B,)``.

    Returns:
        ``occlusion_accuracy``, ``pts_within_{δ}`` and ``jaccard_{δ}`` for δ in 1, 2, 4, 8, 16,
        ``average_pts_within_thresh`` and ``average_jaccard``; each float64 of shape ``(B,)``
        (or ``(B, N)``). A prediction is within δ when its squared distance is strictly below δ².
        ``pts_within`` ignores the predicted occlusion and counts over GT-visible points;
        ``jaccard`` = TP / (GT-visible + FP), TP = GT-visible, predicted visible and within δ,
        FP = predicted visible but GT-occluded or not within δ. A video with nothing to score
        gets NaN, as in the reference (the benchmark number is the plain mean over videos).
    """
    _check_query_mode(query_mode)
    query_points = np.asarray(query_points)
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    pred_tracks = np.asarray(pred_tracks, dtype=np.float64)
    gt_occ = np.asarray(gt_occluded).astype(bool)
    pred_occ = np.asarray(pred_occluded).astype(bool)
    if gt_tracks.ndim != 4 or gt_tracks.shape[-1] != 2:
        raise InputError(f"gt_tracks has shape {gt_tracks.shape}; expected (B, N, T, 2) as (x, y)")
    batch, n_points, n_frames = gt_tracks.shape[:3]
    expected = {
        "query_points": (query_points.shape, (batch, n_points, 3)),
        "gt_occluded": (gt_occ.shape, (batch, n_points, n_frames)),
        "pred_occluded": (pred_occ.shape, (batch, n_points, n_frames)),
        "pred_tracks": (pred_tracks.shape, (batch, n_points, n_frames, 2)),
    }
    for name, (got, want) in expected.items():
        if got != want:
            raise InputError(f"{name} has shape {got}; expected {want} to match gt_tracks")

    query_frame = np.round(query_points[..., 0]).astype(np.int64)
    if query_frame.size and (query_frame.min() < 0 or query_frame.max() >= n_frames):
        raise InputError(
            f"query frames span [{query_frame.min()}, {query_frame.max()}] but the videos have "
            f"{n_frames} frames; pass query_points as (t, y, x) with 0 <= t < T"
        )
    frame = np.arange(n_frames)
    if query_mode == "first":
        evaluated = frame > query_frame[..., None]
    else:
        evaluated = frame != query_frame[..., None]

    axes = (2,) if get_trackwise_metrics else (1, 2)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.sum(mask & evaluated, axis=axes)

    gt_visible = ~gt_occ
    pred_visible = ~pred_occ
    num_gt_visible = count(gt_visible)
    sq_dist = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)

    metrics: dict[str, np.ndarray] = {}
    # 0/0 (a video with no scored point) stays NaN like the reference, without the warning.
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics["occlusion_accuracy"] = count(pred_occ == gt_occ) / count(np.ones_like(gt_occ))
        pts_within, jaccard = [], []
        for thresh in TAPVID_THRESHOLDS:
            within = sq_dist < thresh**2
            correct = within & gt_visible
            true_pos = count(correct & pred_visible)
            false_pos = count(pred_visible & ~(within & gt_visible))
            pts_within.append(count(correct) / num_gt_visible)
            jaccard.append(true_pos / (num_gt_visible + false_pos))
            metrics[f"pts_within_{thresh}"] = pts_within[-1]
            metrics[f"jaccard_{thresh}"] = jaccard[-1]
    metrics["average_jaccard"] = np.mean(np.stack(jaccard, axis=1), axis=1)
    metrics["average_pts_within_thresh"] = np.mean(np.stack(pts_within, axis=1), axis=1)
    return metrics


@dataclass(frozen=True)
class TapVidSample:
    """One video of a TAP-Vid split, ready to track and score.

    Attributes:
        video_name: the DAVIS sequence name, or ``<shard>-<index>`` for Kinetics.
        frames: ``(T, H, W, 3)`` uint8, resized to the protocol's 256×256.
        query_points: ``(Q, 3)`` float64 as ``(t, y, x)``, pixels of ``frames``; ``t`` integral.
        target_points: ``(Q, T, 2)`` float64 as ``(x, y)``, pixels of ``frames``: the full GT track
            of each query (a track queried twice in "strided" mode appears twice).
        occluded: ``(Q, T)`` bool, True = not visible.
        track_index: ``(Q,)`` int, which annotated track each query came from.
    """

    video_name: str
    frames: np.ndarray
    query_points: np.ndarray
    target_points: np.ndarray
    occluded: np.ndarray
    track_index: np.ndarray


def sample_queries_first(
    occluded: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One query per track, at its first visible frame; tracks never visible are dropped.

    Args:
        occluded: ``(N, T)`` bool.
        points: ``(N, T, 2)`` as ``(x, y)``.

    Returns:
        ``query_points (Q, 3)`` as ``(t, y, x)``, ``target_points (Q, T, 2)``,
        ``occluded (Q, T)`` and ``track_index (Q,)``, in track order.
    """
    visible = ~occluded
    track_index = np.flatnonzero(visible.any(axis=1))
    first = np.argmax(visible[track_index], axis=1)
    yx = points[track_index, first][:, ::-1]
    queries = np.concatenate([first[:, None].astype(np.float64), yx], axis=1)
    return queries, points[track_index], occluded[track_index], track_index


def sample_queries_strided(
    occluded: np.ndarray, points: np.ndarray, stride: int = TAPVID_QUERY_STRIDE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A query for every track visible at frames 0, stride, 2·stride, ...

    Queries are ordered by query frame, then by track (the reference's order).

    Args:
        occluded: ``(N, T)`` bool.
        points: ``(N, T, 2)`` as ``(x, y)``.
        stride: frames between query frames (5 in the protocol).

    Returns:
        ``query_points (Q, 3)`` as ``(t, y, x)``, ``target_points (Q, T, 2)``,
        ``occluded (Q, T)`` and ``track_index (Q,)``.
    """
    if stride < 1:
        raise ConfigError(f"query stride must be >= 1, got {stride}")
    query_frames = np.arange(0, occluded.shape[1], stride)
    # (frame, track) pairs in row-major order = frame first, then track.
    frame_pos, track_index = np.nonzero(~occluded[:, query_frames].T)
    t = query_frames[frame_pos]
    yx = points[track_index, t][:, ::-1]
    queries = np.concatenate([t[:, None].astype(np.float64), yx], axis=1)
    return queries, points[track_index], occluded[track_index], track_index


def resize_frames(frames: np.ndarray, size: tuple[int, int] = TAPVID_RESOLUTION) -> np.ndarray:
    """Resize ``(T, H, W, 3)`` uint8 frames to ``size`` = (H', W') with a Lanczos filter."""
    if frames.shape[1:3] == tuple(size):
        return frames
    height, width = size
    return np.stack(
        [
            np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.LANCZOS))
            for f in frames
        ]
    )


def _decode_frames(video: Any, video_name: str) -> np.ndarray:
    """``video`` as stored: a (T,H,W,3) uint8 array, or a sequence of JPEG-encoded frames."""
    if len(video) and isinstance(video[0], bytes):
        try:
            decoded = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in video]
        except OSError as err:
            raise InputError(
                f"TAP-Vid video {video_name!r} has a frame that is not a readable image ({err}); "
                "re-create the pickle with tapnet's generate_tapvid.py"
            ) from err
        return np.stack(decoded)
    frames = np.asarray(video)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(
            f"TAP-Vid video {video_name!r} has frames of shape {frames.shape} and dtype "
            f"{frames.dtype}; expected (T, H, W, 3) uint8 or a list of JPEG bytes"
        )
    return frames


def tapvid_sample(
    video_name: str,
    example: Mapping[str, Any],
    query_mode: QueryMode = "first",
    resolution: tuple[int, int] | None = TAPVID_RESOLUTION,
) -> TapVidSample:
    """Turn one stored TAP-Vid example into a :class:`TapVidSample`.

    Args:
        video_name: name to carry along.
        example: ``{'video': (T,H,W,3) uint8 or T JPEG bytes, 'points': (N,T,2) (x, y) in [0, 1],
            'occluded': (N,T) bool}``, the layout of all TAP-Vid pickles.
        query_mode: ``"first"`` or ``"strided"`` (see :func:`sample_queries_first`,
            :func:`sample_queries_strided`).
        resolution: (H, W) to resize to; None keeps the stored size. Points are scaled by the
            (W, H) of the returned frames, as the reference does.
    """
    _check_query_mode(query_mode)
    missing = {"video", "points", "occluded"} - set(example)
    if missing:
        raise InputError(
            f"TAP-Vid video {video_name!r} lacks {sorted(missing)}; expected a TAP-Vid pickle "
            "entry with 'video', 'points' and 'occluded'"
        )
    frames = _decode_frames(example["video"], video_name)
    if resolution is not None:
        frames = resize_frames(frames, resolution)
    points = np.asarray(example["points"], dtype=np.float64)
    occluded = np.asarray(example["occluded"]).astype(bool)
    n_frames = frames.shape[0]
    if points.ndim != 3 or points.shape[1:] != (n_frames, 2) or occluded.shape != points.shape[:2]:
        raise InputError(
            f"TAP-Vid video {video_name!r}: points {points.shape} and occluded {occluded.shape} "
            f"do not fit {n_frames} frames; expected (N, {n_frames}, 2) and (N, {n_frames})"
        )
    points = points * np.array([frames.shape[2], frames.shape[1]], dtype=np.float64)
    if query_mode == "first":
        queries, targets, occ, track_index = sample_queries_first(occluded, points)
    else:
        queries, targets, occ, track_index = sample_queries_strided(occluded, points)
    return TapVidSample(video_name, frames, queries, targets, occ, track_index)


def _load_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise InputError(
            f"cannot read TAP-Vid pickle {path} ({err}); pass tapvid_davis.pkl or a folder of "
            f"Kinetics shards {KINETICS_SHARD_GLOB}"
        ) from err


def _named_examples(data: Any, prefix: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(data, Mapping):
        for name, example in data.items():
            yield str(name), example
    elif isinstance(data, list | tuple):
        for index, example in enumerate(data):
            yield f"{prefix}-{index:04d}", example
    else:
        raise InputError(
            f"TAP-Vid pickle {prefix!r} holds a {type(data).__name__}; expected a dict of videos "
            "(DAVIS) or a list of videos (Kinetics, RGB-Stacking)"
        )


def iter_tapvid_examples(path: str | Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The stored videos of a TAP-Vid split, ``(video name, example)`` as the pickles hold them
    (nothing decoded: :func:`tapvid_sample` turns one into a sample), one shard in memory at a
    time.

    Args:
        path: ``tapvid_davis.pkl`` (a dict video name → example), any pickle holding a list of
            examples (RGB-Stacking), or a folder of TAP-Vid-Kinetics shards ``*_of_0010.pkl``
            (lists of examples with JPEG-encoded frames), read in name order.

    Pickles are trusted input: only open files from the TAP-Vid release.
    """
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob(KINETICS_SHARD_GLOB))
        if not shards:
            raise InputError(
                f"no TAP-Vid-Kinetics shards {KINETICS_SHARD_GLOB} in {path}; pass the folder "
                "made by tapnet's generate_tapvid.py, or the tapvid_davis.pkl file"
            )
    elif path.is_file():
        shards = [path]
    else:
        raise InputError(f"TAP-Vid path {path} does not exist; pass a .pkl file or shard folder")
    for shard in shards:
        yield from _named_examples(_load_pickle(shard), shard.stem)


def iter_tapvid(
    path: str | Path,
    query_mode: QueryMode = "first",
    resolution: tuple[int, int] | None = TAPVID_RESOLUTION,
) -> Iterator[TapVidSample]:
    """Iterate over a TAP-Vid split on disk (see :func:`iter_tapvid_examples`), one
    :class:`TapVidSample` per video.

    Args:
        path: a TAP-Vid pickle or a folder of Kinetics shards.
        query_mode: ``"first"`` or ``"strided"``.
        resolution: (H, W) the frames and points are brought to; None keeps the stored size.
    """
    _check_query_mode(query_mode)
    for name, example in iter_tapvid_examples(path):
        yield tapvid_sample(name, example, query_mode, resolution)
