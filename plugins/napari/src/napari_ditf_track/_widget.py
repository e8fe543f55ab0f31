"""The dock widget: choose the video, the painted objects and the keypoints; Run, Cancel.

Run snapshots the annotations on the GUI thread and hands them to a napari ``thread_worker``
that consumes :meth:`TrackingSession.run <napari_ditf_track._session.TrackingSession.run>`
(the tracker's propagation generator). Each message comes back to the GUI thread through the
worker's ``yielded`` signal: progress events drive two napari progress bars (feature
extraction and propagation), and each frame's result is written into the output Labels layer
(and the Tracks layer for keypoints) as soon as it is computed. Cancel sets an event the worker
checks after every frame and feature batch; the frames it did not reach stay empty and the
output layer is renamed ``"... (partial)"`` until a later run completes them.

User errors (a :class:`~ditf_track.DitfError`: gated model, no GPU, out of memory, size
mismatch, empty mask) end the run and show the same one line the CLI prints, as a napari error
notification; only programming errors reach napari's traceback notification.

Ready on open: the widget follows the viewer's layers (:meth:`PropagationWidget.reset_choices`,
which napari calls on every layer change). It chooses the video when there is one candidate, and
for the chosen video the newest Labels and Points layers that match it (:func:`matches_video`),
and again whenever a matching layer is added; a video layer's :data:`SETTINGS_KEY` metadata
picks its preset and short side (the sample clip: ``lab`` at its own size). A video napari
decoded into memory (its builtin reader) is read from its file for the tracker, so the feature
cache keys are the CLI's for the same file, and a large one gets a warning naming the fix
(:data:`LARGE_LAYER_BYTES`).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.layers import Image, Labels, Points
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning

from ditf_track import (
    DEFAULT_PRESET,
    ConfigError,
    DitfError,
    FrameResult,
    InputError,
    ProgressEvent,
    QueryPoints,
    VideoSource,
    available_presets,
    load_preset,
    napari_to_points,
    open_video,
    video_from_array,
)

from ._preference import reader_preference_set, reset_reader_preference, set_reader_preference
from ._sample_data import SETTINGS_KEY
from ._session import Notice, Outcome, Plan, RunRequest, TrackerSettings, TrackingSession
from ._writer import frame_names_for

if TYPE_CHECKING:
    import napari
    from napari.layers import Tracks

__all__ = [
    "LARGE_LAYER_BYTES",
    "NOT_USED",
    "PropagationWidget",
    "format_frames",
    "large_layer_message",
    "matches_video",
    "unique_ids",
    "video_size",
]

log = logging.getLogger(__name__)

PARTIAL = " (partial)"
_OUTPUT_KEY = "ditf_track_output_of"  # metadata of our output layers: the video layer's name
#: An in-memory video layer larger than this (1 GB: ~360 frames of 720p, ~120 of 1080p) gets a
#: warning: napari's builtin reader decoded the whole video, this plugin's reader decodes frames
#: on demand.
LARGE_LAYER_BYTES = 1_000_000_000
#: What the t and k boxes show for a preset without those settings (lab).
NOT_USED = "\u2013"
# A video file stands in for an in-memory layer when its frame 0 differs from the layer's by at
# most this mean absolute difference (decoders round differently, other videos differ a lot).
_SAME_FRAME_MEAN_DIFF = 2.0


def format_frames(frames: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0-2, 5, 7-8"`` (for notifications)."""
    runs: list[list[int]] = []
    for f in sorted(set(frames)):
        if runs and f == runs[-1][1] + 1:
            runs[-1][1] = f
        else:
            runs.append([f, f])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def unique_ids(ids: np.ndarray) -> np.ndarray:
    """Keep each id's first point; later points with a taken id get new ids after the largest.

    napari gives a point added by clicking the feature values of the last one, so clicked
    points repeat an id; each keypoint needs its own track id.
    """
    out = np.asarray(ids, dtype=np.int64).copy()
    seen: set[int] = set()
    next_id = int(out.max()) + 1 if len(out) else 0
    for k, value in enumerate(out):
        if int(value) in seen:
            out[k] = next_id
            next_id += 1
        seen.add(int(out[k]))
    return out


def video_size(layer: Any) -> tuple[int, int, int] | None:
    """``(T, H, W)`` of an Image layer that can be a video (``(T, H, W, 3|4)`` RGB or
    ``(T, H, W)`` grey), else None."""
    if getattr(layer, "multiscale", False):
        return None
    shape = tuple(int(n) for n in layer.data.shape)
    if layer.rgb and len(shape) == 4:
        return shape[0], shape[1], shape[2]
    if not layer.rgb and len(shape) == 3:
        return shape[0], shape[1], shape[2]
    return None


def _frame_names(layer: Any) -> list[str] | None:
    names = layer.metadata.get("frame_names")
    if names is None and isinstance(layer.data, VideoSource):
        names = layer.data.frame_names
    return None if names is None else [str(n) for n in names]


def _names_fit(names: Sequence[str] | None, video_names: Sequence[str] | None) -> bool:
    """Frame names of a layer are those of the video's first frames (unknown: no objection)."""
    if names is None or video_names is None:
        return True
    return list(names) == list(video_names[: len(names)])


def matches_video(layer: Any, video: Any) -> bool:
    """Whether a Labels or Points ``layer`` belongs to the ``video`` Image layer.

    Labels ``(T', H, W)``: the frame size, and the frame count or frame names (the reader places
    a sparse DAVIS annotation folder on its first frames). Points ``(t, y, x)``: every point
    inside the video's frames, and the frame names if the layer has any. Result layers never
    match (they are not annotations).
    """
    size = video_size(video)
    if size is None or layer.metadata.get(_OUTPUT_KEY) is not None:
        return False
    count, height, width = size
    video_names = _frame_names(video)
    names = layer.metadata.get("frame_names")
    if isinstance(layer, Labels):
        shape = tuple(layer.data.shape)
        if layer.multiscale or len(shape) != 3 or shape[1:] != (height, width):
            return False
        if names is not None and video_names is not None:
            return shape[0] <= count and _names_fit(names, video_names)
        return shape[0] == count
    if isinstance(layer, Points):
        data = np.asarray(layer.data, dtype=np.float64)
        if layer.ndim != 3 or not _names_fit(names, video_names):
            return False
        if len(data) == 0:
            return True
        low, high = np.round(data.min(axis=0)), np.round(data.max(axis=0))
        return bool((low >= 0).all() and (high < (count, height, width)).all())
    return False


def _leaves_frames_to_track(layer: Any, count: int) -> bool:
    """Whether a Labels layer leaves a frame of a ``count``-frame video without an object.

    A layer with objects on every frame (a result read back from its PNGs, say) leaves nothing to
    propagate, so it is never chosen as annotations automatically. Stops at the first empty frame
    (an annotation layer's second frame, usually).
    """
    data = layer.data
    if len(data) < count:
        return True
    return any(not np.any(np.asarray(data[t])) for t in range(len(data)))


def large_layer_message(name: str, nbytes: int) -> str:
    """The one-line warning for an in-memory video layer of ``nbytes``."""
    return (
        f"video layer {name!r} holds {nbytes / 1e9:.2f} GB in memory (more than "
        f"{LARGE_LAYER_BYTES / 1e9:g} GB: napari's builtin reader decoded the whole video); "
        "open videos with `napari --plugin napari-ditf-track VIDEO` or tick 'open videos with "
        "ditf-track' to decode frames on demand"
    )


def _whole_number(text: str, name: str) -> int | None:
    """An override box: empty or :data:`NOT_USED` → None (the preset's value), else a whole
    number >= 0."""
    text = text.strip()
    if not text or text == NOT_USED:
        return None
    if not text.isdigit():
        raise ConfigError(f"{name} {text!r} is not a whole number; enter one, or leave it empty")
    return int(text)


class PropagationWidget(Container):
    """Propagate painted masks (and keypoints) through a video with ditf-track."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.session = TrackingSession()
        self.worker: Any = None
        self.last_outcome: Outcome | None = None
        self.progress_events: list[ProgressEvent] = []
        self.received: list[int] = []
        self._cancel = threading.Event()
        self._plan: Plan | None = None
        self._output: Labels | None = None
        self._tracks: Tracks | None = None
        self._track_rows: dict[int, np.ndarray] = {}
        self._bars: dict[str, progress] = {}
        self._array_source: tuple[Any, VideoSource] | None = None
        self._video_layer_name = ""
        self._frame_shape: tuple[int, int, int] = (0, 0, 0)
        self._palette: Any = None
        self._inbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._delivering = False
        # Layers seen so far (id → order of arrival: the highest is the newest), the large
        # layers already warned about, and the reader preferences the checkbox replaced.
        self._arrival: dict[int, int] = {}
        self._arrivals = itertools.count()
        self._warned: set[int] = set()
        self._resetting = False
        self._replaced_preferences: dict[str, str | None] | None = None

        # Choices: the viewer's layers of each type, kept current by napari's dock.
        self.video = cast(ComboBox, create_widget(annotation="napari.layers.Image", label="video"))
        self.annotations = cast(
            ComboBox,
            create_widget(
                annotation="napari.layers.Labels", label="annotations", options={"nullable": True}
            ),
        )
        self.keypoints = cast(
            ComboBox,
            create_widget(
                annotation="napari.layers.Points", label="keypoints", options={"nullable": True}
            ),
        )
        self.video.tooltip = "(T, H, W, 3) video: open an mp4/avi/mov/mkv or a frame folder"
        self.annotations.tooltip = (
            "Labels layer with the objects painted (1, 2, ...) on any frames; every frame "
            "holding a label is an annotated frame"
        )
        self.keypoints.tooltip = "Points layer (t, y, x): each point is tracked from its frame"
        self.reader_preference = CheckBox(
            text="open videos with ditf-track",
            value=reader_preference_set(),
            tooltip="make this plugin napari's reader for .mp4 .avi .mov .mkv (frames decoded on "
            "demand; napari's builtin reader loads the whole video); untick to undo",
        )
        presets = available_presets()
        self.preset = ComboBox(
            label="preset",
            choices=presets,
            value=DEFAULT_PRESET if DEFAULT_PRESET in presets else presets[0],
            tooltip="model and DiTF settings; 'lab' is a weight-free colour baseline",
        )
        self.model = LineEdit(
            label="model", tooltip="optional: a hub id or local folder replacing the preset's"
        )
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"])
        self.dtype = ComboBox(label="dtype", choices=["auto", "float32", "bfloat16", "float16"])
        # Empty = the preset's value (shown greyed in the box).
        self.short_side = LineEdit(label="short side", tooltip="model input short side (px)")
        self.t = LineEdit(label="t", tooltip="diffusion timestep 0..999")
        self.k = LineEdit(label="k", tooltip="transformer block index")
        self.n_context = SpinBox(label="context n", value=7, min=0, max=100)
        self.radius = SpinBox(
            label="radius", value=12, min=0, max=500, tooltip="window radius in cells; 0: global"
        )
        self.topk = SpinBox(label="top-k", value=5, min=1, max=500)
        self.temperature = FloatSpinBox(
            label="temperature", value=0.1, min=0.001, max=10.0, step=0.01
        )
        self.label_mode = ComboBox(label="label mode", choices=["area", "nearest"])
        self.points_mode = ComboBox(label="points mode", choices=["query", "heatmap"])
        self.across_cuts = CheckBox(
            text="across cuts",
            value=False,
            tooltip="carry labels and points across scene cuts (detected shot changes); off: "
            "frames beyond a cut stay empty until you annotate a frame on their side of it",
        )
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.correct_button = PushButton(
            text="Correct this frame",
            tooltip="copy the result on the current frame into the annotations to fix it",
        )
        self.status = Label(value="")
        if hasattr(self.status.native, "setWordWrap"):
            self.status.native.setWordWrap(True)  # long messages must not widen the dock
        buttons = Container(
            widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
        )
        self.extend(
            [
                self.video,
                self.reader_preference,
                self.annotations,
                self.keypoints,
                self.preset,
                self.model,
                self.device,
                self.dtype,
                self.short_side,
                self.t,
                self.k,
                self.n_context,
                self.radius,
                self.topk,
                self.temperature,
                self.label_mode,
                self.points_mode,
                self.across_cuts,
                buttons,
                self.correct_button,
                self.status,
            ]
        )
        self._special_values()
        self.preset.changed.connect(self._special_values)
        self.video.changed.connect(self._on_video_changed)
        self.reader_preference.changed.connect(self._on_reader_preference)
        self._follow_layers(video_changed=True)  # the choices may be filled already
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.correct_button.changed.connect(self.correct_current_frame)

    def _special_values(self) -> None:
        """Show the preset's values in the empty override boxes; ``–`` (disabled) for t and k
        of a preset that has none (lab)."""
        preset = load_preset(self.preset.value)
        video = preset.video
        no_model = preset.family == "lab"
        for box, value in (
            (self.short_side, video.short_side or 960),
            (self.t, video.t),
            (self.k, video.k),
        ):
            if box is not self.short_side:
                if no_model:
                    box.value = NOT_USED
                elif box.value == NOT_USED:
                    box.value = ""
                box.enabled = not no_model
            native = box.native
            if hasattr(native, "setPlaceholderText"):
                native.setPlaceholderText(f"preset: {value}")

    # -- following the viewer's layers ----------------------------------------------------------
    def reset_choices(self, *args: Any) -> None:
        """Refresh the layer choices (napari calls this on every layer change), then choose
        the layers that fit: the video if it is the only candidate, and the newest annotations
        and keypoints matching the chosen video (see :func:`matches_video`)."""
        before = self.video.value
        self._resetting = True
        try:
            super().reset_choices(*args)
        finally:
            self._resetting = False
        self._follow_layers(video_changed=self.video.value is not before)

    def _offered(self, layer: Any) -> bool:
        """Whether the combobox for ``layer``'s type lists it (not yet while undocked)."""
        for combo, kind in (
            (self.video, Image),
            (self.annotations, Labels),
            (self.keypoints, Points),
        ):
            if isinstance(layer, kind):
                return any(choice is layer for choice in combo.choices)
        return True

    def _follow_layers(self, video_changed: bool) -> None:
        layers = list(self._viewer.layers)
        if not all(self._offered(layer) for layer in layers):
            return  # not docked yet: the choices are empty
        present = {id(layer) for layer in layers}
        self._arrival = {k: v for k, v in self._arrival.items() if k in present}
        new = [layer for layer in layers if id(layer) not in self._arrival]
        for layer in new:
            self._arrival[id(layer)] = next(self._arrivals)
        videos = [layer for layer in layers if self._is_video(layer)]
        if len(videos) == 1 and self.video.value is not videos[0]:
            self.video.value = videos[0]  # → _on_video_changed
        elif video_changed:
            self._on_video_changed()
        elif new and self.video.value is not None:
            self._choose_matching(new, keep_current=True)

    @staticmethod
    def _is_video(layer: Any) -> bool:
        return isinstance(layer, Image) and video_size(layer) is not None

    def _choose_matching(self, layers: Sequence[Any], keep_current: bool) -> None:
        """Choose the newest of ``layers`` matching the video as annotations and keypoints
        (Labels with an object on every frame excepted); with ``keep_current`` a combobox
        without such a layer keeps its choice, else a choice not matching the video is
        cleared."""
        video = self.video.value
        size = video_size(video)
        for combo, kind in ((self.annotations, Labels), (self.keypoints, Points)):
            matching = [
                layer
                for layer in layers
                if isinstance(layer, kind)
                and matches_video(layer, video)
                and any(choice is layer for choice in combo.choices)
                and (kind is Points or (size and _leaves_frames_to_track(layer, size[0])))
            ]
            if matching:
                combo.value = max(matching, key=lambda layer: self._arrival.get(id(layer), -1))
            elif (
                not keep_current
                and combo.value is not None
                and not matches_video(combo.value, video)
            ):
                combo.value = None

    def _on_video_changed(self, *_: Any) -> None:
        if self._resetting:
            return  # the other choices are not refreshed yet; reset_choices comes back here
        video = self.video.value
        if video is None:
            return
        hint = video.metadata.get(SETTINGS_KEY)
        if isinstance(hint, dict):
            if hint.get("preset") in self.preset.choices:
                self.preset.value = hint["preset"]
            if isinstance(hint.get("short_side"), int):
                self.short_side.value = str(hint["short_side"])
        self._warn_if_large(video)
        self._choose_matching(list(self._viewer.layers), keep_current=False)

    def _warn_if_large(self, layer: Image) -> None:
        """Warn once per layer when a video layer is a large array in memory."""
        data = layer.data
        if not isinstance(data, np.ndarray) or id(layer) in self._warned:
            return
        if data.nbytes > LARGE_LAYER_BYTES:
            self._warned.add(id(layer))
            message = large_layer_message(layer.name, data.nbytes)
            log.warning(message)
            show_warning(message)

    def _on_reader_preference(self, wanted: bool) -> None:
        """Tick: this plugin becomes napari's video reader; untick: napari's earlier choice."""
        if wanted == reader_preference_set():
            return
        if wanted:
            self._replaced_preferences = set_reader_preference()
            show_info(
                "napari now opens .mp4 .avi .mov .mkv with napari-ditf-track (frames decoded on "
                "demand); untick 'open videos with ditf-track' to undo"
            )
        else:
            reset_reader_preference(self._replaced_preferences)
            self._replaced_preferences = None
            show_info("napari's reader preference for videos is restored")

    # -- snapshot of the inputs ---------------------------------------------------------------
    def settings(self) -> TrackerSettings:
        """The settings as the widgets show them."""
        return TrackerSettings(
            preset=self.preset.value,
            model=self.model.value.strip() or None,
            device=self.device.value,
            dtype=self.dtype.value,
            t=_whole_number(self.t.value, "t"),
            k=_whole_number(self.k.value, "k"),
            short_side=_whole_number(self.short_side.value, "short side"),
            n_context=int(self.n_context.value),
            radius=int(self.radius.value) or None,
            topk=int(self.topk.value),
            temperature=float(self.temperature.value),
            label_mode=self.label_mode.value,
            points_mode=self.points_mode.value,
        )

    def _video_source(self, layer: Image) -> VideoSource:
        """The frames of an Image layer as a VideoSource: the reader's; else the layer's file
        (:meth:`_file_source`); else one over the array."""
        data = layer.data
        if isinstance(data, VideoSource):
            return data
        if self._array_source is not None and self._array_source[0] is data:
            return self._array_source[1]
        from_file = self._file_source(layer)
        if from_file is not None:
            self._array_source = (data, from_file)
            return from_file
        if layer.multiscale:
            raise InputError(f"layer {layer.name!r} is multiscale; choose a (T, H, W, 3) video")
        shape = tuple(data.shape)
        rgb = len(shape) == 4 and shape[-1] in (3, 4)
        if not (rgb or (len(shape) == 3 and not layer.rgb)):
            raise InputError(
                f"layer {layer.name!r} has shape {shape}; choose a video layer (T, H, W, 3) or "
                "(T, H, W)"
            )
        if np.dtype(data.dtype) != np.uint8:
            raise InputError(
                f"video layer {layer.name!r} is {data.dtype}; ditf-track reads uint8 frames "
                "(0..255): open the video with this plugin or convert the layer to uint8"
            )
        frames = np.asarray(data)
        frames = frames[..., :3] if rgb else np.repeat(frames[..., None], 3, axis=-1)
        names = frame_names_for(shape[0], layer.metadata)
        source = video_from_array(np.ascontiguousarray(frames), names, name=layer.name)
        self._array_source = (data, source)
        return source

    @staticmethod
    def _file_source(layer: Image) -> VideoSource | None:
        """The video file or frame folder napari read ``layer`` from, opened as the CLI opens
        it, when it holds the layer's frames.

        The feature cache is keyed by the video's identity (:meth:`VideoSource.file_hash`):
        the file's bytes for a file, but every pixel for an array. Reading the file makes a
        layer from napari's builtin reader hit the CLI's cached features for the same file (and
        the tracker decodes frames on demand).
        """
        path = layer.source.path or layer.metadata.get("path")
        size = video_size(layer)
        if not path or size is None or not layer.rgb or layer.multiscale:
            return None
        try:
            source = open_video(path)
        except DitfError:
            return None
        if (len(source), source.height, source.width) == size:
            first = np.asarray(layer.data[0])[..., :3].astype(np.float64)
            if np.abs(first - source.read(0)).mean() <= _SAME_FRAME_MEAN_DIFF:
                return source
        source.close()
        return None

    def _annotated_frames(self, layer: Labels, size: tuple[int, int, int]) -> dict[int, Any]:
        """Frame → ``(H, W) uint8`` labels of every frame of ``layer`` holding an object."""
        if layer.metadata.get(_OUTPUT_KEY) is not None:
            raise InputError(
                f"{layer.name!r} is a result layer, not annotations; choose the layer you "
                "painted in (or use 'Correct this frame' to copy a result frame into it)"
            )
        data = np.asarray(layer.data)
        if data.ndim == 2:
            data = data[None]
        count, height, width = size
        if data.ndim != 3:
            raise InputError(
                f"annotations layer {layer.name!r} has shape {data.shape}; paint on a "
                "(T, H, W) Labels layer over the video"
            )
        if data.shape[1:] != (height, width):
            raise InputError(
                f"annotations layer {layer.name!r} is {data.shape[2]}x{data.shape[1]} but the "
                f"video frames are {width}x{height}; paint on a layer of the frame size"
            )
        if len(data) > count:
            raise InputError(
                f"annotations layer {layer.name!r} has {len(data)} frames but the video has "
                f"{count}; choose the annotations of this video"
            )
        painted = np.flatnonzero(data.reshape(len(data), -1).any(axis=1))
        out: dict[int, Any] = {}
        for t in painted:
            frame = data[t]
            low, high = int(frame.min()), int(frame.max())
            if low < 0 or high > 255:
                raise InputError(
                    f"frame {t} of {layer.name!r} holds label {high if high > 255 else low}; "
                    "object ids must be 1..254 (255 is void): relabel it"
                )
            out[int(t)] = np.array(frame, dtype=np.uint8)
        return out

    def _queries(self, layer: Points) -> QueryPoints | None:
        data = np.asarray(layer.data, dtype=np.float64)
        if len(data) == 0:
            return None
        if data.ndim != 2 or data.shape[1] != 3:
            raise InputError(
                f"keypoints layer {layer.name!r} has {data.shape[1]}-D points; add the points "
                "on the video (t, y, x)"
            )
        ids = None
        for name in ("id", "track_id"):
            if name in layer.features and len(layer.features[name]) == len(data):
                ids = unique_ids(np.asarray(layer.features[name]).astype(np.int64))
                if not np.array_equal(ids, layer.features[name]):
                    features = layer.features.copy()
                    features[name] = ids  # show the ids the tracks will carry
                    layer.features = features
                break
        return napari_to_points(data, ids)

    def make_request(self) -> RunRequest:
        """Snapshot the layers and settings for a run (raises DitfError with the reason)."""
        video_layer = self.video.value
        if video_layer is None:
            raise ConfigError("no video layer: open a video or a frame folder first")
        source = self._video_source(video_layer)
        size = (len(source), source.height, source.width)
        annotations: dict[int, Any] = {}
        if self.annotations.value is not None:
            annotations = self._annotated_frames(self.annotations.value, size)
        points = None if self.keypoints.value is None else self._queries(self.keypoints.value)
        if not annotations and points is None:
            raise InputError(
                "nothing to track: paint the objects in an annotations Labels layer (any frame) "
                "or add keypoints, and choose those layers"
            )
        return RunRequest(
            source, self.settings(), annotations, points, across_cuts=bool(self.across_cuts.value)
        )

    # -- running -------------------------------------------------------------------------------
    def run(self) -> None:
        """Start a run in a worker thread (one at a time)."""
        if self.worker is not None:
            return
        try:
            request = self.make_request()
        except DitfError as exc:
            show_error(str(exc))
            return
        self._cancel = threading.Event()
        self._plan = None
        self.received = []
        self.progress_events = []
        self._video_layer_name = self.video.value.name
        self._frame_shape = (len(request.video), request.video.height, request.video.width)
        self._palette = (
            None
            if self.annotations.value is None
            else self.annotations.value.metadata.get("palette")
        )
        worker = create_worker(self.session.run, request, self._cancel, _start_thread=False)
        worker.yielded.connect(lambda message: self._deliver(self._on_message, message))
        worker.returned.connect(lambda outcome: self._deliver(self._on_outcome, outcome))
        worker.errored.connect(lambda exc: self._deliver(self._on_crash, exc))
        worker.finished.connect(lambda: self._deliver(self._on_finished))
        self.worker = worker
        self._set_running(True)
        self.status.value = "starting…"
        worker.start()

    def cancel(self) -> None:
        """Stop after the current frame (or feature batch); finished frames are kept."""
        if self.worker is not None:
            self._cancel.set()
            self.status.value = "stopping…"

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        self.correct_button.enabled = not running

    def _deliver(self, handler: Callable[..., None], *args: Any) -> None:
        """Handle the worker's signals one at a time, in the order they were sent.

        napari's progress bars and notifications call ``QApplication.processEvents()``, which
        would run the next queued signal inside the current handler (a frame's labels before
        the plan, the end of the run before the last frame); nested calls only queue here.
        """
        self._inbox.append((handler, args))
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._inbox:
                queued, queued_args = self._inbox.popleft()
                queued(*queued_args)
        finally:
            self._delivering = False

    def _on_message(self, message: Any) -> None:
        if isinstance(message, FrameResult):
            self._on_frame(message)
        elif isinstance(message, ProgressEvent):
            self._on_progress(message)
        elif isinstance(message, Plan):
            self._on_plan(message)
        elif isinstance(message, Notice):
            (show_warning if message.level == "warning" else show_info)(message.message)
            self.status.value = message.message[:80]

    def _on_plan(self, plan: Plan) -> None:
        self._plan = plan
        self._output = None
        if plan.masks:
            layer, created = self._masks_layer(plan)
            if created:
                pass  # np.zeros: untouched pages cost no memory, so do not write them
            elif plan.fresh:
                layer.data[:] = 0
            elif plan.frames:
                layer.data[list(plan.frames)] = 0
            layer.refresh()
        if self._tracks is not None and (
            self._tracks not in self._viewer.layers
            or self._tracks.metadata.get(_OUTPUT_KEY) != self._video_layer_name
        ):
            self._tracks = None
        if plan.fresh or self._tracks is None:
            self._track_rows.clear()
        else:
            for frame in plan.frames:
                self._track_rows.pop(frame, None)
        self.status.value = f"{len(plan.frames)} frame(s) to compute"

    def _result_metadata(self, plan: Plan, kind: str) -> dict[str, Any]:
        return {
            "frame_names": list(plan.frame_names),
            _OUTPUT_KEY: self._video_layer_name,
            "base_name": f"{self._video_layer_name} {kind}",
        }

    def _masks_layer(self, plan: Plan) -> tuple[Labels, bool]:
        """This video's result layer, created (T, H, W) uint8 if missing (then True)."""
        shape = self._frame_shape
        for layer in self._viewer.layers:
            if (
                isinstance(layer, Labels)
                and layer.metadata.get(_OUTPUT_KEY) == self._video_layer_name
                and layer.data.shape == shape
            ):
                self._output = layer
                return layer, False
        metadata = self._result_metadata(plan, "masks")
        if self._palette is not None:
            metadata["palette"] = self._palette
        created = self._viewer.add_labels(
            np.zeros(shape, np.uint8), name=metadata["base_name"], metadata=metadata
        )
        self._output = created
        return created, True

    def _mark_partial(self, partial: bool) -> None:
        """Name this run's result layers ``"... (partial)"`` while frames are missing."""
        plan = self._plan
        for layer in (self._output, self._tracks if plan is not None and plan.points else None):
            if layer is not None:
                base = layer.metadata.get("base_name", layer.name.removesuffix(PARTIAL))
                layer.name = base + (PARTIAL if partial else "")

    def _on_progress(self, event: ProgressEvent) -> None:
        self.progress_events.append(event)
        label = {
            "cuts": "scan for scene cuts",
            "extract": "extract features",
            "propagate": "propagate",
        }[event.phase]
        bar = self._bars.get(event.phase)
        if bar is None:
            if event.total == 0:
                return
            bar = self._bars[event.phase] = progress(total=event.total, desc=f"ditf-track: {label}")
        bar.update(event.done - bar.n)
        self.status.value = f"{label}: {event.done}/{event.total}"

    def _on_frame(self, result: FrameResult) -> None:
        self.received.append(result.frame_idx)
        layer = self._output
        if result.labels is not None and layer is not None:
            layer.data[result.frame_idx] = result.labels
            layer.refresh()
        self._on_points(result)

    def _on_points(self, result: FrameResult) -> None:
        """Keypoints of one frame → the Tracks layer rows ``(track_id, t, y, x)``."""
        if result.points is None or result.point_ids is None:
            return
        n = len(result.point_ids)
        visible = np.ones(n, bool) if result.visible is None else np.asarray(result.visible)
        rows = np.column_stack(
            [result.point_ids, np.full(n, result.frame_idx), result.points, visible]
        ).astype(np.float64)
        # a point has no position beyond a scene cut from its query frame (NaN): no row
        self._track_rows[result.frame_idx] = rows[np.isfinite(rows[:, 2:4]).all(axis=1)]
        stacked = np.concatenate([self._track_rows[t] for t in sorted(self._track_rows)])
        if len(stacked) == 0:
            return
        stacked = stacked[np.lexsort((stacked[:, 1], stacked[:, 0]))]
        data, features = stacked[:, :4], {"visible": stacked[:, 4].astype(bool)}
        if self._tracks is None or self._tracks not in self._viewer.layers:
            assert self._plan is not None
            metadata = self._result_metadata(self._plan, "tracks")
            self._tracks = self._viewer.add_tracks(
                data,
                features=features,
                name=metadata["base_name"],
                metadata=metadata,
                tail_length=8,
                color_by="track_id",
            )
        else:
            self._tracks.data = data
            self._tracks.features = features

    def _on_outcome(self, outcome: Outcome) -> None:
        self.last_outcome = outcome
        self._mark_partial(bool(outcome.missing))
        if outcome.status == "error":
            show_error(outcome.message)
            self.status.value = "error (see the notification)"
        elif outcome.status == "cancelled" and self._plan is None:
            show_info("stopped while scanning the video for scene cuts; nothing was tracked")
            self.status.value = "stopped"
        elif outcome.status == "cancelled":
            missing = format_frames(outcome.missing)
            show_info(
                f"stopped: {len(outcome.missing)} frame(s) not computed ({missing}); they are "
                "empty in the result, press Run to compute them"
            )
            self.status.value = f"stopped; not computed: {missing}"
        else:
            state = self.session.state
            objects = ", ".join(map(str, state.object_ids)) if state is not None else ""
            cached = max(len(outcome.computed) - outcome.extracted, 0)
            message = (
                f"tracked {len(outcome.computed)} frame(s) (objects {objects}; features: "
                f"{outcome.extracted} extracted, {cached} from the cache)"
            )
            show_info(message)
            self.status.value = f"done: {len(outcome.computed)} frame(s) computed"

    def _on_crash(self, exc: BaseException) -> None:
        """A programming error (napari already shows it with its traceback): mark partial."""
        plan = self._plan
        if plan is not None and set(plan.frames) - set(self.received):
            self._mark_partial(True)
        self.status.value = f"failed: {type(exc).__name__}"

    def _on_finished(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars = {}
        self.worker = None
        self._set_running(False)

    # -- corrections --------------------------------------------------------------------------
    def correct_current_frame(self) -> None:
        """Copy the result on the current frame into the annotations layer, to be repainted.

        Creates a ``(T, H, W)`` annotations layer for the video if none is chosen.
        """
        output = self._output
        if output is None or output not in self._viewer.layers:
            show_warning("no result yet: press Run first")
            return
        t = int(self._viewer.dims.current_step[0])
        target = self.annotations.value
        if target is None or target.data.shape[1:] != output.data.shape[1:]:
            name = f"{output.metadata.get(_OUTPUT_KEY, 'video')} annotations"
            target = self._viewer.add_labels(
                np.zeros(output.data.shape, np.uint8),
                name=name,
                metadata={"frame_names": output.metadata.get("frame_names")},
            )
            self.annotations.reset_choices()
            self.annotations.value = target
        if t >= len(target.data):
            show_warning(f"the annotations layer has no frame {t}")
            return
        target.data[t] = output.data[t]
        target.refresh()
        self._viewer.layers.selection.active = target
        target.mode = "paint"
        show_info(f"frame {t} copied into {target.name!r}: fix it, then press Run")
