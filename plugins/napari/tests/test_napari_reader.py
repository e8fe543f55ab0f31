"""The reader: what it opens (lazily), what it refuses (None, never an exception)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ditf_track import VideoSource, read_mask, write_mask
from napari_ditf_track import napari_get_reader


def read(path: Path | str | list[str]) -> list[tuple[object, dict, str]]:
    reader = napari_get_reader(path if isinstance(path, list) else str(path))
    assert reader is not None, f"no reader for {path}"
    return reader(path)


def test_video_file_is_a_lazy_rgb_image(shared_data: Path) -> None:
    [(data, kwargs, kind)] = read(shared_data / "videos/bikes.mp4")
    assert kind == "image"
    assert isinstance(data, VideoSource)  # decoded on demand, never loaded whole
    assert data.shape[1:] == (272, 640, 3)
    assert kwargs["rgb"] is True
    assert kwargs["name"] == "bikes"
    assert kwargs["metadata"]["frame_names"][:2] == ["00000", "00001"]
    assert data[3].shape == (272, 640, 3)


def test_frame_folder_is_an_image_with_frame_names(shared_data: Path) -> None:
    folder = shared_data / "davis/JPEGImages/480p/blackswan"
    [(data, kwargs, kind)] = read(folder)
    assert kind == "image"
    assert isinstance(data, VideoSource)
    assert data.shape == (50, 480, 854, 3)
    assert kwargs["name"] == "blackswan"
    assert kwargs["metadata"]["frame_names"][49] == "00049"
    # a one-element list (napari's stack form) is the same path
    [(listed, _, _)] = read([str(folder)])
    assert listed.shape == data.shape


def test_davis_annotation_folders_are_labels(shared_data: Path) -> None:
    # DAVIS-2016 binary masks ({0, 255} grey PNGs) for every frame
    folder = shared_data / "davis/Annotations/480p/blackswan"
    [(labels, kwargs, kind)] = read(folder)
    assert kind == "labels"
    assert labels.shape == (50, 480, 854)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1}
    np.testing.assert_array_equal(labels[7], read_mask(folder / "00007.png").labels)
    # DAVIS-2017 palette PNG with two objects; the palette is kept for writing
    bike = shared_data / "davis2017_firstframe/Annotations/480p/bike-packing"
    [(multi, kwargs, kind)] = read(bike)
    assert (kind, multi.shape) == ("labels", (1, 480, 854))
    assert set(np.unique(multi)) == {0, 1, 2}
    assert len(kwargs["metadata"]["palette"]) == 768
    # names that do not start at 0 keep their own numbering
    [(vspw, kwargs, _)] = read(next((shared_data / "vspw_firstframe/Annotations").iterdir()))
    assert vspw.shape[0] == 1
    assert kwargs["metadata"]["frame_names"] == ["00002058"]


def test_sparse_numbered_masks_land_on_their_frames(tmp_path: Path) -> None:
    first = np.zeros((6, 8), np.uint8)
    first[1:3, 2:5] = 1
    later = np.zeros((6, 8), np.uint8)
    later[4:, :2] = 2
    write_mask(tmp_path / "00010.png", first)
    write_mask(tmp_path / "00013.png", later)
    [(labels, kwargs, _)] = read(tmp_path)
    assert labels.shape == (4, 6, 8)
    np.testing.assert_array_equal(labels[0], first)
    np.testing.assert_array_equal(labels[3], later)
    assert not labels[1:3].any()
    assert kwargs["metadata"]["frame_names"] == ["00010", "00011", "00012", "00013"]


def test_points_csv_becomes_t_y_x_points(tmp_path: Path) -> None:
    csv = tmp_path / "queries.csv"
    csv.write_text("frame,x,y,id,visible\n0,10.5,20,7,1\n3,100,40.25,9,0\n")
    [(data, kwargs, kind)] = read(csv)
    assert kind == "points"
    np.testing.assert_allclose(data, [[0, 20, 10.5], [3, 40.25, 100]])  # (t, y, x)
    np.testing.assert_array_equal(kwargs["features"]["id"], [7, 9])
    np.testing.assert_array_equal(kwargs["features"]["visible"], [True, False])


def make_text(folder: Path) -> Path:
    (folder / "notes.txt").write_text("hello")
    return folder / "notes.txt"


def make_bad_mp4(folder: Path) -> Path:
    (folder / "bad.mp4").write_bytes(b"\0" * 4096)
    return folder / "bad.mp4"


def make_napari_csv(folder: Path) -> Path:
    (folder / "napari.csv").write_text("index,axis-0,axis-1\n0,1,2\n")
    return folder / "napari.csv"


def make_headerless_csv(folder: Path) -> Path:
    (folder / "numbers.csv").write_text("1,2,3\n4,5,6\n")
    return folder / "numbers.csv"


@pytest.mark.parametrize(
    "make",
    [
        make_text,
        make_bad_mp4,
        make_napari_csv,
        make_headerless_csv,
        lambda folder: folder,  # an empty folder
        lambda folder: folder / "missing.mp4",
    ],
    ids=["text", "bad-mp4", "napari-points-csv", "headerless-csv", "empty-folder", "missing"],
)
def test_what_it_cannot_read_gets_none(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    assert napari_get_reader(str(make(tmp_path))) is None


def test_folder_of_unrelated_files_and_stacks_get_none(tmp_path: Path, shared_data: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    assert napari_get_reader(str(tmp_path)) is None
    # a stack of two videos is not one video; a non-path object is not readable
    video = str(shared_data / "videos/bikes.mp4")
    assert napari_get_reader([video, video]) is None
    assert napari_get_reader(42) is None  # type: ignore[arg-type]
