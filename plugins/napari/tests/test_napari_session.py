"""The widget's engine without Qt: what is rebuilt, what is passed on, how a run ends."""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

import numpy as np
import pytest

from ditf_track import FrameResult, PointParams, ProgressEvent, cli
from ditf_track.video import video_from_array
from napari_ditf_track import make_shapes_clip
from napari_ditf_track._session import (
    Notice,
    Outcome,
    Plan,
    RunRequest,
    TrackerSettings,
    TrackingSession,
)

CLIP = make_shapes_clip(num_frames=6, height=64, width=96)
LAB = TrackerSettings(preset="lab", device="cpu", short_side=64)


def drain(run: Generator[Any, None, Outcome]) -> tuple[list[Any], Outcome]:
    messages = []
    while True:
        try:
            messages.append(next(run))
        except StopIteration as stop:
            return messages, stop.value


@pytest.fixture
def video() -> Any:
    return video_from_array(CLIP.frames, CLIP.frame_names, name="shapes")


def test_a_run_yields_plan_progress_and_frames_in_order(video: Any) -> None:
    session = TrackingSession()
    request = RunRequest(video, LAB, {0: CLIP.labels[0]})
    messages, outcome = drain(session.run(request, threading.Event()))
    # the scan for scene cuts comes first (before the model loads), once per video
    scan = [m for m in messages if isinstance(m, ProgressEvent) and m.phase == "cuts"]
    assert messages[: len(scan)] == scan == [ProgressEvent("cuts", t, 6) for t in range(1, 7)]
    messages = messages[len(scan) :]
    assert isinstance(messages[0], Notice)  # loading the preset
    plan = next(m for m in messages if isinstance(m, Plan))
    assert plan.frames == (0, 1, 2, 3, 4, 5)
    assert plan.fresh
    frames = [m.frame_idx for m in messages if isinstance(m, FrameResult)]
    assert frames == [0, 1, 2, 3, 4, 5]
    phases = {m.phase for m in messages if isinstance(m, ProgressEvent)}
    assert phases == {"extract", "propagate"}
    # every progress event precedes the frame it reports
    order = [type(m).__name__ for m in messages]
    assert order.index("Plan") < order.index("ProgressEvent") < order.index("FrameResult")
    assert (outcome.status, outcome.missing, outcome.extracted) == ("done", [], 6)


def test_only_changed_annotations_reach_the_tracker(video: Any) -> None:
    session = TrackingSession()
    drain(session.run(RunRequest(video, LAB, {0: CLIP.labels[0]}), threading.Event()))
    tracker, state = session.tracker, session.state
    # the same annotations again (a copy): nothing to do
    _, outcome = drain(
        session.run(RunRequest(video, LAB, {0: CLIP.labels[0].copy()}), threading.Event())
    )
    assert outcome.computed == []
    assert session.state is state
    # a new annotation on frame 3: frames 3-5 only, same tracker and state
    request = RunRequest(video, LAB, {0: CLIP.labels[0], 3: CLIP.labels[3]})
    _, outcome = drain(session.run(request, threading.Event()))
    assert outcome.computed == [3, 4, 5]
    assert (session.tracker, session.state) == (tracker, state)
    # new propagation settings: same extractor and cache, new state, every frame again
    other = TrackerSettings(preset="lab", device="cpu", short_side=64, topk=3)
    _, outcome = drain(
        session.run(RunRequest(video, other, request.annotations), threading.Event())
    )
    assert sorted(outcome.computed) == list(range(6))
    assert outcome.extracted == 0
    assert session.tracker is not tracker
    assert session.tracker is not None
    assert session.tracker.extractor is tracker.extractor
    assert session.state is not state
    # erasing frame 3's annotation: a fresh state
    state = session.state
    _, outcome = drain(
        session.run(RunRequest(video, other, {0: CLIP.labels[0]}), threading.Event())
    )
    assert session.state is not state
    assert sorted(outcome.computed) == list(range(6))


def test_cancel_and_errors_end_with_an_outcome(video: Any) -> None:
    session = TrackingSession()
    cancel = threading.Event()
    run = session.run(RunRequest(video, LAB, {0: CLIP.labels[0]}), cancel)
    while True:
        try:
            message = next(run)
        except StopIteration as stop:
            outcome = stop.value
            break
        if isinstance(message, FrameResult) and message.frame_idx == 1:
            cancel.set()  # the user presses Cancel while frame 1 is shown
    assert outcome.status == "cancelled"
    assert outcome.computed == [0, 1]
    assert outcome.missing == [2, 3, 4, 5]
    # the next run redoes the unfinished segment from the cached features (batches of 4 and
    # the stream's read-ahead had extracted every frame before the cancel)
    request = RunRequest(video, LAB, {0: CLIP.labels[0]})
    _, outcome = drain(session.run(request, threading.Event()))
    assert (outcome.status, outcome.computed, outcome.extracted) == ("done", [0, 1, 2, 3, 4, 5], 0)
    # a user error ends the run with the tracker's one-line message, no exception
    wrong = RunRequest(video, LAB, {0: np.ones((10, 10), np.uint8)})
    _, outcome = drain(TrackingSession().run(wrong, threading.Event()))
    assert outcome.status == "error"
    assert outcome.message == (
        "the mask of frame 0 is 10x10 but the video frames are 96x64; give a mask of the frame size"
    )
    bad = TrackerSettings(preset="lab", device="cpu", topk=0)
    request = RunRequest(video, bad, {0: CLIP.labels[0]})
    _, outcome = drain(TrackingSession().run(request, threading.Event()))
    assert outcome.status == "error"
    assert outcome.message == "topk=0 must be an integer >= 1 (DINO: 5)"


def test_keypoints_with_masks_are_retracked_only_when_they_change(video: Any) -> None:
    from ditf_track.coords import QueryPoints

    session = TrackingSession()
    points = QueryPoints(
        np.array([0, 0]), CLIP.tracks[0, [0, 2]] * [64 / 192, 96 / 256], np.array([5, 9])
    )
    request = RunRequest(video, LAB, {0: CLIP.labels[0]}, points)
    messages, outcome = drain(session.run(request, threading.Event()))
    plan = next(m for m in messages if isinstance(m, Plan))
    assert (plan.masks, plan.points, plan.frames) == (True, True, (0, 1, 2, 3, 4, 5))
    results = [m for m in messages if isinstance(m, FrameResult)]
    assert all(r.point_ids is not None and list(r.point_ids) == [5, 9] for r in results)
    assert outcome.status == "done"
    # a mask correction on frame 3 with the same points: frames 3-5, carrying the stored points
    request = RunRequest(video, LAB, {0: CLIP.labels[0], 3: CLIP.labels[3]}, points)
    messages, outcome = drain(session.run(request, threading.Event()))
    assert outcome.computed == [3, 4, 5]
    assert all(m.points is not None for m in messages if isinstance(m, FrameResult))
    # a moved point: every frame again (features from the cache)
    moved = points._replace(points=np.add(points.points, [[1.0, 0.0], [0.0, 0.0]]))
    request = RunRequest(video, LAB, request.annotations, moved)
    _, outcome = drain(session.run(request, threading.Event()))
    assert sorted(outcome.computed) == list(range(6))
    assert (outcome.status, outcome.extracted) == ("done", 0)


def test_clicked_points_get_their_own_ids() -> None:
    from napari_ditf_track._widget import unique_ids

    np.testing.assert_array_equal(unique_ids(np.array([0, 1, 2, 2, 2, 7])), [0, 1, 2, 8, 9, 7])
    np.testing.assert_array_equal(unique_ids(np.array([], np.int64)), [])


def test_settings_build_the_config_the_cli_builds() -> None:
    """The widget's defaults and the CLI's are one TrackerConfig (one builder for both)."""
    args = cli.build_parser().parse_args(["track", "clip.mp4", "--mask", "m.png"])
    assert TrackerSettings().config() == cli._tracker_config(args)
    # both follow the motion: the window with re-detection, not the evaluations' global search
    assert TrackerSettings().config().point_params == PointParams.motion()
    args = cli.build_parser().parse_args(
        ["track", "clip.mp4", "--mask", "m.png", "--preset", "lab", "--short-side", "64"]
    )
    args.device = "cpu"
    assert LAB.config() == cli._tracker_config(args)
    assert LAB.resolved_short_side() == 64
    assert TrackerSettings().resolved_short_side() == 960  # pixart-alpha's video setting
