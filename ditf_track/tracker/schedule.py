"""Which frames a propagation run computes, from which annotation, in which order.

Annotated frames split the video into segments. A segment runs forward from its annotated frame
(the *anchor*) up to the next annotation; the frames before the first annotation form one more
segment, run backward from it. Only stale segments are scheduled: a correction on frame j makes
j's segment stale (and, for a new first annotation, the backward one), so a re-run recomputes
nothing before j. Point tracks need every frame: frames no mask segment covers are scheduled
after the segments, backward from the first query frame, then forward.

Scene cuts split the video into *shots* (:func:`shot_starts`) and nothing is carried across
one: segments end at a cut, each shot that holds an annotation runs its own backward segment
from its first one, and the frames of a shot without any annotation are *blank* (empty label
maps, yielded once). Without cuts the whole video is one shot.

Everything here is plain bookkeeping on frame indices (positions 0 … T−1 in the selection); the
tracker owns the state and does the work.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class Segment(NamedTuple):
    """One stale segment: its annotated frame and the frames propagated from it, in order.

    ``backward`` segments (the frames before the first annotation) run from ``anchor − 1`` down
    to 0 and do not yield the anchor itself; forward ones yield the anchor first.
    """

    anchor: int
    frames: list[int]
    backward: bool


@dataclass(frozen=True)
class Schedule:
    """One run's plan: ``segments`` (stale mask segments), ``mask_frames`` (the frames they
    yield, in order), ``point_frames`` (frames only the points need, in order), whether the
    point tracks are recomputed (``points_stale``), ``blank_frames`` (frames of shots
    without an annotation, yielded with empty label maps after the segments; no features) and
    ``point_shots`` (``(first, stop)`` of the shots holding a point query: the only frames
    whose features the points read; a point is not tracked across a cut)."""

    segments: list[Segment]
    mask_frames: list[int]
    point_frames: list[int]
    points_stale: bool
    num_frames: int
    blank_frames: list[int] = field(default_factory=list)
    point_shots: list[tuple[int, int]] = field(default_factory=list)

    @property
    def frames(self) -> list[int]:
        """Every frame the run yields, in the order it yields them."""
        return [*self.mask_frames, *self.blank_frames, *self.point_frames]

    def feature_frames(self) -> list[int]:
        """The frames whose features the run reads, in the order it first needs them (each
        segment's anchor before its frames; with stale points, then every other frame of the
        shots holding a query)."""
        needed = [f for s in self.segments for f in (s.anchor, *s.frames)]
        if self.points_stale:
            tracked = [*self.point_frames, *range(self.num_frames)]
            needed += [f for f in tracked if any(a <= f < b for a, b in self.point_shots)]
        return list(dict.fromkeys(needed))


def shot_starts(frame_indices: Sequence[int] | np.ndarray, cuts: Collection[int]) -> list[int]:
    """The positions (in the selection) that start a new shot, increasing.

    ``frame_indices (T,)`` are the selected frames' indices in the file, ``cuts`` the file
    indices of frames that start a shot (:func:`~ditf_track.cuts.detect_cuts`). Position ``i``
    starts a shot when a cut ``c`` lies between it and the frame before it,
    ``frame_indices[i - 1] < c <= frame_indices[i]`` (with a stride, a cut on a skipped frame
    still separates its neighbours); cuts outside the selection separate nothing.
    """
    indices = [int(f) for f in frame_indices]
    return [
        i for i in range(1, len(indices)) if any(indices[i - 1] < c <= indices[i] for c in cuts)
    ]


def shot_bounds(starts: Sequence[int], frame_idx: int, num_frames: int) -> tuple[int, int]:
    """``(first, stop)`` of the shot holding ``frame_idx``, given the shot ``starts``."""
    i = bisect.bisect_right(starts, frame_idx)
    first = starts[i - 1] if i > 0 else 0
    stop = starts[i] if i < len(starts) else num_frames
    return first, stop


def _shots(starts: Sequence[int], num_frames: int) -> list[tuple[int, int]]:
    edges = [0, *starts, num_frames]
    return list(itertools.pairwise(edges))


def stale_segments(
    anchors: Sequence[int],
    dirty: Collection[int],
    backward_dirty: Collection[int],
    num_frames: int,
    starts: Sequence[int] = (),
) -> list[Segment]:
    """The stale segments of a video with annotated frames ``anchors`` (sorted), shot by shot
    (``starts``: the positions that start a shot): a shot's backward one first (when its first
    annotation is in ``backward_dirty`` and is not the shot's first frame), then each anchor in
    ``dirty``, forward up to the next anchor or the end of its shot."""
    segments: list[Segment] = []
    for first, stop in _shots(starts, num_frames):
        inside = [a for a in anchors if first <= a < stop]
        if not inside:
            continue
        if inside[0] in backward_dirty and inside[0] > first:
            segments.append(Segment(inside[0], list(range(inside[0] - 1, first - 1, -1)), True))
        for i, anchor in enumerate(inside):
            if anchor in dirty:
                end = inside[i + 1] if i + 1 < len(inside) else stop
                segments.append(Segment(anchor, list(range(anchor + 1, end)), False))
    return segments


def blank_frames(anchors: Sequence[int], num_frames: int, starts: Sequence[int] = ()) -> list[int]:
    """The frames of the shots that hold no annotation, increasing ([] without annotations:
    then there are no masks at all)."""
    if not anchors:
        return []
    return [
        f
        for first, stop in _shots(starts, num_frames)
        if not any(first <= a < stop for a in anchors)
        for f in range(first, stop)
    ]


def plan_run(
    anchors: Sequence[int],
    dirty: Collection[int],
    backward_dirty: Collection[int],
    num_frames: int,
    *,
    query_frames: Collection[int],
    points_stale: bool,
    starts: Sequence[int] = (),
    blanks_stale: bool = False,
) -> Schedule:
    """The :class:`Schedule` of one run; ``query_frames`` are the point query frames (empty
    without points), ``points_stale`` whether the point tracks must be recomputed, ``starts``
    the positions that start a shot and ``blanks_stale`` whether the blank frames are
    yielded."""
    segments = stale_segments(anchors, dirty, backward_dirty, num_frames, starts)
    mask_frames = [
        f for s in segments for f in ([*s.frames] if s.backward else [s.anchor, *s.frames])
    ]
    blanks = blank_frames(anchors, num_frames, starts) if blanks_stale else []
    point_frames: list[int] = []
    point_shots = [
        (first, stop)
        for first, stop in _shots(starts, num_frames)
        if any(first <= q < stop for q in query_frames)
    ]
    if points_stale and query_frames:
        first_query = min(query_frames)
        covered = {*mask_frames, *blanks}
        point_frames = [
            f
            for f in [*range(first_query - 1, -1, -1), *range(first_query, num_frames)]
            if f not in covered
        ]
    return Schedule(
        segments, mask_frames, point_frames, points_stale, num_frames, blanks, point_shots
    )


def governing_anchor(
    anchors: Sequence[int], frame_idx: int, starts: Sequence[int] = (), num_frames: int = 0
) -> int | None:
    """The annotated frame whose segment holds ``frame_idx``: the last anchor at or before it
    in its shot, else the shot's first anchor (frames before it are propagated backward from
    it); None when its shot has no anchor. ``anchors`` are sorted; ``starts`` the positions
    that start a shot (``num_frames`` is needed only with them)."""
    if starts:
        first, stop = shot_bounds(starts, frame_idx, num_frames)
        anchors = [a for a in anchors if first <= a < stop]
    if not anchors:
        return None
    before = [a for a in anchors if a <= frame_idx]
    return before[-1] if before else anchors[0]


__all__ = [
    "Schedule",
    "Segment",
    "blank_frames",
    "governing_anchor",
    "plan_run",
    "shot_bounds",
    "shot_starts",
    "stale_segments",
]
