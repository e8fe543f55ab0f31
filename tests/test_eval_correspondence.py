"""PCK for image-pair correspondence and the SPair-71k / PF-PASCAL / AP-10K loaders.

Fixture datasets are written into tmp_path in each benchmark's official layout around real DAVIS
frames from ../shared/data, with real BADJA dog joints and boxes from the DAVIS ground-truth masks.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from ditf_track.errors import InputError
from ditf_track.eval.correspondence import (
    AP10K_PROTOCOL,
    PF_PASCAL_PROTOCOL,
    SPAIR_PROTOCOL,
    PCKAccumulator,
    PCKProtocol,
    bbox_size,
    correct_keypoints,
    load_ap10k_pairs,
    load_pf_pascal_pairs,
    load_spair_pairs,
    pck_correspondence,
    pck_key,
)

BADJA_SCALE = 480 / 1080  # BADJA joints are (row, col) at 1080p; the DAVIS frames here are 480p


# ---------------------------------------------------------------------------------------------
# Real annotations from ../shared/data


def badja_joints(shared_data: Path, frame: str) -> tuple[np.ndarray, np.ndarray]:
    """BADJA dog joints of one frame: (37, 2) (y, x) at 480p, rounded to ints; (37,) visible."""
    entries = json.loads((shared_data / "points/badja/dog.json").read_text())
    entry = next(e for e in entries if e["image_path"].endswith(f"/{frame}.jpg"))
    yx = np.rint(np.asarray(entry["joints"], dtype=np.float64) * BADJA_SCALE)
    return yx, np.asarray(entry["visibility"], dtype=bool)


def mask_box_xyxy(shared_data: Path, seq: str, frame: str) -> list[int]:
    """Tight box [x1, y1, x2, y2] of the DAVIS ground-truth mask (SPair's box format)."""
    mask = np.asarray(Image.open(shared_data / f"davis/Annotations/480p/{seq}/{frame}.png")) > 0
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def mask_extreme_points(shared_data: Path, seq: str, frame: str) -> np.ndarray:
    """Top, bottom, left, right-most mask pixels and the rounded centroid: (5, 2) (y, x)."""
    mask = np.asarray(Image.open(shared_data / f"davis/Annotations/480p/{seq}/{frame}.png")) > 0
    ys, xs = np.nonzero(mask)
    picks = [np.argmin(ys), np.argmax(ys), np.argmin(xs), np.argmax(xs)]
    pts = [(ys[i], xs[i]) for i in picks] + [(round(ys.mean()), round(xs.mean()))]
    return np.asarray(pts, dtype=np.float64)


def davis_frame(shared_data: Path, seq: str, frame: str) -> Path:
    return shared_data / f"davis/JPEGImages/480p/{seq}/{frame}.jpg"


# ---------------------------------------------------------------------------------------------
# Hand-checkable metric values


def test_perfect_far_and_empty() -> None:
    gt = np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    alphas = (0.01, 0.05, 0.1)
    np.testing.assert_array_equal(pck_correspondence(gt, gt, 100.0, alphas), [1.0, 1.0, 1.0])
    far = gt + 1000.0
    np.testing.assert_array_equal(pck_correspondence(far, gt, 100.0, alphas), [0.0, 0.0, 0.0])
    empty = np.zeros((0, 2))
    np.testing.assert_array_equal(pck_correspondence(empty, empty, 100.0, alphas), [0, 0, 0])
    none_valid = np.zeros(3, dtype=bool)
    np.testing.assert_array_equal(
        pck_correspondence(gt, gt, 100.0, alphas, valid=none_valid), [0, 0, 0]
    )


def test_boundary_inclusive_vs_strict() -> None:
    # size 50, α = 0.1 → 5 px; a (3, 4) offset is exactly 5 px away.
    gt = np.array([[100.0, 200.0]])
    pred = gt + np.array([[3.0, 4.0]])
    assert correct_keypoints(pred, gt, 50.0, (0.1,), inclusive=True).tolist() == [[True]]
    assert correct_keypoints(pred, gt, 50.0, (0.1,), inclusive=False).tolist() == [[False]]
    # 0.05 · 50 = 2.5 px: wrong under both rules; 0.15 · 50 = 7.5 px: right under both.
    for inclusive in (True, False):
        got = correct_keypoints(pred, gt, 50.0, (0.05, 0.15), inclusive=inclusive)
        assert got[:, 0].tolist() == [False, True]


def test_half_correct_and_valid_mask() -> None:
    gt = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    pred = np.array([[0.0, 9.0], [0.0, 11.0], [6.0, 8.0], [100.0, 100.0]])  # 9, 11, 10, far
    # size 100, α = 0.1 → 10 px: 9 and 10 are in, 11 and far are out.
    assert pck_correspondence(pred, gt, 100.0, (0.1,))[0] == 0.5
    # Dropping the far point leaves 2 of 3.
    valid = np.array([True, True, True, False])
    assert pck_correspondence(pred, gt, 100.0, (0.1,), valid=valid)[0] == pytest.approx(2 / 3)


def test_bbox_size_no_plus_one() -> None:
    # (y0, x0, y1, x1): height 50, width 30 → 50 (SPair [x1, y1, x2, y2] = [20, 10, 50, 60]).
    assert bbox_size((10, 20, 60, 50)) == 50.0
    assert bbox_size((0, 0, 7, 12)) == 12.0


def test_shape_mismatch_and_bad_size() -> None:
    with pytest.raises(ValueError, match="same shape"):
        correct_keypoints(np.zeros((2, 2)), np.zeros((3, 2)), 10.0, (0.1,))
    with pytest.raises(ValueError, match="positive"):
        correct_keypoints(np.zeros((2, 2)), np.zeros((2, 2)), 0.0, (0.1,))


def test_accumulator_by_hand() -> None:
    acc = PCKAccumulator(SPAIR_PROTOCOL)
    size = 100.0  # α = 0.10 → 10 px
    zero = np.zeros((1, 2))
    # Category "a": pair 1 has 2 of 2 correct, pair 2 has 1 of 4 correct.
    acc.add_points("a", np.array([[0.0, 3.0], [4.0, 0.0]]), np.zeros((2, 2)), size)
    acc.add_points("a", np.array([[0, 5.0], [0, 20], [0, 30], [0, 40]]), np.zeros((4, 2)), size)
    # Category "b": 0 of 1 correct.
    acc.add_points("b", zero + 50.0, zero, size)
    out = acc.result()
    assert out["num_pairs"] == 3
    assert out["num_points"] == 7
    assert out["num_categories"] == 2
    assert out[pck_key("pck_per_point", 0.10)] == pytest.approx(3 / 7)
    assert out["pck_per_image@0.10"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert out["per_category"]["a"]["pck_per_point@0.10"] == pytest.approx(0.5)
    assert out["per_category"]["a"]["pck_per_image@0.10"] == pytest.approx(0.625)
    assert out["per_category"]["b"]["pck_per_point@0.10"] == 0.0
    assert out["pck_per_point_category_mean@0.10"] == pytest.approx(0.25)
    assert out["pck_per_image_category_mean@0.10"] == pytest.approx(0.3125)
    # At α = 0.01 (1 px) no prediction is close enough.
    assert out["pck_per_point@0.01"] == 0.0
    assert out["distance_rule"] == "distance / size <= alpha"
    rows = acc.category_rows()
    assert [r["category"] for r in rows] == ["a", "b"]
    assert rows[0]["num_pairs"] == 2
    assert rows[0]["num_points"] == 6
    json.dumps(out)  # the runner writes it as metrics.json


def test_accumulator_skips_pairs_without_points_in_per_image() -> None:
    acc = PCKAccumulator(AP10K_PROTOCOL)
    gt = np.zeros((2, 2))
    acc.add_points("cat", gt, gt, 10.0)
    acc.add_points("cat", gt + 99, gt, 10.0, valid=np.zeros(2, dtype=bool))
    out = acc.result()
    assert out["num_pairs"] == 2
    assert out["num_pairs_without_points"] == 1
    assert out["pck_per_image@0.10"] == 1.0
    assert out["pck_per_point@0.10"] == 1.0


def test_empty_accumulator_is_a_user_error() -> None:
    with pytest.raises(InputError, match="no spair-71k pairs"):
        PCKAccumulator(SPAIR_PROTOCOL).result()


def test_protocols() -> None:
    assert SPAIR_PROTOCOL.alphas == (0.01, 0.05, 0.10, 0.15)
    assert SPAIR_PROTOCOL.threshold_reference == "target_bbox"
    assert SPAIR_PROTOCOL.inclusive
    assert PF_PASCAL_PROTOCOL.alphas == (0.05, 0.10, 0.15)
    assert PF_PASCAL_PROTOCOL.threshold_reference == "target_image"
    assert not PF_PASCAL_PROTOCOL.inclusive
    assert not AP10K_PROTOCOL.inclusive
    assert AP10K_PROTOCOL.threshold_reference == "target_bbox"


# ---------------------------------------------------------------------------------------------
# Properties

points = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        arrays(np.float64, (n, 2), elements=st.floats(-500, 500)),
        arrays(np.float64, (n, 2), elements=st.floats(-500, 500)),
    )
)
sizes = st.floats(1.0, 1000.0)
alpha_lists = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6)


@given(points, sizes, alpha_lists, st.booleans())
@settings(max_examples=150, deadline=None)
def test_pck_monotonic_in_alpha(
    pts: tuple[np.ndarray, np.ndarray], size: float, alphas: list[float], inclusive: bool
) -> None:
    alphas = sorted(alphas)
    pred, gt = pts
    values = pck_correspondence(pred, gt, size, alphas, inclusive=inclusive)
    assert np.all(np.diff(values) >= 0)


@given(
    st.integers(1, 6),
    st.integers(1, 8),
    st.integers(0, 2**31 - 1),
)
@settings(max_examples=60, deadline=None)
def test_per_point_equals_per_image_with_equal_counts(
    num_pairs: int, num_points: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    acc = PCKAccumulator(SPAIR_PROTOCOL)
    for _ in range(num_pairs):
        gt = rng.uniform(0, 300, (num_points, 2))
        pred = gt + rng.normal(0, 15, (num_points, 2))
        acc.add_points(str(rng.integers(3)), pred, gt, float(rng.uniform(50, 300)))
    out = acc.result()
    for alpha in SPAIR_PROTOCOL.alphas:
        assert out[pck_key("pck_per_point", alpha)] == pytest.approx(
            out[pck_key("pck_per_image", alpha)]
        )


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_permutation_invariance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(5):
        n = int(rng.integers(1, 9))
        gt = rng.uniform(0, 300, (n, 2))
        pairs.append((f"c{i % 2}", gt + rng.normal(0, 20, (n, 2)), gt, float(rng.uniform(50, 300))))

    def run(order: list[int], shuffle_points: bool) -> dict[str, object]:
        acc = PCKAccumulator(PF_PASCAL_PROTOCOL)
        for i in order:
            cat, pred, gt, size = pairs[i]
            perm = rng.permutation(len(gt)) if shuffle_points else np.arange(len(gt))
            acc.add_points(cat, pred[perm], gt[perm], size)
        return acc.result()

    base = run(list(range(5)), False)
    shuffled = run([int(i) for i in rng.permutation(5)], True)
    for key, value in base.items():
        if key.startswith("pck_"):
            assert shuffled[key] == pytest.approx(value)


# ---------------------------------------------------------------------------------------------
# Fixture datasets in the official formats


def _copy_resized(src: Path, dst: Path, width: int | None = None) -> tuple[int, int]:
    """Copy a real frame (optionally resized to ``width``); returns its (H, W)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if width is None:
        shutil.copyfile(src, dst)
        with Image.open(dst) as im:
            return im.size[1], im.size[0]
    with Image.open(src) as im:
        height = round(im.size[1] * width / im.size[0])
        im.resize((width, height), Image.Resampling.BILINEAR).save(dst, quality=90)
    return height, width


def _spair_pair_json(
    pair_id: int,
    category: str,
    src: tuple[str, tuple[int, int], list[int], np.ndarray],
    trg: tuple[str, tuple[int, int], list[int], np.ndarray],
) -> dict[str, object]:
    """A pair annotation with SPair-71k's field names (x, y integer keypoints)."""
    (src_name, src_hw, src_box, src_yx), (trg_name, trg_hw, trg_box, trg_yx) = src, trg
    return {
        "pair_id": pair_id,
        "filename": f"{pair_id:06d}-{src_name[:-4]}-{trg_name[:-4]}:{category}",
        "src_imname": src_name,
        "trg_imname": trg_name,
        "src_imsize": [src_hw[1], src_hw[0], 3],
        "trg_imsize": [trg_hw[1], trg_hw[0], 3],
        "src_bndbox": src_box,
        "trg_bndbox": trg_box,
        "category": category,
        "src_pose": "Unspecified",
        "trg_pose": "Unspecified",
        "src_trn": 0,
        "trg_trn": 0,
        "src_occ": 0,
        "trg_occ": 0,
        "src_kps": [[int(x), int(y)] for y, x in src_yx],
        "trg_kps": [[int(x), int(y)] for y, x in trg_yx],
        "kps_ids": [str(i) for i in range(len(src_yx))],
        "viewpoint_variation": 0,
        "scale_variation": 0,
        "truncation": 0,
        "occlusion": 0,
        "mirror": 0,
    }


@pytest.fixture
def spair_root(tmp_path: Path, shared_data: Path) -> tuple[Path, list[dict[str, object]]]:
    root = tmp_path / "SPair-71k"
    written = []
    specs = []
    # dog: real BADJA joints visible in both frames.
    for pid, (a, b) in enumerate([("00003", "00008"), ("00008", "00013")]):
        src_yx, src_vis = badja_joints(shared_data, a)
        trg_yx, trg_vis = badja_joints(shared_data, b)
        both = src_vis & trg_vis
        specs.append((pid, "dog", "dog", a, b, src_yx[both], trg_yx[both]))
    # car: mask extreme points of car-shadow.
    for pid, (a, b) in enumerate([("00000", "00010"), ("00010", "00020")], start=2):
        src_yx = mask_extreme_points(shared_data, "car-shadow", a)
        trg_yx = mask_extreme_points(shared_data, "car-shadow", b)
        specs.append((pid, "car", "car-shadow", a, b, src_yx, trg_yx))
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    for pid, cat, seq, a, b, src_yx, trg_yx in specs:
        sides = []
        for frame, pts in ((a, src_yx), (b, trg_yx)):
            name = f"{seq}_{frame}.jpg"
            hw = _copy_resized(
                davis_frame(shared_data, seq, frame), root / "JPEGImages" / cat / name
            )
            sides.append((name, hw, mask_box_xyxy(shared_data, seq, frame), pts))
        data = _spair_pair_json(pid, cat, sides[0], sides[1])
        path = root / "PairAnnotation" / "test" / f"{data['filename']}.json"
        path.write_text(json.dumps(data))
        written.append(data)
    return root, written


def test_spair_loader_round_trip(spair_root: tuple[Path, list[dict[str, object]]]) -> None:
    root, written = spair_root
    pairs = load_spair_pairs(root, "test")
    assert len(pairs) == 4
    assert sorted({p.category for p in pairs}) == ["car", "dog"]
    by_id = {p.pair_id: p for p in pairs}
    for data in written:
        pair = by_id[str(data["filename"])]
        src_xy = np.asarray(data["src_kps"], dtype=np.float64)
        trg_xy = np.asarray(data["trg_kps"], dtype=np.float64)
        np.testing.assert_array_equal(pair.source_points, src_xy[:, ::-1])
        np.testing.assert_array_equal(pair.target_points, trg_xy[:, ::-1])
        x1, y1, x2, y2 = np.asarray(data["trg_bndbox"], dtype=np.float64)
        assert pair.target_bbox == (y1, x1, y2, x2)
        assert pair.threshold_size == max(x2 - x1, y2 - y1)
        assert pair.target_hw == (480, 854)
        assert pair.valid.all()
        assert pair.source_image.is_file()
        assert pair.target_image.is_file()
        with Image.open(pair.target_image) as im:
            assert (im.size[1], im.size[0]) == pair.target_hw
        # Every keypoint lies inside its box: the (y, x) order survived the round trip.
        y0, x0, y1b, x1b = pair.target_bbox
        assert np.all((pair.target_points[:, 0] >= y0 - 3) & (pair.target_points[:, 0] <= y1b + 3))
        assert np.all((pair.target_points[:, 1] >= x0 - 3) & (pair.target_points[:, 1] <= x1b + 3))
    assert len(load_spair_pairs(root, "test", categories=["dog"])) == 2


def test_spair_pck_on_fixture(spair_root: tuple[Path, list[dict[str, object]]]) -> None:
    root, _ = spair_root
    pairs = load_spair_pairs(root)
    acc = PCKAccumulator(SPAIR_PROTOCOL)
    for pair in pairs:
        acc.add(pair, pair.target_points)
    out = acc.result()
    assert all(out[pck_key("pck_per_point", a)] == 1.0 for a in SPAIR_PROTOCOL.alphas)

    # Zero-motion baseline (predict the source location): the expected value by hand.
    acc = PCKAccumulator(SPAIR_PROTOCOL)
    expect_correct = expect_total = 0
    for pair in pairs:
        acc.add(pair, pair.source_points)
        d = np.hypot(*(pair.source_points - pair.target_points).T)
        expect_correct += int(np.sum(d / pair.threshold_size <= 0.10))
        expect_total += len(d)
    out = acc.result()
    assert out["pck_per_point@0.10"] == pytest.approx(expect_correct / expect_total)
    assert 0.0 < out["pck_per_point@0.15"] < 1.0  # a real dog moves; not everything is "correct"


def test_spair_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="split"):
        load_spair_pairs(tmp_path, "train")
    with pytest.raises(InputError, match="pass the SPair-71k folder"):
        load_spair_pairs(tmp_path, "test")
    bad = tmp_path / "PairAnnotation" / "test"
    bad.mkdir(parents=True)
    (bad / "x.json").write_text(json.dumps({"category": "dog"}))
    with pytest.raises(InputError, match="lacks or mangles"):
        load_spair_pairs(tmp_path, "test")


@pytest.fixture
def pf_pascal_root(tmp_path: Path, shared_data: Path) -> tuple[Path, list[list[str]]]:
    root = tmp_path / "PF-dataset-PASCAL"
    rows = []
    specs = [
        ("dog", 12, "dog", "00003", "00008"),
        ("dog", 12, "dog", "00013", "00018"),
        ("car", 7, "car-shadow", "00000", "00010"),
    ]
    for _cat, class_id, seq, a, b in specs:
        src_name, trg_name = f"{seq}_{a}.jpg", f"{seq}_{b}.jpg"
        _copy_resized(davis_frame(shared_data, seq, a), root / "JPEGImages" / src_name)
        # The target is resized to 640 px wide: the threshold must follow the target's size.
        _copy_resized(davis_frame(shared_data, seq, b), root / "JPEGImages" / trg_name, 640)
        if seq == "dog":
            src_yx, src_vis = badja_joints(shared_data, a)
            trg_yx, trg_vis = badja_joints(shared_data, b)
            both = src_vis & trg_vis
            src_yx, trg_yx = src_yx[both], trg_yx[both]
        else:
            src_yx = mask_extreme_points(shared_data, seq, a)
            trg_yx = mask_extreme_points(shared_data, seq, b)
        trg_yx = trg_yx * 640 / 854
        rows.append(
            [
                f"PF-dataset-PASCAL/JPEGImages/{src_name}",
                f"PF-dataset-PASCAL/JPEGImages/{trg_name}",
                str(class_id),
                ";".join(f"{v:g}" for v in src_yx[:, 1]),
                ";".join(f"{v:g}" for v in src_yx[:, 0]),
                ";".join(f"{v:.4f}" for v in trg_yx[:, 1]),
                ";".join(f"{v:.4f}" for v in trg_yx[:, 0]),
            ]
        )
    with (root / "test_pairs_pf_pascal.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source_image", "target_image", "class", "XA", "YA", "XB", "YB"])
        writer.writerows(rows)
    return root, rows


def test_pf_pascal_loader_round_trip(pf_pascal_root: tuple[Path, list[list[str]]]) -> None:
    root, rows = pf_pascal_root
    pairs = load_pf_pascal_pairs(root)
    assert [p.category for p in pairs] == ["dog", "dog", "car"]
    for pair, row in zip(pairs, rows):
        xa, ya, xb, yb = ([float(v) for v in cell.split(";")] for cell in row[3:7])
        np.testing.assert_array_equal(pair.source_points, np.stack([ya, xa], axis=1))
        np.testing.assert_array_equal(pair.target_points, np.stack([yb, xb], axis=1))
        assert pair.source_hw == (480, 854)
        assert pair.target_hw == (360, 640)
        assert pair.threshold_size == 640.0  # max(H, W) of the target image
        assert pair.target_bbox is None
        assert pair.valid.all()
        assert pair.source_image.name == Path(row[0]).name
    assert pairs[0].pair_id == "0:dog_00003-dog_00008"
    assert len(load_pf_pascal_pairs(root, categories=["car"])) == 1
    acc = PCKAccumulator(PF_PASCAL_PROTOCOL)
    for pair in pairs:
        acc.add(pair, pair.target_points + np.array([0.0, 63.99]))  # < 0.10 · 640 = 64
    out = acc.result()
    assert out["pck_per_point@0.10"] == 1.0
    assert out["pck_per_point@0.05"] == 0.0


def test_pf_pascal_bad_inputs(pf_pascal_root: tuple[Path, list[list[str]]], tmp_path: Path) -> None:
    root, rows = pf_pascal_root
    with pytest.raises(InputError, match="pair list not found"):
        load_pf_pascal_pairs(root, split="val")
    bad = tmp_path / "bad.csv"
    bad.write_text("source_image,target_image,class,flip\na.jpg,b.jpg,1,0\n")
    with pytest.raises(InputError, match="training list has no keypoints"):
        load_pf_pascal_pairs(root, csv_path=bad)
    bad.write_text("h\n" + ",".join([*rows[0][:2], "21", *rows[0][3:]]) + "\n")
    with pytest.raises(InputError, match=r"ids are 1\.\.20"):
        load_pf_pascal_pairs(root, csv_path=bad)
    bad.write_text("h\n" + ",".join(["PF-dataset-PASCAL/JPEGImages/nope.jpg", *rows[0][1:]]) + "\n")
    with pytest.raises(InputError, match=r"nope\.jpg"):
        load_pf_pascal_pairs(root, csv_path=bad)


AP10K_ID = {"00003": 3, "00008": 8, "00013": 13, "00018": 18, "00000": 100, "00010": 110}


def _ap10k_image(
    root: Path, shared_data: Path, family: str, species: str, seq: str, frame: str
) -> tuple[Path, dict[str, object]]:
    """One AP-10K image annotation (COCO annotation merged with its image entry) and its JPEG."""
    ann_id = AP10K_ID[frame] + (1000 if seq != "dog" else 0)
    stem = f"{ann_id:012d}"
    rel = Path(family) / species / f"{stem}.json"
    _copy_resized(
        davis_frame(shared_data, seq, frame), root / "JPEGImages" / rel.with_suffix(".jpg")
    )
    if seq == "dog":
        yx, vis = badja_joints(shared_data, frame)
        dog_frames = ("00003", "00008", "00013", "00018")
        seen = np.any([badja_joints(shared_data, f)[1] for f in dog_frames], axis=0)
        used = np.flatnonzero(seen)
        yx, vis = yx[used[:17]], vis[used[:17]]
    else:
        yx = np.zeros((17, 2))
        vis = np.zeros(17, dtype=bool)
        yx[:5], vis[:5] = mask_extreme_points(shared_data, seq, frame), True
    kps: list[float] = []
    for (y, x), v in zip(yx, vis):
        kps += [float(x), float(y), 2] if v else [0, 0, 0]
    x1, y1, x2, y2 = mask_box_xyxy(shared_data, seq, frame)
    ann = {
        "id": ann_id,
        "image_id": ann_id,
        "category_id": 1,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "keypoints": kps,
        "num_keypoints": int(vis.sum()),
        "iscrowd": 0,
        "file_name": f"{stem}.jpg",
        "width": 854,
        "height": 480,
        "name": species,
        "supercategory": family,
    }
    path = root / "ImageAnnotation" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ann))
    return path, ann


@pytest.fixture
def ap10k_root(tmp_path: Path, shared_data: Path) -> tuple[Path, dict[str, dict[str, object]]]:
    # Species labels only exercise the layout (the images are DAVIS dog/blackswan frames).
    root = tmp_path / "ap-10k"
    images = {
        "dog3": _ap10k_image(root, shared_data, "Canidae", "dog", "dog", "00003"),
        "dog8": _ap10k_image(root, shared_data, "Canidae", "dog", "dog", "00008"),
        "fox13": _ap10k_image(root, shared_data, "Canidae", "fox", "dog", "00013"),
        "fox18": _ap10k_image(root, shared_data, "Canidae", "fox", "dog", "00018"),
        "swan0": _ap10k_image(root, shared_data, "Anatidae", "swan", "blackswan", "00000"),
        "swan10": _ap10k_image(root, shared_data, "Anatidae", "swan", "blackswan", "00010"),
    }
    splits = {
        "test": [("dog3", "dog8", "dog"), ("fox13", "fox18", "fox"), ("swan0", "swan10", "swan")],
        "test_cross_species": [("dog8", "fox13", "Canidae")],
        "test_cross_family": [("dog3", "swan10", "all")],
    }
    for split, pairs in splits.items():
        folder = root / "PairAnnotation" / split
        folder.mkdir(parents=True)
        for a, b, cat in pairs:
            (pa, _), (pb, _) = images[a], images[b]
            # GeoAware-SC writes paths relative to its checkout.
            data = {
                "src_json_path": f"data/ap-10k/{pa.relative_to(root).as_posix()}",
                "trg_json_path": f"data/ap-10k/{pb.relative_to(root).as_posix()}",
            }
            (folder / f"{pa.stem}-{pb.stem}:{cat}.json").write_text(json.dumps(data, indent=4))
    return root, {k: v[1] for k, v in images.items()}


def test_ap10k_loader_round_trip(ap10k_root: tuple[Path, dict[str, dict[str, object]]]) -> None:
    root, anns = ap10k_root
    intra = load_ap10k_pairs(root, "intra-species")
    assert [p.category for p in intra] == ["dog", "fox", "swan"]
    dog = intra[0]
    src_k = np.asarray(anns["dog3"]["keypoints"], dtype=np.float64).reshape(17, 3)
    trg_k = np.asarray(anns["dog8"]["keypoints"], dtype=np.float64).reshape(17, 3)
    np.testing.assert_array_equal(dog.source_points, src_k[:, [1, 0]])
    np.testing.assert_array_equal(dog.target_points, trg_k[:, [1, 0]])
    np.testing.assert_array_equal(dog.valid, (src_k[:, 2] > 0) & (trg_k[:, 2] > 0))
    assert 0 < dog.num_valid < 17
    x, y, w, h = np.asarray(anns["dog8"]["bbox"], dtype=np.float64)
    assert dog.target_bbox == (y, x, y + h, x + w)
    assert dog.threshold_size == max(w, h)
    assert dog.pair_id == "000000000003-000000000008:dog"
    assert dog.source_image == root / "JPEGImages/Canidae/dog/000000000003.jpg"
    assert dog.source_image.is_file()
    assert dog.target_hw == (480, 854)

    cross = load_ap10k_pairs(root, "cross-species")
    assert [
        (p.category, p.source_image.parent.name, p.target_image.parent.name) for p in cross
    ] == [("Canidae", "dog", "fox")]
    family = load_ap10k_pairs(root, "cross-family")
    assert [p.category for p in family] == ["all"]
    dog_visible = np.asarray(anns["dog3"]["keypoints"]).reshape(17, 3)[:, 2] > 0
    assert family[0].num_valid == int(dog_visible[:5].sum())  # the swan has only points 0-4

    acc = PCKAccumulator(AP10K_PROTOCOL)
    for pair in intra:
        acc.add(pair, pair.target_points)
    assert acc.result()["pck_per_image@0.10"] == 1.0


def test_ap10k_bad_inputs(ap10k_root: tuple[Path, dict[str, dict[str, object]]]) -> None:
    root, _ = ap10k_root
    with pytest.raises(InputError, match="subset"):
        load_ap10k_pairs(root, "cross-genus")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="prepare_ap10k"):
        load_ap10k_pairs(root, split="val")
    bad = root / "PairAnnotation" / "test" / "a-b:dog.json"
    bad.write_text(json.dumps({"src_json_path": "x/y.json", "trg_json_path": "x/y.json"}))
    with pytest.raises(InputError, match="not under ImageAnnotation"):
        load_ap10k_pairs(root)


def test_custom_protocol_threshold_is_respected() -> None:
    proto = PCKProtocol("custom", (0.2,), "target_bbox", inclusive=False, source="test")
    acc = PCKAccumulator(proto)
    acc.add_points("x", np.array([[0.0, 2.0]]), np.zeros((1, 2)), 10.0)  # 2 < 0.2·10 is False
    assert acc.result()["pck_per_point@0.20"] == 0.0
    assert not math.isnan(acc.result()["pck_per_image_category_mean@0.20"])
