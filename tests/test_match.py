"""Image-pair matching: oracle features on real warped pairs, MNN, soft-argmax, tiny DiTs, lab.

Pairs are made from a real DAVIS frame and its horizontally flipped, scaled or
homography-warped copy, so the true match of every point is known. The oracle extractor (a
stub in this file) gives every cell of image A a random unit code and carries the codes to
image B through the known warp: with it, any error in sizing, sampling, the coordinate chain
or the search shows up as a wrong match.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ditf_track.coords import frame_to_grid, grid_sample_coords
from ditf_track.errors import ConfigError, InputError
from ditf_track.extractor import DiTFExtractor
from ditf_track.features import FeatureMaps
from ditf_track.images import read_image, resize_image
from ditf_track.match import (
    ImageFeatures,
    Matcher,
    PairFeatures,
    SoftArgmax,
    check_points,
    grid_points,
    nearest_in_target,
    read_match_points,
)
from ditf_track.noise import image_noise_id
from ditf_track.testing import build_tiny_pipeline, plant_massive_channels

STRIDE = 16
DIM = 256  # random unit codes: chance cosines ~ N(0, 1/16), far below a true match


class OracleExtractor:
    """Returns the given code maps in call order (A, then B, then A, ...), like a DiT would.

    Checks that the image it receives has the size the codes were made for, and records the
    ``massive_channels`` it was asked to hold.
    """

    stride = STRIDE

    def __init__(self, codes: Sequence[np.ndarray]) -> None:
        self.codes = [torch.as_tensor(c) for c in codes]
        self.calls = 0
        self.held: list[Any] = []

    def identity(self) -> dict[str, Any]:
        return {"extractor": "oracle"}

    def extract(
        self,
        images: np.ndarray | torch.Tensor,
        *,
        massive_channels: Sequence[int] | None = None,
        noise_ids: Sequence[str] | None = None,
    ) -> FeatureMaps:
        code = self.codes[self.calls % len(self.codes)]
        self.calls += 1
        self.held.append(massive_channels)
        _, h, w = code.shape
        assert tuple(images.shape[1:3]) == (h * STRIDE, w * STRIDE), (images.shape, code.shape)
        return FeatureMaps(code[None], STRIDE, (h * STRIDE, w * STRIDE), (7,))


def random_codes(h: int, w: int, seed: int = 0) -> np.ndarray:
    codes = np.random.default_rng(seed).normal(size=(DIM, h, w)).astype(np.float32)
    return codes / np.linalg.norm(codes, axis=0, keepdims=True)


def carried_codes(
    codes_a: np.ndarray,
    a_hw: tuple[int, int],
    model_a: tuple[int, int],
    b_hw: tuple[int, int],
    model_b: tuple[int, int],
    b_to_a: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Codes of B's cells: A's code field sampled (bilinearly) where each B cell comes from.

    B cells whose pre-image lies outside A (no content of A there) get fresh random codes.
    """
    gh, gw = model_b[0] // STRIDE, model_b[1] // STRIDE
    cells = np.stack(np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij"), -1).reshape(-1, 2)
    b_yx = (cells + 0.5) * STRIDE - 0.5  # cell centres in B's model input
    b_yx = (b_yx + 0.5) * np.array(b_hw) / np.array(model_b) - 0.5  # in B's original pixels
    a_yx = b_to_a(b_yx)
    outside = np.any((a_yx < -0.5) | (a_yx > np.array(a_hw) - 0.5), axis=1)
    a_grid = frame_to_grid(a_yx, a_hw, model_a, STRIDE)
    uv = grid_sample_coords(a_grid, codes_a.shape[1:])
    out = F.grid_sample(
        torch.as_tensor(codes_a)[None],
        torch.as_tensor(uv, dtype=torch.float32).view(1, gh, gw, 2),
        align_corners=False,
        padding_mode="border",
    )
    codes = F.normalize(out[0], dim=0).numpy().reshape(len(codes_a), -1)
    codes[:, outside] = random_codes(1, int(outside.sum()), seed=99)[:, 0]
    return codes.reshape(len(codes_a), gh, gw)


@pytest.fixture(scope="module")
def frame(shared_data: Path) -> np.ndarray:
    """A real 480x848 frame (854 cropped to a multiple of 16, so 16-px cells tile it)."""
    return read_image(shared_data / "davis/JPEGImages/480p/dog/00000.jpg")[:, :848].copy()


def cell_centres(h: int, w: int) -> np.ndarray:
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([ys.reshape(-1), xs.reshape(-1)], 1) * STRIDE + (STRIDE - 1) / 2


# ---------------------------------------------------------------------------------------------
# Oracle features on real pairs


def test_flip_is_matched_exactly(frame: np.ndarray) -> None:
    flipped = frame[:, ::-1].copy()
    codes = random_codes(30, 53)
    points = cell_centres(30, 53)
    truth = np.stack([points[:, 0], 847 - points[:, 1]], 1)

    oracle = OracleExtractor([codes, codes[:, :, ::-1].copy()])
    matcher = Matcher(oracle, long_side=848, upsample=False)
    pred, scores = matcher.match_points(frame, flipped, points)
    np.testing.assert_allclose(pred, truth, atol=1e-9)
    np.testing.assert_allclose(scores, 1.0, atol=1e-5)
    assert oracle.held == [None, (7,)]  # found on A, then held for B

    # Soft-argmax over orthogonal-ish codes: the window collapses on the true cell.
    refined = Matcher(
        OracleExtractor(oracle.codes), long_side=848, upsample=False, refine=SoftArgmax()
    )
    pred, _ = refined.match_points(frame, flipped, points)
    np.testing.assert_allclose(pred, truth, atol=1e-6)

    # Upsampled target (the official protocol): whole pixels, so a cell centre (x.5) is
    # found on a neighbouring pixel; interior points only, where no border clamp ties.
    inner = (points[:, 0] > 16) & (points[:, 0] < 460) & (points[:, 1] > 16) & (points[:, 1] < 830)
    sel = np.flatnonzero(inner)[::41]
    upsampled = Matcher(OracleExtractor(oracle.codes), long_side=848, upsample=True)
    pred, scores = upsampled.match_points(frame, flipped, points[sel])
    assert np.all(pred == np.round(pred))
    assert np.abs(pred - truth[sel]).max() <= 0.5
    assert scores.min() > 0.99


def test_scaled_copy_is_matched_exactly(frame: np.ndarray) -> None:
    # B is A at half size; both become 480x848 model inputs, so cell (i, j) of A is cell
    # (i, j) of B and the coordinate chain original -> model -> grid -> original is exact.
    small = resize_image(frame, (240, 424))
    codes = random_codes(30, 53, seed=1)
    matcher = Matcher(OracleExtractor([codes, codes]), long_side=848, upsample=False)
    points = cell_centres(30, 53)
    pred, _ = matcher.match_points(frame, small, points)
    np.testing.assert_allclose(pred, (points + 0.5) * 0.5 - 0.5, atol=1e-9)
    # Dense mutual matching finds every cell, in the same places.
    matches, scores = matcher.match_dense(frame, small)
    assert matches.shape == (30 * 53, 4)
    np.testing.assert_allclose(matches[:, :2], points, atol=1e-9)
    np.testing.assert_allclose(matches[:, 2:], (points + 0.5) * 0.5 - 0.5, atol=1e-9)
    np.testing.assert_allclose(scores, 1.0, atol=1e-5)


def test_keypoints_are_matched_mutually(frame: np.ndarray) -> None:
    flipped = frame[:, ::-1].copy()
    codes = random_codes(30, 53, seed=4)
    matcher = Matcher(OracleExtractor([codes, codes[:, :, ::-1].copy()]), long_side=848)
    kp_a = cell_centres(30, 53)[::7]
    order = np.random.default_rng(0).permutation(len(kp_a))
    kp_b = np.stack([kp_a[:, 0], 847 - kp_a[:, 1]], 1)[order]  # B's keypoints, shuffled
    kp_b = np.concatenate([kp_b, [[240.0, 424.0]]])  # plus one without a partner
    idx, scores = matcher.match_keypoints(frame, flipped, kp_a, kp_b)
    assert len(idx) == len(kp_a)
    np.testing.assert_array_equal(order[idx[:, 1]], idx[:, 0])
    np.testing.assert_allclose(scores, 1.0, atol=1e-5)


def test_homography_warp_within_a_cell(frame: np.ndarray) -> None:
    h, w = frame.shape[:2]
    angle, scale = math.radians(6.0), 0.93
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    centre = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]])
    back = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    H = centre @ np.array([[c, -s, 12.0], [s, c, -9.0], [4e-5, -2e-5, 1.0]]) @ back
    warped = cv2.warpPerspective(frame, H, (w, h), flags=cv2.INTER_LINEAR)
    H_inv = np.linalg.inv(H)

    def apply(M: np.ndarray, yx: np.ndarray) -> np.ndarray:
        xy1 = np.concatenate([yx[:, ::-1], np.ones((len(yx), 1))], 1) @ M.T
        return (xy1[:, :2] / xy1[:, 2:])[:, ::-1]

    codes_a = random_codes(30, 53, seed=2)
    codes_b = carried_codes(codes_a, (h, w), (h, w), (h, w), (h, w), lambda q: apply(H_inv, q))
    matcher = Matcher(OracleExtractor([codes_a, codes_b]), long_side=848, upsample=False)
    points = cell_centres(30, 53)
    truth = apply(H, points)
    inside = (truth[:, 0] > 24) & (truth[:, 0] < h - 24) & (truth[:, 1] > 24)
    inside &= truth[:, 1] < w - 24
    pred, _ = matcher.match_points(frame, warped, points[inside])
    err = np.linalg.norm(pred - truth[inside], axis=1)
    # The best B cell is the one whose pre-image is nearest: within a cell of the truth.
    assert err.max() <= STRIDE, err.max()
    assert err.mean() < STRIDE / 2
    # Swapping x and y anywhere in the chain would put the points far off.
    assert inside.sum() > 1000


def test_points_outside_and_bad_images_are_input_errors(frame: np.ndarray) -> None:
    matcher = Matcher(OracleExtractor([random_codes(30, 53)]), long_side=848)
    with pytest.raises(InputError, match=r"x=900, y=10\) lies outside image A \(848x480"):
        matcher.match_points(frame, frame, np.array([[10.0, 900.0]]))
    with pytest.raises(InputError, match="finite"):
        check_points(np.array([[np.nan, 1.0]]), (10, 10))
    with pytest.raises(InputError, match="uint8"):
        matcher.match_points(frame.astype(np.float32), frame, np.zeros((1, 2)))
    assert check_points(np.array([[-0.5, 847.5]]), (480, 848)).shape == (1, 2)


# ---------------------------------------------------------------------------------------------
# The pieces, by hand


def test_upsampled_search_equals_full_upsampling() -> None:
    # The chunked search must find what the official "upsample the whole map, normalise,
    # argmax" finds.
    rng = np.random.default_rng(3)
    feats = F.normalize(torch.as_tensor(rng.normal(size=(8, 4, 6)), dtype=torch.float32), dim=0)
    target = ImageFeatures(feats, image_hw=(37, 53), input_hw=(64, 96), stride=16)
    queries = F.normalize(torch.as_tensor(rng.normal(size=(5, 8)), dtype=torch.float32), dim=1)
    full = F.normalize(
        F.interpolate(feats[None], size=(37, 53), mode="bilinear", align_corners=False)[0], dim=0
    )
    sims = queries @ full.flatten(1)
    best = sims.argmax(1).numpy()
    expected = np.stack([best // 53, best % 53], 1)
    pred, scores = nearest_in_target(queries, target, upsample=True, chunk_bytes=8 * 53 * 4 * 5)
    np.testing.assert_array_equal(pred, expected)
    np.testing.assert_allclose(scores, sims.max(1).values.numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="no-upsample"):
        nearest_in_target(queries, target, upsample=True, refine=SoftArgmax())


def test_grid_points() -> None:
    pts = grid_points((480, 854), 100)
    assert 80 <= len(pts) <= 120
    assert pts[:, 0].min() > 0
    assert pts[:, 1].max() < 853
    # equal tiles: the first point is the centre of the first tile
    rows = len(np.unique(pts[:, 0]))
    np.testing.assert_allclose(pts[0, 0], 480 / rows / 2 - 0.5)
    assert len(grid_points((10, 10), 1)) == 1
    with pytest.raises(ConfigError):
        grid_points((10, 10), 0)


def test_read_match_points(tmp_path: Path) -> None:
    good = tmp_path / "p.csv"
    good.write_text("id,y,x\nnose,10,20.5\ntail,30,40\n")
    yx, ids = read_match_points(good)
    np.testing.assert_array_equal(yx, [[10, 20.5], [30, 40]])
    assert list(ids) == ["nose", "tail"]  # type: ignore[arg-type]
    plain = tmp_path / "q.csv"
    plain.write_text("x,y\n1,2\n")
    yx, ids = read_match_points(plain)
    np.testing.assert_array_equal(yx, [[2, 1]])
    assert ids is None
    bad = tmp_path / "bad.csv"
    bad.write_text("u,v\n1,2\n")
    with pytest.raises(InputError, match=r"lacks column\(s\) x, y"):
        read_match_points(bad)
    bad.write_text("x,y\n1,oops\n")
    with pytest.raises(InputError, match="line 2"):
        read_match_points(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_match_points(tmp_path / "none.csv")


# ---------------------------------------------------------------------------------------------
# Real extractors end to end


@pytest.fixture(scope="module")
def planted_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Flux whose residual stream carries massive channels 3 and 11."""
    folder = build_tiny_pipeline("flux", tmp_path_factory.mktemp("planted") / "flux")
    return plant_massive_channels(folder, (3, 11), 400.0)


def test_tiny_flux_pair_end_to_end(planted_flux: Path, frame: np.ndarray) -> None:
    extractor = DiTFExtractor.from_pretrained(planted_flux, family="flux", t=260, k=3)
    calls: list[Any] = []
    noise_ids_seen: list[Any] = []
    original = extractor.extract

    def spy(
        images: Any,
        *,
        massive_channels: Sequence[int] | None = None,
        noise_ids: Sequence[str] | None = None,
    ) -> FeatureMaps:
        calls.append(massive_channels)
        noise_ids_seen.append(noise_ids)
        return original(images, massive_channels=massive_channels, noise_ids=noise_ids)

    extractor.extract = spy  # type: ignore[method-assign]
    matcher = Matcher(extractor, long_side=128)
    flipped = frame[:, ::-1].copy()
    pair = matcher.features_for_pair(frame, flipped)
    assert pair.a.input_hw == (80, 128)  # 480x848 at long side 128: 72.5 -> 80 (nearest 16)
    assert pair.a.grid_hw == (5, 8)
    assert pair.discarded_channels == (3, 11)
    assert calls == [None, (3, 11)]  # found on A, held for B
    # issue 18 item 3: source and target draw their own noise, seeded by their content
    assert noise_ids_seen == [
        [image_noise_id(resize_image(im, (80, 128)))] for im in (frame, flipped)
    ]
    assert noise_ids_seen[0] != noise_ids_seen[1]
    assert pair.meta["discarded_channels"] == [3, 11]
    for f in (pair.a, pair.b):
        assert f.features[[3, 11]].abs().max() == 0
        torch.testing.assert_close(f.features.norm(dim=0), torch.ones(f.grid_hw))
        # the cells' norms before the normalisation travel with them (raw upsampling)
        assert f.norms is not None
        assert f.norms.shape == f.grid_hw
        assert float(f.norms.min()) > 0
        assert float(f.norms.max()) > float(f.norms.min())
    points = np.array([[100.0, 200.0], [300.0, 700.0], [0.0, 0.0]])
    pred, scores = matcher.match_points_in(pair, points)
    assert pred.shape == (3, 2)
    assert np.all((pred >= 0) & (pred <= [479, 847]))
    assert np.all(pred == np.round(pred))
    assert np.all(np.abs(scores) <= 1.0 + 1e-5)
    matches, scores = matcher.match_dense_in(pair, 20)
    assert matches.shape[1] == 4
    assert 0 < len(matches) <= 20
    assert matcher.identity()["extractor"]["k"] == 3
    # the same image as source and target: the same noise, the same map (exactly)
    same = matcher.features_for_pair(frame, frame.copy())
    assert noise_ids_seen[-1] == noise_ids_seen[-2]
    torch.testing.assert_close(same.a.features, same.b.features, rtol=0, atol=0)


def test_long_side_defaults_to_the_preset() -> None:
    # match's input: the preset's pair_long_side (960), aspect kept; the evaluators pass the
    # profile's protocol instead (test_presets.test_pair_protocol_per_profile_and_benchmark)
    oracle = OracleExtractor([random_codes(2, 2)])
    assert Matcher(oracle).long_side == 960

    class WithPreset(OracleExtractor):
        def identity(self) -> dict[str, Any]:
            return {"extractor": "oracle", "preset": "flux"}

    assert Matcher(WithPreset([])).long_side == 960
    assert Matcher(WithPreset([])).input_size((375, 500)) == (720, 960)
    assert Matcher(WithPreset([]), long_side=640).input_size((375, 500)) == (480, 640)
    square = Matcher(WithPreset([]), square=960)  # the paper's appendix: 960x960
    assert (square.long_side, square.square) == (None, 960)
    assert square.input_size((375, 500)) == (960, 960)
    assert square.identity()["square"] == 960
    with pytest.raises(ConfigError, match="too small"):
        Matcher(oracle, long_side=8)
    with pytest.raises(ConfigError, match="one of --long-side and --square"):
        Matcher(oracle, long_side=640, square=960)
    with pytest.raises(ConfigError, match="unknown resize"):
        Matcher(oracle, resize="lanczos")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown upsample_from"):
        Matcher(oracle, upsample_from="cells")


def test_square_input_matches_back_to_original_pixels(frame: np.ndarray) -> None:
    # 480x848 squashed to 480x480 (aspect ignored): a flipped copy is still matched exactly
    codes = random_codes(30, 30)
    flipped = codes[:, :, ::-1].copy()
    matcher = Matcher(OracleExtractor([codes, flipped]), square=480, upsample=False)
    pair = matcher.features_for_pair(frame, frame[:, ::-1].copy())
    assert pair.a.input_hw == (480, 480)
    centres = pair.a.cell_centres()
    pred, _ = matcher.match_points_in(pair, centres)
    np.testing.assert_allclose(pred[:, 0], centres[:, 0], atol=1e-6)
    np.testing.assert_allclose(pred[:, 1], 847 - centres[:, 1], atol=1e-6)


def test_resize_method_reaches_the_extractor(frame: np.ndarray) -> None:
    seen: list[np.ndarray] = []

    class Recording(OracleExtractor):
        def extract(self, images: Any, **kwargs: Any) -> FeatureMaps:
            seen.append(np.asarray(images[0]))
            return super().extract(images, **kwargs)

    codes = random_codes(5, 8)
    Matcher(Recording([codes]), long_side=128, resize="pil-bicubic").image_features(frame)
    Matcher(Recording([codes]), long_side=128).image_features(frame)
    np.testing.assert_array_equal(seen[0], resize_image(frame, (80, 128), "pil-bicubic"))
    np.testing.assert_array_equal(seen[1], resize_image(frame, (80, 128)))
    assert not np.array_equal(seen[0], seen[1])


def _unnormalised_target(seed: int) -> tuple[ImageFeatures, torch.Tensor]:
    """A target map whose cells have norms spread over two orders of magnitude (as modulated
    DiT features do), stored as the extractor returns it: unit cells plus their norms."""
    rng = np.random.default_rng(seed)
    raw = torch.as_tensor(rng.normal(size=(8, 4, 6)), dtype=torch.float32)
    raw = raw * torch.as_tensor(10 ** rng.uniform(-1, 1, size=(1, 4, 6)), dtype=torch.float32)
    target = ImageFeatures(
        F.normalize(raw, dim=0),
        image_hw=(37, 53),
        input_hw=(64, 96),
        stride=16,
        norms=raw.norm(dim=0),
    )
    return target, raw


def test_unnormalised_upsampling_equals_materialising_the_map() -> None:
    """Issue 18: the authors upsample the *unnormalised* modulated map (bilinear,
    align_corners=False) to the image, then L2-normalise each pixel. The closed form of
    ``_nearest_pixel`` on unit cells times their norms must give the same argmax (exactly) and
    cosine (float32, atol 1e-5) as materialising that map with F.interpolate."""
    target, raw = _unnormalised_target(4)
    queries = F.normalize(
        torch.as_tensor(np.random.default_rng(5).normal(size=(7, 8)), dtype=torch.float32), dim=1
    )
    full = F.normalize(
        F.interpolate(raw[None], size=(37, 53), mode="bilinear", align_corners=False)[0], dim=0
    )
    sims = queries @ full.flatten(1)
    best = sims.argmax(1).numpy()
    pred, scores = nearest_in_target(queries, target, upsample=True, raw=True, chunk_bytes=4096)
    np.testing.assert_array_equal(pred, np.stack([best // 53, best % 53], 1))
    np.testing.assert_allclose(scores, sims.max(1).values.numpy(), atol=1e-5)
    # upsampling the unit cells instead is another map: the cosines differ
    _, unit_scores = nearest_in_target(queries, target, upsample=True, raw=False)
    assert np.abs(unit_scores - scores).max() > 1e-3
    # source descriptors: bilinear sample of the unnormalised map, then L2 (exactly the
    # materialised map's pixel for whole-pixel points)
    points = np.array([[0.0, 0.0], [12.0, 30.0], [36.0, 52.0], [20.0, 7.0]])
    desc = target.descriptors_at(points, raw=True)
    idx = torch.as_tensor(points, dtype=torch.long)
    torch.testing.assert_close(desc, full[:, idx[:, 0], idx[:, 1]].T, atol=1e-6, rtol=1e-5)
    assert (desc - target.descriptors_at(points)).abs().max() > 1e-3
    torch.testing.assert_close(target.raw(), raw, atol=1e-5, rtol=1e-5)


def test_matcher_upsamples_the_unnormalised_map_by_default() -> None:
    target, _ = _unnormalised_target(6)
    source, _ = _unnormalised_target(7)

    pair = PairFeatures(source, target)
    points = np.array([[3.0, 4.0], [30.0, 40.0]])
    oracle = OracleExtractor([random_codes(2, 2)])
    raw_matcher = Matcher(oracle)
    assert raw_matcher.upsample_from == "raw"
    assert raw_matcher.identity()["upsample_from"] == "raw"
    expected = nearest_in_target(
        source.descriptors_at(points, raw=True), target, upsample=True, raw=True
    )
    got = raw_matcher.match_points_in(pair, points)
    np.testing.assert_array_equal(got[0], expected[0])
    unit = Matcher(oracle, upsample_from="unit").match_points_in(pair, points)
    assert not np.allclose(unit[1], got[1])


def test_lab_preset_end_to_end(frame: np.ndarray) -> None:
    pytest.importorskip("ditf_track.lab", reason="the lab baseline is not merged yet")
    matcher = Matcher.from_preset("lab", long_side=256)
    flipped = frame[:, ::-1].copy()
    pred, scores = matcher.match_points(frame, flipped, np.array([[240.0, 100.0], [50.0, 700.0]]))
    assert pred.shape == (2, 2)
    assert np.all(np.isfinite(scores))
    matches, _ = matcher.match_dense(frame, flipped, 50)
    assert matches.shape[1] == 4
