"""The run schedule: stale segments, the order frames are yielded in, what features are read."""

from __future__ import annotations

from ditf_track.tracker.schedule import Segment, governing_anchor, plan_run, stale_segments


def test_segments_run_forward_to_the_next_annotation_and_backward_from_the_first() -> None:
    segments = stale_segments([3, 6], dirty={3, 6}, backward_dirty=True, num_frames=9)
    assert segments == [
        Segment(3, [2, 1, 0], True),
        Segment(3, [4, 5], False),
        Segment(6, [7, 8], False),
    ]


def test_only_stale_segments_are_scheduled() -> None:
    """A correction on frame 6 recomputes 6 … 8 only: nothing before it, no backward fill."""
    plan = plan_run([3, 6], {6}, False, 9, first_query=None, points_stale=False)
    assert plan.segments == [Segment(6, [7, 8], False)]
    assert plan.frames == plan.mask_frames == [6, 7, 8]
    assert plan.feature_frames() == [6, 7, 8]
    # an annotation on frame 0 has no backward segment even when flagged
    assert stale_segments([0], {0}, True, 3) == [Segment(0, [1, 2], False)]
    assert stale_segments([], {1}, True, 3) == []


def test_points_add_the_uncovered_frames_backward_then_forward_from_the_first_query() -> None:
    plan = plan_run([4], {4}, False, 8, first_query=2, points_stale=True)
    assert plan.mask_frames == [4, 5, 6, 7]
    assert plan.point_frames == [1, 0, 2, 3]
    assert plan.frames == [4, 5, 6, 7, 1, 0, 2, 3]
    assert plan.feature_frames() == [4, 5, 6, 7, 1, 0, 2, 3]
    # points up to date: no point frames, even with queries
    fresh = plan_run([4], {4}, False, 8, first_query=2, points_stale=False)
    assert fresh.point_frames == []
    # points only
    only = plan_run([], set(), False, 4, first_query=1, points_stale=True)
    assert only.frames == [0, 1, 2, 3]


def test_governing_anchor() -> None:
    assert governing_anchor([], 3) is None
    assert [governing_anchor([2, 5], f) for f in range(7)] == [2, 2, 2, 2, 2, 5, 5]
