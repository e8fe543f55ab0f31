"""Writers: DAVIS palette PNGs and the CLI's points/tracks CSV, read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditf_track import DAVIS_PALETTE, OutputError, read_mask
from ditf_track.coords import read_points_csv
from napari_ditf_track import (
    napari_get_reader,
    write_davis_labels,
    write_points_layer,
    write_tracks_layer,
)


def labels_clip() -> np.ndarray:
    labels = np.zeros((3, 5, 7), np.uint8)
    labels[0, 1:3, 1:4] = 1
    labels[1, 2:4, 2:6] = 2
    labels[2, 0, 0] = 255  # void survives
    return labels


def test_labels_to_davis_pngs_and_back(tmp_path: Path) -> None:
    labels = labels_clip()
    out = tmp_path / "masks"
    assert write_davis_labels(str(out), labels, {}) == [str(out)]
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    with Image.open(out / "00001.png") as img:
        assert img.mode == "P"
        assert bytes(img.getpalette()[:768]) == DAVIS_PALETTE
    for t in range(3):
        np.testing.assert_array_equal(read_mask(out / f"{t:05d}.png").labels, labels[t])
    # the reader gives the same (T, H, W) array back
    [(again, _, kind)] = napari_get_reader(str(out))(str(out))  # type: ignore[misc]
    assert kind == "labels"
    np.testing.assert_array_equal(again, labels)


def test_frame_names_and_palette_from_metadata(tmp_path: Path) -> None:
    palette = bytes(range(256)) * 3
    meta = {"metadata": {"frame_names": ["00002058", "00002059", "00002060"], "palette": palette}}
    out = tmp_path / "named"
    write_davis_labels(str(out), labels_clip(), meta)
    assert sorted(p.name for p in out.iterdir()) == ["00002058.png", "00002059.png", "00002060.png"]
    assert read_mask(out / "00002059.png").palette == palette
    # names that do not fit the frame count are ignored
    out2 = tmp_path / "fallback"
    write_davis_labels(str(out2), labels_clip(), {"metadata": {"frame_names": ["a"]}})
    assert (out2 / "00002.png").is_file()


def test_labels_writer_refusals(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="labels hold id 300; DAVIS PNGs hold ids 0..255"):
        write_davis_labels(str(tmp_path / "a"), np.full((1, 2, 2), 300, np.int32), {})
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="already holds other files"):
        write_davis_labels(str(busy), labels_clip(), {})
    # the same names are replaced (saving twice works)
    write_davis_labels(str(tmp_path / "twice"), labels_clip(), {})
    write_davis_labels(str(tmp_path / "twice"), labels_clip()[::-1].copy(), {})
    np.testing.assert_array_equal(read_mask(tmp_path / "twice/00000.png").labels, labels_clip()[2])


def test_points_and_tracks_to_csv(tmp_path: Path) -> None:
    points = np.array([[0, 20.0, 10.5], [2, 40.0, 100.25]])  # (t, y, x)
    attrs = {"features": {"id": np.array([4, 9]), "visible": np.array([True, False])}}
    [written] = write_points_layer(str(tmp_path / "queries"), points, attrs)
    assert written.endswith("queries.csv")
    assert Path(written).read_text().splitlines() == [
        "frame,x,y,id,visible",  # the CLI's tracks.csv columns (x before y)
        "0,10.5,20.0,4,1",
        "2,100.25,40.0,9,0",
    ]
    queries, visible = read_points_csv(written)
    np.testing.assert_array_equal(queries.frame_idx, [0, 2])
    np.testing.assert_allclose(queries.points, [[20.0, 10.5], [40.0, 100.25]])  # (y, x)
    np.testing.assert_array_equal(queries.ids, [4, 9])
    np.testing.assert_array_equal(visible, [True, False])
    tracks = np.array([[3, 0, 5.0, 6.0], [3, 1, 5.5, 7.0], [8, 0, 1.0, 2.0]])  # (id, t, y, x)
    [written] = write_tracks_layer(str(tmp_path / "tracks.csv"), tracks, {"features": {}})
    queries, visible = read_points_csv(written)
    np.testing.assert_array_equal(queries.ids, [3, 8, 3])  # frame-major, like the CLI
    np.testing.assert_array_equal(queries.frame_idx, [0, 0, 1])
    np.testing.assert_allclose(queries.points, tracks[[0, 2, 1], 2:])
    assert visible.all()
    with pytest.raises(OutputError, match="non-whole t"):
        write_points_layer(str(tmp_path / "x.csv"), np.array([[0.5, 1, 2]]), {})
