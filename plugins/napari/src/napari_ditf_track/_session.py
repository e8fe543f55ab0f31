"""What the widget keeps between runs, and one run as a generator of messages. No Qt here.

A :class:`TrackingSession` holds the :class:`~ditf_track.Tracker` (the model and its feature
cache) and the :class:`~ditf_track.TrackerState` of the current video, and remembers the
annotations it has already handed to the tracker. A run passes only what changed
(``add_mask`` for new or edited frames, the keypoints when they differ), so the tracker's
stale segments recompute frames j up to the next annotation after a correction on frame j,
and nothing is extracted again. What forces a rebuild:

* the model settings (preset, model, device, dtype, t, k) → a new tracker (model reloaded);
* the input size or propagation settings → a new tracker on the same extractor and cache;
* another video, an annotated frame erased, or "across cuts" switched → a new state (features
  still come from the cache; every frame is propagated again).

Scene cuts are detected once per video (:func:`~ditf_track.cuts.detect_cuts`, before the model
loads, reported as ``"cuts"`` progress and one notice) and kept on the session; as in
``ditf-track track``, nothing is carried across them unless the request says ``across_cuts``.

:meth:`TrackingSession.run` is the worker's body: it yields :class:`Notice`, :class:`Plan`,
:class:`~ditf_track.ProgressEvent` and :class:`~ditf_track.FrameResult` messages and returns an
:class:`Outcome`. A :class:`~ditf_track.DitfError` ends the run with its one-line message as
the outcome (the widget shows it as the CLI prints it); a set ``cancel`` event stops the run
after the current frame or feature batch, leaving the tracker's state consistent.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ditf_track import (
    DEFAULT_PRESET,
    ConfigError,
    DitfError,
    FeatureConfig,
    FrameResult,
    PointParams,
    ProgressEvent,
    PropagationParams,
    QueryPoints,
    Runtime,
    Tracker,
    TrackerConfig,
    TrackerState,
    VideoSource,
)
from ditf_track.cuts import detect_cuts

__all__ = [
    "Message",
    "Notice",
    "Outcome",
    "Plan",
    "RunRequest",
    "TrackerSettings",
    "TrackingSession",
]


@dataclass(frozen=True)
class TrackerSettings:
    """Everything the user can set. ``None`` means the preset's value (``t``, ``k``,
    ``short_side``), or a global search for ``radius``. Defaults are the CLI's."""

    preset: str = DEFAULT_PRESET
    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    t: int | None = None
    k: int | None = None
    short_side: int | None = None
    n_context: int = 7
    radius: int | None = 12
    topk: int = 5
    temperature: float = 0.1
    label_mode: Literal["area", "nearest"] = "area"
    points_mode: str = "query"
    # The track command's point search: a window around the previous position, the whole frame
    # where the window has lost the point (evaluations search every frame whole).
    point_params: PointParams = field(default_factory=PointParams.motion)
    cache_dir: str | None = None

    def params(self) -> PropagationParams:
        """The propagation parameters (raises :class:`~ditf_track.ConfigError` if invalid)."""
        return PropagationParams(
            n_context=self.n_context,
            radius=self.radius,
            topk=self.topk,
            temperature=self.temperature,
        )

    def config(self) -> TrackerConfig:
        """The library's :class:`~ditf_track.TrackerConfig` of these settings (validated)."""
        return TrackerConfig(
            features=FeatureConfig(
                preset=self.preset,
                model=self.model or None,
                dtype=self.dtype,
                t=self.t,
                k=self.k,
                short_side=self.short_side,
            ),
            params=self.params(),
            label_mode=self.label_mode,
            point_params=self.point_params,
            runtime=Runtime(device=self.device, cache_dir=self.cache_dir),
        )

    def resolved_short_side(self) -> int:
        """``short_side``, else the preset's video short side (the default side if none)."""
        return self.config().features.resolved_short_side()

    def extractor_key(self) -> tuple[Any, ...]:
        """What the loaded model and the feature cache depend on: the feature config but its
        input size, and the runtime (changing anything else keeps them)."""
        config = self.config()
        return (dataclasses.replace(config.features, short_side=None), config.runtime)

    def tracker_key(self) -> tuple[Any, ...]:
        """What the tracker depends on: the whole config, with the short side resolved."""
        return (self.config(), self.resolved_short_side())


@dataclass
class RunRequest:
    """A snapshot taken on the GUI thread when Run is pressed.

    ``annotations``: frame → ``(H, W) uint8`` labels, only frames with an object;
    ``points``: keypoint queries (``(y, x)`` pixels, with ids) or None; ``across_cuts``:
    carry labels and points across scene cuts (off: frames beyond a cut stay empty until an
    annotation on their side of it).
    """

    video: VideoSource
    settings: TrackerSettings
    annotations: dict[int, np.ndarray]
    points: QueryPoints | None = None
    across_cuts: bool = False


@dataclass(frozen=True)
class Notice:
    """Something to tell the user (a model is loading, a small object may be lost, ...)."""

    level: Literal["info", "warning"]
    message: str


@dataclass(frozen=True)
class Plan:
    """The frames this run will yield, in order, before the first of them is computed."""

    frames: tuple[int, ...]
    num_frames: int
    frame_names: tuple[str, ...]
    fresh: bool  # a new state: no earlier result of this video is valid
    masks: bool = True  # the run tracks painted objects
    points: bool = False  # the run tracks keypoints


@dataclass
class Outcome:
    """How a run ended. ``missing``: planned frames that got no result (cancel or error)."""

    status: Literal["done", "cancelled", "error"]
    message: str = ""
    computed: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    extracted: int = 0


Message = Notice | Plan | ProgressEvent | FrameResult


class _Cancelled(Exception):
    """Raised from the progress callback to leave a feature batch loop early."""


class TrackingSession:
    """The tracker and state kept between runs (see the module docstring)."""

    def __init__(self) -> None:
        self.tracker: Tracker | None = None
        self.state: TrackerState | None = None
        self._extractor_key: tuple[Any, ...] | None = None
        self._tracker_key: tuple[Any, ...] | None = None
        self._sent: dict[int, np.ndarray] = {}
        self._sent_points: dict[int, tuple[int, float, float]] = {}
        # the video whose cuts were detected, and its cuts (file indices)
        self._cuts_of: VideoSource | None = None
        self.cuts: list[int] = []

    def reset(self) -> None:
        """Forget the state (the tracker and its feature cache stay)."""
        self.state = None
        self._sent = {}
        self._sent_points = {}

    # -- preparing a run ----------------------------------------------------------------------
    def _build_tracker(self, settings: TrackerSettings, notices: list[Notice]) -> Tracker:
        config = settings.config()
        if self.tracker is not None and settings.extractor_key() == self._extractor_key:
            return Tracker.from_config(
                config, extractor=self.tracker.extractor, cache=self.tracker.cache
            )
        return Tracker.from_config(config, warn=lambda m: notices.append(Notice("warning", m)))

    def scan_cuts(
        self, video: VideoSource, cancel: threading.Event
    ) -> Generator[ProgressEvent | Notice, None, list[int]]:
        """The scene cuts of ``video`` (file indices), detected on the first run of a video
        and kept; yields ``"cuts"`` progress while reading, then a notice listing them.

        Detection reads the frames in a helper thread so that its progress reaches the GUI
        while it runs; a set ``cancel`` stops it after the current frame.
        """
        if self._cuts_of is video:
            return self.cuts
        events: queue.Queue[ProgressEvent | None] = queue.Queue()
        found: dict[str, Any] = {}

        def on_progress(event: ProgressEvent) -> None:
            if cancel.is_set():
                raise _Cancelled
            events.put(event)

        def scan() -> None:
            try:
                found["cuts"] = detect_cuts(video, progress=on_progress)
            except BaseException as exc:  # handed to the worker, raised there
                found["error"] = exc
            finally:
                events.put(None)

        threading.Thread(target=scan, name="ditf-track cuts", daemon=True).start()
        while (event := events.get()) is not None:
            yield event
        if "error" in found:
            raise found["error"]
        self._cuts_of, self.cuts = video, found["cuts"]
        if self.cuts:
            yield Notice(
                "info",
                f"scene cuts at frames {', '.join(map(str, self.cuts))}: labels and points are "
                "not carried across them (tick 'across cuts' to carry them)",
            )
        return self.cuts

    def prepare(
        self, request: RunRequest, notices: list[Notice], cuts: Sequence[int] = ()
    ) -> tuple[Tracker, bool]:
        """Bring tracker and state up to date with ``request``; True if the state is new.

        ``cuts``: the video's scene cuts (file indices), applied unless ``across_cuts``."""
        settings = request.settings
        if self.tracker is None or settings.tracker_key() != self._tracker_key:
            if settings.extractor_key() != self._extractor_key:
                notices.append(Notice("info", f"loading preset {settings.preset!r}"))
            self.tracker = self._build_tracker(settings, notices)
            self._extractor_key = settings.extractor_key()
            self._tracker_key = settings.tracker_key()
            self.reset()
        tracker = self.tracker
        if not request.annotations and request.points is None:
            raise ConfigError(
                "nothing to track: paint the objects in the annotations layer (on any frame) "
                "or add keypoints"
            )
        erased = set(self._sent) - set(request.annotations)
        applied = () if request.across_cuts else tuple(sorted(cuts))
        fresh = (
            self.state is None
            or self.state.video is not request.video
            or bool(erased)
            or self.state.cuts != applied
        )
        if fresh:
            self.reset()
            self.state = tracker.init_state(request.video, cuts=applied)
        state = self.state
        assert state is not None
        for frame, labels in sorted(request.annotations.items()):
            sent = self._sent.get(frame)
            if sent is not None and np.array_equal(sent, labels):
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tracker.add_mask(state, frame, labels)
            notices.extend(Notice("warning", str(w.message)) for w in caught)
            self._sent[frame] = labels
        self._apply_points(tracker, state, request.points)
        return tracker, fresh

    def _apply_points(
        self, tracker: Tracker, state: TrackerState, points: QueryPoints | None
    ) -> None:
        """Hand the keypoints to the tracker when they differ from the last run's."""
        wanted = {}
        if points is not None:
            for f, (y, x), i in zip(points.frame_idx, points.points, points.ids):
                wanted[int(i)] = (int(f), float(y), float(x))
        if wanted == self._sent_points:
            return
        if self._sent_points:  # any change re-tracks every point, so replace them all
            tracker.remove_points(state, list(self._sent_points))
            self._sent_points = {}
        if points is not None:
            for frame, (queries, ids) in points.by_frame().items():
                tracker.add_points(state, frame, queries, ids)
        self._sent_points = wanted

    # -- one run -----------------------------------------------------------------------------
    def run(
        self, request: RunRequest, cancel: threading.Event
    ) -> Generator[Message, None, Outcome]:
        """The worker's body (see the module docstring)."""
        outcome = Outcome("done")
        planned: list[int] = []
        try:
            notices: list[Notice] = []
            cuts = yield from self.scan_cuts(request.video, cancel)
            tracker, fresh = self.prepare(request, notices, cuts)
            yield from notices
            state = self.state
            assert state is not None
            # With keypoints, stale tracks add frames (all of them) to the stale mask segments.
            mode: dict[str, Any] = {}
            if request.points is not None:
                mode["points_mode"] = request.settings.points_mode
            planned = tracker.pending_frames(state, **mode)
            yield Plan(
                tuple(planned),
                state.num_frames,
                tuple(state.frame_names),
                fresh,
                masks=bool(request.annotations),
                points=request.points is not None,
            )
            extracted_before = tracker.extracted_frames
            events: list[ProgressEvent] = []

            def on_progress(event: ProgressEvent) -> None:
                events.append(event)
                if cancel.is_set() and event.phase == "extract":
                    raise _Cancelled  # after a finished batch: its features are cached

            stream = tracker.propagate(state, progress=on_progress, **mode)
            try:
                for result in stream:
                    yield from events
                    events.clear()
                    outcome.computed.append(result.frame_idx)
                    yield result
                    if cancel.is_set():
                        break
                yield from events
            except _Cancelled:
                yield from events
            finally:
                if isinstance(stream, Generator):
                    stream.close()  # a consistent state now, not whenever it is collected
            outcome.extracted = tracker.extracted_frames - extracted_before
        except DitfError as exc:
            outcome.status, outcome.message = "error", str(exc)
        except _Cancelled:  # while scanning for cuts: nothing planned yet
            outcome.status = "cancelled"
        done = set(outcome.computed)
        outcome.missing = [f for f in planned if f not in done]
        if outcome.status == "done" and outcome.missing:
            outcome.status = "cancelled"
        return outcome
