"""TAP-Vid metrics and readers: hand-computed cases, a loop oracle, property tests, tiny pickles."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ditf_track.errors import ConfigError, InputError
from ditf_track.eval.tapvid import (
    TAPVID_THRESHOLDS,
    compute_tapvid_metrics,
    iter_tapvid,
    sample_queries_first,
    sample_queries_strided,
    tapvid_sample,
)

KEYS = (
    "occlusion_accuracy",
    *(f"pts_within_{d}" for d in TAPVID_THRESHOLDS),
    *(f"jaccard_{d}" for d in TAPVID_THRESHOLDS),
    "average_jaccard",
    "average_pts_within_thresh",
)


def loop_metrics(query_points, gt_occ, gt_tracks, pred_occ, pred_tracks, query_mode):
    """An independent, per-entry reading of the TAP-Vid definitions (one video at a time)."""
    out = {k: [] for k in KEYS}
    batch, n_points, n_frames = gt_occ.shape
    for b in range(batch):
        scored = agree = 0
        visible = dict.fromkeys(TAPVID_THRESHOLDS, 0)
        within = dict.fromkeys(TAPVID_THRESHOLDS, 0)
        true_pos = dict.fromkeys(TAPVID_THRESHOLDS, 0)
        false_pos = dict.fromkeys(TAPVID_THRESHOLDS, 0)
        for n in range(n_points):
            q = round(float(query_points[b, n, 0]))  # Python's round is half-to-even too
            for t in range(n_frames):
                if (query_mode == "first" and t <= q) or (query_mode == "strided" and t == q):
                    continue
                scored += 1
                agree += bool(pred_occ[b, n, t]) == bool(gt_occ[b, n, t])
                dx, dy = pred_tracks[b, n, t] - gt_tracks[b, n, t]
                dist = (dx * dx + dy * dy) ** 0.5
                for d in TAPVID_THRESHOLDS:
                    close = dist < d
                    if not gt_occ[b, n, t]:
                        visible[d] += 1
                        within[d] += close
                        true_pos[d] += close and not pred_occ[b, n, t]
                    if not pred_occ[b, n, t] and (gt_occ[b, n, t] or not close):
                        false_pos[d] += 1
        nan = float("nan")
        out["occlusion_accuracy"].append(agree / scored if scored else nan)
        for d in TAPVID_THRESHOLDS:
            out[f"pts_within_{d}"].append(within[d] / visible[d] if visible[d] else nan)
            denom = visible[d] + false_pos[d]
            out[f"jaccard_{d}"].append(true_pos[d] / denom if denom else nan)
        out["average_jaccard"].append(np.mean([out[f"jaccard_{d}"][-1] for d in TAPVID_THRESHOLDS]))
        out["average_pts_within_thresh"].append(
            np.mean([out[f"pts_within_{d}"][-1] for d in TAPVID_THRESHOLDS])
        )
    return {k: np.array(v) for k, v in out.items()}


def hand_case():
    """B=1, N=2, T=5 with every effect once (numbers worked out in test_hand_computed_case)."""
    gt_tracks = np.full((1, 2, 5, 2), 10.0)
    pred_tracks = gt_tracks.copy()
    pred_tracks[0, 0, 2, 0] += 3.0  # track 0, frame 2: 3 px off
    pred_tracks[0, 0, 3, 1] += 10.0  # track 0, frame 3: 10 px off
    gt_occ = np.zeros((1, 2, 5), bool)
    gt_occ[0, 1, [0, 1, 4]] = True  # track 1: first visible at frame 2, occluded again at 4
    pred_occ = np.zeros((1, 2, 5), bool)
    pred_occ[0, 0, 4] = True  # track 0: exact position but predicted occluded
    pred_occ[0, 1, 1] = True  # track 1: frame 0 predicted visible (GT occluded), frame 1 right
    query_points = np.array([[[0, 10, 10], [2, 10, 10]]], float)
    return query_points, gt_occ, gt_tracks, pred_occ, pred_tracks


def test_hand_computed_case_first() -> None:
    # Scored ("first" = after the query): track 0 frames 1-4, track 1 frames 3-4 → 6 entries.
    # Occlusion agrees on t0 f1,f2,f3 and t1 f3; disagrees on t0 f4 and t1 f4 → OA = 4/6.
    # GT-visible scored: t0 f1-f4 (d = 0, 3, 10, 0) and t1 f3 (d = 0) → 5.
    # pts_within: δ=1,2 → 3/5; δ=4,8 → 4/5; δ=16 → 5/5.
    # Predicted visible & scored: t0 f1 (d0), f2 (d3), f3 (d10), t1 f3 (d0), t1 f4 (GT occluded).
    # δ=1,2: TP = t0f1, t1f3 = 2; FP = t0f2, t0f3, t1f4 = 3 → J = 2/(5+3) = 1/4.
    # δ=4,8: TP = 3; FP = t0f3, t1f4 = 2 → J = 3/7.  δ=16: TP = 4, FP = t1f4 → J = 4/6.
    m = compute_tapvid_metrics(*hand_case(), query_mode="first")
    expected = {
        "occlusion_accuracy": 4 / 6,
        "pts_within_1": 3 / 5,
        "pts_within_2": 3 / 5,
        "pts_within_4": 4 / 5,
        "pts_within_8": 4 / 5,
        "pts_within_16": 1.0,
        "jaccard_1": 1 / 4,
        "jaccard_2": 1 / 4,
        "jaccard_4": 3 / 7,
        "jaccard_8": 3 / 7,
        "jaccard_16": 4 / 6,
        "average_pts_within_thresh": (3 / 5 * 2 + 4 / 5 * 2 + 1) / 5,
        "average_jaccard": (1 / 4 * 2 + 3 / 7 * 2 + 4 / 6) / 5,
    }
    assert set(m) == set(KEYS)
    for key, value in expected.items():
        assert m[key].shape == (1,)
        assert m[key][0] == pytest.approx(value, abs=1e-12), key


def test_hand_computed_case_strided() -> None:
    # "strided" also scores track 1's frames 0 and 1 (only its query frame 2 is skipped):
    # frame 0 is GT-occluded but predicted visible (OA miss, one more FP), frame 1 right.
    # OA = (3 + 2) / 8; pts_within unchanged (no new GT-visible entry);
    # J: δ=1,2 → 2/9, δ=4,8 → 3/8, δ=16 → 4/7.
    m = compute_tapvid_metrics(*hand_case(), query_mode="strided")
    assert m["occlusion_accuracy"][0] == pytest.approx(5 / 8)
    assert m["pts_within_4"][0] == pytest.approx(4 / 5)
    assert m["jaccard_1"][0] == pytest.approx(2 / 9)
    assert m["jaccard_8"][0] == pytest.approx(3 / 8)
    assert m["jaccard_16"][0] == pytest.approx(4 / 7)


def perfect_case(n_points=3, n_frames=6):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 240, (1, n_points, n_frames, 2)).astype(float)  # exact offsets below
    occ = np.zeros((1, n_points, n_frames), bool)
    occ[0, 0, n_frames // 2] = True
    queries = np.zeros((1, n_points, 3))
    return queries, occ, gt


@pytest.mark.parametrize("mode", ["first", "strided"])
def test_perfect_prediction_scores_one(mode: str) -> None:
    queries, occ, gt = perfect_case()
    m = compute_tapvid_metrics(queries, occ, gt, occ, gt, mode)
    for key in KEYS:
        assert m[key] == pytest.approx([1.0]), key


@pytest.mark.parametrize(
    ("offset", "passed"), [(3.0, (4, 8, 16)), (4.0, (8, 16)), (0.9, (1, 2, 4, 8, 16))]
)
def test_offset_against_strict_thresholds(offset: float, passed: tuple[int, ...]) -> None:
    queries, occ, gt = perfect_case()
    occ[:] = False
    pred = gt.copy()
    pred[..., 1] += offset  # every prediction `offset` px off in y
    m = compute_tapvid_metrics(queries, occ, gt, occ, pred, "first")
    for d in TAPVID_THRESHOLDS:
        want = 1.0 if d in passed else 0.0
        assert m[f"pts_within_{d}"][0] == want, d
        assert m[f"jaccard_{d}"][0] == want, d  # nothing occluded: J = δ-accuracy here


def test_frames_before_and_at_query_are_ignored() -> None:
    queries, occ, gt = perfect_case(n_points=1, n_frames=6)
    occ[:] = False
    queries[0, 0, 0] = 3
    pred = gt.copy()
    pred[0, 0, :4] += 100.0  # wrong up to and including the query frame
    pred_occ = occ.copy()
    pred_occ[0, 0, :4] = True
    m_first = compute_tapvid_metrics(queries, occ, gt, pred_occ, pred, "first")
    assert m_first["average_jaccard"][0] == 1.0
    assert m_first["occlusion_accuracy"][0] == 1.0
    # strided scores frames 0-2 (wrong) and 4-5 (right), not the query frame 3.
    m_strided = compute_tapvid_metrics(queries, occ, gt, pred_occ, pred, "strided")
    assert m_strided["occlusion_accuracy"][0] == pytest.approx(2 / 5)
    assert m_strided["pts_within_16"][0] == pytest.approx(2 / 5)
    assert m_strided["jaccard_16"][0] == pytest.approx(2 / 5)


def test_query_frame_is_rounded_half_to_even() -> None:
    queries, occ, gt = perfect_case(n_points=1, n_frames=4)
    occ[:] = False
    pred = gt.copy()
    pred[0, 0, 2] += 50.0
    queries[0, 0, 0] = 2.5  # rounds to 2 → frame 2 not scored in "first" mode
    assert compute_tapvid_metrics(queries, occ, gt, occ, pred, "first")["pts_within_1"][0] == 1.0
    queries[0, 0, 0] = 1.5  # rounds to 2 as well
    assert compute_tapvid_metrics(queries, occ, gt, occ, pred, "first")["pts_within_1"][0] == 1.0
    queries[0, 0, 0] = 1.4  # rounds to 1 → frame 2 scored
    assert compute_tapvid_metrics(queries, occ, gt, occ, pred, "first")["pts_within_1"][0] == 0.5


def test_batch_is_per_video() -> None:
    a = hand_case()
    queries, occ, gt = perfect_case(n_points=2, n_frames=5)
    b = (queries, occ, gt, occ, gt)
    batch = [np.concatenate([x, y]) for x, y in zip(a, b)]
    m = compute_tapvid_metrics(*batch, query_mode="first")
    ma = compute_tapvid_metrics(*a, query_mode="first")
    for key in KEYS:
        assert m[key].shape == (2,)
        assert m[key][0] == ma[key][0]
        assert m[key][1] == 1.0
    trackwise = compute_tapvid_metrics(*batch, query_mode="first", get_trackwise_metrics=True)
    assert trackwise["average_jaccard"].shape == (2, 2)
    # track 1 of video 0 scores frames 3 (right) and 4 (GT occluded, predicted visible).
    assert trackwise["occlusion_accuracy"][0, 1] == pytest.approx(1 / 2)
    assert trackwise["jaccard_1"][0, 1] == pytest.approx(1 / 2)


def test_nothing_to_score_is_nan() -> None:
    queries, occ, gt = perfect_case(n_points=1, n_frames=3)
    queries[0, 0, 0] = 2  # last frame: nothing after it
    m = compute_tapvid_metrics(queries, occ, gt, occ, gt, "first")
    assert np.isnan(m["occlusion_accuracy"][0])
    assert np.isnan(m["average_jaccard"][0])


def test_bad_inputs_raise() -> None:
    queries, occ, gt = perfect_case()
    with pytest.raises(ConfigError, match="query mode"):
        compute_tapvid_metrics(queries, occ, gt, occ, gt, "last")
    with pytest.raises(InputError, match="pred_tracks"):
        compute_tapvid_metrics(queries, occ, gt, occ, gt[:, :, :-1], "first")
    queries[0, 0, 0] = 6
    with pytest.raises(InputError, match="0 <= t < T"):
        compute_tapvid_metrics(queries, occ, gt, occ, gt, "first")


@st.composite
def tapvid_batches(draw):
    batch = draw(st.integers(1, 3))
    n_points = draw(st.integers(1, 5))
    n_frames = draw(st.integers(2, 7))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    gt_occ = rng.random((batch, n_points, n_frames)) < 0.3
    pred_occ = rng.random((batch, n_points, n_frames)) < 0.3
    gt = rng.uniform(0, 64, (batch, n_points, n_frames, 2))
    # offsets of a few px, with many exactly on a threshold to probe the strict comparison
    scale = rng.choice([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0], (batch, n_points, n_frames, 1))
    direction = rng.choice([[1.0, 0.0], [0.0, -1.0], [0.6, 0.8]], (batch, n_points, n_frames))
    pred = gt + scale * direction
    queries = np.zeros((batch, n_points, 3))
    queries[..., 0] = rng.integers(0, n_frames, (batch, n_points))
    return queries, gt_occ, gt, pred_occ, pred


@settings(max_examples=60, deadline=None)
@given(tapvid_batches(), st.sampled_from(["first", "strided"]))
def test_matches_loop_oracle(case, mode) -> None:
    got = compute_tapvid_metrics(*case, query_mode=mode)
    want = loop_metrics(*case, query_mode=mode)
    for key in KEYS:
        np.testing.assert_allclose(got[key], want[key], atol=1e-12, equal_nan=True, err_msg=key)


@settings(max_examples=40, deadline=None)
@given(tapvid_batches(), st.sampled_from(["first", "strided"]), st.integers(0, 2**32 - 1))
def test_properties(case, mode, seed) -> None:
    m = compute_tapvid_metrics(*case, query_mode=mode)
    for key in KEYS:
        values = m[key][~np.isnan(m[key])]
        assert np.all((values >= 0) & (values <= 1)), key
    pts = np.stack([m[f"pts_within_{d}"] for d in TAPVID_THRESHOLDS], axis=1)
    jac = np.stack([m[f"jaccard_{d}"] for d in TAPVID_THRESHOLDS], axis=1)
    np.testing.assert_allclose(m["average_pts_within_thresh"], pts.mean(axis=1), equal_nan=True)
    np.testing.assert_allclose(m["average_jaccard"], jac.mean(axis=1), equal_nan=True)
    finite = ~np.isnan(pts).any(axis=1)
    assert np.all(np.diff(pts[finite], axis=1) >= 0)
    assert np.all(np.diff(jac[finite], axis=1) >= 0)
    # permuting the points of each video changes nothing
    perm = np.random.default_rng(seed).permutation(case[0].shape[1])
    permuted = compute_tapvid_metrics(*(x[:, perm] for x in case), query_mode=mode)
    for key in KEYS:
        np.testing.assert_allclose(permuted[key], m[key], atol=1e-12, equal_nan=True)


# ---------------------------------------------------------------- query sampling and readers


def toy_tracks():
    """4 tracks × 11 frames, (x, y) normalised; track 3 is never visible."""
    n_frames = 11
    t = np.arange(n_frames)
    points = np.stack(
        [np.stack([0.1 * k + 0.01 * t, 0.05 * k + 0.02 * t], axis=-1) for k in range(4)]
    )
    occluded = np.zeros((4, n_frames), bool)
    occluded[1, :6] = True  # first visible at frame 6
    occluded[2, 5] = True  # visible at 0 and 10, not at 5
    occluded[3] = True
    return points, occluded


def test_sample_queries_first() -> None:
    points, occluded = toy_tracks()
    queries, targets, occ, track_index = sample_queries_first(occluded, points)
    assert track_index.tolist() == [0, 1, 2]
    assert queries[:, 0].tolist() == [0, 6, 0]
    np.testing.assert_array_equal(queries[1, 1:], points[1, 6, ::-1])  # (y, x) from (x, y)
    np.testing.assert_array_equal(targets, points[:3])
    np.testing.assert_array_equal(occ, occluded[:3])


def test_sample_queries_strided() -> None:
    points, occluded = toy_tracks()
    queries, targets, occ, track_index = sample_queries_strided(occluded, points)
    # frame 0: tracks 0, 2; frame 5: tracks 0 (track 1 and 2 occluded); frame 10: tracks 0, 1, 2
    assert list(zip(queries[:, 0].astype(int).tolist(), track_index.tolist())) == [
        (0, 0),
        (0, 2),
        (5, 0),
        (10, 0),
        (10, 1),
        (10, 2),
    ]
    for q, k in zip(queries, track_index):
        np.testing.assert_array_equal(q[1:], points[k, int(q[0]), ::-1])
    np.testing.assert_array_equal(targets, points[track_index])
    np.testing.assert_array_equal(occ, occluded[track_index])


def toy_video(n_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    colours = np.linspace(20, 230, n_frames).astype(np.uint8)
    video = np.zeros((n_frames, height, width, 3), np.uint8)
    video[..., 0] = colours[:, None, None]
    video[..., 1] = 255 - colours[:, None, None]
    video[..., 2] = 128
    return video


def test_davis_pickle_reader(tmp_path: Path) -> None:
    points, occluded = toy_tracks()
    video = toy_video(points.shape[1])
    data = {
        "bear": {"video": video, "points": points.astype(np.float32), "occluded": occluded},
        "car": {"video": video[:, :, :32], "points": points[:2], "occluded": occluded[:2]},
    }
    path = tmp_path / "tapvid_davis.pkl"
    path.write_bytes(pickle.dumps(data))

    samples = list(iter_tapvid(path, query_mode="first"))
    assert [s.video_name for s in samples] == ["bear", "car"]
    bear = samples[0]
    assert bear.frames.shape == (11, 256, 256, 3)
    assert bear.frames.dtype == np.uint8
    # a flat frame stays flat under the resize
    np.testing.assert_array_equal(bear.frames[:, 100, 100], video[:, 0, 0])
    # points scaled by (W, H) = (256, 256) of the resized frames, not by 255
    np.testing.assert_allclose(bear.target_points, points.astype(np.float32)[:3] * 256.0)
    assert bear.target_points[0, 10].tolist() == pytest.approx([0.1 * 256, 0.2 * 256], rel=1e-6)
    assert bear.query_points.shape == (3, 3)
    np.testing.assert_allclose(bear.query_points[1], [6, 0.17 * 256, 0.16 * 256], rtol=1e-6)

    strided = next(iter_tapvid(path, query_mode="strided"))
    assert strided.query_points.shape == (6, 3)
    assert strided.occluded.shape == (6, 11)

    native = next(iter_tapvid(path, query_mode="first", resolution=None))
    assert native.frames.shape == (11, 48, 64, 3)
    np.testing.assert_allclose(native.target_points[..., 0], points[:3, :, 0] * 64, rtol=1e-6)
    np.testing.assert_allclose(native.target_points[..., 1], points[:3, :, 1] * 48, rtol=1e-6)


def jpeg_frames(video: np.ndarray) -> np.ndarray:
    encoded = []
    for frame in video:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=95)
        encoded.append(buf.getvalue())
    return np.array(encoded)  # an array of bytes, as generate_tapvid.py stores them


def test_kinetics_shards_reader(tmp_path: Path) -> None:
    points, occluded = toy_tracks()
    example = {
        "video": jpeg_frames(toy_video(11, height=36, width=64)),
        "points": points,
        "occluded": occluded,
    }
    (tmp_path / "0000_of_0010.pkl").write_bytes(pickle.dumps([example, example]))
    (tmp_path / "0001_of_0010.pkl").write_bytes(pickle.dumps([example]))
    (tmp_path / "notes.pkl").write_bytes(pickle.dumps("not a shard"))

    samples = list(iter_tapvid(tmp_path, query_mode="strided"))
    assert [s.video_name for s in samples] == [
        "0000_of_0010-0000",
        "0000_of_0010-0001",
        "0001_of_0010-0000",
    ]
    s = samples[0]
    assert s.frames.shape == (11, 256, 256, 3)
    np.testing.assert_allclose(s.frames[:, 128, 128].astype(int), toy_video(11)[:, 0, 0], atol=3)
    np.testing.assert_allclose(s.target_points, points[s.track_index] * 256.0)
    assert s.query_points[:, 0].tolist() == [0, 0, 5, 10, 10, 10]


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        next(iter_tapvid(tmp_path / "missing.pkl"))
    with pytest.raises(InputError, match="no TAP-Vid-Kinetics shards"):
        next(iter_tapvid(tmp_path))
    points, occluded = toy_tracks()
    with pytest.raises(InputError, match="do not fit"):
        tapvid_sample("v", {"video": toy_video(5), "points": points, "occluded": occluded})
    with pytest.raises(InputError, match="lacks"):
        tapvid_sample("v", {"video": toy_video(5)})
    with pytest.raises(ConfigError, match="query mode"):
        tapvid_sample("v", {}, query_mode="middle")  # type: ignore[arg-type]
