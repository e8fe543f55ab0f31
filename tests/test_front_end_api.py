"""What the napari plugin needs from the core: frames from an array, the frames a run will yield."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ditf_track import LabExtractor, Tracker, open_video
from ditf_track.errors import InputError
from ditf_track.masks import read_mask
from ditf_track.propagate import PropagationParams
from ditf_track.video import video_from_array


def test_pending_frames_on_an_array_source(shared_data: Path) -> None:
    davis = shared_data / "davis"
    with open_video(davis / "JPEGImages/480p/blackswan", end=8) as disk:
        frames = disk.read_batch(range(8))
    gt = [read_mask(davis / f"Annotations/480p/blackswan/{i:05d}.png").labels for i in range(8)]
    tracker = Tracker(LabExtractor(), short_side=160, params=PropagationParams(n_context=3))
    state = tracker.init_state(video_from_array(frames, name="blackswan"))
    assert tracker.pending_frames(state) == []  # nothing annotated: nothing to yield
    tracker.add_mask(state, 2, gt[2])
    # backward fill first (1, 0), then the forward segment from the annotation
    assert tracker.pending_frames(state) == [1, 0, 2, 3, 4, 5, 6, 7]
    assert [r.frame_idx for r in tracker.propagate(state)] == [1, 0, 2, 3, 4, 5, 6, 7]
    assert tracker.pending_frames(state) == []
    tracker.add_mask(state, 5, gt[5])
    assert tracker.pending_frames(state) == [5, 6, 7]
    stream = tracker.propagate(state)
    next(stream)
    stream.close()  # stopped after frame 5: the segment stays pending as a whole
    assert tracker.pending_frames(state) == [5, 6, 7]
    # the same frames read from disk give the same masks
    disk_state = tracker.init_state(davis / "JPEGImages/480p/blackswan", end=8)
    tracker.add_mask(disk_state, 2, gt[2])
    tracker.add_mask(disk_state, 5, gt[5])
    list(tracker.propagate(disk_state))
    list(tracker.propagate(state))
    for i in range(8):
        np.testing.assert_array_equal(state.masks[i], disk_state.masks[i])


def test_video_from_array_hash_follows_pixels() -> None:
    frames = np.random.default_rng(0).integers(0, 255, (3, 8, 10, 3), dtype=np.uint8)
    source = video_from_array(frames)
    assert source.frame_names == ["00000", "00001", "00002"]
    assert video_from_array(frames.copy()).content_hash() == source.content_hash()
    changed = frames.copy()
    changed[1, 4, 4, 0] ^= 1
    assert video_from_array(changed).content_hash() != source.content_hash()
    with pytest.raises(InputError, match="uint8"):
        video_from_array(frames.astype(np.float32))


def test_pending_frames_with_points(shared_data: Path) -> None:
    davis = shared_data / "davis"
    gt = read_mask(davis / "Annotations/480p/blackswan/00002.png").labels
    tracker = Tracker(LabExtractor(), short_side=160, params=PropagationParams(n_context=3))
    state = tracker.init_state(davis / "JPEGImages/480p/blackswan", end=6)
    tracker.add_mask(state, 2, gt)
    tracker.add_points(state, 3, [[200.0, 400.0]])
    # the mask segments cover every frame: the points need no frame of their own
    assert tracker.pending_frames(state) == [1, 0, 2, 3, 4, 5]
    assert [r.frame_idx for r in tracker.propagate(state)] == [1, 0, 2, 3, 4, 5]
    assert tracker.pending_frames(state) == []
    # new points only: every frame, backward from the first query frame, then forward
    tracker.add_points(state, 4, [[100.0, 100.0]], ids=[7])
    assert tracker.pending_frames(state) == [2, 1, 0, 3, 4, 5]
    assert tracker.pending_frames(state, points_mode="heatmap") == [2, 1, 0, 3, 4, 5]
    assert [r.frame_idx for r in tracker.propagate(state)] == [2, 1, 0, 3, 4, 5]
    assert tracker.pending_frames(state) == []
    # another mode makes the tracks stale again
    assert tracker.pending_frames(state, points_mode="heatmap") == [2, 1, 0, 3, 4, 5]
