"""Sparse keypoint PCK: hand cases, the real BADJA dog annotations, a JHMDB .mat in its layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from ditf_track.errors import InputError
from ditf_track.eval.keypoints import (
    BADJA_JOINT_IDS,
    BadjaFrame,
    badja_pck,
    jhmdb_box_size,
    jhmdb_pck,
    load_badja,
    load_jhmdb_joints,
    pck,
)

# ------------------------------------------------------------------------------------ pck


def test_pck_perfect_far_and_invisible() -> None:
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (4, 6, 2))
    visible = rng.random((4, 6)) < 0.7
    visible[0, 0] = True
    assert pck(gt, gt, visible, 1.0)["PCK"] == 1.0
    assert pck(gt + 50.0, gt, visible, np.full(4, 10.0))["PCK"] == 0.0
    # invisible joints are ignored, wherever they are predicted
    pred = np.where(visible[..., None], gt, 1e6)
    result = pck(pred, gt, visible, 1.0)
    assert result["PCK"] == 1.0
    assert not result["correct"][~visible].any()
    assert result["num_visible_per_joint"].tolist() == visible.sum(axis=0).tolist()


def test_pck_known_offsets_per_frame_threshold() -> None:
    gt = np.zeros((2, 3, 2))
    pred = gt.copy()
    pred[0, :, 0] = [2.0, 3.0, 4.0]  # frame 0 threshold 3 px
    pred[1, :, 1] = [4.0, 5.0, 6.0]  # frame 1 threshold 5 px
    visible = np.ones((2, 3), bool)
    strict = pck(pred, gt, visible, np.array([3.0, 5.0]))
    assert strict["correct"].tolist() == [[True, False, False], [True, False, False]]
    assert strict["PCK"] == pytest.approx(2 / 6)
    inclusive = pck(pred, gt, visible, np.array([3.0, 5.0]), inclusive=True)
    assert inclusive["PCK"] == pytest.approx(4 / 6)
    pred[1, 0] = np.nan
    assert pck(pred, gt, visible, np.array([3.0, 5.0]))["PCK"] == pytest.approx(1 / 6)


def test_pck_shape_errors() -> None:
    with pytest.raises(InputError, match="do not match"):
        pck(np.zeros((2, 3, 2)), np.zeros((2, 4, 2)), np.ones((2, 4), bool), 1.0)
    with pytest.raises(InputError, match=r"\(F, J, 2\)"):
        pck(np.zeros((2, 3)), np.zeros((2, 3)), np.ones(2, bool), 1.0)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.floats(0.01, 1.0),
    st.floats(0.01, 1.0),
    st.booleans(),
)
def test_pck_monotonic_in_alpha(seed: int, a: float, b: float, inclusive: bool) -> None:
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, 50, (5, 7, 2))
    pred = gt + rng.normal(0, rng.uniform(0.1, 10), gt.shape)
    visible = rng.random((5, 7)) < 0.8
    visible[0, 0] = True
    size = rng.uniform(5, 40, 5)
    lo, hi = sorted((a, b))
    p_lo = pck(pred, gt, visible, lo * size, inclusive=inclusive)["PCK"]
    p_hi = pck(pred, gt, visible, hi * size, inclusive=inclusive)["PCK"]
    assert 0.0 <= p_lo <= p_hi <= 1.0


# ------------------------------------------------------------------------------------ BADJA


def badja_frame(index: int, joints: dict[int, tuple[float, float]], area: int) -> BadjaFrame:
    yx = np.zeros((20, 2))
    visible = np.zeros(20, bool)
    for j, point in joints.items():
        yx[j] = point
        visible[j] = True
    return BadjaFrame(f"{index:05d}", index, yx, visible, None, area)


def test_badja_pck_hand_case() -> None:
    # area 2500 → threshold 0.2·50 = 10 px (strict). Frame 0 is the query frame: not scored.
    frames = [
        badja_frame(0, {0: (0, 0), 1: (0, 0)}, 2500),
        badja_frame(5, {0: (100, 100), 1: (100, 100)}, 2500),
        badja_frame(10, {0: (200, 200), 1: (200, 200)}, 2500),
    ]
    pred = np.stack([f.joints for f in frames])
    pred[0] += 1000.0  # wrong at the query frame: ignored
    pred[1, 0, 0] += 9.99  # inside 10 px
    pred[1, 1, 1] += 10.0  # exactly 10 px: a miss (strict)
    pred[1, 2] = 5000.0  # joint 2 not visible: ignored
    pred[2, 1] = np.nan  # no prediction: a miss
    # scored: f1 j0 ✓, f1 j1 ✗, f2 j0 ✓, f2 j1 ✗ → 2/4; at α = 0.3 (15 px) f1 j1 ✓ → 3/4
    assert badja_pck(pred, frames) == {"PCK@0.2": pytest.approx(0.5)}
    assert badja_pck(pred, frames, alphas=(0.2, 0.3))["PCK@0.3"] == pytest.approx(0.75)
    # scoring the query frame too adds two misses → 2/6
    assert badja_pck(pred, frames, skip_query_frame=False)["PCK@0.2"] == pytest.approx(2 / 6)


def test_badja_pck_needs_mask_area() -> None:
    frame = badja_frame(0, {0: (1, 1)}, 100)
    no_area = BadjaFrame("00000", 0, frame.joints, frame.visible, None, None)
    with pytest.raises(InputError, match="mask_dir"):
        badja_pck(frame.joints[None], [no_area])


def test_badja_dog_real_annotations(shared_data: Path) -> None:
    seq_masks = shared_data / "davis" / "Annotations" / "480p" / "dog"
    frames = load_badja(shared_data / "points" / "badja" / "dog.json", mask_dir=seq_masks)
    assert [f.frame_index for f in frames] == [3, 8, 13, 18, 19, 24, 29, 34, 40, 45, 50, 55]
    assert frames[0].frame_name == "00003"
    assert all(f.joints.shape == (20, 2) and f.visible.shape == (20,) for f in frames)
    assert sum(int(f.visible.sum()) for f in frames) == 191
    # (row, col) at 1080p scaled to 480p: every visible joint lies on (within 3 px of) the GT mask
    off_mask = swapped_on_mask = 0
    for f in frames:
        mask = np.asarray(Image.open(seq_masks / f"{f.frame_name}.png")) > 0
        dist_to_mask = ndimage.distance_transform_edt(~mask)
        yx = np.round(f.joints[f.visible]).astype(int)
        assert (yx >= 0).all()
        assert (yx < mask.shape).all()
        off_mask += int((dist_to_mask[yx[:, 0], yx[:, 1]] > 3).sum())
        xy = np.clip(yx[:, ::-1], 0, np.array(mask.shape) - 1)
        swapped_on_mask += int((dist_to_mask[xy[:, 0], xy[:, 1]] <= 3).sum())
    assert off_mask == 0
    assert swapped_on_mask < 60  # read the other way round, most miss the dog (32 of 191 hit)
    # frame 00003: the 480p mask (mode L, {0, 255}, 854×480) has 44,516 foreground pixels
    assert frames[0].mask_area == 44516
    assert 0.2 * np.sqrt(frames[0].mask_area) == pytest.approx(42.1976, abs=1e-4)
    # joints are scaled per axis: row·480/1080, col·854/1920 (first visible slot, id 8: [530, 876])
    assert BADJA_JOINT_IDS[0] == 8
    np.testing.assert_allclose(frames[0].joints[0], [530 * 480 / 1080, 876 * 854 / 1920])

    gt = np.stack([f.joints for f in frames])
    assert badja_pck(gt, frames)["PCK@0.2"] == 1.0
    # zero-motion baseline: each joint stays where it was at the query frame (NaN if unseen there)
    still = np.where(frames[0].visible[:, None], frames[0].joints, np.nan)
    baseline = badja_pck(np.broadcast_to(still, gt.shape), frames)["PCK@0.2"]
    assert baseline == pytest.approx(BADJA_DOG_ZERO_MOTION, abs=1e-9)


#: Zero-motion PCK@0.2 on BADJA dog at 480p: 8 hits of the 174 visible joints of frames
#: 00008…00055, counted by a separate loop over the raw JSON and masks (not this module).
BADJA_DOG_ZERO_MOTION = 8 / 174


def test_badja_loader_sizes_and_errors(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "points" / "badja" / "dog.json"
    full = load_badja(path)
    assert full[0].mask_area is None
    np.testing.assert_allclose(full[0].joints[0], [530, 876])  # no scaling without a target
    half = load_badja(path, image_size=(540, 960))
    np.testing.assert_allclose(half[0].joints[0], [265, 438])
    masks = shared_data / "davis" / "Annotations" / "480p" / "dog"
    with pytest.raises(InputError, match="image_size"):
        load_badja(path, mask_dir=masks, image_size=(540, 960))
    with pytest.raises(InputError, match="GT mask"):
        load_badja(path, mask_dir=tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_path": "x/abc.jpg", "joints": [], "visibility": []}]')
    with pytest.raises(InputError, match="row, col"):
        load_badja(bad)


# ------------------------------------------------------------------------------------ JHMDB


def test_load_jhmdb_mat_layout(tmp_path: Path) -> None:
    n_frames = 4
    x = np.arange(15)[:, None] + 10.0 * np.arange(n_frames)[None, :] + 1.0  # 1-based
    y = 100.0 + np.arange(15)[:, None] + np.zeros(n_frames)[None, :] + 1.0
    pos_img = np.stack([x, y])  # (2, 15, T) as (x, y), as in JHMDB's joint_positions.mat
    path = tmp_path / "joint_positions.mat"
    scipy.io.savemat(
        path,
        {
            "pos_img": pos_img,
            "pos_world": pos_img / 100.0,
            "scale": np.ones((1, n_frames)),
            "viewpoint": np.array(["E"] * n_frames, dtype=object)[None],
        },
    )
    joints = load_jhmdb_joints(path)
    assert joints.shape == (n_frames, 15, 2)
    assert joints[2, 5].tolist() == [105.0, 25.0]  # (y, x), 0-based: x = 5 + 20, y = 100 + 5
    bad = tmp_path / "bad.mat"
    scipy.io.savemat(bad, {"pos_img": np.zeros((2, 14, 3))})
    with pytest.raises(InputError, match=r"\(2, 15, T\)"):
        load_jhmdb_joints(bad)
    with pytest.raises(InputError, match="pos_img"):
        load_jhmdb_joints(tmp_path / "missing.mat")


def jhmdb_video(n_frames: int) -> np.ndarray:
    """GT joints spanning a 40 (y) × 30 (x) box: 0.6 · diagonal 50 = 30 px."""
    gt = np.full((n_frames, 15, 2), [20.0, 15.0])
    gt[:, 0] = [0.0, 0.0]
    gt[:, 1] = [40.0, 30.0]
    return gt


def test_jhmdb_box_size() -> None:
    assert jhmdb_box_size(jhmdb_video(2)).tolist() == [30.0, 30.0]
    visible = np.ones((2, 15), bool)
    visible[:, 1] = False  # box of (0, 0) and (20, 15): diagonal 25
    assert jhmdb_box_size(jhmdb_video(2), visible).tolist() == [15.0, 15.0]


def test_jhmdb_pck_hand_case() -> None:
    # size 30 px: α = 0.1 → 3 px, α = 0.2 → 6 px, inclusive. Frame 0 is not scored.
    gt_a = jhmdb_video(3)
    pred_a = gt_a.copy()
    pred_a[0] += 100.0  # query frame: ignored
    pred_a[1, 2, 0] += 3.0  # exactly 3 px: correct at 0.1 (inclusive)
    pred_a[1, 3, 1] += 4.0  # wrong at 0.1, correct at 0.2
    pred_a[1, 4, 0] -= 7.0  # wrong at both
    pred_a[2, 3, 1] += 6.0  # exactly 6 px: wrong at 0.1, correct at 0.2
    # per joint at 0.1: j3 0/2, j4 1/2, the other 13 2/2 → (13 + 0.5) / 15
    # per joint at 0.2: j4 1/2, the other 14 → (14 + 0.5) / 15
    single = jhmdb_pck(pred_a, gt_a)
    assert single == {"PCK@0.1": pytest.approx(13.5 / 15), "PCK@0.2": pytest.approx(14.5 / 15)}
    # pooling is per joint over all videos, then the mean over joints (not a mean over videos):
    # a perfect 2-frame video b makes j3 1/3 and j4 2/3 at 0.1 → (13 + 1/3 + 2/3) / 15
    gt_b = jhmdb_video(2)
    pooled = jhmdb_pck([pred_a, gt_b], [gt_a, gt_b], alphas=(0.1,))
    assert pooled["PCK@0.1"] == pytest.approx(14 / 15)
    assert pooled["PCK@0.1"] != pytest.approx((13.5 / 15 + 1.0) / 2)


def test_jhmdb_pck_errors() -> None:
    with pytest.raises(InputError, match="videos"):
        jhmdb_pck([jhmdb_video(2)], [jhmdb_video(2), jhmdb_video(2)])
    with pytest.raises(InputError, match=r"\(T, 15, 2\)"):
        jhmdb_pck(np.zeros((2, 14, 2)), np.zeros((2, 14, 2)))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_jhmdb_pck_monotonic_in_alpha(seed: int, a: float, b: float) -> None:
    rng = np.random.default_rng(seed)
    gts = [rng.uniform(0, 240, (int(rng.integers(2, 6)), 15, 2)) for _ in range(3)]
    preds = [g + rng.normal(0, rng.uniform(0.5, 30), g.shape) for g in gts]
    lo, hi = sorted((a, b))
    result = jhmdb_pck(preds, gts, alphas=(lo, hi))
    if lo == hi:
        return
    assert 0.0 <= result[f"PCK@{lo:g}"] <= result[f"PCK@{hi:g}"] <= 1.0
