"""The generated sample clip: shapes, ids, keypoints on their objects, and trackable with lab."""

from __future__ import annotations

import numpy as np
import pytest

from ditf_track import LabExtractor, Tracker
from ditf_track.video import video_from_array
from napari_ditf_track import make_sample_data, make_shapes_clip


def test_sample_layers() -> None:
    (frames, fkw, fkind), (labels, _, lkind), (points, pkw, pkind) = make_sample_data()
    assert (fkind, lkind, pkind) == ("image", "labels", "points")
    assert frames.shape == (16, 192, 256, 3)
    assert frames.dtype == np.uint8
    assert max(frames.shape[1:3]) <= 256
    assert fkw["rgb"] is True
    assert labels.shape == (16, 192, 256)
    assert set(np.unique(labels[0])) == {0, 1, 2}
    assert not labels[1:].any()  # only frame 0 is annotated
    assert points.shape == (5, 3)
    assert (points[:, 0] == 0).all()  # (t, y, x), all on frame 0
    # the first four keypoints sit on their objects, the last on the background
    clip = make_shapes_clip()
    ys, xs = np.rint(points[:, 1]).astype(int), np.rint(points[:, 2]).astype(int)
    np.testing.assert_array_equal(clip.labels[0][ys, xs], [1, 1, 2, 2, 0])
    np.testing.assert_array_equal(pkw["features"]["id"], np.arange(5))
    # deterministic, and the objects move
    again = make_shapes_clip()
    np.testing.assert_array_equal(again.frames, clip.frames)
    assert not np.array_equal(clip.labels[0], clip.labels[15])


@pytest.mark.slow
def test_lab_preset_tracks_the_sample() -> None:
    """The sample is meant to work with the weight-free preset: masks follow the shapes."""
    clip = make_shapes_clip()
    tracker = Tracker(LabExtractor(), short_side=384)  # 8-px cells on the 192-px frames
    state = tracker.init_state(video_from_array(clip.frames, clip.frame_names))
    tracker.add_mask(state, 0, clip.labels[0])
    masks = {r.frame_idx: r.labels for r in tracker.propagate(state)}
    ious = []
    for t in range(1, 16):
        for obj in (1, 2):
            ours, truth = masks[t] == obj, clip.labels[t] == obj
            ious.append((ours & truth).sum() / (ours | truth).sum())
    # measured: mean 0.93, worst frame 0.88 (lab features of the main branch, Nov 2026)
    assert np.mean(ious) > 0.9
    assert np.min(ious) > 0.8
