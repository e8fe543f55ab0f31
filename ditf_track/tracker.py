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
segments whose annotation changed. Features come from the :class:`~ditf_track.cache.FeatureCache`
and are extracted in batches only when missing.

Coordinates in the API are (y, x) pixels of the original frames; ``frame_idx`` is the position
in the selected frame range (0 … T−1).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .cache import FeatureCache, cache_root, clip_key, feature_key
from .errors import ConfigError, InputError
from .features import FeatureExtractor
from .images import Interpolation, model_input_size
from .masks import VOID_ID, LabelMask, labels_to_grid, read_mask, small_objects
from .propagate import PropagationParams, make_search, propagate_sequence, soft_labels_to_mask
from .video import VideoSource, open_video, resize_frames

LabelMode = Literal["area", "nearest"]
Phase = Literal["extract", "propagate"]


class SmallObjectWarning(UserWarning):
    """An annotated object is smaller than one feature cell and may be lost."""


@dataclass(frozen=True)
class ProgressEvent:
    """Progress of one phase of a :meth:`Tracker.propagate` run: ``done`` of ``total`` frames."""

    phase: Phase
    done: int
    total: int


@dataclass
class FrameResult:
    """One frame's output. ``labels`` ``(H, W) uint8`` object ids at the original frame size."""

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
    ``frame_size`` the original (H, W). ``masks`` holds each frame's latest labels.
    """

    video: VideoSource
    frame_size: tuple[int, int]
    input_size: tuple[int, int]
    grid: tuple[int, int]
    video_hash: str
    palette: bytes | None = None
    massive_channels: tuple[int, ...] | None = None
    annotations: dict[int, _Annotation] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=set)  # annotated frames whose segment is stale
    backward_dirty: bool = False

    @property
    def num_frames(self) -> int:
        return len(self.video)

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


class Tracker:
    """Propagates annotations through a video with a feature extractor (DiTF or ``lab``).

    ``label_mode`` brings annotated masks to the token grid: ``"area"`` averages each object's
    coverage of a cell into soft labels (keeps objects smaller than a cell; the CLI's default)
    or ``"nearest"`` samples the mask as DINO's protocol does (the evaluation runners' default,
    for comparable numbers). Frames are resized so the short side is ``short_side`` and both
    sides are multiples of the token stride (``rounding``/``long_multiple`` as in
    :func:`~ditf_track.images.model_input_size`; the official DiTF DAVIS script floors the long
    side to a multiple of 32).
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        params: PropagationParams | None = None,
        cache: FeatureCache | None = None,
        label_mode: LabelMode = "area",
        short_side: int = 960,
        long_multiple: int | None = None,
        rounding: Literal["nearest", "floor"] = "nearest",
        interpolation: Interpolation = "auto",
        batch_size: int = 4,
    ) -> None:
        if label_mode not in ("area", "nearest"):
            raise ConfigError(f"unknown label mode {label_mode!r}; use 'area' or 'nearest'")
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1")
        self.extractor = extractor
        self.params = params or PropagationParams()
        self.cache = cache if cache is not None else FeatureCache(None)
        self.label_mode = label_mode
        self.short_side = short_side
        self.long_multiple = long_multiple
        self.rounding = rounding
        self.interpolation = interpolation
        self.batch_size = batch_size
        self.extracted_frames = 0  # frames that went through the extractor (cache misses)

    @classmethod
    def from_preset(
        cls,
        name: str = "pixart-alpha",
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
        """A tracker with a preset's ``video`` settings; ``kwargs`` override DiTF settings.

        Features are cached on disk under ``cache_dir`` (default ``$DITF_TRACK_CACHE`` or
        ``~/.cache/ditf-track``) unless ``disk_cache`` is False.
        """
        from .extractor import build_extractor
        from .presets import load_preset

        preset = load_preset(name)
        tracker_keys = {"label_mode", "long_multiple", "rounding", "interpolation", "batch_size"}
        tracker_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in tracker_keys}
        cache_kwargs = {
            k: kwargs.pop(k) for k in list(kwargs) if k in ("device_budget", "disk_budget")
        }
        extra = {} if preset.family == "lab" else {"cache_dir": cache_dir}
        extractor = build_extractor(
            name, "video", model=model, family=family, device=device, dtype=dtype, **extra, **kwargs
        )
        cache = FeatureCache(
            cache_root(cache_dir) if disk_cache else None,
            device=getattr(extractor, "device", "cpu"),
            **cache_kwargs,
        )
        side = short_side or preset.video.short_side or 960
        return cls(extractor, params=params, cache=cache, short_side=side, **tracker_kwargs)

    # -- state -------------------------------------------------------------------------------
    def init_state(
        self,
        video: str | os.PathLike[str] | VideoSource,
        *,
        start: int = 0,
        end: int | None = None,
        stride: int = 1,
    ) -> TrackerState:
        """Open ``video`` (a file or frame folder, or an opened source) for tracking."""
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
        return TrackerState(
            video=source,
            frame_size=(source.height, source.width),
            input_size=size,
            grid=(size[0] // stride_px, size[1] // stride_px),
            video_hash=source.content_hash(),
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
        labels = np.where(labels == VOID_ID, 0, labels).astype(np.uint8)
        ids = tuple(int(i) for i in np.unique(labels) if i != 0)
        if not ids:
            raise InputError(
                f"{name} contains no object (all background); paint at least one object"
            )
        cell_px = (state.frame_size[0] / state.grid[0]) * (state.frame_size[1] / state.grid[1])
        tiny = small_objects(labels, ids, cell_px)
        if tiny:
            warnings.warn(
                f"object(s) {', '.join(map(str, tiny))} in {name} cover fewer pixels than one "
                f"feature cell ({cell_px:.0f} px); they may be lost (use area labels, a larger "
                "--short-side, or paint them larger)",
                SmallObjectWarning,
                stacklevel=2,
            )
        first = min(state.annotations, default=None)
        state.annotations[frame_idx] = _Annotation(labels, ids)
        # The segment this frame falls in now ends before it; its earlier frames do not change.
        state.dirty.add(frame_idx)
        if first is None or frame_idx <= first:
            state.backward_dirty = True
        return ids

    def clear_annotations(self, state: TrackerState) -> None:
        """Forget every annotation and result (the cached features stay)."""
        state.annotations.clear()
        state.masks.clear()
        state.dirty.clear()
        state.backward_dirty = False

    # -- features ----------------------------------------------------------------------------
    def _identity(self, state: TrackerState) -> dict[str, Any]:
        return {**self.extractor.identity(), "resize": self.interpolation}

    def _frame_key(self, state: TrackerState, frame_idx: int) -> str:
        identity = self._identity(state)
        identity["massive_channels"] = list(state.massive_channels or ())
        index = int(state.video.frame_indices[frame_idx])
        return feature_key(identity, state.video_hash, index, state.input_size)

    def _ensure_channels(self, state: TrackerState) -> None:
        """Fix the clip's massive channels, found on its first frame, once and for all runs."""
        if state.massive_channels is not None:
            return
        key = clip_key(self._identity(state), state.video_hash, state.input_size)
        meta = self.cache.get_clip_meta(key)
        if meta is not None and "massive_channels" in meta:
            state.massive_channels = tuple(int(c) for c in meta["massive_channels"])
            return
        maps = self.extractor.extract(self._frames(state, [0]))
        self.extracted_frames += 1
        state.massive_channels = tuple(maps.meta.get("massive_channels", ()))
        self.cache.put_clip_meta(key, {"massive_channels": list(state.massive_channels)})
        self.cache.put(self._frame_key(state, 0), maps.features[0])

    def _frames(self, state: TrackerState, positions: Sequence[int]) -> np.ndarray:
        frames = state.video.read_batch(list(positions))
        return resize_frames(frames, state.input_size, interpolation=self.interpolation)

    def features(self, state: TrackerState, frame_idx: int) -> torch.Tensor:
        """The ``(C, h, w)`` feature map of one frame (from the cache, else extracted)."""
        self._ensure_channels(state)
        key = self._frame_key(state, frame_idx)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        self._extract(state, [frame_idx])
        found = self.cache.get(key)
        assert found is not None
        return found

    def _extract(self, state: TrackerState, positions: Sequence[int]) -> None:
        maps = self.extractor.extract(
            self._frames(state, positions), massive_channels=state.massive_channels
        )
        self.extracted_frames += len(positions)
        for pos, feats in zip(positions, maps.features):
            self.cache.put(self._frame_key(state, pos), feats)

    # -- propagation -------------------------------------------------------------------------
    def _plan(self, state: TrackerState) -> list[tuple[int, list[int], bool]]:
        """Stale segments: (annotated frame, frames in propagation order, backward?)."""
        if not state.annotations:
            raise InputError("no frame is annotated; add a mask (--mask FIRST.png) before tracking")
        anchors = sorted(state.annotations)
        plan: list[tuple[int, list[int], bool]] = []
        if state.backward_dirty and anchors[0] > 0:
            plan.append((anchors[0], list(range(anchors[0] - 1, -1, -1)), True))
        for i, anchor in enumerate(anchors):
            if anchor in state.dirty:
                stop = anchors[i + 1] if i + 1 < len(anchors) else state.num_frames
                plan.append((anchor, list(range(anchor + 1, stop)), False))
        return plan

    def pending_frames(self, state: TrackerState) -> list[int]:
        """The frames the next :meth:`propagate` will yield, in the order it yields them.

        Empty when every segment is up to date (or nothing is annotated). A front end uses it
        to blank the frames that are about to be recomputed, and to name those a cancelled run
        left without labels.
        """
        if not state.annotations:
            return []
        return [
            f
            for anchor, frames, back in self._plan(state)
            for f in (frames if back else [anchor, *frames])
        ]

    @torch.inference_mode()
    def propagate(
        self,
        state: TrackerState,
        *,
        progress: Callable[[ProgressEvent], None] | None = None,
    ) -> Iterator[FrameResult]:
        """Yield every frame whose labels are (re)computed, in propagation order.

        Stale segments only: the first run yields every frame; a run after ``add_mask(j)``
        yields frames j up to the next annotation (and, for a new first annotation, the frames
        before it). Features are extracted in batches when missing from the cache; ``progress``
        receives ``"extract"`` and ``"propagate"`` :class:`ProgressEvent`s. Stopping the
        iteration (or closing the generator) leaves a consistent state: finished frames keep
        their results and unfinished segments stay stale for the next run.
        """
        plan = self._plan(state)
        emit = progress or (lambda _event: None)
        self._ensure_channels(state)
        needed = list(dict.fromkeys(f for anchor, frames, _ in plan for f in (anchor, *frames)))
        missing = [f for f in needed if not self.cache.contains(self._frame_key(state, f))]
        yielded = [
            f for anchor, frames, back in plan for f in ([*frames] if back else [anchor, *frames])
        ]
        extract_total, extract_done = len(missing), 0
        propagate_total, propagate_done = len(yielded), 0
        emit(ProgressEvent("extract", 0, extract_total))
        emit(ProgressEvent("propagate", 0, propagate_total))
        pending = set(missing)
        queue = [f for f in needed if f in pending]

        def feats(frame_idx: int) -> torch.Tensor:
            nonlocal extract_done
            key = self._frame_key(state, frame_idx)
            cached = self.cache.get(key)
            if cached is not None:
                return cached
            ahead = [f for f in queue if f in pending and f != frame_idx][: self.batch_size - 1]
            batch = [frame_idx, *ahead]
            self._extract(state, batch)
            pending.difference_update(batch)
            extract_done += len(batch)
            emit(ProgressEvent("extract", min(extract_done, extract_total), extract_total))
            found = self.cache.get(key)
            assert found is not None
            return found

        search = make_search(self.params)
        names = state.frame_names
        for anchor, frames, backward in plan:
            ann = state.annotations[anchor]
            reference = feats(anchor)
            reference_labels = torch.from_numpy(
                labels_to_grid(ann.labels, ann.object_ids, state.grid, mode=self.label_mode)
            ).to(reference.device)
            if not backward:
                state.masks[anchor] = ann.labels
                propagate_done += 1
                emit(ProgressEvent("propagate", propagate_done, propagate_total))
                yield FrameResult(anchor, names[anchor], ann.labels, ann.object_ids, annotated=True)
            frame_feats = (feats(f) for f in frames)
            stream = propagate_sequence(
                reference, reference_labels, frame_feats, self.params, search=search
            )
            for frame_idx, soft in zip(frames, stream):
                labels = soft_labels_to_mask(
                    soft, ann.object_ids, state.frame_size, self.extractor.stride
                )
                state.masks[frame_idx] = labels
                propagate_done += 1
                emit(ProgressEvent("propagate", propagate_done, propagate_total))
                yield FrameResult(frame_idx, names[frame_idx], labels, ann.object_ids)
            if backward:
                state.backward_dirty = False
            else:
                state.dirty.discard(anchor)

    def _check_frame(self, state: TrackerState, frame_idx: int) -> None:
        if not 0 <= frame_idx < state.num_frames:
            raise InputError(
                f"frame {frame_idx} is out of range: the video has {state.num_frames} frames "
                f"(0..{state.num_frames - 1})"
            )


def tracker_config(tracker: Tracker, state: TrackerState) -> dict[str, Any]:
    """The resolved options of a run, for ``config.json``."""
    import diffusers
    import transformers

    from ._version import __version__

    return {
        "ditf_track": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "video": str(state.video.path),
        "frames": state.num_frames,
        "frame_size": list(state.frame_size),
        "input_size": list(state.input_size),
        "grid": list(state.grid),
        "massive_channels": list(state.massive_channels or ()),
        "extractor": tracker.extractor.identity(),
        "propagation": {
            "n_context": tracker.params.n_context,
            "radius": tracker.params.radius,
            "topk": tracker.params.topk,
            "temperature": tracker.params.temperature,
        },
        "label_mode": tracker.label_mode,
        "short_side": tracker.short_side,
        "interpolation": tracker.interpolation,
        "annotated_frames": sorted(state.annotations),
        "object_ids": list(state.object_ids),
    }


__all__ = [
    "FrameResult",
    "ProgressEvent",
    "SmallObjectWarning",
    "Tracker",
    "TrackerState",
    "tracker_config",
]
