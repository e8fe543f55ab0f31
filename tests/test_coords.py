"""Coordinate conversions: property tests for every map, real BADJA keypoints, CSV files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ditf_track.coords import (
    TAPVID_SIZE,
    flatten_tracks,
    frame_to_grid,
    frame_to_model,
    grid_cell_index,
    grid_sample_coords,
    grid_to_frame,
    grid_to_pixel,
    model_to_frame,
    napari_to_points,
    pixel_to_grid,
    points_to_napari,
    points_to_tapvid_queries,
    points_to_tapvid_tracks,
    points_to_txy,
    read_points_csv,
    rescale_points,
    rows_to_points,
    swap_xy,
    tapvid_normalized_to_points,
    tapvid_queries_to_points,
    tapvid_tracks_to_points,
    txy_to_points,
    write_points_csv,
)
from ditf_track.errors import InputError
from ditf_track.masks import read_mask

coordinate = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
points_strategy = arrays(np.float64, st.tuples(st.integers(0, 20), st.just(2)), elements=coordinate)
size = st.integers(1, 4096)
sizes = st.tuples(size, size)
strides = st.sampled_from([1, 2, 8, 14, 16, 32])


# ---- order swaps --------------------------------------------------------------------------------


@given(points_strategy)
def test_swap_is_an_involution(points: np.ndarray) -> None:
    np.testing.assert_array_equal(swap_xy(swap_xy(points)), points)
    if len(points):
        np.testing.assert_array_equal(swap_xy(points)[:, 0], points[:, 1])


@given(points_strategy, st.integers(0, 500))
def test_napari_and_txy_round_trips(points: np.ndarray, t: int) -> None:
    ids = np.arange(len(points)) * 3
    q = napari_to_points(points_to_napari(np.full(len(points), t), points), ids)
    np.testing.assert_array_equal(q.points, points)
    assert (q.frame_idx == t).all()
    np.testing.assert_array_equal(q.ids, ids)
    rows = points_to_txy(np.full(len(points), t), points)
    if len(points):
        np.testing.assert_array_equal(rows[:, 1], points[:, 1])  # x second
    np.testing.assert_array_equal(txy_to_points(rows).points, points)


def test_napari_rejects_fractional_or_negative_frames() -> None:
    with pytest.raises(InputError, match="not whole"):
        napari_to_points(np.array([[1.5, 2.0, 3.0]]))
    with pytest.raises(InputError, match="negative"):
        napari_to_points(np.array([[-1.0, 2.0, 3.0]]))
    q = napari_to_points(np.array([[2.0, 10.0, 20.0], [0.0, 1.0, 2.0], [2.0, 5.0, 6.0]]))
    assert list(q.by_frame()) == [0, 2]
    np.testing.assert_array_equal(q.by_frame()[2][1], [0, 2])


# ---- resizing, model input, token grid -----------------------------------------------------------


@settings(max_examples=200)
@given(points_strategy, sizes, sizes, sizes)
def test_rescale_round_trip_and_composition(
    points: np.ndarray, a: tuple[int, int], b: tuple[int, int], c: tuple[int, int]
) -> None:
    there = rescale_points(points, a, b)
    np.testing.assert_allclose(rescale_points(there, b, a), points, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(
        rescale_points(there, b, c), rescale_points(points, a, c), rtol=1e-9, atol=1e-6
    )
    np.testing.assert_allclose(frame_to_model(points, a, b), there)
    np.testing.assert_allclose(model_to_frame(there, b, a), rescale_points(there, b, a))


@given(sizes, sizes)
def test_rescale_maps_image_corners_to_corners(a: tuple[int, int], b: tuple[int, int]) -> None:
    corners = np.array([[-0.5, -0.5], [a[0] - 0.5, a[1] - 0.5]])
    np.testing.assert_allclose(
        rescale_points(corners, a, b), [[-0.5, -0.5], [b[0] - 0.5, b[1] - 0.5]], atol=1e-9
    )


@given(strides, st.integers(0, 200), st.integers(0, 200))
def test_grid_cell_centres(stride: int, row: int, col: int) -> None:
    # the pixels of cell (row, col) are row*s .. row*s + s - 1; their centre is the cell centre
    pixel_centre = np.array([row * stride + (stride - 1) / 2, col * stride + (stride - 1) / 2])
    np.testing.assert_allclose(pixel_to_grid(pixel_centre, stride), [row, col], atol=1e-9)
    np.testing.assert_allclose(grid_to_pixel(np.array([row, col]), stride), pixel_centre)
    # every pixel of the cell rounds to that cell
    ys, xs = np.meshgrid(
        np.arange(row * stride, (row + 1) * stride), np.arange(col * stride, (col + 1) * stride)
    )
    pixels = np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.float64)
    cells = grid_cell_index(pixel_to_grid(pixels, stride), (row + 1, col + 1))
    assert (cells == [row, col]).all()


@settings(max_examples=100)
@given(points_strategy, sizes, strides, st.integers(1, 64), st.integers(1, 64))
def test_frame_grid_round_trip(
    points: np.ndarray, frame_hw: tuple[int, int], stride: int, h: int, w: int
) -> None:
    model_hw = (h * stride, w * stride)
    grid = frame_to_grid(points, frame_hw, model_hw, stride)
    np.testing.assert_allclose(
        grid_to_frame(grid, frame_hw, model_hw, stride), points, rtol=1e-9, atol=1e-6
    )
    # resizing to the model input and then to the grid = resizing straight to the grid size
    np.testing.assert_allclose(grid, rescale_points(points, frame_hw, (h, w)), atol=1e-6)


def test_grid_sample_coords_match_torch() -> None:
    # Sampling at a cell centre returns that cell's feature exactly (align_corners=False).
    features = torch.randn(1, 5, 6, 9, dtype=torch.float64)
    cells = torch.tensor([[0.0, 0.0], [5.0, 8.0], [2.0, 7.0], [3.0, 1.0]])  # (y, x)
    coords = grid_sample_coords(cells.double(), (6, 9))
    assert isinstance(coords, torch.Tensor)
    sampled = F.grid_sample(features, coords[None, None], align_corners=False)[0, :, 0]
    for k, (y, x) in enumerate(cells.long().tolist()):
        torch.testing.assert_close(sampled[:, k], features[0, :, y, x])
    # halfway between two cells: their mean
    mid = grid_sample_coords(torch.tensor([[2.0, 3.5]], dtype=torch.float64), (6, 9))
    value = F.grid_sample(features, mid[None, None], align_corners=False)[0, :, 0, 0]
    torch.testing.assert_close(value, features[0, :, 2, 3:5].mean(dim=1))


def test_torch_tensors_keep_type() -> None:
    p = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float32)
    out = rescale_points(p, (10, 20), (20, 40))
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[2.5, 4.5], [6.5, 8.5]]))
    assert isinstance(swap_xy(p), torch.Tensor)


def test_model_grid_hand_values() -> None:
    # 854x480 frame → 960x1712 model input (short side 960, stride 16) → 60x107 grid
    frame_hw, model_hw = (480, 854), (960, 1712)
    centre = np.array([239.5, 426.5])  # centre of the frame
    np.testing.assert_allclose(frame_to_model(centre, frame_hw, model_hw), [479.5, 855.5])
    np.testing.assert_allclose(frame_to_grid(centre, frame_hw, model_hw, 16), [29.5, 53.0])
    np.testing.assert_allclose(pixel_to_grid(np.array([7.5, 23.5]), 16), [0.0, 1.0])


# ---- TAP-Vid -----------------------------------------------------------------------------------


@settings(max_examples=100)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 10), st.just(2)), elements=st.floats(0, 1)), sizes
)
def test_tapvid_scale_convention(xy01: np.ndarray, frame_hw: tuple[int, int]) -> None:
    # tapnet evaluation_datasets.py: target_points = points * [W, H] with W = H = 256
    ours = tapvid_normalized_to_points(xy01, frame_hw)
    np.testing.assert_allclose(
        points_to_tapvid_tracks(ours, frame_hw), xy01 * TAPVID_SIZE, atol=1e-9
    )
    np.testing.assert_allclose(
        tapvid_tracks_to_points(xy01 * TAPVID_SIZE, frame_hw), ours, atol=1e-9
    )


@given(points_strategy, sizes, st.integers(0, 100))
def test_tapvid_round_trips(points: np.ndarray, frame_hw: tuple[int, int], t: int) -> None:
    frames = np.full(len(points), t)
    queries = points_to_tapvid_queries(frames, points, frame_hw)
    if len(points):
        assert (queries[:, 0] == t).all()  # [t, y, x]
    back = tapvid_queries_to_points(queries, frame_hw)
    np.testing.assert_allclose(back.points, points, rtol=1e-9, atol=1e-6)
    tracks = points_to_tapvid_tracks(points, frame_hw)  # [x, y]
    np.testing.assert_allclose(tapvid_tracks_to_points(tracks, frame_hw), points, atol=1e-6)
    if len(points):
        np.testing.assert_allclose(tracks[:, ::-1], queries[:, 1:])


def test_tapvid_hand_values() -> None:
    # plain scaling (generate_tapvid.py stores (u·W − 0.5)/W): 128/256 of H, 64/256 of W
    q = tapvid_queries_to_points(np.array([[3.0, 128.0, 64.0]]), (480, 854))
    np.testing.assert_allclose(q.points, [[240.0, 213.5]], atol=1e-9)
    assert q.frame_idx.tolist() == [3]
    # at 256x256 itself only the order changes
    np.testing.assert_allclose(
        tapvid_tracks_to_points(np.array([10.0, 20.0]), (256, 256)), [20.0, 10.0]
    )
    # Kinetics generator: annotation u → stored (u·W − 0.5)/W → ours u·W − 0.5
    u, width = 0.25, 640
    stored = (u * width - 0.5) / width
    np.testing.assert_allclose(
        tapvid_normalized_to_points(np.array([stored, 0.5]), (360, width))[1], u * width - 0.5
    )


# ---- real data: BADJA keypoints are (row, col) ------------------------------------------


def _badja_hits(shared_data: Path, swap: bool) -> tuple[int, int]:
    entries = json.loads((shared_data / "points" / "badja" / "dog.json").read_text())
    davis = shared_data / "davis" / "Annotations" / "480p" / "dog"
    hits = total = 0
    for entry in entries:
        frame = Path(entry["image_path"]).stem
        mask = read_mask(davis / f"{frame}.png").labels > 0
        # distance (px) from every pixel to the dog
        dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
        joints = np.asarray(entry["joints"], np.float64)[np.asarray(entry["visibility"], bool)]
        if swap:
            joints = swap_xy(joints)
        yx = rescale_points(joints, (1080, 1920), mask.shape)  # 1080p → 480p
        rows, cols = np.clip(np.rint(yx), 0, np.array(mask.shape) - 1).astype(int).T
        hits += int((dist[rows, cols] <= 3).sum())
        total += len(joints)
    return hits, total


def test_badja_joints_land_on_the_dog(shared_data: Path) -> None:
    # BADJA stores (row, col) = (y, x) at 1080p: all visible joints fall on the 480p GT mask.
    assert _badja_hits(shared_data, swap=False) == (191, 191)
    hits, total = _badja_hits(shared_data, swap=True)  # read as (x, y): mostly off the dog
    assert hits < total // 2


# ---- CSV ----------------------------------------------------------------------------------


def test_csv_round_trip(tmp_path: Path) -> None:
    points = np.array([[10.25, 20.5], [30.0, 40.125], [1e-3, 7.0]])
    path = write_points_csv(
        tmp_path / "out" / "points.csv", [0, 0, 5], points, [4, 9, 4], [True, False, True]
    )
    assert path.read_text().splitlines()[:2] == ["frame,x,y,id,visible", "0,20.5,10.25,4,1"]
    q, visible = read_points_csv(path)
    np.testing.assert_array_equal(q.points, points)
    assert q.frame_idx.tolist() == [0, 0, 5]
    assert q.ids.tolist() == [4, 9, 4]
    assert visible.tolist() == [True, False, True]
    assert [p.name for p in path.parent.iterdir()] == ["points.csv"]


def test_csv_variants() -> None:
    q, visible = rows_to_points([["0", "5", "7"], ["2", "1.5", "2.5"]])  # no header, no id
    np.testing.assert_array_equal(q.points, [[7, 5], [2.5, 1.5]])
    assert q.ids.tolist() == [0, 1]
    assert visible.all()
    q, _ = rows_to_points([["y", "x", "t", "track_id"], ["# comment"], [], ["1", "2", "3", "8"]])
    np.testing.assert_array_equal(q.points, [[1, 2]])
    assert q.frame_idx.tolist() == [3]
    assert q.ids.tolist() == [8]
    with pytest.raises(InputError, match="row 3"):
        rows_to_points([["frame", "x", "y"], ["0", "1", "2"], ["1", "one", "2"]])
    with pytest.raises(InputError, match="lacks column"):
        rows_to_points([["frame", "u", "v"], ["0", "1", "2"]])


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_points_csv(tmp_path / "nope.csv")


def test_flatten_tracks() -> None:
    tracks = np.arange(2 * 3 * 2, dtype=np.float64).reshape(2, 3, 2)
    visible = np.array([[True, False, True], [True, True, False]])
    q, vis = flatten_tracks(tracks, visible, ids=[7, 8, 9], frame_idx=[10, 20])
    assert q.frame_idx.tolist() == [10, 10, 10, 20, 20, 20]
    assert q.ids.tolist() == [7, 8, 9, 7, 8, 9]
    np.testing.assert_array_equal(q.points[4], tracks[1, 1])
    assert vis.tolist() == visible.ravel().tolist()
