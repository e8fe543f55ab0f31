"""HPatches homography accuracy: loader, MNN, homography fit, corner error, accumulator.

The fixture dataset is written into tmp_path in the official ``hpatches-sequences-release``
layout: real frames from ../shared/data (a DAVIS frame, a VSPW frame) warped by known
homographies with ``cv2.warpPerspective`` (viewpoint sequence) or changed photometrically with an
identity homography (illumination sequence).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from ditf_track.errors import InputError
from ditf_track.eval.hpatches import (
    HIGH_RESOLUTION_SEQUENCES,
    MAX_KEYPOINTS,
    NUM_SEQUENCES,
    NUM_SEQUENCES_WITHOUT_HIGH_RES,
    HomographyAccuracy,
    HPatchesSequence,
    corner_error,
    deduplicate_keypoints,
    estimate_homography,
    evaluate_homography_pair,
    image_corners_xy,
    load_hpatches,
    select_top_keypoints,
)


def _viewpoint_homography(k: int, h: int, w: int) -> np.ndarray:
    """A mild, growing viewpoint change for image k (2..6): rotation, scale, perspective."""
    step = k - 1
    angle = math.radians(3.0 * step)
    scale = 1.0 - 0.03 * step
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    centre = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]], dtype=np.float64)
    back = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], dtype=np.float64)
    core = np.array([[c, -s, 4.0 * step], [s, c, -3.0 * step], [2e-5 * step, -1e-5 * step, 1.0]])
    return centre @ core @ back


def _write_sequence(folder: Path, image_bgr: np.ndarray, kind: str) -> list[np.ndarray]:
    folder.mkdir(parents=True)
    h, w = image_bgr.shape[:2]
    cv2.imwrite(str(folder / "1.ppm"), image_bgr)
    homographies = []
    for k in range(2, 7):
        if kind == "v":
            H = _viewpoint_homography(k, h, w)
            out = cv2.warpPerspective(image_bgr, H, (w, h), flags=cv2.INTER_LINEAR)
        else:
            H = np.eye(3)
            gain, gamma = 1.0 - 0.12 * (k - 1), 1.0 + 0.15 * (k - 1)
            norm = (image_bgr.astype(np.float64) / 255.0) ** gamma * gain
            out = np.clip(norm * 255.0, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{k}.ppm"), out)
        np.savetxt(folder / f"H_1_{k}", H, fmt="%.17g")
        homographies.append(H)
    return homographies


@pytest.fixture(scope="module")
def hpatches_root(
    tmp_path_factory: pytest.TempPathFactory, shared_data: Path
) -> tuple[Path, dict[str, list[np.ndarray]]]:
    root = tmp_path_factory.mktemp("hp") / "hpatches-sequences-release"
    dog = np.asarray(cv2.imread(str(shared_data / "davis/JPEGImages/480p/dog/00000.jpg")))
    vspw_path = shared_data / "vspw_firstframe/JPEGImages/1001_3iEIq5HBY1s/00002058.jpg"
    vspw = np.asarray(cv2.imread(str(vspw_path)))
    vspw = cv2.resize(vspw, (640, 360), interpolation=cv2.INTER_AREA)
    written = {
        "v_davisdog": _write_sequence(root / "v_davisdog", dog, "v"),
        "i_vspwscene": _write_sequence(root / "i_vspwscene", vspw, "i"),
    }
    return root, written


def _load(root: Path) -> list[HPatchesSequence]:
    with pytest.warns(UserWarning, match="high-resolution"):
        return load_hpatches(root)


# ---------------------------------------------------------------------------------------------
# Loader


def test_loader_round_trip(hpatches_root: tuple[Path, dict[str, list[np.ndarray]]]) -> None:
    root, written = hpatches_root
    seqs = _load(root)
    assert [s.name for s in seqs] == ["i_vspwscene", "v_davisdog"]
    assert [s.kind for s in seqs] == ["illumination", "viewpoint"]
    for seq in seqs:
        for k in range(2, 7):
            np.testing.assert_array_equal(seq.homography(k), written[seq.name][k - 2])
        img = seq.read_image(1)
        assert img.dtype == np.uint8
        assert img.shape[:2] == seq.image_hw(1)
    assert seqs[1].image_hw(1) == (480, 854)
    assert seqs[0].image_hw(3) == (360, 640)


def test_high_resolution_list_and_exclusion(tmp_path: Path) -> None:
    # D2-Net hpatches_sequences/download.sh: the 8 sequences with images above 1600x1200.
    assert HIGH_RESOLUTION_SEQUENCES == (
        "i_contruction",
        "i_crownnight",
        "i_dc",
        "i_pencils",
        "i_whitebuilding",
        "v_artisans",
        "v_astronautis",
        "v_talent",
    )
    assert NUM_SEQUENCES - len(HIGH_RESOLUTION_SEQUENCES) == NUM_SEQUENCES_WITHOUT_HIGH_RES
    tiny = np.full((8, 10, 3), 127, np.uint8)
    for name in (*HIGH_RESOLUTION_SEQUENCES, "i_ajuntament", "v_boat"):
        _write_sequence(tmp_path / name, tiny, name[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all 8 present: no warning
        assert len(load_hpatches(tmp_path)) == 10
    kept = load_hpatches(tmp_path, exclude_high_res=True)
    assert [s.name for s in kept] == ["i_ajuntament", "v_boat"]


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_hpatches(tmp_path / "missing")
    with pytest.raises(InputError, match="no HPatches sequences"):
        load_hpatches(tmp_path)
    (tmp_path / "graffiti").mkdir()
    with pytest.raises(InputError, match="start with i_ or v_"):
        load_hpatches(tmp_path)
    (tmp_path / "graffiti").rmdir()
    _write_sequence(tmp_path / "v_x", np.zeros((4, 4, 3), np.uint8), "v")
    (tmp_path / "v_x" / "H_1_4").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(InputError, match="H_1_4"):
        load_hpatches(tmp_path)
    (tmp_path / "v_x" / "5.ppm").unlink()
    with pytest.raises(InputError, match=r"5\.ppm"):
        load_hpatches(tmp_path)


# ---------------------------------------------------------------------------------------------
# Matching and homography pieces, by hand


def test_corner_error_by_hand() -> None:
    h, w = 4, 5
    np.testing.assert_array_equal(image_corners_xy(h, w), [[0, 0], [4, 0], [0, 3], [4, 3]])
    shift = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])  # every corner moves by (3, 4): 5 px
    assert corner_error(shift, np.eye(3), h, w) == pytest.approx(5.0)
    # Doubling about the origin moves the corners by 0, 4, 3 and 5 px: mean 3.
    double = np.diag([2.0, 2.0, 1.0])
    assert corner_error(double, np.eye(3), h, w) == pytest.approx(3.0)
    assert corner_error(np.eye(3), np.eye(3), h, w) == 0.0
    assert corner_error(None, np.eye(3), h, w) == math.inf
    # A homography sending corner (4, 0) to infinity (w' = 1 - x/4 = 0) is a failure, not a NaN.
    to_infinity = np.array([[1.0, 0, 0], [0, 1, 0], [-0.25, 0, 1]])
    assert corner_error(to_infinity, np.eye(3), h, w) == math.inf


def test_estimate_homography_needs_four_matches() -> None:
    kp = np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 0.0]])
    assert estimate_homography(kp, kp, np.array([[0, 0], [1, 1], [2, 2]])) is None
    with pytest.raises(ValueError, match="LMEDS or RANSAC"):
        estimate_homography(kp, kp, np.zeros((0, 2)), method="MAGSAC")  # type: ignore[arg-type]


def test_estimate_homography_takes_yx() -> None:
    # A pure x-shift of +7: with (y, x) input the estimate must move x, not y.
    kp_a = np.array([[0.0, 0.0], [0.0, 50.0], [40.0, 0.0], [40.0, 50.0], [20.0, 25.0]])
    kp_b = kp_a + np.array([0.0, 7.0])
    matches = np.stack([np.arange(5), np.arange(5)], axis=1)
    H = estimate_homography(kp_a, kp_b, matches)
    assert H is not None
    np.testing.assert_allclose(H / H[2, 2], [[1, 0, 7], [0, 1, 0], [0, 0, 1]], atol=1e-6)


def test_deduplicate_and_top_k() -> None:
    kp = np.array([[5.0, 5.0], [1.0, 2.0], [5.0, 5.0], [0.0, 9.0]])
    desc = np.arange(8, dtype=np.float64).reshape(4, 2)
    kp_u, desc_u = deduplicate_keypoints(kp, desc)
    np.testing.assert_array_equal(kp_u, [[5, 5], [1, 2], [0, 9]])
    np.testing.assert_array_equal(desc_u, desc[[0, 1, 3]])
    np.testing.assert_array_equal(
        select_top_keypoints(kp, np.array([0.1, 0.9, 0.5, 0.2]), 2), [1, 2]
    )
    assert len(select_top_keypoints(kp, np.zeros(4))) == 4


def test_accumulator_by_hand() -> None:
    acc = HomographyAccuracy()
    for seq, k, err in [
        ("i_a", 2, 0.5),
        ("i_a", 3, 2.0),
        ("v_b", 2, 3.0),  # exactly 3 px counts at ε = 3 (DIFT: error <= ε)
        ("v_b", 3, 10.0),
        ("v_c", 2, math.inf),  # no homography
    ]:
        acc.add(seq, k, err)
    out = acc.result()
    assert out["all"] == {1: pytest.approx(1 / 5), 3: pytest.approx(3 / 5), 5: pytest.approx(3 / 5)}
    assert out["illumination"] == {1: 0.5, 3: 1.0, 5: 1.0}
    assert out["viewpoint"] == {1: 0.0, 3: pytest.approx(1 / 3), 5: pytest.approx(1 / 3)}
    assert out["method"] == "LMEDS"
    assert out["num_pairs"] == {"all": 5, "illumination": 2, "viewpoint": 3}
    assert out["num_sequences"] == {"all": 3, "illumination": 1, "viewpoint": 2}
    assert out["num_failed"] == {"all": 1, "illumination": 0, "viewpoint": 1}
    assert out["mean_corner_error"]["viewpoint"] == pytest.approx(6.5)
    with pytest.raises(ValueError, match="i_ or v_"):
        acc.add("graffiti", 2, 1.0)
    with pytest.raises(InputError, match="no HPatches pairs"):
        HomographyAccuracy().result()


# ---------------------------------------------------------------------------------------------
# The whole protocol on the fixture


def test_oracle_matches_give_zero_error(
    hpatches_root: tuple[Path, dict[str, list[np.ndarray]]],
) -> None:
    root, _ = hpatches_root
    acc = HomographyAccuracy()
    rng = np.random.default_rng(0)
    for seq in _load(root):
        h, w = seq.image_hw(1)
        kp_a = np.stack([rng.uniform(0, h - 1, 300), rng.uniform(0, w - 1, 300)], axis=1)
        for k in range(2, 7):
            H = seq.homography(k)
            xy = np.concatenate([kp_a[:, ::-1], np.ones((300, 1))], axis=1) @ H.T
            kp_b = (xy[:, :2] / xy[:, 2:])[:, ::-1]  # back to (y, x)
            # One-hot descriptors: MNN must pair i with i.
            result = evaluate_homography_pair(kp_a, np.eye(300), kp_b, np.eye(300), H, (h, w))
            assert result.num_matches == 300
            assert result.corner_error < 0.05
            acc.add(seq.name, k, result.corner_error)
    out = acc.result()
    assert out["all"] == {1: 1.0, 3: 1.0, 5: 1.0}
    assert out["num_pairs"]["all"] == 10


def test_wrong_homography_error_by_hand(
    hpatches_root: tuple[Path, dict[str, list[np.ndarray]]],
) -> None:
    root, _ = hpatches_root
    seq = next(s for s in _load(root) if s.name == "v_davisdog")
    h, w = seq.image_hw(1)
    H_gt = seq.homography(2)
    # Estimate = ground truth followed by a (6, 8) shift in image 2: every corner is 10 px off.
    shifted = np.array([[1.0, 0, 6], [0, 1, 8], [0, 0, 1]]) @ H_gt
    assert corner_error(shifted, H_gt, h, w) == pytest.approx(10.0)


def test_too_few_matches_fail(hpatches_root: tuple[Path, dict[str, list[np.ndarray]]]) -> None:
    root, _ = hpatches_root
    seq = _load(root)[0]
    kp = np.array([[10.0, 10.0], [20.0, 30.0], [40.0, 5.0]])
    result = evaluate_homography_pair(kp, np.eye(3), kp, np.eye(3), seq.homography(2), (360, 640))
    assert result.homography is None
    assert result.corner_error == math.inf
    acc = HomographyAccuracy()
    acc.add(seq.name, 2, result.corner_error)
    assert acc.result()["illumination"] == {1: 0.0, 3: 0.0, 5: 0.0}


def _sift(image_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV SIFT, the 1,000 strongest keypoints: ``(N, 2)`` (y, x) and ``(N, 128)``."""
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    sift = cv2.SIFT_create(nfeatures=MAX_KEYPOINTS)  # type: ignore[attr-defined]
    keypoints, desc = sift.detectAndCompute(gray, None)
    yx = np.array([kp.pt for kp in keypoints], dtype=np.float64)[:, ::-1]
    # OpenCV may keep a few more than nfeatures when responses tie.
    keep = select_top_keypoints(yx, np.array([kp.response for kp in keypoints]), MAX_KEYPOINTS)
    return yx[keep], desc[keep]


def test_sift_end_to_end(hpatches_root: tuple[Path, dict[str, list[np.ndarray]]]) -> None:
    root, _ = hpatches_root
    acc = HomographyAccuracy()
    errors = {}
    for seq in _load(root):
        kp_a, desc_a = _sift(seq.read_image(1))
        assert len(kp_a) == MAX_KEYPOINTS
        for k in range(2, 7):
            kp_b, desc_b = _sift(seq.read_image(k))
            result = evaluate_homography_pair(
                kp_a, desc_a, kp_b, desc_b, seq.homography(k), seq.image_hw(1)
            )
            assert result.num_matches >= 50
            errors[(seq.name, k)] = result.corner_error
            acc.add(seq.name, k, result.corner_error)
    out = acc.result()
    # Mild synthetic warps of real frames: SIFT + MNN + LMEDS recovers every one within 3 px.
    assert out["all"][3] == 1.0, errors
    assert out["all"][5] == 1.0
    assert out["num_failed"]["all"] == 0
    assert out["mean_corner_error"]["all"] < 1.0, errors
