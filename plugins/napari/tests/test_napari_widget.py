"""The dock widget in a real Qt viewer (run under ``xvfb-run -a``).

A DAVIS clip (the first 8 frames of blackswan, linked into a temporary folder) is opened with
the plugin's reader, frame 0 is painted with the ground-truth mask, and the widget runs the
tracker in a worker thread. Results are compared with the CLI's PNGs for the same inputs and
settings, with the lab preset and with a tiny Flux model (random weights, real classes).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ditf_track import LabExtractor, VideoSource, cli, read_mask, write_mask
from napari_ditf_track._widget import PARTIAL, PropagationWidget

pytestmark = pytest.mark.gui

SHORT_SIDE = 240
FRAMES = 8
DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def clip(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/blackswan/00000.jpg …00007.jpg``: links to the DAVIS frames, nothing copied."""
    folder = tmp_path_factory.mktemp("clip") / "blackswan"
    folder.mkdir()
    for i in range(FRAMES):
        (folder / f"{i:05d}.jpg").symlink_to(
            shared_data / f"davis/JPEGImages/480p/blackswan/{i:05d}.jpg"
        )
    return folder


def gt(shared_data: Path, frame: int) -> Path:
    return shared_data / f"davis/Annotations/480p/blackswan/{frame:05d}.png"


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
    import napari_ditf_track._widget as widget_module

    monkeypatch.setattr(widget_module, "show_error", recorded.errors.append)
    monkeypatch.setattr(widget_module, "show_info", recorded.infos.append)
    monkeypatch.setattr(widget_module, "show_warning", recorded.warnings.append)
    return recorded


@pytest.fixture
def viewer(make_napari_viewer: Callable[..., Any], plugin_registered: str) -> Any:
    return make_napari_viewer(show=True)


def open_clip(viewer: Any, clip: Path, shared_data: Path) -> tuple[Any, Any]:
    """Open the clip with the reader and 'paint' frame 0 of a new annotations layer."""
    [video] = viewer.open(str(clip), plugin="napari-ditf-track")
    assert isinstance(video.data, VideoSource)
    assert video.data.shape == (FRAMES, 480, 854, 3)
    annotations = viewer.add_labels(np.zeros((FRAMES, 480, 854), np.uint8), name="annotations")
    annotations.data[0] = read_mask(gt(shared_data, 0)).labels
    annotations.refresh()
    return video, annotations


def make_widget(viewer: Any, video: Any, annotations: Any, preset: str = "lab") -> Any:
    widget = PropagationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="ditf-track")
    widget.video.value = video
    widget.annotations.value = annotations
    widget.preset.value = preset
    widget.device.value = "cpu"
    widget.short_side.value = str(SHORT_SIDE)
    return widget


def run_to_end(qtbot: Any, widget: Any, timeout_s: float = 240) -> Any:
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=int(timeout_s * 1000))
    return widget.last_outcome


def cli_masks(
    clip: Path, masks: dict[int, Path], out: Path, extra: list[str]
) -> dict[int, np.ndarray]:
    """The CLI's PNGs for the same inputs and settings, frame → labels."""
    args = ["track", str(clip), "--out", str(out), "--short-side", str(SHORT_SIDE)]
    for frame, path in sorted(masks.items()):
        args += ["--mask", f"{frame}:{path}"]
    assert cli.main([*args, "--device", "cpu", "--quiet", *extra]) == 0
    return {i: read_mask(out / f"{i:05d}.png").labels for i in range(FRAMES)}


@pytest.fixture
def model_settings(tiny_model: Callable[..., Path]) -> Callable[[str], Any]:
    def settings(preset: str) -> tuple[list[str], dict[str, Any]]:
        if preset == "lab":
            return ["--preset", "lab"], {}
        folder = tiny_model("flux")
        cli_args = ["--preset", "flux", "--model", str(folder), "--t", "90", "--k", "3"]
        return cli_args, {"model": str(folder), "t": "90", "k": "3"}

    return settings


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["lab", "flux"])
def test_run_matches_the_cli_and_saves_davis_pngs(
    qtbot: Any,
    viewer: Any,
    clip: Path,
    shared_data: Path,
    tmp_path: Path,
    fresh_cache: Path,
    notes: Notes,
    model_settings: Callable[[str], Any],
    preset: str,
) -> None:
    cli_args, fields = model_settings(preset)
    video, annotations = open_clip(viewer, clip, shared_data)
    widget = make_widget(viewer, video, annotations, preset)
    for name, value in fields.items():
        getattr(widget, name).value = value
    widget.run()
    assert not widget.run_button.enabled  # one run at a time
    assert widget.cancel_button.enabled
    running = widget.worker
    widget.run()  # ignored while running
    assert widget.worker is running
    qtbot.waitUntil(lambda: widget.worker is None, timeout=240_000)
    outcome = widget.last_outcome
    assert outcome.status == "done", (outcome, notes.errors)
    assert widget.run_button.enabled
    assert sorted(outcome.computed) == list(range(FRAMES))
    assert outcome.extracted == FRAMES
    [output] = [layer for layer in viewer.layers if layer.name == "blackswan masks"]
    assert output.data.shape == (FRAMES, 480, 854)
    assert output.metadata["frame_names"] == [f"{i:05d}" for i in range(FRAMES)]
    for i in range(FRAMES):
        assert set(np.unique(output.data[i])) == {0, 1}, f"frame {i} lost the swan"
    np.testing.assert_array_equal(output.data[0], annotations.data[0])
    # progress came in two phases, extraction then propagation, up to their totals (frame 0,
    # extracted first to find the clip's massive channels, is counted)
    phases = {e.phase: e for e in widget.progress_events}
    assert (phases["extract"].done, phases["extract"].total) == (FRAMES, FRAMES)
    assert (phases["propagate"].done, phases["propagate"].total) == (FRAMES, FRAMES)
    assert any("8 extracted, 0 from the cache" in m for m in notes.infos)
    # the same as the CLI, frame by frame
    expected = cli_masks(clip, {0: gt(shared_data, 0)}, tmp_path / "cli", cli_args)
    for i in range(FRAMES):
        np.testing.assert_array_equal(output.data[i], expected[i], err_msg=f"frame {i}")
    # saved through napari with the plugin's writer: the CLI's files, and they read back
    saved = tmp_path / "saved"
    output.save(str(saved), plugin="napari-ditf-track")
    assert sorted(p.name for p in saved.iterdir()) == [f"{i:05d}.png" for i in range(FRAMES)]
    for i in range(FRAMES):
        with Image.open(saved / f"{i:05d}.png") as img:
            assert img.mode == "P"
        np.testing.assert_array_equal(read_mask(saved / f"{i:05d}.png").labels, expected[i])
    [reread] = viewer.open(str(saved), plugin="napari-ditf-track", layer_type="labels")
    np.testing.assert_array_equal(reread.data, output.data)
    # nothing changed: a second run computes and extracts nothing
    again = run_to_end(qtbot, widget)
    assert (again.status, again.computed, again.extracted) == ("done", [], 0)


def test_cancel_leaves_a_marked_partial_result_and_a_new_run_completes(
    qtbot: Any,
    viewer: Any,
    clip: Path,
    shared_data: Path,
    fresh_cache: Path,
    notes: Notes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    video, annotations = open_clip(viewer, clip, shared_data)
    widget = make_widget(viewer, video, annotations)
    calls: list[int] = []
    in_last_batch = threading.Event()
    original = LabExtractor.extract

    def gated_extract(self: LabExtractor, frames: np.ndarray, **kwargs: Any) -> Any:
        # Extraction batches: [0] (massive-channel probe), [1-4], [5-7]. The last one waits
        # until the user has pressed Cancel, so the cancel lands mid-run on any machine.
        calls.append(len(frames))
        if len(calls) == 3:
            in_last_batch.set()
            assert widget._cancel.wait(60)
        return original(self, frames, **kwargs)

    monkeypatch.setattr(LabExtractor, "extract", gated_extract)
    widget.run()
    qtbot.waitUntil(in_last_batch.is_set, timeout=60_000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    outcome = widget.last_outcome
    assert outcome.status == "cancelled"
    computed = sorted(outcome.computed)
    assert computed == list(range(len(computed)))
    assert 4 <= len(computed) <= 5  # frames 0-3 or 0-4, as the stream reads ahead
    assert calls == [1, 4, 3]
    assert outcome.missing == list(range(len(computed), FRAMES))
    [output] = [layer for layer in viewer.layers if layer.name.startswith("blackswan masks")]
    assert output.name == "blackswan masks" + PARTIAL
    for i in computed:
        assert output.data[i].any(), f"computed frame {i} is empty"
    for i in outcome.missing:
        assert not output.data[i].any(), f"frame {i} was not computed but is not empty"
    assert any(f"{len(outcome.missing)} frame(s) not computed" in m for m in notes.infos)
    # a new run finishes the stale segment (features come from the cache) and unmarks it
    again = run_to_end(qtbot, widget)
    assert again.status == "done"
    assert sorted(again.computed) == list(range(FRAMES))
    assert again.extracted == 0
    assert output.name == "blackswan masks"
    assert all(output.data[i].any() for i in range(FRAMES))
    assert not notes.errors


def test_corrections_recompute_only_their_segment(
    qtbot: Any,
    viewer: Any,
    clip: Path,
    shared_data: Path,
    tmp_path: Path,
    fresh_cache: Path,
    notes: Notes,
) -> None:
    video, annotations = open_clip(viewer, clip, shared_data)
    widget = make_widget(viewer, video, annotations)
    assert run_to_end(qtbot, widget).status == "done"
    [output] = [layer for layer in viewer.layers if layer.name == "blackswan masks"]
    first = output.data.copy()
    # an annotation on frame 6: frames 6-7 only
    annotations.data[6] = read_mask(gt(shared_data, 6)).labels
    outcome = run_to_end(qtbot, widget)
    assert widget.received == [6, 7]
    assert outcome.extracted == 0
    np.testing.assert_array_equal(output.data[:6], first[:6])
    second = output.data.copy()
    # 'Correct this frame' on frame 3 copies the result there; add a second object and rerun
    viewer.dims.set_current_step(0, 3)
    widget.correct_current_frame()
    np.testing.assert_array_equal(annotations.data[3], second[3])
    annotations.data[3, 380:460, 40:160] = 2
    outcome = run_to_end(qtbot, widget)
    assert widget.received == [3, 4, 5]  # up to the next annotated frame
    np.testing.assert_array_equal(output.data[:3], second[:3])
    np.testing.assert_array_equal(output.data[6:], second[6:])
    assert (output.data[3:6] == 2).any()
    # the incremental result is the one-shot CLI result with the same three masks
    write_mask(tmp_path / "frame3.png", annotations.data[3])
    masks = {0: gt(shared_data, 0), 3: tmp_path / "frame3.png", 6: gt(shared_data, 6)}
    expected = cli_masks(clip, masks, tmp_path / "cli", ["--preset", "lab"])
    for i in range(FRAMES):
        np.testing.assert_array_equal(output.data[i], expected[i], err_msg=f"frame {i}")
    # erasing an annotation (frame 6) starts again from the remaining ones
    annotations.data[6] = 0
    outcome = run_to_end(qtbot, widget)
    assert sorted(widget.received) == list(range(FRAMES))
    assert outcome.extracted == 0
    masks.pop(6)
    expected = cli_masks(clip, masks, tmp_path / "cli2", ["--preset", "lab"])
    for i in range(FRAMES):
        np.testing.assert_array_equal(output.data[i], expected[i], err_msg=f"frame {i}")
    assert not notes.errors


def cli_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the CLI printed for its error (stderr may hold library warnings too)."""
    prefix = "ditf-track: error: "
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith(prefix)]
    return line.removeprefix(prefix)


def test_errors_are_one_line_notifications_like_the_cli(
    tiny_model: Callable[..., Path],
    qtbot: Any,
    viewer: Any,
    clip: Path,
    shared_data: Path,
    tmp_path: Path,
    notes: Notes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    video, annotations = open_clip(viewer, clip, shared_data)
    # a model that is not available offline: the CLI's message, word for word
    widget = make_widget(viewer, video, annotations, preset="flux")
    outcome = run_to_end(qtbot, widget)
    assert outcome.status == "error"
    code = cli.main(
        [
            *("track", str(clip), "--mask", str(gt(shared_data, 0)), "--preset", "flux"),
            *("--device", "cpu", "--out", str(tmp_path / "never")),
        ]
    )
    assert code == 1
    cli_line = cli_error(capsys)
    assert notes.errors == [cli_line]
    assert "\n" not in cli_line
    assert "not in the local Hugging Face cache" in cli_line
    assert widget.run_button.enabled
    # no GPU: the CLI's message for --device cuda
    if not torch.cuda.is_available():
        folder = tiny_model("flux")
        widget.model.value = str(folder)
        widget.device.value = "cuda"
        assert run_to_end(qtbot, widget).status == "error"
        code = cli.main(
            [
                *("track", str(clip), "--mask", str(gt(shared_data, 0))),
                *("--preset", "flux", "--model", str(folder), "--device", "cuda"),
                *("--out", str(tmp_path / "never")),
            ]
        )
        assert code == 1
        cli_line = cli_error(capsys)
        assert notes.errors[-1] == cli_line
        assert "CUDA is not available" in cli_line
        widget.model.value = ""
        widget.device.value = "cpu"
    # an annotation layer of another size: refused before any work
    widget.preset.value = "lab"
    small = viewer.add_labels(np.ones((FRAMES, 48, 64), np.uint8), name="small")
    widget.annotations.value = small
    widget.run()
    assert widget.worker is None
    assert notes.errors[-1] == (
        "annotations layer 'small' is 64x48 but the video frames are 854x480; paint on a "
        "layer of the frame size"
    )
    # a frame holding only void (255): the tracker's own message
    annotations.data[0] = 0
    annotations.data[0, 100:200, 100:200] = 255
    widget.annotations.value = annotations
    outcome = run_to_end(qtbot, widget)
    assert outcome.status == "error"
    assert notes.errors[-1] == (
        "the mask of frame 0 contains no object (all background); paint at least one object"
    )
    # nothing painted at all
    annotations.data[0] = 0
    widget.run()
    assert "nothing to track" in notes.errors[-1]


def test_screenshot_shows_the_label_colour(
    qtbot: Any,
    viewer: Any,
    clip: Path,
    shared_data: Path,
    tmp_path: Path,
    notes: Notes,
) -> None:
    video, annotations = open_clip(viewer, clip, shared_data)
    widget = make_widget(viewer, video, annotations)
    assert run_to_end(qtbot, widget).status == "done"
    [output] = [layer for layer in viewer.layers if layer.name == "blackswan masks"]
    annotations.visible = False
    viewer.dims.set_current_step(0, 5)
    viewer.layers.selection.active = output
    qtbot.wait(200)
    assert widget.status.value == "done: 8 frame(s) computed"
    viewer.window.resize(1280, 760)
    # the README's picture: the whole window with the dock widget
    shot = viewer.screenshot(canvas_only=False, flash=False)
    picture = Image.fromarray(shot[..., :3])
    picture.thumbnail((960, 960))
    picture = picture.quantize(colors=128)
    picture.save(tmp_path / "screenshot.png", optimize=True)
    if os.environ.get("DITF_UPDATE_SCREENSHOT"):
        DOCS.mkdir(exist_ok=True)
        picture.save(DOCS / "screenshot.png", optimize=True)
    # the canvas at data resolution: masked pixels are the label colour blended over the frame
    figure = viewer.export_figure(flash=False)[..., :3].astype(np.float64)
    mask = output.data[5] > 0
    assert figure.shape[:2] == mask.shape
    colour = np.asarray(output.get_color(1))[:3] * 255
    frame = np.asarray(video.data[5], np.float64)
    blended = output.opacity * colour + (1 - output.opacity) * frame
    inside = np.abs(figure[mask] - blended[mask]).max(axis=1)
    outside = np.abs(figure[~mask] - frame[~mask]).max(axis=1)
    assert np.median(inside) <= 3
    assert np.median(outside) <= 3
    assert np.mean(inside <= 6) > 0.95
    # and with the video hidden, masked pixels alone carry the colour
    video.visible = False
    figure = viewer.export_figure(flash=False)[..., :3].astype(np.float64)
    assert np.median(np.abs(figure[mask] - output.opacity * colour).max(axis=1)) <= 3
    assert figure[~mask].max() <= 3


def test_sample_clip_with_the_widget_from_the_plugins_menu(
    qtbot: Any, viewer: Any, fresh_cache: Path, notes: Notes
) -> None:
    """The manifest's sample and widget, on frames held in memory (not a VideoSource)."""
    from napari_ditf_track import make_shapes_clip

    viewer.open_sample("napari-ditf-track", "shapes-clip")
    assert [layer.name for layer in viewer.layers] == [
        "shapes",
        "shapes annotations",
        "shapes keypoints",
    ]
    _, widget = viewer.window.add_plugin_dock_widget("napari-ditf-track", "Propagate (ditf-track)")
    assert isinstance(widget, PropagationWidget)
    widget.video.value = viewer.layers["shapes"]
    widget.annotations.value = viewer.layers["shapes annotations"]
    widget.keypoints.value = None
    widget.preset.value = "lab"
    widget.short_side.value = "192"
    outcome = run_to_end(qtbot, widget)
    assert outcome.status == "done", notes.errors
    output = viewer.layers["shapes masks"]
    truth = make_shapes_clip().labels
    ious = [
        ((output.data[t] == k) & (truth[t] == k)).sum()
        / ((output.data[t] == k) | (truth[t] == k)).sum()
        for t in range(1, len(truth))
        for k in (1, 2)
    ]
    assert np.mean(ious) > 0.8
    # a second run on the same in-memory frames reuses the state: nothing to compute
    assert run_to_end(qtbot, widget).computed == []


@pytest.mark.slow
def test_keypoints_stream_into_tracks_like_the_cli(
    qtbot: Any, viewer: Any, tmp_path: Path, fresh_cache: Path, notes: Notes
) -> None:
    """Keypoints of the sample clip (frames saved as PNGs, so the CLI reads the same video)."""
    from napari_ditf_track import make_shapes_clip, write_points_layer

    clip = make_shapes_clip()
    frames = tmp_path / "shapes"
    frames.mkdir()
    for name, frame in zip(clip.frame_names, clip.frames):
        Image.fromarray(frame).save(frames / f"{name}.png")
    queries = tmp_path / "queries.csv"
    t0 = np.zeros((len(clip.point_ids), 1))
    write_points_layer(
        str(queries), np.hstack([t0, clip.tracks[0]]), {"features": {"id": clip.point_ids}}
    )
    [video] = viewer.open(str(frames), plugin="napari-ditf-track")
    [keypoints] = viewer.open(str(queries), plugin="napari-ditf-track")
    widget = PropagationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.video.value = video
    widget.annotations.value = None
    widget.keypoints.value = keypoints
    widget.preset.value = "lab"
    widget.short_side.value = "192"
    widget.points_mode.value = "query"
    outcome = run_to_end(qtbot, widget)
    assert outcome.status == "done", notes.errors
    assert sorted(outcome.computed) == list(range(16))
    tracks = viewer.layers["shapes tracks"]
    assert tracks.data.shape == (16 * 5, 4)  # (track_id, t, y, x)
    # the object centres follow their objects to within a feature cell (16 px); lab's mean
    # colours cannot place rim, corner or background points on uniform or repetitive texture
    found = tracks.data[np.lexsort((tracks.data[:, 0], tracks.data[:, 1]))][:, 2:].reshape(16, 5, 2)
    error = np.linalg.norm(found - clip.tracks, axis=-1)
    assert error[:, [0, 2]].max() < 16
    # saved with the plugin's writer: the CLI's tracks.csv, byte for byte
    saved = tmp_path / "tracks.csv"
    tracks.save(str(saved), plugin="napari-ditf-track")
    out = tmp_path / "cli"
    args = ["track", str(frames), "--points", str(queries), "--preset", "lab"]
    assert cli.main([*args, "--short-side", "192", "--device", "cpu", "--out", str(out)]) == 0
    assert saved.read_text() == (out / "tracks.csv").read_text()
    # unchanged points: nothing to recompute, and nothing is marked partial
    again = run_to_end(qtbot, widget)
    assert (again.status, again.computed, again.missing) == ("done", [], [])
    names = [layer.name for layer in viewer.layers]
    assert "shapes tracks" in names  # complete: not marked partial
    assert "shapes masks" not in names  # keypoints only: no empty masks layer
