"""Point tracking's pure functions: locate, the windowed search with re-detection, Gaussian label
maps, heat-map peaks, PointParams; the two query modes on the real BADJA dog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ditf_track.cache import FeatureCache
from ditf_track.coords import frame_to_grid
from ditf_track.errors import ConfigError
from ditf_track.eval.keypoints import badja_pck, load_badja
from ditf_track.eval.runs.points import track_queries
from ditf_track.lab import LabExtractor
from ditf_track.propagate import (
    PointParams,
    gaussian_label_maps,
    heatmap_peaks,
    locate,
    sample_descriptors,
    track_query_points,
)
from ditf_track.propagate.points import MOTION_RADIUS, REDETECT_RATIO, locate_redetect
from ditf_track.tracker import Tracker
from ditf_track.video import open_video


def test_locate_torch_and_faiss_agree_and_window_restricts() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(32, 12, 17, generator=gen), dim=0)
    grid = np.array([[1.0, 1.0], [5.3, 9.6], [11.0, 16.0], [6.0, 0.2]])
    queries = sample_descriptors(feats, grid)
    refine = PointParams().refine
    a = locate(queries, feats, refine=refine, knn_backend="torch")
    b = locate(queries, feats, refine=refine, knn_backend="faiss")
    np.testing.assert_allclose(a.grid_yx, b.grid_yx, atol=1e-5)
    np.testing.assert_allclose(a.score, b.score, atol=1e-5)
    np.testing.assert_array_equal(a.cell, b.cell)
    # the best cell of each query is its nearest cell; no refinement returns that cell
    nearest = np.floor(grid + 0.5)
    np.testing.assert_array_equal(a.cell, nearest)
    np.testing.assert_array_equal(locate(queries, feats, knn_backend="torch").grid_yx, nearest)
    # the refinement moves by less than a cell
    assert (np.abs(a.grid_yx - nearest) < 1).all()
    # a window far from the point cannot reach it
    centre = np.array([[11.0, 16.0]] * 4)
    far = locate(queries, feats, centre=centre, radius=2, knn_backend="torch")
    assert (np.abs(far.cell - centre) <= 2).all()


def test_gaussian_label_maps_follow_crw() -> None:
    maps = gaussian_label_maps(np.array([[2.0, 3.0], [2.3, 6.6]]), (6, 9), sigma=0.5)
    assert maps.shape == (3, 6, 9)
    assert maps[1, 2, 3] == 1.0  # peak 1 at a cell centre, not normalised
    assert maps[1, 2, 4] == pytest.approx(np.exp(-1 / (2 * 0.25)))
    assert maps[1, 2, 5] == 0.0  # 2 cells > 3σ
    assert maps[2, 2, 7] == pytest.approx(np.exp(-(0.09 + 0.16) / 0.5), rel=1e-6)
    background = (maps[1:].sum(0) == 0).float()
    torch.testing.assert_close(maps[0], background)


def test_heatmap_peaks_hand_cases() -> None:
    g = gaussian_label_maps(np.array([[3.3, 4.0], [1.0, 1.0]]), (8, 8), sigma=0.7)[1:]
    pos, peak = heatmap_peaks(g, readout_radius=1)
    assert pos[1].tolist() == pytest.approx([1.0, 1.0])  # symmetric window: the cell itself
    assert 3.1 < pos[0, 0] < 3.5
    assert pos[0, 1] == pytest.approx(4.0)
    assert peak[1] == pytest.approx(1.0)
    # CRW's rule: the three largest cells of the whole map
    m = torch.zeros(1, 4, 4)
    m[0, 1, 1], m[0, 1, 2], m[0, 3, 3] = 0.6, 0.3, 0.1
    pos, _ = heatmap_peaks(m, readout_radius=None, readout_topk=3)
    assert pos[0].tolist() == pytest.approx([(0.6 + 0.3 + 0.3) / 1.0, (0.6 + 0.6 + 0.3) / 1.0])
    pos, _ = heatmap_peaks(m, readout_radius=1)
    assert pos[0].tolist() == pytest.approx([1.0, (0.6 + 0.6) / 0.9])


def test_point_params_validation() -> None:
    with pytest.raises(ConfigError, match="radius"):
        PointParams(radius=0)
    with pytest.raises(ConfigError, match="min_similarity"):
        PointParams(min_similarity=2.0)
    with pytest.raises(ConfigError, match="cycle_threshold"):
        PointParams(cycle_threshold=-1)
    with pytest.raises(ConfigError, match="points mode"):
        Tracker(LabExtractor(), points_mode="flow")


# ---- the windowed search with re-detection ---------------------------------------------------


def test_point_params_motion_and_redetect_validation() -> None:
    assert PointParams.motion() == PointParams(radius=MOTION_RADIUS, redetect=REDETECT_RATIO)
    assert (MOTION_RADIUS, REDETECT_RATIO) == (3, 0.5)
    default = PointParams()  # the library's and the evaluations' protocol: the whole frame
    assert (default.radius, default.redetect) == (None, None)
    with pytest.raises(ConfigError, match="needs a search window"):
        PointParams(redetect=0.5)
    for bad in (0, 1.5, -0.2):
        with pytest.raises(ConfigError, match=r"redetect=.* must be a fraction in \(0, 1\]"):
            PointParams(radius=3, redetect=bad)


def test_drop_rule_compares_peak_heights_above_the_frame_mean() -> None:
    """One row of 10 cells whose cosines with the query are set by hand: the window (cells
    0..3 around cell 1) peaks at 0.6, the frame at 1.0 (cell 8), the mean is 0.24, so the
    window's height is (0.6 − 0.24) / (1 − 0.24) = 0.4737 of the frame's."""
    cosines = torch.tensor([0.1, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1.0, 0.1])
    features = torch.stack([cosines, (1 - cosines**2).sqrt()])[:, None, :]  # (2, 1, 10)
    query = torch.tensor([[1.0, 0.0]])
    centre = np.array([[0.0, 1.0]])
    kept = locate_redetect(query, features, centre=centre, radius=2, ratio=0.47)
    lost = locate_redetect(query, features, centre=centre, radius=2, ratio=0.48)
    assert kept.dropped.tolist() == [False]
    assert lost.dropped.tolist() == [True]
    assert kept.window.cell.tolist() == [[0, 1]]
    assert kept.frame.cell.tolist() == [[0, 8]]
    assert kept.window.score.tolist() == pytest.approx([0.6])
    assert kept.frame.score.tolist() == pytest.approx([1.0])
    np.testing.assert_array_equal(kept.window.grid_yx, [[0.0, 1.0]])
    # the windowed half is locate's windowed search
    plain = locate(query, features, centre=centre, radius=2)
    np.testing.assert_array_equal(plain.cell, kept.window.cell)


GRID_HW = (30, 50)


def field_frames(shifts: np.ndarray, channels: int = 128, seed: int = 0) -> list[torch.Tensor]:
    """``(C, h, w)`` unit maps of one random smooth field (cosine ≈ a Gaussian of one cell, random
    Fourier features) whose content is moved by ``shifts (T, 2)`` cells ``(dy, dx)``."""
    rng = np.random.default_rng(seed)
    omega = rng.normal(0.0, 1.0, (channels, 2))
    phase = rng.uniform(0.0, 2 * np.pi, channels)
    ys, xs = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in GRID_HW), indexing="ij")
    cells = np.stack([ys, xs], axis=-1)
    maps = []
    for shift in np.asarray(shifts, dtype=np.float64):
        v = np.cos((cells - shift) @ omega.T + phase)
        maps.append(torch.from_numpy(np.moveaxis(v, -1, 0)).float())
    return [torch.nn.functional.normalize(m, dim=0) for m in maps]


def run_points(
    frames: list[torch.Tensor], query: np.ndarray, params: PointParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions ``(T, N, 2)`` (the query's first), visibility and re-detections ``(T-1, N)``."""
    estimates = list(track_query_points(frames[0], query, frames[1:], params))
    positions = np.stack([query, *(e.grid_yx for e in estimates)])
    visible = np.stack([e.visible for e in estimates])
    redetected = np.stack(
        [np.zeros(len(query), bool) if e.redetected is None else e.redetected for e in estimates]
    )
    return positions, visible, redetected


def test_a_point_that_teleports_is_found_again_by_the_redetection() -> None:
    """The content moves a cell per frame, then jumps 20 cells right (frame 4): the window
    (3 cells) holds only unrelated cells, so its peak drops and the whole frame finds the point;
    the window alone stays lost."""
    shifts = np.array([[0, 0], [0, 1], [1, 2], [1, 3], [1, 23], [2, 24], [2, 25]])
    frames = field_frames(shifts)
    query = np.array([[8.0, 8.0], [15.0, 12.0], [20.0, 5.0], [4.0, 20.0]])
    truth = query[None] + shifts[:, None]
    positions, visible, redetected = run_points(frames, query, PointParams.motion())
    err = np.linalg.norm(positions - truth, axis=-1)
    assert err.max() < 0.25, err
    assert visible.all()
    expected = np.zeros_like(redetected)
    expected[3] = True  # frame 4, where the content jumped; nowhere else
    np.testing.assert_array_equal(redetected, expected)
    lost, _, none = run_points(frames, query, PointParams(radius=MOTION_RADIUS))
    assert not none.any()
    assert (np.linalg.norm(lost[4:] - truth[4:], axis=-1) > 10).all()


def test_a_point_moving_smoothly_stays_windowed_among_look_alikes() -> None:
    """Sub-cell motion, and in every frame an exact copy of each point's descriptor planted far
    from every point: the global search jumps to the copies, the window follows the motion and
    never re-detects (its peak stays high above the frame's mean)."""
    steps = 12
    shifts = np.arange(steps + 1)[:, None] * np.array([0.3, 0.6])
    frames = field_frames(shifts, seed=1)
    query = np.array([[6.0, 6.0], [14.0, 10.0], [9.0, 18.0]])
    truth = query[None] + shifts[:, None]
    descriptors = sample_descriptors(frames[0], query)
    rng = np.random.default_rng(2)
    for t in range(1, steps + 1):
        for d in descriptors:
            while True:
                y, x = rng.integers(0, GRID_HW[0]), rng.integers(25, GRID_HW[1])
                if np.abs(truth[t] - [y, x]).max(axis=1).min() > 8:
                    break
            frames[t][:, y, x] = d
    positions, visible, redetected = run_points(frames, query, PointParams.motion())
    step = np.linalg.norm(np.diff(positions, axis=0), axis=-1)
    assert not redetected.any()
    assert step.max() < 1.5, step
    assert np.linalg.norm(positions - truth, axis=-1).max() < 0.5
    assert visible.all()
    global_positions, _, _ = run_points(frames, query, PointParams())
    global_step = np.linalg.norm(np.diff(global_positions, axis=0), axis=-1)
    assert (global_step > 4).sum() >= steps  # it hops from copy to copy


# ---- the BADJA dog with lab: jumps of both query modes ---------------------------------------


def test_badja_dog_lab_window_with_redetection_does_not_jump(shared_data: Path) -> None:
    """The runner's tracking (PIPs protocol: the 17 joints visible at frame 00003, forward to
    00055) at short side 240 (a 15 x 27 grid), lab features: displacements between consecutive
    frames longer than 4 cells. Measured 2026-12-06: global 474 of 884 steps (PCK@0.2 8.0 %),
    window + re-detection 0 (10.3 %); benchmarks/keypoints_motion.py at 960: 792 against 0."""
    frames = load_badja(
        shared_data / "points/badja/dog.json",
        mask_dir=shared_data / "davis/Annotations/480p/dog",
    )
    first, last = frames[0].frame_index, frames[-1].frame_index
    clip = open_video(shared_data / "davis/JPEGImages/480p/dog", first, last + 1)
    query = frames[0]
    queried = np.flatnonzero(query.visible)
    extractor, cache = LabExtractor(), FeatureCache(None)  # features extracted once
    results = {}
    for name, params in (("global", PointParams()), ("motion", PointParams.motion())):
        tracker = Tracker(extractor, cache=cache, short_side=240, point_params=params)
        tracks, _, _ = track_queries(
            tracker, clip, np.zeros(len(queried), np.int64), query.joints[queried]
        )
        state = tracker.init_state(clip)
        grid = frame_to_grid(tracks, state.frame_size, state.input_size, extractor.stride)
        steps = np.linalg.norm(np.diff(grid, axis=0), axis=-1)
        pred = np.full((len(frames), 20, 2), np.nan)
        pred[:, queried] = tracks[[f.frame_index - first for f in frames]]
        results[name] = (int((steps > 4).sum()), badja_pck(pred, frames)["PCK@0.2"])
    assert steps.size == 52 * 17
    assert results["global"][0] > 400
    assert results["motion"][0] == 0
    assert results["motion"][1] >= results["global"][1]
    assert results["motion"][1] == pytest.approx(18 / 174)
