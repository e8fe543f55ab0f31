"""The tracker: a video, the user's annotations, and propagation as a generator.

Shaped like SAM2's video predictor: a :class:`Tracker` (the feature extractor and the
propagation settings), an explicit :class:`TrackerState` per video (frames, annotations,
results), and :meth:`Tracker.propagate`, a generator of :class:`FrameResult` that the CLI (with
tqdm), the napari worker (yield → progress, ``quit()`` → cancel) and the evaluators all consume.

Annotated frames split the video into segments. Each frame takes its labels by forward
propagation from the nearest annotated frame before it — that frame and the frames propagated
since are the context — and frames before the first annotation are filled by propagating
backward from it. A segment depends on nothing before its annotated frame, so a correction on
frame j changes only frames j up to the next annotation, and a re-run recomputes only the
segments whose annotation changed (which frames, from which annotation, in which order:
:mod:`~ditf_track.tracker.schedule`). Features come from the state's
:class:`~ditf_track.tracker.clip_features.ClipFeatures` (keys, massive channels, the cache) and
are extracted in batches only when missing. :meth:`Tracker.from_config` builds a tracker from a
:class:`~ditf_track.config.TrackerConfig`, as every front end does.

Points (:meth:`Tracker.add_points`) are tracked from their own query frame, forward and
backward, in one of two modes (per tracker, or per :meth:`Tracker.propagate` call):
``"query"`` matches each point's descriptor in every frame (the TAP-Vid protocol) and
``"heatmap"`` propagates a Gaussian label map per point with the mask machinery (the JHMDB
protocol); see :mod:`ditf_track.propagate.points`. Masks and points can share a run: every
yielded :class:`FrameResult` carries both. Point tracks are recomputed whenever the points or
the mode change (features come from the cache), and only then.

Scene cuts (:func:`~ditf_track.cuts.detect_cuts`, given to :meth:`Tracker.init_state`) split
the video into shots, and nothing is carried across one, forward or backward: a shot without an
annotation gets empty label maps, and a point is not visible (NaN) outside its query's shot. By
default there are no cuts (the evaluators' protocol); ``ditf-track track`` and the napari widget
detect them.

Coordinates in the API are (y, x) pixels of the original frames; ``frame_idx`` is the position
in the selected frame range (0 … T−1).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..cache import FeatureCache, cache_root
from ..config import (
    POINTS_MODES,
    FeatureConfig,
    LabelMode,
    PointsMode,
    Runtime,
    TrackerConfig,
    check_points_mode,
    check_tracker_settings,
)
from ..coords import frame_to_grid, grid_to_frame
from ..errors import ConfigError, InputError
from ..features import FeatureExtractor
from ..images import Interpolation, model_input_size
from ..masks import VOID_ID, LabelMask, labels_to_grid, read_mask, small_objects
from ..presets import DEFAULT_PRESET, DEFAULT_SIDE
from ..progress import Progress, ProgressEvent
from ..propagate import (
    PointEstimate,
    PointParams,
    PropagationParams,
    make_search,
    propagate_sequence,
    soft_labels_to_mask,
    track_heatmaps,
    track_query_points,
)
from ..propagate.search import Neighbours, NeighbourSearch, PreparedContext
from ..video import VideoSource, open_video
from .clip_features import ClipFeatures
from .label_store import LabelStore
from .schedule import Schedule, governing_anchor, plan_run, shot_bounds, shot_starts


class SmallObjectWarning(UserWarning):
    """An annotated object is smaller than one feature cell and may be lost."""


@dataclass
class FrameResult:
    """One frame's output. ``labels`` ``(H, W) uint8`` object ids at the original frame size
    (None when no mask was annotated). With points: ``points (N, 2) float64`` as ``(y, x)``
    pixels of the original frame, ``visible (N,) bool`` and ``point_ids (N,) int64``, in the
    order the points were added (None without points)."""

    frame_idx: int
    frame_name: str
    labels: np.ndarray | None
    object_ids: tuple[int, ...] = ()
    annotated: bool = False
    points: np.ndarray | None = None  # (N, 2) as (y, x), original pixels
    visible: np.ndarray | None = None  # (N,) bool
    point_ids: np.ndarray | None = None  # (N,) int


@dataclass
class _Annotation:
    labels: np.ndarray  # (H, W) uint8, void already mapped to background
    object_ids: tuple[int, ...]


@dataclass
class TrackerState:
    """Everything about one video: frames, sizes, annotations and the latest results.

    ``input_size`` is the model input (H', W'), ``grid`` the feature grid (h, w) and
    ``frame_size`` the original (H, W). ``masks`` holds each frame's latest labels (a
    :class:`LabelStore`: the last few in memory, the others in PNG files, so that memory stays
    bounded however long the video); ``features`` the clip's features (cache keys, massive
    channels). ``cuts``: the file indices of the frames that start a shot, as given to
    :meth:`Tracker.init_state`; ``shot_starts`` the positions in the selection they separate
    (nothing is propagated across them).
    """

    video: VideoSource
    frame_size: tuple[int, int]
    input_size: tuple[int, int]
    grid: tuple[int, int]
    video_hash: str
    features: ClipFeatures = field(repr=False)
    palette: bytes | None = None
    annotations: dict[int, _Annotation] = field(default_factory=dict)
    masks: LabelStore = field(default_factory=LabelStore)
    dirty: set[int] = field(default_factory=set)  # annotated frames whose segment is stale
    # first annotated frames of shots whose backward segment is stale
    backward_dirty: set[int] = field(default_factory=set)
    # point id -> (query frame, y, x), in the order added; tracks: frame -> (points, visible)
    point_queries: dict[int, tuple[int, float, float]] = field(default_factory=dict)
    tracks: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    tracks_key: tuple[Any, ...] | None = None  # what the complete ``tracks`` were computed for
    cuts: tuple[int, ...] = ()
    shot_starts: tuple[int, ...] = ()
    blanks_stale: bool = False  # the frames of shots without an annotation are to be yielded

    @property
    def num_frames(self) -> int:
        return len(self.video)

    @property
    def massive_channels(self) -> tuple[int, ...] | None:
        """The clip's massive channels (found on frame 0 of the selection), once known."""
        return self.features.known_channels()

    @property
    def frame_names(self) -> list[str]:
        return list(self.video.frame_names)

    @property
    def object_ids(self) -> tuple[int, ...]:
        """Every object id annotated on any frame, sorted."""
        ids: set[int] = set()
        for ann in self.annotations.values():
            ids.update(ann.object_ids)
        return tuple(sorted(ids))

    @property
    def point_ids(self) -> np.ndarray:
        """``(N,) int64`` ids of the points, in the order they were added."""
        return np.fromiter(self.point_queries, dtype=np.int64, count=len(self.point_queries))

    @property
    def point_queries_array(self) -> tuple[np.ndarray, np.ndarray]:
        """``(frame_idx (N,) int64, points (N, 2) float64 as (y, x))`` of the queries."""
        rows = list(self.point_queries.values())
        frames = np.array([r[0] for r in rows], dtype=np.int64)
        return frames, np.array([r[1:] for r in rows], dtype=np.float64).reshape(-1, 2)

    def point_tracks(self) -> tuple[np.ndarray, np.ndarray]:
        """The latest tracks of every point: ``(T, N, 2) float64`` ``(y, x)`` and ``(T, N) bool``.

        Raises :class:`InputError` until a :meth:`Tracker.propagate` run has tracked the current
        points through every frame.
        """
        n = len(self.point_queries)
        if self.tracks_key is None or len(self.tracks) < self.num_frames:
            raise InputError("the points have not been tracked yet; run tracker.propagate(state)")
        points = np.stack([self.tracks[f][0] for f in range(self.num_frames)]).reshape(-1, n, 2)
        visible = np.stack([self.tracks[f][1] for f in range(self.num_frames)]).reshape(-1, n)
        return points, visible


class Tracker:
    """Propagates annotations through a video with a feature extractor (DiTF or ``lab``).

    ``label_mode`` brings annotated masks to the token grid: ``"area"`` averages each object's
    coverage of a cell into soft labels (keeps objects smaller than a cell; the CLI's default)
    or ``"nearest"`` samples the mask as DINO's protocol does (the evaluation runners' default,
    for comparable numbers). Frames are resized so the short side is ``short_side`` and both
    sides are multiples of the token stride (``rounding``/``long_multiple`` as in
    :func:`~ditf_track.images.model_input_size`; the official DiTF DAVIS script floors the long
    side to a multiple of 32).

    ``points_mode`` (``"query"`` or ``"heatmap"``) is how points are tracked unless a
    :meth:`propagate` call says otherwise, with ``point_params`` (see
    :class:`~ditf_track.propagate.PointParams`); heat maps propagate with ``params``.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        params: PropagationParams | None = None,
        cache: FeatureCache | None = None,
        label_mode: LabelMode = "area",
        short_side: int = DEFAULT_SIDE,
        long_multiple: int | None = None,
        rounding: Literal["nearest", "floor"] = "nearest",
        interpolation: Interpolation = "auto",
        batch_size: int = 4,
        points_mode: PointsMode = "query",
        point_params: PointParams | None = None,
    ) -> None:
        check_tracker_settings(label_mode, points_mode, batch_size)
        self.extractor = extractor
        self.params = params or PropagationParams()
        self.cache = cache if cache is not None else FeatureCache(None)
        self.label_mode = label_mode
        self.short_side = short_side
        self.long_multiple = long_multiple
        self.rounding = rounding
        self.interpolation = interpolation
        self.batch_size = batch_size
        self.points_mode: PointsMode = points_mode
        self.point_params = point_params or PointParams()
        self.extracted_frames = 0  # frames that went through the extractor (cache misses)

    @classmethod
    def from_config(
        cls,
        config: TrackerConfig,
        *,
        extractor: FeatureExtractor | None = None,
        cache: FeatureCache | None = None,
        warn: Callable[[str], None] | None = None,
        defer_load: bool = False,
    ) -> Tracker:
        """The tracker ``config`` describes: its extractor, feature cache and settings.

        ``extractor`` and ``cache`` reuse those of an earlier tracker built from the same
        ``config.features`` and ``config.runtime`` (a front end that changed only propagation
        settings keeps its loaded model and cached features). ``warn`` is told, in one line, of
        settings the new extractor has no use for (see
        :func:`~ditf_track.extractor.extractor_from_config`). ``defer_load``: a DiT's weights
        load when features are first extracted (a Ray driver, whose workers extract, needs the
        tracker's identity only).
        """
        from ..extractor import extractor_from_config

        features, runtime = config.features, config.runtime
        if extractor is None:
            extractor = extractor_from_config(
                features, "video", runtime, warn=warn, defer_load=defer_load
            )
        if cache is None:
            on_disk = runtime.disk_cache and features.features_file is None  # a file is a cache
            cache = FeatureCache(
                cache_root(runtime.cache_dir) if on_disk else None,
                device=extractor.device,
            )
        return cls(
            extractor,
            params=config.params,
            cache=cache,
            label_mode=config.label_mode,
            short_side=features.resolved_short_side("video"),
            long_multiple=features.long_multiple,
            rounding=features.rounding,
            interpolation=features.interpolation,
            batch_size=config.tracker_batch_size,
            points_mode=config.points_mode,
            point_params=config.point_params,
        )

    @classmethod
    def from_preset(
        cls,
        name: str = DEFAULT_PRESET,
        *,
        model: str | os.PathLike[str] | None = None,
        family: str | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        disk_cache: bool = True,
        params: PropagationParams | None = None,
        short_side: int | None = None,
        **kwargs: Any,
    ) -> Tracker:
        """A tracker with a preset's ``video`` settings; ``kwargs`` are the other fields of a
        :class:`~ditf_track.config.TrackerConfig` (its features, tracker and runtime parts, by
        name: ``t``, ``k``, ``label_mode``, ``batch_size``, ...).

        Features are cached on disk under ``cache_dir`` (default ``$DITF_TRACK_CACHE`` or
        ``~/.cache/ditf-track``) unless ``disk_cache`` is False.
        """
        parts: dict[str, dict[str, Any]] = {"features": {}, "tracker": {}, "runtime": {}}
        owners = {
            "features": {f.name for f in dataclasses.fields(FeatureConfig)},
            "tracker": {f.name for f in dataclasses.fields(TrackerConfig)},
            "runtime": {f.name for f in dataclasses.fields(Runtime)},
        }
        for name_, value in kwargs.items():
            owner = next((o for o, names in owners.items() if name_ in names), None)
            if owner is None or name_ in ("features", "runtime", "params"):
                raise ConfigError(f"unknown tracker setting {name_!r}")
            parts[owner][name_] = value
        dtype_text = str(dtype).removeprefix("torch.") if dtype is not None else None
        config = TrackerConfig(
            features=FeatureConfig(
                preset=name,
                model=None if model is None else str(model),
                family=family,
                dtype=dtype_text,
                short_side=short_side,
                **parts["features"],
            ),
            params=params or PropagationParams(),
            runtime=Runtime(
                device=str(device),
                cache_dir=None if cache_dir is None else str(cache_dir),
                disk_cache=disk_cache,
                **parts["runtime"],
            ),
            **parts["tracker"],
        )
        return cls.from_config(config)

    def identity(self) -> dict[str, Any]:
        """Everything that changes the tracker's results (evaluation resume checks), unlike the
        feature cache's keys, which hold only what changes the features (:class:`ClipFeatures`)."""
        return {
            "extractor": self.extractor.identity(),
            "short_side": self.short_side,
            "long_multiple": self.long_multiple,
            "rounding": self.rounding,
            "interpolation": self.interpolation,
            "label_mode": self.label_mode,
            "propagation": dataclasses.asdict(self.params),
            "points_mode": self.points_mode,
            "point_params": dataclasses.asdict(self.point_params),
        }

    # -- state -------------------------------------------------------------------------------
    def init_state(
        self,
        video: str | os.PathLike[str] | VideoSource,
        *,
        start: int = 0,
        end: int | None = None,
        stride: int = 1,
        cuts: Sequence[int] = (),
    ) -> TrackerState:
        """Open ``video`` (a file or frame folder, or an opened source) for tracking.

        ``cuts``: file indices of the frames that start a new shot
        (:func:`~ditf_track.cuts.detect_cuts`); labels and points are not propagated across a
        cut that lies between two selected frames. Default: none (today's protocol).
        """
        if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in cuts):
            raise ConfigError(f"cuts must be frame indices (whole numbers), got {list(cuts)!r}")
        source = video if isinstance(video, VideoSource) else open_video(video, start, end, stride)
        size = model_input_size(
            source.height,
            source.width,
            short_side=self.short_side,
            multiple=self.extractor.stride,
            long_multiple=self.long_multiple,
            rounding=self.rounding,
        )
        stride_px = self.extractor.stride
        features = self._clip_features(source, size)
        return TrackerState(
            video=source,
            frame_size=(source.height, source.width),
            input_size=size,
            grid=(size[0] // stride_px, size[1] // stride_px),
            video_hash=features.video_hash,
            features=features,
            cuts=tuple(sorted({int(c) for c in cuts})),
            shot_starts=tuple(shot_starts(source.frame_indices, cuts)),
            # the frames propagation works on (the reference and its context), for re-reads
            masks=LabelStore(capacity=self.params.n_context + 1),
        )

    def add_mask(
        self,
        state: TrackerState,
        frame_idx: int,
        labels: np.ndarray | LabelMask | str | os.PathLike[str],
    ) -> tuple[int, ...]:
        """Annotate ``frame_idx`` with a label map ``(H, W)`` (0 background, 1..254 objects,
        255 void) or a mask file; it replaces that frame's labels and starts a segment.

        Returns the object ids. Raises :class:`InputError` for a size mismatch, an empty mask
        or a frame out of range.
        """
        name = f"the mask of frame {frame_idx}"
        if isinstance(labels, (str, os.PathLike)):
            name = str(labels)
            labels = read_mask(labels)
        if isinstance(labels, LabelMask):
            if labels.palette is not None and state.palette is None:
                state.palette = labels.palette
            labels = labels.labels
        labels = np.asarray(labels)
        self._check_frame(state, frame_idx)
        if labels.ndim != 2:
            raise InputError(f"{name} must be a (H, W) label map, got shape {labels.shape}")
        if labels.shape != state.frame_size:
            raise InputError(
                f"{name} is {labels.shape[1]}x{labels.shape[0]} but the video frames are "
                f"{state.frame_size[1]}x{state.frame_size[0]}; give a mask of the frame size"
            )
        bad = labels[(labels < 0) | (labels > VOID_ID)] if labels.size else labels
        if bad.size:
            raise InputError(
                f"{name} has label {int(bad.flat[0])}; object ids must be 1..{VOID_ID - 1} "
                f"(0 background, {VOID_ID} void)"
            )
        labels = np.where(labels == VOID_ID, 0, labels).astype(np.uint8)
        ids = tuple(int(i) for i in np.unique(labels) if i != 0)
        if not ids:
            raise InputError(
                f"{name} contains no object (all background); paint at least one object"
            )
        cell_px = (state.frame_size[0] / state.grid[0]) * (state.frame_size[1] / state.grid[1])
        tiny = small_objects(labels, ids, cell_px)
        if tiny:
            area = "" if self.label_mode == "area" else "use area labels, "
            warnings.warn(
                f"object(s) {', '.join(map(str, tiny))} in {name} cover fewer pixels than one "
                f"feature cell ({cell_px:.0f} px); they may be lost ({area}a larger "
                "--short-side, or paint them larger)",
                SmallObjectWarning,
                stacklevel=2,
            )
        shot = shot_bounds(state.shot_starts, frame_idx, state.num_frames)
        first = min((a for a in state.annotations if shot[0] <= a < shot[1]), default=None)
        if not state.annotations:
            state.blanks_stale = True
        state.annotations[frame_idx] = _Annotation(labels, ids)
        # The segment this frame falls in now ends before it; its earlier frames do not change.
        state.dirty.add(frame_idx)
        if first is None or frame_idx <= first:
            if first is not None:
                state.backward_dirty.discard(first)
            state.backward_dirty.add(frame_idx)
        return ids

    def add_points(
        self,
        state: TrackerState,
        frame_idx: int,
        points: np.ndarray | Sequence[Sequence[float]],
        ids: np.ndarray | Sequence[int] | None = None,
    ) -> np.ndarray:
        """Query points on ``frame_idx``: ``points (N, 2)`` as ``(y, x)`` pixels of the original
        frame (pixel centres at integers; the frame spans ``[-0.5, H - 0.5)``).

        Each point is tracked forward and backward from this frame. ``ids (N,)`` name the tracks
        (default: the next free integers); an id that already exists is moved to this query.
        Returns the ids ``(N,) int64``. Raises :class:`InputError` for a frame out of range,
        points outside the frame, a bad shape or repeated ids.
        """
        self._check_frame(state, frame_idx)
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise InputError(
                f"points must be a non-empty (N, 2) array of (y, x) pixels, got shape {pts.shape}"
            )
        if not np.all(np.isfinite(pts)):
            raise InputError("points must be finite (y, x) pixel positions; remove NaN/inf rows")
        height, width = state.frame_size
        outside = (pts[:, 0] < -0.5) | (pts[:, 0] >= height - 0.5)
        outside |= (pts[:, 1] < -0.5) | (pts[:, 1] >= width - 0.5)
        if outside.any():
            y, x = pts[np.argmax(outside)]
            raise InputError(
                f"point (x={x:g}, y={y:g}) on frame {frame_idx} lies outside the {width}x{height} "
                f"frame ({int(outside.sum())} point(s) do); give x in [0, {width - 1}] and y in "
                f"[0, {height - 1}]"
            )
        if ids is None:
            start = max(state.point_queries, default=-1) + 1
            new_ids = np.arange(start, start + len(pts), dtype=np.int64)
        else:
            new_ids = np.asarray(ids).reshape(-1)
            if new_ids.shape != (len(pts),) or not np.issubdtype(new_ids.dtype, np.integer):
                raise InputError(
                    f"ids must be {len(pts)} integers, one per point, got {np.asarray(ids)!r}"
                )
            new_ids = new_ids.astype(np.int64)
            values, counts = np.unique(new_ids, return_counts=True)
            if (counts > 1).any():
                raise InputError(
                    f"point id {int(values[counts > 1][0])} is given twice; give each point its "
                    "own id"
                )
        for pid, (y, x) in zip(new_ids, pts):
            state.point_queries[int(pid)] = (int(frame_idx), float(y), float(x))
        state.tracks_key = None
        return new_ids

    def remove_points(self, state: TrackerState, ids: Sequence[int] | np.ndarray) -> None:
        """Stop tracking the points ``ids`` (unknown ids raise :class:`InputError`)."""
        unknown = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) not in state.point_queries]
        if unknown:
            raise InputError(
                f"no point has id {unknown[0]}; known ids: {list(state.point_queries)}"
            )
        for pid in np.asarray(ids).reshape(-1):
            del state.point_queries[int(pid)]
        state.tracks.clear()
        state.tracks_key = None

    def clear_annotations(self, state: TrackerState) -> None:
        """Forget every annotation, point and result (the cached features stay)."""
        state.annotations.clear()
        state.masks.clear()
        state.dirty.clear()
        state.backward_dirty.clear()
        state.blanks_stale = False
        state.point_queries.clear()
        state.tracks.clear()
        state.tracks_key = None

    # -- features ----------------------------------------------------------------------------
    def _clip_features(
        self, video: VideoSource, input_size: tuple[int, int], video_hash: str | None = None
    ) -> ClipFeatures:
        return ClipFeatures(
            self.extractor,
            video,
            input_size,
            cache=self.cache,
            interpolation=self.interpolation,
            video_hash=video_hash,
            on_extract=self._count_extracted,
        )

    def _count_extracted(self, n: int) -> None:
        self.extracted_frames += n

    def _clip(self, state: TrackerState) -> ClipFeatures:
        """The state's clip features, under this tracker's extractor, cache and resize."""
        clip = state.features
        if (
            clip.extractor is not self.extractor
            or clip.cache is not self.cache
            or clip.interpolation != self.interpolation
            or clip.on_extract != self._count_extracted
        ):
            clip = state.features = self._clip_features(
                state.video, state.input_size, state.video_hash
            )
        return clip

    def massive_channels(self, state: TrackerState) -> tuple[int, ...]:
        """The clip's massive channels, found on frame 0 of the selection (extracting it unless
        an earlier run did); every frame of the clip discards them."""
        return self._clip(state).massive_channels

    # -- propagation -------------------------------------------------------------------------
    def pending_frames(
        self, state: TrackerState, *, points_mode: PointsMode | None = None
    ) -> list[int]:
        """The frames the next :meth:`propagate` (with this ``points_mode``) will yield, in the
        order it yields them.

        Empty when every mask segment and every point track is up to date (or nothing is
        annotated). A front end uses it to blank the frames that are about to be recomputed,
        and to name those a cancelled run left without results.
        """
        mode = self.points_mode if points_mode is None else points_mode
        check_points_mode(mode)
        return self._schedule(state, mode).frames

    def _schedule(self, state: TrackerState, mode: str) -> Schedule:
        """The next run's :class:`~ditf_track.tracker.schedule.Schedule` for ``state``."""
        points_stale = bool(state.point_queries) and (
            state.tracks_key != self._points_key(state, mode)
            or len(state.tracks) < state.num_frames
        )
        return plan_run(
            sorted(state.annotations),
            state.dirty,
            state.backward_dirty,
            state.num_frames,
            query_frames={q[0] for q in state.point_queries.values()},
            points_stale=points_stale,
            starts=state.shot_starts,
            blanks_stale=state.blanks_stale,
        )

    @torch.inference_mode()
    def propagate(
        self,
        state: TrackerState,
        *,
        progress: Progress | None = None,
        points_mode: PointsMode | None = None,
    ) -> Iterator[FrameResult]:
        """Yield every frame whose labels or points are (re)computed, in propagation order.

        Masks: stale segments only. The first run yields every frame; a run after
        ``add_mask(j)`` yields frames j up to the next annotation (and, for a new first
        annotation, the frames before it). Points: when the points or ``points_mode`` (default:
        the tracker's) changed since the last complete run, every frame is yielded with every
        point's position; otherwise frames carry the stored positions. Frames that only points
        needed come after the mask segments, backward from the first query frame, then forward;
        their ``labels`` are the latest masks (None without masks). With scene cuts
        (:meth:`init_state`), segments end at a cut, and the frames of a shot without an
        annotation are yielded once, after the segments, with an empty label map.

        Features are extracted in batches when missing from the cache; ``progress`` receives
        ``"extract"`` and ``"propagate"`` :class:`ProgressEvent`s. Stopping the iteration (or
        closing the generator) leaves a consistent state: finished frames keep their results
        and unfinished work stays stale for the next run.
        """
        mode = self.points_mode if points_mode is None else points_mode
        check_points_mode(mode)
        if not state.annotations and not state.point_queries:
            raise InputError(
                "no frame is annotated and no point is added; add a mask (--mask FIRST.png) or "
                "points (--points POINTS.csv) before tracking"
            )
        schedule = self._schedule(state, mode)
        points_stale = schedule.points_stale
        emit = progress or (lambda _event: None)
        points_key = self._points_key(state, mode)
        if points_stale:
            state.tracks.clear()
            state.tracks_key = None
        needed = schedule.feature_frames()
        propagate_total, propagate_done = len(schedule.frames), 0
        clip = self._clip(state)
        bootstrap = clip.known_channels() is None
        missing = clip.missing(needed)
        extract_total, extract_done = len(missing), 0
        if bootstrap:
            # Frame 0 first: the channels found on it are part of every frame's key (it is
            # extracted for them even when the run reads no feature of it).
            if 0 not in missing:
                extract_total += 1
            emit(ProgressEvent("extract", 0, extract_total))
            self.massive_channels(state)
            extract_done = 1
            missing = [f for f in missing if f != 0]
        emit(ProgressEvent("extract", extract_done, extract_total))
        emit(ProgressEvent("propagate", 0, propagate_total))
        pending = set(missing)
        queue = [f for f in needed if f in pending]

        def feats(frame_idx: int) -> torch.Tensor:
            nonlocal extract_done
            cached = clip.cache.get(clip.key(frame_idx))
            if cached is not None:
                return cached
            ahead = [f for f in queue if f in pending and f != frame_idx][: self.batch_size - 1]
            batch = [frame_idx, *ahead]
            clip.extract(batch)
            pending.difference_update(batch)
            extract_done += len(batch)
            emit(ProgressEvent("extract", min(extract_done, extract_total), extract_total))
            return clip.get(frame_idx)

        search = make_search(self.params)
        point_run = _PointRun(self, state, feats, mode) if points_stale else None
        ids = state.point_ids if state.point_queries else None

        def with_points(result: FrameResult) -> FrameResult:
            if ids is None:
                return result
            if point_run is not None:
                state.tracks[result.frame_idx] = point_run.at(result.frame_idx)
            stored = state.tracks.get(result.frame_idx)
            if stored is not None:
                result.points, result.visible = stored
                result.point_ids = ids
            return result

        names = state.frame_names
        for anchor, frames, backward in schedule.segments:
            ann = state.annotations[anchor]
            reference = feats(anchor)
            reference_labels = torch.from_numpy(
                labels_to_grid(ann.labels, ann.object_ids, state.grid, mode=self.label_mode)
            ).to(reference.device)
            if not backward:
                state.masks[anchor] = ann.labels
                result = with_points(
                    FrameResult(anchor, names[anchor], ann.labels, ann.object_ids, annotated=True)
                )
                propagate_done += 1
                emit(ProgressEvent("propagate", propagate_done, propagate_total))
                yield result
            frame_feats = (feats(f) for f in frames)
            stream = propagate_sequence(
                reference, reference_labels, frame_feats, self.params, search=search
            )
            for frame_idx, soft in zip(frames, stream):
                labels = soft_labels_to_mask(
                    soft, ann.object_ids, state.frame_size, self.extractor.stride
                )
                state.masks[frame_idx] = labels
                result = with_points(
                    FrameResult(frame_idx, names[frame_idx], labels, ann.object_ids)
                )
                propagate_done += 1
                emit(ProgressEvent("propagate", propagate_done, propagate_total))
                yield result
            if backward:
                state.backward_dirty.discard(anchor)
            else:
                state.dirty.discard(anchor)
        blank = np.zeros(state.frame_size, np.uint8)  # a shot without annotation: no object
        blank.flags.writeable = False  # one array shared by every blank frame
        for frame_idx in schedule.blank_frames:
            state.masks[frame_idx] = blank  # stored (and written) like any frame's labels
            result = with_points(FrameResult(frame_idx, names[frame_idx], blank))
            propagate_done += 1
            emit(ProgressEvent("propagate", propagate_done, propagate_total))
            yield result
        if schedule.blank_frames:
            state.blanks_stale = False
        for frame_idx in schedule.point_frames:
            object_ids = self._object_ids_at(state, frame_idx)
            known = state.masks.get(frame_idx)
            if known is None and state.annotations and not object_ids:
                known = blank  # in a shot without annotation
            result = with_points(
                FrameResult(
                    frame_idx,
                    names[frame_idx],
                    known,
                    object_ids,
                    annotated=frame_idx in state.annotations,
                )
            )
            propagate_done += 1
            emit(ProgressEvent("propagate", propagate_done, propagate_total))
            yield result
        if points_stale and len(state.tracks) == state.num_frames:
            state.tracks_key = points_key

    def _points_key(self, state: TrackerState, mode: str) -> tuple[Any, ...]:
        """What point tracks depend on besides the features: the queries and the settings."""
        queries = tuple(state.point_queries.items())
        propagation = self.params if mode == "heatmap" else None
        return (mode, self.point_params, propagation, queries)

    def _object_ids_at(self, state: TrackerState, frame_idx: int) -> tuple[int, ...]:
        """Object ids of the annotation whose segment holds ``frame_idx`` (() without masks)."""
        anchor = governing_anchor(
            sorted(state.annotations), frame_idx, state.shot_starts, state.num_frames
        )
        return () if anchor is None else state.annotations[anchor].object_ids

    def _check_frame(self, state: TrackerState, frame_idx: int) -> None:
        if not 0 <= frame_idx < state.num_frames:
            raise InputError(
                f"frame {frame_idx} is out of range: the video has {state.num_frames} frames "
                f"(0..{state.num_frames - 1})"
            )


class _SharedPrepare:
    """A search whose ``prepare`` is shared by the heat-map sequences of one run.

    Sequences from different query frames pass through the same frames; each would otherwise
    keep its own prepared copy of every context frame in its queue (``n_context`` frames per
    sequence). The last ``capacity`` prepared frames are kept, keyed by the feature tensor
    (held, so its ``id`` stays unique while cached).
    """

    def __init__(self, search: NeighbourSearch, capacity: int) -> None:
        self.inner = search
        self.topk = search.topk
        self.capacity = capacity
        self._prepared: OrderedDict[int, tuple[torch.Tensor, PreparedContext]] = OrderedDict()

    def prepare(self, features: torch.Tensor) -> PreparedContext:
        key = id(features)
        hit = self._prepared.get(key)
        if hit is not None and hit[0] is features:
            self._prepared.move_to_end(key)
            return hit[1]
        prepared = self.inner.prepare(features)
        self._prepared[key] = (features, prepared)
        while len(self._prepared) > self.capacity:
            self._prepared.popitem(last=False)
        return prepared

    def search(self, query: torch.Tensor, contexts: Sequence[PreparedContext]) -> Neighbours:
        return self.inner.search(query, contexts)


class _PointRun:
    """Every point's position, frame by frame, for one :meth:`Tracker.propagate` call.

    Points are grouped by query frame; each group runs one sequence forward and one backward
    from its query frame (:func:`~ditf_track.propagate.track_query_points` or
    :func:`~ditf_track.propagate.track_heatmaps`), advanced lazily when :meth:`at` asks for a
    frame it has not reached, so frames may be asked for in any order; estimates computed on the
    way are kept until asked for. A sequence stops at the ends of its query frame's shot;
    outside it the points are not visible, at NaN.
    """

    def __init__(
        self,
        tracker: Tracker,
        state: TrackerState,
        feats: Callable[[int], torch.Tensor],
        mode: str,
    ) -> None:
        self.tracker = tracker
        self.state = state
        self.feats = feats
        self.mode = mode
        frames, points = state.point_queries_array
        self.num_points = len(points)
        stride = tracker.extractor.stride
        grid = frame_to_grid(points, state.frame_size, state.input_size, stride)
        self.groups: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for t in np.unique(frames):
            index = np.flatnonzero(frames == t)
            self.groups[int(t)] = (index, points[index], grid[index])
        self._streams: dict[tuple[int, int], Iterator[tuple[int, PointEstimate]]] = {}
        self._ahead: dict[tuple[int, int], dict[int, PointEstimate]] = {}
        # every sequence's queue, plus the query frames, plus the frame being searched; a
        # search of its own, so that the mask propagation's windowed search keeps its slots
        capacity = tracker.params.n_context + len(self.groups) + 1
        self.search = _SharedPrepare(make_search(tracker.params, capacity=capacity), capacity)

    def _stream(self, t: int, direction: int) -> Iterator[tuple[int, PointEstimate]]:
        first, stop = shot_bounds(self.state.shot_starts, t, self.state.num_frames)
        last = stop if direction > 0 else first - 1
        frames = range(t + direction, last, direction)
        frame_feats = (self.feats(f) for f in frames)
        grid = self.groups[t][2]
        estimates: Iterator[PointEstimate]
        if self.mode == "heatmap":
            estimates = track_heatmaps(
                self.feats(t),
                grid,
                frame_feats,
                self.tracker.params,
                self.tracker.point_params,
                search=self.search,
            )
        else:
            estimates = track_query_points(
                self.feats(t), grid, frame_feats, self.tracker.point_params
            )
        return zip(frames, estimates)

    def at(self, frame_idx: int) -> tuple[np.ndarray, np.ndarray]:
        """``points (N, 2)`` float64 ``(y, x)`` original pixels and ``visible (N,)`` bool."""
        state = self.state
        stride = self.tracker.extractor.stride
        points = np.empty((self.num_points, 2), dtype=np.float64)
        visible = np.empty(self.num_points, dtype=bool)
        for t, (index, query, _) in self.groups.items():
            if frame_idx == t:
                points[index], visible[index] = query, True
                continue
            first, stop = shot_bounds(state.shot_starts, t, state.num_frames)
            if not first <= frame_idx < stop:  # across a cut: nothing carried
                points[index], visible[index] = np.nan, False
                continue
            key = (t, 1 if frame_idx > t else -1)
            ahead = self._ahead.setdefault(key, {})
            while frame_idx not in ahead:
                stream = self._streams.get(key)
                if stream is None:
                    stream = self._streams[key] = self._stream(*key)
                reached, estimate = next(stream)
                ahead[reached] = estimate
                if reached in (first, stop - 1):
                    del self._streams[key]  # done: free its context frames
            estimate = ahead.pop(frame_idx)
            points[index] = grid_to_frame(
                estimate.grid_yx, state.frame_size, state.input_size, stride
            )
            visible[index] = estimate.visible
        return points, visible


def run_facts(tracker: Tracker, state: TrackerState) -> dict[str, Any]:
    """What a run read and resolved, for its record (``config.json``, a DAVIS sequence's
    ``run.json``): the clip, the model's identity and device, frame 0's massive channels, the
    propagation settings, the annotations."""
    return {
        "video": str(state.video.path),
        "frames": state.num_frames,
        "frame_size": list(state.frame_size),
        "input_size": list(state.input_size),
        "grid": list(state.grid),
        "short_side": tracker.short_side,
        "massive_channels": list(state.massive_channels or ()),
        # The resolved device (e.g. "cpu" for lab whatever --device said, "cuda:0").
        "device": str(tracker.extractor.device),
        "extractor": tracker.extractor.identity(),
        "propagation": dataclasses.asdict(tracker.params),
        "annotated_frames": sorted(state.annotations),
        "object_ids": list(state.object_ids),
        "points": {
            "mode": tracker.points_mode,
            "count": len(state.point_queries),
            "query_frames": sorted({q[0] for q in state.point_queries.values()}),
        },
    }


__all__ = [
    "POINTS_MODES",
    "ClipFeatures",
    "FrameResult",
    "LabelStore",
    "PointsMode",
    "ProgressEvent",
    "SmallObjectWarning",
    "Tracker",
    "TrackerState",
    "run_facts",
]
