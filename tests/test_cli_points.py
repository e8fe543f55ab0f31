"""`ditf-track VIDEO --points POINTS.csv`: tracks files, overlay, masks and points together."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ditf_track import cli
from ditf_track.coords import read_points_csv
from ditf_track.masks import read_mask


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def write_points(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_points_with_tiny_dit_backward_and_forward(
    tiny_model: Callable[..., Path],
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frames = shared_data / "davis/JPEGImages/480p/dog"
    points = write_points(
        tmp_path / "points.csv",
        ["frame,x,y,id", "2,400.5,250.25,7", "2,120,60,3", "4,700,300,12"],
    )
    out = tmp_path / "tracks"
    overlay = tmp_path / "look.mp4"
    model = ["--model", str(tiny_model("flux")), "--family", "flux", "--t", "90", "--k", "3"]
    code, stdout, _ = run(
        [
            str(frames),
            "--points",
            str(points),
            "--end",
            "6",
            "--short-side",
            "64",
            "--out",
            str(out),
            "--overlay",
            str(overlay),
            "--no-disk-cache",
            "--quiet",
            *model,
        ],
        capsys,
    )
    assert code == 0
    assert "3 point tracks over 6 frames (query mode" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "tracks.csv", "tracks.npz"]
    with (out / "tracks.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["frame", "x", "y", "id", "visible"]  # as the input, plus visible
    assert len(rows) == 6 * 3
    assert [r["frame"] for r in rows[:4]] == ["0", "0", "0", "1"]  # frame-major
    assert [r["id"] for r in rows[:3]] == ["7", "3", "12"]  # the order of the file
    assert {r["visible"] for r in rows} <= {"0", "1"}
    for r in rows:
        assert 0 <= float(r["x"]) <= 853
        assert 0 <= float(r["y"]) <= 479
    by_key = {(int(r["frame"]), int(r["id"])): r for r in rows}
    # the query frames give back the queries, visible
    assert (float(by_key[2, 7]["x"]), float(by_key[2, 7]["y"])) == (400.5, 250.25)
    assert by_key[4, 12]["visible"] == "1"
    # and the file reads back as points
    back, vis = read_points_csv(out / "tracks.csv")
    assert back.points.shape == (18, 2)
    assert vis.dtype == bool
    with np.load(out / "tracks.npz") as npz:
        tracks, occluded = npz["tracks"], npz["occluded"]
        assert tracks.shape == (3, 6, 2)
        assert occluded.shape == (3, 6)
        assert occluded.dtype == bool
        np.testing.assert_array_equal(npz["ids"], [7, 3, 12])
        assert npz["frame_names"].tolist() == [f"{i:05d}" for i in range(6)]
        np.testing.assert_allclose(tracks[0, 2], [400.5, 250.25])  # (x, y)
        np.testing.assert_allclose(npz["query_points"][2], [4, 300, 700])  # (t, y, x)
        assert not occluded[0, 2]
        # frames 0 and 1, before the queries on frame 2, were tracked backward
        assert np.isfinite(tracks[:, :2]).all()
        for t in range(6):
            assert float(by_key[t, 3]["x"]) == pytest.approx(tracks[1, t, 0], abs=1e-3)
            assert (by_key[t, 3]["visible"] == "1") == (not occluded[1, t])
    config = json.loads((out / "config.json").read_text())
    assert config["points"]["count"] == 3
    assert config["points"]["query_frames"] == [2, 4]
    assert config["points"]["mode"] == "query"
    from ditf_track.video import open_video

    with open_video(overlay) as look:
        assert len(look) == 6
        assert (look.height, look.width) == (480, 854)


def test_masks_and_points_together_with_lab_heatmap(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = shared_data / "davis/JPEGImages/480p/dog"
    mask = shared_data / "davis/Annotations/480p/dog/00000.png"
    points = write_points(tmp_path / "p.csv", ["1,400,250", "1,450,240"])  # no header, no ids
    out = tmp_path / "both"
    code, stdout, _ = run(
        [
            "track",
            str(frames),
            "--mask",
            str(mask),
            "--points",
            str(points),
            "--points-mode",
            "heatmap",
            "--preset",
            "lab",
            "--end",
            "4",
            "--short-side",
            "128",
            "--out",
            str(out),
            "--no-disk-cache",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    assert "4 masks (objects 1) and 2 point tracks over 4 frames (heatmap mode" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "00000.png",
        "00001.png",
        "00002.png",
        "00003.png",
        "config.json",
        "tracks.csv",
        "tracks.npz",
    ]
    np.testing.assert_array_equal(read_mask(out / "00000.png").labels, read_mask(mask).labels)
    with np.load(out / "tracks.npz") as npz:
        np.testing.assert_array_equal(npz["ids"], [0, 1])
        np.testing.assert_allclose(npz["tracks"][:, 1], [[400, 250], [450, 240]])
    config = json.loads((out / "config.json").read_text())
    assert config["points"]["mode"] == "heatmap"


def test_bad_points_are_one_line(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = shared_data / "davis/JPEGImages/480p/dog"
    cases = [
        (["x,y", "10,20"], "lacks column(s) ['frame']"),
        (["frame,x,y", "0,10"], "row 2"),
        (["frame,x,y", "0,900,20"], "point (x=900, y=20) on frame 0 lies outside the 854x480"),
        (["frame,x,y", "0,10,-3"], "outside the 854x480 frame"),
        (["frame,x,y", "7,10,20"], "frame 7 is out of range: the video has 3 frames"),
        (["frame,x,y,id", "0,10,20,1", "1,10,20,1"], "gives id 1 twice"),
        (["frame,x,y"], "has no points"),
    ]
    for k, (rows, expected) in enumerate(cases):
        points = write_points(tmp_path / f"bad{k}.csv", rows)
        args = [str(frames), "--points", str(points), "--preset", "lab", "--end", "3"]
        args += ["--short-side", "64", "--no-disk-cache", "--out", str(tmp_path / f"o{k}")]
        code, _, err = run(args, capsys)
        assert code == 1, (rows, err)
        assert expected in err, (expected, err)
        assert err.count("\n") == 1, err
        assert not (tmp_path / f"o{k}").exists()
    code, _, err = run([str(frames), "--points", str(tmp_path / "none.csv")], capsys)
    assert code == 1
    assert "does not exist" in err
