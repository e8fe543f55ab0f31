"""Ready to run on open (issue 17, item 2), in a real Qt viewer (run under ``xvfb-run -a``).

The widget chooses its layers and preset by itself; a video opened with napari's builtin reader
hits the CLI's cached features; a large in-memory video layer gets a warning; the reader
preference can be set and undone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from ditf_track import (
    FeatureConfig,
    PointParams,
    Tracker,
    TrackerConfig,
    VideoSource,
    cli,
    load_preset,
    read_mask,
    video_from_array,
    write_mask,
)
from napari_ditf_track import _widget as widget_module
from napari_ditf_track import make_shapes_clip, reset_reader_preference, set_reader_preference
from napari_ditf_track._preference import PLUGIN_NAME, VIDEO_PATTERNS
from napari_ditf_track._widget import NOT_USED, PropagationWidget, large_layer_message

pytestmark = pytest.mark.gui

FRAMES = 8
SIZE = (180, 320)  # (H, W) of the small mp4 made from DAVIS blackswan


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Any:
    """napari's settings of this test only, never saved (the user's file is not touched)."""
    import napari.settings
    from napari.settings import NapariSettings

    fresh = NapariSettings(config_path=None)
    monkeypatch.setattr(napari.settings, "_SETTINGS", fresh)
    return fresh


@pytest.fixture
def viewer(make_napari_viewer: Callable[..., Any], plugin_registered: str, settings: Any) -> Any:
    return make_napari_viewer(show=True)


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A feature cache of this test only (so the extraction counts are this test's)."""
    monkeypatch.setenv("DITF_TRACK_CACHE", str(tmp_path / "features"))
    return tmp_path / "features"


class Notes:
    """What the widget told the user, by level."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.infos: list[str] = []
        self.warnings: list[str] = []


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> Notes:
    recorded = Notes()
    monkeypatch.setattr(widget_module, "show_error", recorded.errors.append)
    monkeypatch.setattr(widget_module, "show_info", recorded.infos.append)
    monkeypatch.setattr(widget_module, "show_warning", recorded.warnings.append)
    return recorded


@pytest.fixture(scope="module")
def swan_mp4(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An 8-frame 320x180 mp4 of DAVIS blackswan and its frame-0 mask (same size)."""
    folder = tmp_path_factory.mktemp("swan")
    video = folder / "swan.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 10, SIZE[::-1])
    frames = shared_data / "davis/JPEGImages/480p/blackswan"
    for i in range(FRAMES):
        frame = cv2.imread(str(frames / f"{i:05d}.jpg"))
        writer.write(cv2.resize(frame, SIZE[::-1], interpolation=cv2.INTER_AREA))
    writer.release()
    labels = read_mask(shared_data / "davis/Annotations/480p/blackswan/00000.png").labels
    mask = folder / "first.png"
    write_mask(mask, cv2.resize(labels, SIZE[::-1], interpolation=cv2.INTER_NEAREST))
    return video, mask


def dock(viewer: Any) -> PropagationWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-ditf-track", "Propagate (ditf-track)")
    assert isinstance(widget, PropagationWidget)
    return widget


def run_to_end(qtbot: Any, widget: PropagationWidget, timeout_s: float = 240) -> Any:
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=int(timeout_s * 1000))
    return widget.last_outcome


def test_sample_clip_runs_with_no_manual_selection(
    qtbot: Any, viewer: Any, fresh_cache: Path, notes: Notes
) -> None:
    viewer.open_sample("napari-ditf-track", "shapes-clip")
    widget = dock(viewer)
    assert widget.video.value is viewer.layers["shapes"]
    assert widget.annotations.value is viewer.layers["shapes annotations"]
    assert widget.keypoints.value is viewer.layers["shapes keypoints"]
    assert widget.preset.value == "lab"
    assert widget.short_side.value == "192"  # the clip's own size
    outcome = run_to_end(qtbot, widget)
    assert outcome.status == "done", notes.errors
    assert sorted(outcome.computed) == list(range(16))
    masks = viewer.layers["shapes masks"].data
    tracks = viewer.layers["shapes tracks"].data  # (track_id, t, y, x)
    clip = make_shapes_clip()
    for t in range(1, 16):
        assert set(np.unique(masks[t])) == {0, 1, 2}, f"frame {t} lost an object"
    # the library's API on the same frames, annotations and settings (the widget's point search:
    # the window with re-detection, as track's) gives the same result
    features = FeatureConfig(preset="lab", short_side=192)
    config = TrackerConfig(features=features, point_params=PointParams.motion())
    tracker = Tracker.from_config(config)
    state = tracker.init_state(video_from_array(clip.frames, clip.frame_names))
    tracker.add_mask(state, 0, clip.labels[0])
    tracker.add_points(state, 0, clip.tracks[0], clip.point_ids)
    results = {r.frame_idx: r for r in tracker.propagate(state)}
    assert sorted(results) == list(range(16))
    for t, result in results.items():
        np.testing.assert_array_equal(masks[t], result.labels, err_msg=f"frame {t}")
        rows = tracks[tracks[:, 1] == t]
        rows = rows[np.argsort(rows[:, 0])]
        np.testing.assert_array_equal(rows[:, 0], result.point_ids)
        np.testing.assert_allclose(rows[:, 2:], result.points, err_msg=f"frame {t}")
    assert not notes.errors


@pytest.mark.parametrize(
    ("reader", "preset"),
    [("napari-ditf-track", "lab"), ("napari", "lab"), ("napari-ditf-track", "flux")],
)
def test_cli_then_widget_on_the_same_file_extracts_nothing(
    tiny_model: Callable[..., Path],
    qtbot: Any,
    viewer: Any,
    swan_mp4: tuple[Path, Path],
    tmp_path: Path,
    fresh_cache: Path,
    notes: Notes,
    capsys: pytest.CaptureFixture[str],
    reader: str,
    preset: str,
) -> None:
    """The plugin's reader (a lazy VideoSource) and napari's builtin one (the whole video as an
    array, whose pixels would key the cache) both hit the features the CLI cached, with the
    preset's defaults (lab) and with a DiT's settings given (a tiny Flux: model, t, k, size)."""
    video, mask = swan_mp4
    out = tmp_path / "cli"
    fields: dict[str, str] = {}
    if preset == "flux":
        fields = {"model": str(tiny_model("flux")), "t": "90", "k": "3", "short_side": "64"}
    options = [f"--{name.replace('_', '-')}={value}" for name, value in fields.items()]
    args = ["track", str(video), "--mask", str(mask), "--preset", preset, "--device", "cpu"]
    assert cli.main([*args, *options, "--quiet", "--out", str(out)]) == 0
    assert f"{FRAMES} extracted, 0 from the cache" in capsys.readouterr().out
    [layer] = viewer.open(str(video), plugin=reader)
    assert isinstance(layer.data, VideoSource) == (reader == "napari-ditf-track")
    annotations = viewer.add_labels(np.zeros((FRAMES, *SIZE), np.uint8), name="annotations")
    annotations.data[0] = read_mask(mask).labels
    widget = dock(viewer)
    assert widget.video.value is layer
    assert widget.annotations.value is annotations
    widget.preset.value = preset
    widget.device.value = "cpu"
    for name, value in fields.items():
        getattr(widget, name).value = value
    outcome = run_to_end(qtbot, widget)
    assert outcome.status == "done", notes.errors
    assert sorted(outcome.computed) == list(range(FRAMES))
    assert outcome.extracted == 0
    assert widget.session.tracker is not None
    stats = widget.session.tracker.cache.stats
    assert stats.misses == 0
    assert stats.disk_hits >= FRAMES
    assert any(f"0 extracted, {FRAMES} from the cache" in m for m in notes.infos)
    result = viewer.layers["swan masks"].data
    for i in range(FRAMES):
        expected = read_mask(out / f"{i:05d}.png").labels
        np.testing.assert_array_equal(result[i], expected, err_msg=f"frame {i}")


def test_preselection_takes_the_newest_matching_layers(
    viewer: Any, shared_data: Path, tmp_path: Path, notes: Notes
) -> None:
    frames = tmp_path / "blackswan"
    frames.mkdir()
    for i in range(FRAMES):
        (frames / f"{i:05d}.jpg").symlink_to(
            shared_data / f"davis/JPEGImages/480p/blackswan/{i:05d}.jpg"
        )
    sparse = tmp_path / "annotations"  # a DAVIS folder with frame 0 only: a (1, H, W) layer
    sparse.mkdir()
    (sparse / "00000.png").symlink_to(shared_data / "davis/Annotations/480p/blackswan/00000.png")
    [video] = viewer.open(str(frames), plugin="napari-ditf-track")
    older = viewer.add_labels(np.zeros((FRAMES, 480, 854), np.uint8), name="older")
    newer = viewer.add_labels(np.zeros((FRAMES, 480, 854), np.uint8), name="newer")
    viewer.add_labels(np.zeros((FRAMES, 240, 427), np.uint8), name="other size")
    viewer.add_labels(np.zeros((FRAMES + 1, 480, 854), np.uint8), name="other length")
    inside = viewer.add_points(np.array([[3, 100, 200], [0, 479, 853]]), name="inside")
    viewer.add_points(np.array([[FRAMES, 100, 200]]), name="past the end")
    viewer.add_points(np.array([[2, 100, 900]]), name="right of the frame")
    widget = dock(viewer)  # layers already there: the layer list's order is their age
    assert widget.video.value is video
    assert widget.annotations.value is newer
    assert widget.keypoints.value is inside
    assert older in widget.annotations.choices
    # added later: a matching layer is chosen, one of another size is not
    [davis] = viewer.open(str(sparse), plugin="napari-ditf-track")
    assert davis.data.shape == (1, 480, 854)
    assert widget.annotations.value is davis
    viewer.add_labels(np.zeros((FRAMES, 48, 64), np.uint8), name="small")
    assert widget.annotations.value is davis
    clicked = viewer.add_points(ndim=3, name="new points")
    assert widget.keypoints.value is clicked
    viewer.add_points(np.array([[0, 600, 10]]), name="below the frame")
    assert widget.keypoints.value is clicked
    # a second video: the choice stays (two candidates); choosing it keeps only what fits it
    viewer.layers.move(viewer.layers.index(davis), 0)  # reordering changes no choice
    assert widget.annotations.value is davis
    other = viewer.add_image(np.zeros((4, 48, 64, 3), np.uint8), rgb=True, name="other")
    assert widget.video.value is video
    widget.video.value = other
    assert widget.annotations.value is None  # "small" has 8 frames, "other" 4
    assert widget.keypoints.value is clicked  # empty, 3-D: fits any video
    # back to the first video: the newest matching layers again, by arrival, not list order
    widget.video.value = video
    assert widget.annotations.value is davis
    assert widget.keypoints.value is clicked
    assert not notes.warnings


def test_preselection_clears_layers_of_another_video(viewer: Any, notes: Notes) -> None:
    first = viewer.add_image(np.zeros((4, 48, 64, 3), np.uint8), rgb=True, name="first")
    labels = viewer.add_labels(np.zeros((4, 48, 64), np.uint8), name="labels of first")
    widget = dock(viewer)
    assert (widget.video.value, widget.annotations.value) == (first, labels)
    second = viewer.add_image(np.zeros((6, 30, 40, 3), np.uint8), rgb=True, name="second")
    widget.video.value = second
    assert widget.annotations.value is None
    mine = viewer.add_labels(np.zeros((6, 30, 40), np.uint8), name="labels of second")
    assert widget.annotations.value is mine
    # objects on every frame (a result read back): nothing to propagate, not chosen
    viewer.add_labels(np.ones((6, 30, 40), np.uint8), name="result read back")
    assert widget.annotations.value is mine
    widget.video.value = first
    assert widget.annotations.value is labels


def test_lab_shows_a_dash_for_t_and_k(viewer: Any) -> None:
    widget = dock(viewer)
    flux = load_preset("flux").video
    widget.preset.value = "flux"
    assert (widget.t.value, widget.k.value) == ("", "")
    assert widget.t.enabled
    assert widget.k.enabled
    widget.t.value, widget.k.value = "90", "3"
    assert (widget.settings().t, widget.settings().k) == (90, 3)
    widget.preset.value = "lab"
    assert (widget.t.value, widget.k.value) == (NOT_USED, NOT_USED) == ("\u2013", "\u2013")
    assert not widget.t.enabled
    assert not widget.k.enabled
    assert (widget.settings().t, widget.settings().k) == (None, None)
    widget.preset.value = "flux"  # back to the preset's values
    assert (widget.t.value, widget.k.value) == ("", "")
    assert widget.t.enabled
    assert widget.k.enabled
    assert widget.t.native.placeholderText() == f"preset: {flux.t}"
    assert widget.k.native.placeholderText() == f"preset: {flux.k}"
    assert (widget.settings().t, widget.settings().k) == (None, None)


def test_large_in_memory_video_layer_warns_above_the_threshold(
    viewer: Any,
    notes: Notes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    shared_data: Path,
) -> None:
    assert widget_module.LARGE_LAYER_BYTES == 1_000_000_000
    line = large_layer_message("clip", 1_360_000_000)
    assert line.startswith("video layer 'clip' holds 1.36 GB in memory (more than 1 GB")
    assert "napari --plugin napari-ditf-track VIDEO" in line
    assert "\n" not in line
    monkeypatch.setattr(widget_module, "LARGE_LAYER_BYTES", 10_000)
    caplog.set_level(logging.WARNING, logger=widget_module.__name__)
    small = viewer.add_image(np.zeros((4, 25, 25, 3), np.uint8), rgb=True, name="small")
    widget = dock(viewer)
    assert widget.video.value is small  # 7,500 bytes: no warning
    assert notes.warnings == []
    large = viewer.add_image(np.zeros((4, 30, 30, 3), np.uint8), rgb=True, name="large")
    widget.video.value = large  # 10,800 bytes
    expected = large_layer_message("large", 10_800)
    assert "0.00 GB" in expected
    assert "more than 1e-05 GB" in expected
    assert notes.warnings == [expected]
    assert [r.getMessage() for r in caplog.records] == [expected]
    widget.video.value = small
    widget.video.value = large  # once per layer
    assert notes.warnings == [expected]
    # a video read by this plugin is decoded on demand: never warned about
    clip = shared_data / "davis/JPEGImages/480p/blackswan"
    [lazy] = viewer.open(str(clip), plugin="napari-ditf-track")
    widget.video.value = lazy
    assert isinstance(lazy.data, VideoSource)
    assert np.prod(lazy.data.shape) > 10_000
    assert notes.warnings == [expected]


def test_reader_preference_sets_and_undoes(
    viewer: Any, settings: Any, swan_mp4: tuple[Path, Path], notes: Notes
) -> None:
    from napari.errors import MultipleReaderError
    from napari.plugins.utils import get_preferred_reader

    video, _ = swan_mp4
    with pytest.raises(MultipleReaderError):  # the "Choose reader" dialog in the GUI
        viewer.open(str(video), plugin=None)
    settings.plugins.extension2reader = {"*.mp4": "someone-else", "*.tif": "tifffile"}
    before = dict(settings.plugins.extension2reader)
    previous = set_reader_preference()
    assert previous == {**dict.fromkeys(VIDEO_PATTERNS), "*.mp4": "someone-else"}
    assert get_preferred_reader(str(video)) == PLUGIN_NAME
    assert get_preferred_reader("/data/CLIP.MOV") == PLUGIN_NAME
    assert get_preferred_reader("/data/a.tif") == "tifffile"
    # napari now opens a video with this plugin's reader where no plugin is named (its
    # command line and Open dialog; viewer.open names napari's builtin reader by default)
    [layer] = viewer.open(str(video), plugin=None)
    assert isinstance(layer.data, VideoSource)
    reset_reader_preference(previous)
    assert settings.plugins.extension2reader == before
    # without what it replaced, undoing drops only this plugin's patterns
    set_reader_preference()
    reset_reader_preference()
    assert settings.plugins.extension2reader == {"*.tif": "tifffile"}
    # the widget's checkbox does the same, and unticking restores napari's earlier choice
    settings.plugins.extension2reader = before
    widget = dock(viewer)
    assert widget.reader_preference.value is False
    widget.reader_preference.value = True
    assert get_preferred_reader(str(video)) == PLUGIN_NAME
    assert "napari now opens .mp4" in notes.infos[-1]
    widget.reader_preference.value = False
    assert settings.plugins.extension2reader == before
