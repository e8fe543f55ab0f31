"""The run schedule: stale segments, the order frames are yielded in, what features are read."""

from __future__ import annotations

from ditf_track.tracker.schedule import (
    Segment,
    blank_frames,
    governing_anchor,
    plan_run,
    shot_bounds,
    shot_starts,
    stale_segments,
)


def test_segments_run_forward_to_the_next_annotation_and_backward_from_the_first() -> None:
    segments = stale_segments([3, 6], dirty={3, 6}, backward_dirty={3}, num_frames=9)
    assert segments == [
        Segment(3, [2, 1, 0], True),
        Segment(3, [4, 5], False),
        Segment(6, [7, 8], False),
    ]


def test_only_stale_segments_are_scheduled() -> None:
    """A correction on frame 6 recomputes 6 … 8 only: nothing before it, no backward fill."""
    plan = plan_run([3, 6], {6}, set(), 9, query_frames=(), points_stale=False)
    assert plan.segments == [Segment(6, [7, 8], False)]
    assert plan.frames == plan.mask_frames == [6, 7, 8]
    assert plan.feature_frames() == [6, 7, 8]
    # an annotation on frame 0 has no backward segment even when flagged
    assert stale_segments([0], {0}, {0}, 3) == [Segment(0, [1, 2], False)]
    assert stale_segments([], {1}, {1}, 3) == []


def test_points_add_the_uncovered_frames_backward_then_forward_from_the_first_query() -> None:
    plan = plan_run([4], {4}, set(), 8, query_frames={2}, points_stale=True)
    assert plan.mask_frames == [4, 5, 6, 7]
    assert plan.point_frames == [1, 0, 2, 3]
    assert plan.frames == [4, 5, 6, 7, 1, 0, 2, 3]
    assert plan.feature_frames() == [4, 5, 6, 7, 1, 0, 2, 3]
    # points up to date: no point frames, even with queries
    fresh = plan_run([4], {4}, set(), 8, query_frames={2}, points_stale=False)
    assert fresh.point_frames == []
    # points only
    only = plan_run([], set(), set(), 4, query_frames={1}, points_stale=True)
    assert only.frames == [0, 1, 2, 3]


def test_governing_anchor() -> None:
    assert governing_anchor([], 3) is None
    assert [governing_anchor([2, 5], f) for f in range(7)] == [2, 2, 2, 2, 2, 5, 5]


def test_cuts_map_to_the_positions_they_separate() -> None:
    """A cut c separates the selected frames f(i-1) < c <= f(i); with a stride a cut on a
    skipped frame still separates its neighbours; cuts outside the selection separate nothing."""
    assert shot_starts(range(10), [3, 7]) == [3, 7]
    assert shot_starts(range(0, 20, 4), [3, 4, 9]) == [1, 3]  # 0 4 8 12 16: 3, 4 → 1; 9 → 3
    assert shot_starts(range(5, 10), [2, 5, 10, 30]) == []  # before, at the first, after
    assert shot_starts(range(5), []) == []
    assert [shot_bounds([3, 7], f, 9) for f in (0, 2, 3, 6, 7, 8)] == [
        (0, 3),
        (0, 3),
        (3, 7),
        (3, 7),
        (7, 9),
        (7, 9),
    ]


def test_segments_stop_at_cuts_and_each_shot_runs_its_own_backward_segment() -> None:
    """Shots 0-3, 4-7, 8-11 with annotations on 1 and 6: nothing reaches across 4 or 8; the
    third shot is blank."""
    segments = stale_segments([1, 6], {1, 6}, {1, 6}, 12, starts=[4, 8])
    assert segments == [
        Segment(1, [0], True),
        Segment(1, [2, 3], False),
        Segment(6, [5, 4], True),
        Segment(6, [7], False),
    ]
    assert blank_frames([1, 6], 12, [4, 8]) == [8, 9, 10, 11]
    assert blank_frames([], 12, [4, 8]) == []  # no masks at all: nothing to blank
    plan = plan_run(
        [1, 6],
        {1, 6},
        {1, 6},
        12,
        query_frames=(),
        points_stale=False,
        starts=[4, 8],
        blanks_stale=True,
    )
    assert plan.frames == [0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11]
    assert plan.feature_frames() == [1, 0, 2, 3, 6, 5, 4, 7]  # blank frames need no features
    # blanks already yielded: a re-run after a correction on 6 recomputes 6-7 only
    again = plan_run([1, 6], {6}, set(), 12, query_frames=(), points_stale=False, starts=[4, 8])
    assert again.frames == [6, 7]


def test_points_cover_what_masks_and_blanks_do_not() -> None:
    plan = plan_run(
        [5], {5}, {5}, 8, query_frames={1}, points_stale=True, starts=[4], blanks_stale=True
    )
    assert plan.mask_frames == [4, 5, 6, 7]
    assert plan.blank_frames == [0, 1, 2, 3]
    assert plan.point_frames == []


def test_governing_anchor_within_the_shot() -> None:
    assert [governing_anchor([1, 6], f, [4, 8], 12) for f in range(12)] == [
        1,
        1,
        1,
        1,
        6,
        6,
        6,
        6,
        None,
        None,
        None,
        None,
    ]


def test_points_need_the_features_of_the_shots_holding_a_query_only() -> None:
    """Shots 0-3, 4-7, 8-11; a mask on 6 and a point queried on 1: the point is tracked in
    the first shot only (NaN elsewhere), so the third shot's features are never read."""
    plan = plan_run([6], {6}, {6}, 12, query_frames={1}, points_stale=True, starts=[4, 8])
    assert plan.point_shots == [(0, 4)]
    assert plan.frames == [5, 4, 6, 7, 0, 1, 2, 3, 8, 9, 10, 11]
    assert plan.feature_frames() == [6, 5, 4, 7, 0, 1, 2, 3]
    # queries in two shots: both shots, the mask's frames first
    two = plan_run([6], {6}, {6}, 12, query_frames={1, 9}, points_stale=True, starts=[4, 8])
    assert two.point_shots == [(0, 4), (8, 12)]
    assert two.feature_frames() == [6, 5, 4, 7, 0, 1, 2, 3, 8, 9, 10, 11]
