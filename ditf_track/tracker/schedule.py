"""Which frames a propagation run computes, from which annotation, in which order.

Annotated frames split the video into segments. A segment runs forward from its annotated frame
(the *anchor*) up to the next annotation; the frames before the first annotation form one more
segment, run backward from it. Only stale segments are scheduled: a correction on frame j makes
j's segment stale (and, for a new first annotation, the backward one), so a re-run recomputes
nothing before j. Point tracks need every frame: frames no mask segment covers are scheduled
after the segments, backward from the first query frame, then forward.

Everything here is plain bookkeeping on frame indices (positions 0 … T−1 in the selection); the
tracker owns the state and does the work.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple


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
    yield, in order), ``point_frames`` (frames only the points need, in order) and whether the
    point tracks are recomputed (``points_stale``)."""

    segments: list[Segment]
    mask_frames: list[int]
    point_frames: list[int]
    points_stale: bool
    num_frames: int

    @property
    def frames(self) -> list[int]:
        """Every frame the run yields, in the order it yields them."""
        return [*self.mask_frames, *self.point_frames]

    def feature_frames(self) -> list[int]:
        """The frames whose features the run reads, in the order it first needs them (each
        segment's anchor before its frames; with stale points, then every other frame)."""
        needed = [f for s in self.segments for f in (s.anchor, *s.frames)]
        if self.points_stale:
            needed = [*needed, *self.point_frames, *range(self.num_frames)]
        return list(dict.fromkeys(needed))


def stale_segments(
    anchors: Sequence[int], dirty: Collection[int], backward_dirty: bool, num_frames: int
) -> list[Segment]:
    """The stale segments of a video with annotated frames ``anchors`` (sorted): the backward
    one first (when ``backward_dirty`` and the first annotation is not frame 0), then each
    anchor in ``dirty``, forward up to the next anchor."""
    if not anchors:
        return []
    segments: list[Segment] = []
    if backward_dirty and anchors[0] > 0:
        segments.append(Segment(anchors[0], list(range(anchors[0] - 1, -1, -1)), True))
    for i, anchor in enumerate(anchors):
        if anchor in dirty:
            stop = anchors[i + 1] if i + 1 < len(anchors) else num_frames
            segments.append(Segment(anchor, list(range(anchor + 1, stop)), False))
    return segments


def plan_run(
    anchors: Sequence[int],
    dirty: Collection[int],
    backward_dirty: bool,
    num_frames: int,
    *,
    first_query: int | None,
    points_stale: bool,
) -> Schedule:
    """The :class:`Schedule` of one run; ``first_query`` is the earliest point query frame
    (None without points), ``points_stale`` whether the point tracks must be recomputed."""
    segments = stale_segments(anchors, dirty, backward_dirty, num_frames)
    mask_frames = [
        f for s in segments for f in ([*s.frames] if s.backward else [s.anchor, *s.frames])
    ]
    point_frames: list[int] = []
    if points_stale and first_query is not None:
        covered = set(mask_frames)
        point_frames = [
            f
            for f in [*range(first_query - 1, -1, -1), *range(first_query, num_frames)]
            if f not in covered
        ]
    return Schedule(segments, mask_frames, point_frames, points_stale, num_frames)


def governing_anchor(anchors: Sequence[int], frame_idx: int) -> int | None:
    """The annotated frame whose segment holds ``frame_idx``: the last anchor at or before it,
    else the first anchor (frames before it are propagated backward from it); None without
    anchors. ``anchors`` are sorted."""
    if not anchors:
        return None
    before = [a for a in anchors if a <= frame_idx]
    return before[-1] if before else anchors[0]


__all__ = ["Schedule", "Segment", "governing_anchor", "plan_run", "stale_segments"]
