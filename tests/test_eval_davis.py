"""The DAVIS J&F metric on arrays (eval/davis.py): hand-checked cases and properties.

The official tool's numbers on real data, the folder scorer, its CLI and its errors are in
test_eval_davis_folders.py.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.morphology import disk

from ditf_track.eval.davis import (
    boundary_f_measure,
    boundary_map,
    boundary_radius,
    disk_footprint,
    evaluate_sequence,
    jf_statistics,
    region_similarity,
)

# ----------------------------------------------------------------------------- hand-checked


def _square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_perfect_prediction_scores_one() -> None:
    gt = _square((40, 40), 5, 5, 10)
    assert region_similarity(gt, gt).tolist() == [1.0]
    assert boundary_f_measure(gt, gt).tolist() == [1.0]


def test_empty_prediction_scores_zero() -> None:
    gt = _square((40, 40), 5, 5, 10)
    empty = np.zeros_like(gt)
    assert region_similarity(empty, gt).tolist() == [0.0]
    assert boundary_f_measure(empty, gt).tolist() == [0.0]


def test_both_empty_scores_one() -> None:
    empty = np.zeros((3, 20, 30), dtype=bool)
    assert region_similarity(empty, empty).tolist() == [1.0, 1.0, 1.0]
    assert boundary_f_measure(empty, empty).tolist() == [1.0, 1.0, 1.0]


def test_shifted_square_iou() -> None:
    gt = _square((40, 40), 5, 5, 10)
    pred = _square((40, 40), 5, 8, 10)  # 3 px to the right: 10x7 overlap, 10x13 union
    assert region_similarity(pred, gt)[0] == pytest.approx(70 / 130)


def test_shifted_square_boundary_f() -> None:
    # The 10x10 square's boundary is the ring of the 11x11 box rows/cols 4..14 (40 pixels, half a
    # pixel towards the origin). Shifted 3 px right with a 2-px disk: the top and bottom rows match
    # 10 of 11 pixels, the near side 4 of 9 (within 2 px of a corner row), the far side 0 of 9,
    # so P = R = 24/40 and F = 0.6; with a 3-px disk every pixel matches.
    gt = _square((40, 40), 5, 5, 10)
    pred = _square((40, 40), 5, 8, 10)
    assert int(boundary_map(gt).sum()) == 40
    assert boundary_f_measure(pred, gt, bound_th=2)[0] == pytest.approx(0.6)
    assert boundary_f_measure(pred, gt, bound_th=3)[0] == pytest.approx(1.0)


def test_boundary_map_border_is_no_contour() -> None:
    assert not boundary_map(np.ones((6, 7), dtype=bool)).any()
    right_half = np.zeros((4, 6), dtype=bool)
    right_half[:, 3:] = True
    expected = np.zeros_like(right_half)
    expected[:, 2] = True  # the column left of the edge; the image border adds nothing
    assert (boundary_map(right_half) == expected).all()


def test_boundary_radius_and_disk() -> None:
    assert boundary_radius(480, 854) == 8.0  # ceil(0.008 * 979.6)
    assert boundary_radius(400, 600) == 6.0
    assert boundary_radius(10, 10, bound_th=3) == 3.0
    footprint = disk_footprint(8.0)
    assert footprint.shape == (17, 17)
    assert int(footprint.sum()) == 197  # lattice points with dy² + dx² <= 64


def test_void_counts_as_background() -> None:
    # One scored frame (T = 3). The ground truth has object 1 (4x4) inside a 6x6 box of void 255:
    # a prediction covering the box gets the 20 void pixels as false positives: J = 16/36.
    gt = np.zeros((3, 10, 10), dtype=np.uint8)
    gt[:, 1:7, 1:7] = 255
    gt[:, 2:6, 2:6] = 1
    pred = np.zeros_like(gt)
    pred[1, 1:7, 1:7] = 1
    pred[0] = pred[2] = 9  # first and last frame are not scored (nor checked)
    result = evaluate_sequence(pred, gt, mode="multi", name="void")
    assert result.n_objects == 1  # 255 is no object
    assert result.j[0].tolist() == [pytest.approx(16 / 36)]


def test_jf_statistics_by_hand() -> None:
    # n = 8: quarter edges round(linspace(1, 8, 5) + 1e-10) - 1 = [0, 2, 4, 5, 7]; the first
    # quarter is frames 0..2 and the last 5..7.
    values = np.arange(8) / 7
    mean, recall, decay = jf_statistics(values)
    assert mean == pytest.approx(0.5)
    assert recall == pytest.approx(4 / 8)  # 4/7, 5/7, 6/7, 1 are > 0.5
    assert decay == pytest.approx(1 / 7 - 6 / 7)
    assert jf_statistics([1, 1, 1, 0, 0, 0, 0, 0])[2] == pytest.approx(1.0)
    assert jf_statistics([0.7]) == (0.7, 1.0, 0.0)


def test_jf_statistics_keeps_official_uint8_edges() -> None:
    # The official edges are cast to uint8: for 300 frames the last edge 299 wraps to 43, the last
    # quarter [224:44] is empty and the official Decay is NaN. Mean and Recall are unaffected.
    mean, _, decay = jf_statistics(np.linspace(0, 1, 300))
    assert mean == pytest.approx(0.5)
    assert math.isnan(decay)


# ----------------------------------------------------------------------------- properties


@st.composite
def mask_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(st.tuples(st.integers(1, 20), st.integers(1, 20)))
    pred = draw(arrays(np.bool_, shape))
    gt = draw(arrays(np.bool_, shape))
    return pred, gt


def _boundary_by_definition(seg: np.ndarray) -> np.ndarray:
    """seg2bmap pixel by pixel: differs from right, lower or lower-right (only those inside)."""
    h, w = seg.shape
    out = np.zeros_like(seg)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                out[y, x] = seg[y, x] != seg[y, x + 1]
            elif x == w - 1:
                out[y, x] = seg[y, x] != seg[y + 1, x]
            else:
                out[y, x] = any(
                    seg[y, x] != seg[y + dy, x + dx] for dy, dx in ((0, 1), (1, 0), (1, 1))
                )
    return out


def _whole_frame_jf(pred: np.ndarray, gt: np.ndarray, radius: float) -> tuple[float, float]:
    """J and F on the whole frame (no bounding-box window), straight from the protocol."""
    union = int((pred | gt).sum())
    j = 1.0 if union == 0 else int((pred & gt).sum()) / union
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    footprint = disk(radius).astype(np.uint8)
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), footprint) > 0
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), footprint) > 0
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 and n_gt == 0:
        p, r = 1.0, 1.0
    elif n_pred == 0:
        p, r = 1.0, 0.0
    elif n_gt == 0:
        p, r = 0.0, 1.0
    else:
        p, r = int((pred_b & gt_dil).sum()) / n_pred, int((gt_b & pred_dil).sum()) / n_gt
    return j, (0.0 if p + r == 0 else 2 * p * r / (p + r))


@settings(max_examples=150, deadline=None)
@given(mask_pairs())
def test_boundary_map_matches_definition(pair: tuple[np.ndarray, np.ndarray]) -> None:
    seg = pair[0]
    assert np.array_equal(boundary_map(seg), _boundary_by_definition(seg))


@settings(max_examples=200, deadline=None)
@given(mask_pairs(), st.sampled_from([0.008, 0.05, 1, 2, 3]))
def test_windowed_scores_equal_whole_frame(
    pair: tuple[np.ndarray, np.ndarray], bound_th: float
) -> None:
    pred, gt = pair
    radius = boundary_radius(*pred.shape, bound_th)
    j, f = _whole_frame_jf(pred, gt, radius)
    assert region_similarity(pred, gt)[0] == j
    assert boundary_f_measure(pred, gt, bound_th)[0] == f


@settings(max_examples=150, deadline=None)
@given(mask_pairs())
def test_j_and_f_symmetric_and_bounded(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = pair
    j, j_swapped = region_similarity(pred, gt)[0], region_similarity(gt, pred)[0]
    f, f_swapped = boundary_f_measure(pred, gt)[0], boundary_f_measure(gt, pred)[0]
    assert j == j_swapped
    assert f == pytest.approx(f_swapped, abs=1e-15)
    assert 0.0 <= j <= 1.0
    assert 0.0 <= f <= 1.0
    assert region_similarity(gt, gt)[0] == 1.0
    assert boundary_f_measure(gt, gt)[0] == 1.0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=256))
def test_jf_statistics_ranges(values: list[float]) -> None:
    mean, recall, decay = jf_statistics(values)
    assert min(values) - 1e-12 <= mean <= max(values) + 1e-12
    assert 0.0 <= recall <= 1.0
    assert -1.0 <= decay <= 1.0
    if len(set(values)) == 1:
        assert decay == 0.0
