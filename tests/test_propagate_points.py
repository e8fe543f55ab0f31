"""Point tracking's pure functions: locate, Gaussian label maps, heat-map peaks, PointParams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditf_track.errors import ConfigError
from ditf_track.lab import LabExtractor
from ditf_track.propagate import (
    PointParams,
    gaussian_label_maps,
    heatmap_peaks,
    locate,
    sample_descriptors,
)
from ditf_track.tracker import Tracker


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
