"""Scene cuts in the dock widget (run under ``xvfb-run -a``): bikes.mp4 frames 0..40, whose
shot changes at frame 30, saved as PNG frames (lossless, so the CLI reads the same video).

As in ``ditf-track track``: nothing is carried across the cut until a frame on its far side is
annotated; the cuts are detected once per video and listed in a notification; the "across
cuts" checkbox gives the CLI's ``--across-cuts`` masks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ditf_track import ProgressEvent, cli, open_video, read_mask
from napari_ditf_track import _session
from napari_ditf_track._widget import PropagationWidget

pytestmark = pytest.mark.gui

FRAMES = 41
CUT = 30
SHORT_SIDE = "48"


@pytest.fixture(scope="module")
def bikes(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip") / "bikes"
    folder.mkdir()
    with open_video(shared_data / "videos/bikes.mp4", 0, FRAMES) as video:
        for name, frame in zip(video.frame_names, video):
            Image.fromarray(frame).save(folder / f"{name}.png")
    return folder


class Notes:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.infos: list[str] = []
        self.warnings: list[str] = []


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> Notes:
    recorded = Notes()
    import napari_ditf_track._widget as widget_module

    monkeypatch.setattr(widget_module, "show_error", recorded.errors.append)
    monkeypatch.setattr(widget_module, "show_info", recorded.infos.append)
    monkeypatch.setattr(widget_module, "show_warning", recorded.warnings.append)
    return recorded


@pytest.fixture
def viewer(make_napari_viewer: Callable[..., Any], plugin_registered: str) -> Any:
    return make_napari_viewer(show=True)


def run_to_end(qtbot: Any, widget: Any) -> Any:
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=240_000)
    return widget.last_outcome


def rectangle(label: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((272, 640), np.uint8)
    mask[rows, cols] = label
    return mask


def test_masks_stop_at_the_cut_until_annotated_and_across_cuts_is_the_cli_s(
    qtbot: Any,
    viewer: Any,
    bikes: Path,
    tmp_path: Path,
    notes: Notes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DITF_TRACK_CACHE", str(tmp_path / "features"))
    scans: list[int] = []
    real_detect = _session.detect_cuts

    def counted(*args: Any, **kwargs: Any) -> list[int]:
        scans.append(1)
        return real_detect(*args, **kwargs)

    monkeypatch.setattr(_session, "detect_cuts", counted)
    [video] = viewer.open(str(bikes), plugin="napari-ditf-track")
    annotations = viewer.add_labels(np.zeros((FRAMES, 272, 640), np.uint8), name="annotations")
    annotations.data[0] = rectangle(1, slice(100, 200), slice(250, 400))
    annotations.refresh()
    widget = PropagationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="ditf-track")
    widget.video.value = video
    widget.annotations.value = annotations
    widget.preset.value = "lab"
    widget.device.value = "cpu"
    widget.short_side.value = SHORT_SIDE
    assert widget.across_cuts.value is False  # off by default

    outcome = run_to_end(qtbot, widget)
    assert outcome.status == "done", notes.errors
    assert sorted(outcome.computed) == list(range(FRAMES))
    result = viewer.layers["bikes masks"].data
    painted = result.reshape(FRAMES, -1).any(axis=1)
    assert painted[:CUT].all()
    assert not painted[CUT:].any()
    assert any(f"scene cuts at frames {CUT}:" in info for info in notes.infos), notes.infos
    cuts = [e for e in widget.progress_events if e.phase == "cuts"]
    assert (cuts[-1].done, cuts[-1].total) == (FRAMES, FRAMES)
    first_shot = np.array(result[:CUT])

    # an annotation beyond the cut fills its shot only, backward and forward; no new scan
    annotations.data[35] = rectangle(2, slice(150, 250), slice(100, 300))
    annotations.refresh()
    outcome = run_to_end(qtbot, widget)
    assert outcome.status == "done", notes.errors
    assert outcome.computed == [34, 33, 32, 31, 30, *range(35, FRAMES)]
    assert all(set(np.unique(result[t])) == {0, 2} for t in range(CUT, FRAMES))
    np.testing.assert_array_equal(result[:CUT], first_shot)
    assert scans == [1]
    assert not [e for e in widget.progress_events if e.phase == "cuts"]

    # across cuts: a new state, every frame again, the CLI's --across-cuts masks
    widget.across_cuts.value = True
    outcome = run_to_end(qtbot, widget)
    assert outcome.status == "done", notes.errors
    assert sorted(outcome.computed) == list(range(FRAMES))
    assert scans == [1]
    first, late = tmp_path / "first.png", tmp_path / "late.png"
    Image.fromarray(np.asarray(annotations.data[0])).save(first)
    Image.fromarray(np.asarray(annotations.data[35])).save(late)
    out = tmp_path / "cli"
    args = ["track", str(bikes), "--mask", f"0:{first}", "--mask", f"35:{late}", "--out", str(out)]
    args += ["--preset", "lab", "--short-side", SHORT_SIDE, "--device", "cpu", "--quiet"]
    assert cli.main([*args, "--across-cuts"]) == 0
    for t in range(FRAMES):
        np.testing.assert_array_equal(result[t], read_mask(out / f"{t:05d}.png").labels)
    assert set(np.unique(result[CUT])) == {0, 1}  # carried over the cut from frame 0


def test_keypoints_end_at_the_cut(
    qtbot: Any,
    viewer: Any,
    bikes: Path,
    tmp_path: Path,
    notes: Notes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A keypoint queried on frame 5 has track rows on frames 0..29 only (NaN beyond the cut:
    no row), and on every frame with "across cuts"."""
    monkeypatch.setenv("DITF_TRACK_CACHE", str(tmp_path / "features"))
    [video] = viewer.open(str(bikes), plugin="napari-ditf-track")
    keypoints = viewer.add_points(np.array([[5.0, 150.0, 320.0]]), name="keypoints")
    widget = PropagationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="ditf-track")
    widget.video.value = video
    widget.annotations.value = None
    widget.keypoints.value = keypoints
    widget.preset.value = "lab"
    widget.device.value = "cpu"
    widget.short_side.value = SHORT_SIDE
    outcome = run_to_end(qtbot, widget)
    assert outcome.status == "done", notes.errors
    assert sorted(outcome.computed) == list(range(FRAMES))
    tracks = viewer.layers["bikes tracks"]
    assert sorted(tracks.data[:, 1].astype(int).tolist()) == list(range(CUT))
    widget.across_cuts.value = True
    assert run_to_end(qtbot, widget).status == "done", notes.errors
    assert sorted(tracks.data[:, 1].astype(int).tolist()) == list(range(FRAMES))


def test_cancel_while_scanning_for_cuts_leaves_nothing_and_the_next_run_scans(
    bikes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session alone (no viewer): a cancelled scan ends the run before the model loads;
    the next run scans the video, once, and finds the cut."""
    monkeypatch.setenv("DITF_TRACK_CACHE", str(tmp_path / "features"))
    session = _session.TrackingSession()
    settings = _session.TrackerSettings(preset="lab", device="cpu", short_side=int(SHORT_SIDE))
    with open_video(bikes) as video:
        request = _session.RunRequest(
            video, settings, {0: rectangle(1, slice(100, 200), slice(250, 400))}
        )
        cancel = threading.Event()
        cancel.set()
        run = session.run(request, cancel)
        with pytest.raises(StopIteration) as stop:
            next(run)
        assert stop.value.value.status == "cancelled"
        assert (session.tracker, session.state) == (None, None)
        messages = list(session.run(request, threading.Event()))
        scans = [m for m in messages if isinstance(m, ProgressEvent) and m.phase == "cuts"]
        assert len(scans) == FRAMES
        assert session.cuts == [CUT]
        assert session.state is not None
        assert session.state.shot_starts == (CUT,)


def test_cancel_during_the_scan_says_nothing_was_tracked(
    qtbot: Any,
    viewer: Any,
    bikes: Path,
    tmp_path: Path,
    notes: Notes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DITF_TRACK_CACHE", str(tmp_path / "features"))
    scanning = threading.Event()

    def slow_scan(video: Any, *, progress: Callable[[ProgressEvent], None]) -> list[int]:
        progress(ProgressEvent("cuts", 1, FRAMES))
        scanning.set()
        while True:  # until Cancel: the next report raises
            progress(ProgressEvent("cuts", 1, FRAMES))
            threading.Event().wait(0.01)

    monkeypatch.setattr(_session, "detect_cuts", slow_scan)
    [video] = viewer.open(str(bikes), plugin="napari-ditf-track")
    annotations = viewer.add_labels(np.zeros((FRAMES, 272, 640), np.uint8), name="annotations")
    annotations.data[0] = rectangle(1, slice(100, 200), slice(250, 400))
    widget = PropagationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="ditf-track")
    widget.video.value = video
    widget.annotations.value = annotations
    widget.preset.value = "lab"
    widget.run()
    qtbot.waitUntil(scanning.is_set, timeout=30_000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert widget.last_outcome.status == "cancelled"
    assert notes.infos[-1] == "stopped while scanning the video for scene cuts; nothing was tracked"
    assert widget.session.tracker is None  # the model never loaded
    assert "bikes masks" not in [layer.name for layer in viewer.layers]
