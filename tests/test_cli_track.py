"""`ditf-track track` (the main job): masks and points through a video with a tiny DiT and with
lab; its run folder (refusals, locks, resume, overwrite); its faults (damaged media and models,
devices). Every fault case runs in-process on at most 10 frames."""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cli_helpers
import numpy as np
import pytest
import test_video_readers
import torch
from cli_helpers import DOG, DOG_MASK, LAB, davis_args, one_line_error, run, snapshot
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from test_hub import copy_model, truncate

from ditf_track import cli, outputs
from ditf_track import extractor as extractor_module
from ditf_track.cli import _options as cli_options
from ditf_track.cli import track as cli_track
from ditf_track.coords import read_points_csv
from ditf_track.features import FeatureMaps
from ditf_track.masks import DAVIS_PALETTE, read_mask, write_mask
from ditf_track.outputs import to_json_safe
from ditf_track.video import open_video


def tiny_args(folder: Path, family: str = "flux", k: int = 3) -> list[str]:
    return ["--model", str(folder), "--family", family, "--t", "90", "--k", str(k)]


def test_track_davis_folder_with_tiny_dit(
    tiny_model: Callable[..., Path],
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frames = shared_data / "davis/JPEGImages/480p/dog"
    mask = shared_data / "davis/Annotations/480p/dog/00000.png"
    out = tmp_path / "dog_masks"
    cache = tmp_path / "cache"
    base = ["track", str(frames), "--mask", str(mask), "--end", "6", "--short-side", "64"]
    model = tiny_args(tiny_model("flux"))
    code, stdout, _ = run([*base, "--out", str(out), "--cache-dir", str(cache), *model], capsys)
    assert code == 0
    assert "6 extracted, 0 from the cache" in stdout
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(6)]
    for name in pngs:
        with Image.open(out / name) as img:
            assert img.mode == "P"
            assert img.size == (854, 480)
            assert bytes(img.getpalette()[:768]) == DAVIS_PALETTE[: len(img.getpalette()[:768])]
            assert set(np.unique(np.asarray(img))) <= {0, 1}
    np.testing.assert_array_equal(read_mask(out / "00000.png").labels, read_mask(mask).labels)
    config = json.loads((out / "config.json").read_text())
    assert config["frames"] == 6
    assert config["input_size"] == [64, 112]
    assert config["extractor"]["t"] == 90
    assert config["propagation"] == {
        "n_context": 7,
        "radius": 12,
        "topk": 5,
        "temperature": 0.1,
        "numerics": "exact",
    }
    assert config["features"] == {"extracted": 6}
    assert not (tmp_path / "dog_masks.incomplete").exists()
    # a second run hits the cache: nothing is extracted
    out2 = tmp_path / "again"
    code, stdout, _ = run([*base, "--out", str(out2), "--cache-dir", str(cache), *model], capsys)
    assert code == 0
    assert "0 extracted, 6 from the cache" in stdout
    for name in pngs:
        np.testing.assert_array_equal(read_mask(out2 / name).labels, read_mask(out / name).labels)
    # a changed setting (t) misses
    out3 = tmp_path / "other_t"
    changed = [
        *base,
        "--out",
        str(out3),
        "--cache-dir",
        str(cache),
        *model[:-4],
        "--t",
        "91",
        "--k",
        "3",
    ]
    code, stdout, _ = run(changed, capsys)
    assert code == 0
    assert "6 extracted" in stdout
    # an existing output folder is refused, then replaced with --overwrite, or kept with --resume
    code, _, err = run([*base, "--out", str(out), "--cache-dir", str(cache), *model], capsys)
    assert code == 1
    assert "exists and is not empty" in err
    code, stdout, _ = run(
        [*base, "--out", str(out), "--resume", "--cache-dir", str(cache), *model], capsys
    )
    assert code == 0
    assert "already complete" in stdout


def test_track_mp4_default_out_and_overlay(
    tiny_model: Callable[..., Path],
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    mask = np.zeros((272, 640), np.uint8)
    mask[100:200, 250:400] = 1
    write_mask(tmp_path / "first.png", mask)
    video = shared_data / "videos/bikes.mp4"
    args = [str(video), "--mask", str(tmp_path / "first.png"), "--end", "5", "--short-side", "48"]
    overlay = tmp_path / "look.mp4"
    code, _, _ = run(
        [*args, "--overlay", str(overlay), *tiny_args(tiny_model("pixart"), "pixart", 2)], capsys
    )
    assert code == 0
    out = tmp_path / "bikes_masks"
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(5)]

    with open_video(overlay) as look:
        assert len(look) == 5
        assert (look.height, look.width) == (272, 640)


def test_two_objects_and_late_correction(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = shared_data / "davis2017_firstframe"
    frames = root / "JPEGImages/480p/bike-packing"
    first = root / "Annotations/480p/bike-packing/00000.png"
    out = tmp_path / "bike"
    code, _, _ = run(
        [
            "track",
            str(frames),
            "--mask",
            str(first),
            "--preset",
            "lab",
            "--out",
            str(out),
            "--short-side",
            "240",
            "--no-disk-cache",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    annotated = read_mask(out / "00000.png")
    assert annotated.object_ids == (1, 2)
    assert annotated.palette == read_mask(first).palette  # the input's palette is kept
    for png in out.glob("*.png"):
        assert set(np.unique(read_mask(png).labels)) <= {0, 1, 2}
    # a correction on frame 2 (named like a frame) changes frames 2.. only
    fix = read_mask(first).labels.copy()
    fix[fix == 2] = 0
    write_mask(tmp_path / "00002.png", fix)
    out2 = tmp_path / "bike2"
    code, _, _ = run(
        [
            "track",
            str(frames),
            "--mask",
            str(first),
            "--mask",
            str(tmp_path / "00002.png"),
            "--preset",
            "lab",
            "--out",
            str(out2),
            "--short-side",
            "240",
            "--no-disk-cache",
        ],
        capsys,
    )
    assert code == 0
    for name in ("00000.png", "00001.png"):
        np.testing.assert_array_equal(read_mask(out2 / name).labels, read_mask(out / name).labels)
    assert 2 not in np.unique(read_mask(out2 / "00002.png").labels)
    assert 2 not in np.unique(read_mask(out2 / "00003.png").labels)
    config = json.loads((out2 / "config.json").read_text())
    assert config["annotated_frames"] == [0, 2]


def test_bad_input_is_one_line(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = shared_data / "davis/JPEGImages/480p/dog"
    good = shared_data / "davis/Annotations/480p/dog/00000.png"
    small = tmp_path / "small.png"
    write_mask(small, np.ones((10, 10), np.uint8))
    empty = tmp_path / "empty.png"
    write_mask(empty, np.zeros((480, 854), np.uint8))
    many = tmp_path / "many.png"
    Image.fromarray(np.arange(480 * 854, dtype=np.uint32).reshape(480, 854) % 300).convert(
        "RGB"
    ).save(many)
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"this is not a video")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    lab = ["--preset", "lab", "--no-disk-cache", "--short-side", "64", "--end", "3"]
    cases = [
        ([str(tmp_path / "nope.mp4"), "--mask", str(good)], "nope.mp4"),
        ([str(corrupt), "--mask", str(good)], "broken.mp4"),
        ([str(frames), "--mask", str(small)], "10x10 but the video frames are 854x480"),
        ([str(frames), "--mask", str(empty)], "contains no object"),
        ([str(frames), "--mask", f"9:{good}"], "frame 9 is out of range"),
        ([str(frames), "--mask", str(many)], "254"),
        ([str(frames), "--mask", str(good), "--out", str(taken)], "exists and is not empty"),
        ([str(frames), "--mask", str(good), "--preset", "nope"], "unknown preset 'nope'"),
        ([str(frames)], "--mask"),
    ]
    for args, expected in cases:
        full = [*args, *lab] if "--preset" not in args else [*args, "--no-disk-cache", "--end", "3"]
        code, _, err = run(
            ["track", *full, "--out", str(tmp_path / "o")]
            if "--out" not in args
            else ["track", *full],
            capsys,
        )
        assert code == 1, (args, err)
        assert expected in err, (expected, err)
        assert err.count("\n") <= 2, err  # the error line (and at most one warning line)
    assert (taken / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists()


class BatchChannels:
    """The lab baseline, but the channels it finds depend on the batch (as DiTF statistics over
    a batch do): one frame → channel 0, four frames → channel 2."""

    def __init__(self) -> None:
        from ditf_track.lab import LabExtractor

        self.inner = LabExtractor()
        self.stride = self.inner.stride
        self.device = self.inner.device

    def identity(self) -> dict[str, Any]:
        return {**self.inner.identity(), "batch_channels": True}

    def extract(
        self, images: Any, *, massive_channels: Any = None, noise_ids: Any = None
    ) -> FeatureMaps:
        found = (min(len(images), 3) - 1,) if massive_channels is None else massive_channels
        maps = self.inner.extract(images, massive_channels=found, noise_ids=noise_ids)
        return dataclasses.replace(maps, meta={**maps.meta, "massive_channels": list(found)})


def test_extract_and_track_discard_the_same_channels(
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both commands find the clip's massive channels on frame 0 of the selection."""
    for module in (extractor_module, cli_options):  # track builds in the library, extract here
        monkeypatch.setattr(module, "extractor_from_config", lambda *a, **k: BatchChannels())
    frames = shared_data / "davis/JPEGImages/480p/dog"
    mask = shared_data / "davis/Annotations/480p/dog/00002.png"
    common = ["--start", "2", "--end", "8", "--short-side", "64", "--preset", "lab"]
    out = tmp_path / "dog.safetensors"
    assert cli.main(["extract", str(frames), "--out", str(out), *common]) == 0
    with safe_open(str(out), "pt") as fh:
        extracted = json.loads(fh.metadata()["ditf_track"])["massive_channels"]
    masks = tmp_path / "masks"
    args = ["track", str(frames), "--mask", f"0:{mask}", "--out", str(masks), *common]
    assert cli.main([*args, "--no-disk-cache"]) == 0
    capsys.readouterr()
    tracked = json.loads((masks / "config.json").read_text())["massive_channels"]
    assert extracted == tracked == [0]


def test_cli_track_in_bf16(
    tiny_model: Callable[..., Path],
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clip = shared_data / "davis/JPEGImages/480p/dog"
    mask = shared_data / "davis/Annotations/480p/dog/00000.png"
    out = tmp_path / "masks"
    code = cli.main(
        [
            "track",
            str(clip),
            "--mask",
            str(mask),
            "--end",
            "6",
            "--short-side",
            "64",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--model",
            str(tiny_model("flux")),
            "--family",
            "flux",
            "--t",
            "90",
            "--k",
            "3",
            "--dtype",
            "bfloat16",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert len(list(out.glob("*.png"))) == 6
    assert json.loads((out / "config.json").read_text())["extractor"]["dtype"] == "bfloat16"


# -- points: tracks.csv, tracks.npz ----------------------------------------------------------


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


def test_points_follow_the_motion_by_default_and_global_on_request(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """track's query search is the window with re-detection (PointParams.motion), recorded in
    config.json; --global-points is the evaluations' whole-frame search."""
    frames = shared_data / "davis/JPEGImages/480p/dog"
    points = write_points(tmp_path / "p.csv", ["frame,x,y", "0,400,250", "0,450,240"])
    base = ["track", str(frames), "--points", str(points), "--end", "5", *LAB]
    for extra, radius, redetect in (([], 3, 0.5), (["--global-points"], None, None)):
        out = tmp_path / f"out{len(extra)}"
        assert run([*base, *extra, "--out", str(out)], capsys)[0] == 0
        config = json.loads((out / "config.json").read_text())
        recorded = config["config"]["point_params"]
        assert (recorded["radius"], recorded["redetect"]) == (radius, redetect)
        assert config["points"]["mode"] == "query"
    args = cli.build_parser().parse_args([*base, "--point-window", "5", "--redetect", "0"])
    params = cli_options.tracker_config(args).point_params
    assert (params.radius, params.redetect) == (5, None)  # 0: no re-detection
    code, _, err = run([*base, "--redetect", "1.5", "--out", str(tmp_path / "bad")], capsys)
    assert "--redetect 1.5 must be a ratio in (0, 1], or 0 for no re-detection" in (
        one_line_error(code, err)
    )
    assert not (tmp_path / "bad").exists()


# -- the run folder: refusals, locks, resume, overwrite (faults) -----------------------------
clip = cli_helpers.clip
no_model = cli_helpers.no_model


@pytest.mark.faults
def test_resume_or_overwrite_never_touch_a_folder_ditf_track_did_not_write(
    clip: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    frames, mask = clip
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\chapter{One}")
    for flag in ("--resume", "--overwrite"):
        code, _, err = run(
            ["track", str(frames), "--mask", str(mask), "--out", str(thesis), flag, *LAB], capsys
        )
        line = one_line_error(code, err)
        assert f"{thesis} is not a ditf-track run folder" in line
    assert snapshot(thesis) == {"thesis.tex": b"\\chapter{One}"}
    assert not (tmp_path / "thesis.incomplete").exists()


@pytest.mark.faults
@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_track_out_that_is_or_holds_an_input(
    flag: str,
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_model: None,
) -> None:
    frames, mask = clip
    before = snapshot(tmp_path)
    for out, what in ((frames, "video"), (tmp_path, "video"), (mask, "mask 0")):
        code, _, err = run(
            ["track", str(frames), "--mask", str(mask), "--out", str(out), flag, *LAB], capsys
        )
        assert f"is or holds the {what} " in one_line_error(code, err)
    points = tmp_path / "p" / "points.csv"
    points.parent.mkdir()
    points.write_text("frame,x,y\n0,400,200\n")
    code, _, err = run(
        ["track", str(frames), "--points", str(points), "--out", str(points.parent), flag, *LAB],
        capsys,
    )
    assert "is or holds the points file" in one_line_error(code, err)
    points.unlink()
    points.parent.rmdir()
    assert snapshot(tmp_path) == before


@pytest.mark.faults
def test_second_run_into_the_same_out_is_refused_naming_the_first(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frames, mask = clip
    out = tmp_path / "masks"
    args = ["track", str(frames), "--mask", str(mask), "--out", str(out), *LAB]
    second: list[tuple[int, str]] = []

    def start_second_run(first: outputs.RunDir) -> None:
        monkeypatch.setattr(outputs, "after_lock", None)
        code = cli.main([*args, "--radius", "3"])
        second.append((code, capsys.readouterr().err))

    monkeypatch.setattr(outputs, "after_lock", start_second_run)
    code, stdout, _ = run(args, capsys)
    assert code == 0, stdout
    (code2, err2) = second[0]
    line = one_line_error(code2, err2)
    assert line == (
        f"ditf-track: error: another ditf-track run (pid {os.getpid()}) is writing {out}; wait "
        "for it to finish or pick another --out"
    )
    config = json.loads((out / "config.json").read_text())
    assert config["propagation"]["radius"] == 12  # only the first run's masks, its settings
    assert sorted(p.name for p in out.iterdir()) == [
        *(f"{i:05d}.png" for i in range(8)),
        "config.json",
    ]


class Interrupt(BaseException):
    """Stands for SIGKILL: nothing after it runs (no cleanup in except/finally of ours)."""


def interrupt_after(monkeypatch: pytest.MonkeyPatch, frames: int) -> None:
    written = []
    original = cli_track.write_mask

    def write_then_die(*args: object, **kwargs: object) -> Path:
        if len(written) == frames:
            raise Interrupt
        written.append(args[0])
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cli_track, "write_mask", write_then_die)


@pytest.mark.faults
def test_killed_run_resumes_byte_identical_and_a_stray_temp_file_is_not_published(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frames, mask = clip
    fresh = tmp_path / "fresh"
    base = ["track", str(frames), "--mask", str(mask), *LAB]
    assert run([*base, "--out", str(fresh)], capsys)[0] == 0
    out = tmp_path / "masks"
    with monkeypatch.context() as m:
        interrupt_after(m, 4)
        with pytest.raises(Interrupt):
            cli.main([*base, "--out", str(out)])
    work = tmp_path / "masks.incomplete"
    assert sorted(p.name for p in work.glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert not out.exists()
    (work / ".00004.0123456789ab.tmp.png").write_bytes(b"half a png")  # killed mid-write
    code, _, err = run([*base, "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert snapshot(out).keys() == snapshot(fresh).keys()
    for name, data in snapshot(fresh).items():
        if name.endswith(".png"):
            assert snapshot(out)[name] == data, name
    assert not work.exists()


@pytest.mark.faults
def test_resume_refuses_an_edited_mask_and_changed_settings(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frames, mask = clip
    out = tmp_path / "masks"
    base = ["track", str(frames), "--mask", str(mask), "--out", str(out), *LAB]
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        with pytest.raises(Interrupt):
            cli.main(base)
    labels = read_mask(mask).labels.copy()
    labels[:40, :40] = 1
    write_mask(mask, labels)
    code, _, err = run([*base, "--resume"], capsys)
    assert "holds a run with other settings or inputs (the mask 0 changed)" in one_line_error(
        code, err
    )
    # the finished run: "already complete" only for the same inputs and settings
    code, _, err = run([*base, "--overwrite"], capsys)
    assert code == 0, err
    code, stdout, _ = run([*base, "--resume"], capsys)
    assert code == 0
    assert "already complete" in stdout
    code, _, err = run([*base, "--resume", "--radius", "3"], capsys)
    assert "(settings.radius: None there, 3 now)" in one_line_error(code, err)


def test_config_json_holds_the_tracker_config_and_the_run_facts(
    clip: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.json's ``config`` is TrackerConfig.to_dict() of the options (what was asked); the
    rest are what the run read and resolved."""
    frames, mask = clip
    out = tmp_path / "masks"
    args = ["track", str(frames), "--mask", str(mask), "--out", str(out), *LAB]
    args += ["--radius", "3", "--label-mode", "nearest", "--end", "4", "--cycle-threshold", "-1"]
    assert run(args, capsys)[0] == 0
    recorded = json.loads((out / "config.json").read_text())
    expected = cli_options.tracker_config(cli.build_parser().parse_args(args))
    assert recorded["config"] == to_json_safe(expected.to_dict())
    assert recorded["config"]["params"]["radius"] == 3
    assert recorded["config"]["label_mode"] == "nearest"
    assert recorded["config"]["point_params"]["cycle_threshold"] is None  # negative: off
    assert recorded["config"]["features"]["preset"] == "lab"
    assert recorded["config"]["runtime"]["disk_cache"] is False
    assert recorded["propagation"] == recorded["config"]["params"]
    assert (recorded["frames"], recorded["input_size"], recorded["device"]) == (4, [64, 112], "cpu")
    assert recorded["masks"] == {"0": str(mask)}
    assert recorded["versions"]["ditf_track"]
    assert "label_mode" not in recorded  # a setting: only in ``config``


def test_config_json_records_the_profile_and_the_channels_used(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What was asked (``config.features``: the profile, the fixed channels) and what the run
    resolved (``extractor``: the profile used, every discard setting; the clip's channels)."""
    from ditf_track.testing import build_tiny_pipeline, plant_massive_channels

    folder = plant_massive_channels(build_tiny_pipeline("flux", tmp_path / "m"), (3, 11), 400.0)
    out = tmp_path / "masks"
    args = [*davis_args(shared_data, out, end=3), "--short-side", "64", "--quiet"]
    args += ["--preset", "flux", "--model", str(folder), "--k", "3", "--no-disk-cache"]
    args += ["--discard-channels", "11,3", "--discard-stage", "pre_norm"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["config"]["features"]["profile"] == "official"
    assert recorded["config"]["features"]["discard_channels"] == [3, 11]
    extractor = recorded["extractor"]
    # a 32-channel model is not FLUX.1-dev: the official profile does not apply to it
    assert extractor["profile"] == {"requested": "official", "used": "paper"}
    assert (extractor["discard_stage"], extractor["discard_channels"]) == ("pre_norm", [3, 11])
    assert recorded["massive_channels"] == [3, 11]


@pytest.mark.faults
def test_resume_may_change_where_features_are_cached(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``config.runtime`` (cache folder, disk cache) changes no result: a resume may change it."""
    frames, mask = clip
    fresh = tmp_path / "fresh"
    base = ["track", str(frames), "--mask", str(mask), *LAB]
    assert run([*base, "--out", str(fresh)], capsys)[0] == 0
    out = tmp_path / "masks"
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        with pytest.raises(Interrupt):
            cli.main([*base, "--out", str(out)])
    resumed = [*base, "--out", str(out), "--resume", "--cache-dir", str(tmp_path / "elsewhere")]
    code, _, err = run(resumed, capsys)
    assert code == 0, err
    pngs = {k: v for k, v in snapshot(fresh).items() if k.endswith(".png")}
    assert {k: v for k, v in snapshot(out).items() if k.endswith(".png")} == pngs
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["runtime"]["cache_dir"] == str(tmp_path / "elsewhere")


@pytest.mark.faults
def test_torn_run_json_is_one_line(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_model: None,
) -> None:
    frames, mask = clip
    out = tmp_path / "masks"
    work = tmp_path / "masks.incomplete"
    work.mkdir()
    (work / "run.json").write_bytes(b"")  # what a full disk left before run.json was atomic
    (work / "00000.png").write_bytes(b"")
    code, _, err = run(
        ["track", str(frames), "--mask", str(mask), "--out", str(out), "--resume", *LAB], capsys
    )
    assert "run.json is unreadable (JSONDecodeError): a torn run state" in one_line_error(code, err)


@pytest.mark.faults
def test_mask_named_like_a_frame_outside_the_selection_is_refused(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    args = ["track", str(shared_data / DOG), "--mask", str(shared_data / DOG_MASK)]
    args += ["--start", "30", "--end", "36", "--out", str(tmp_path / "o"), *LAB]
    code, _, err = run(args, capsys)
    line = one_line_error(code, err)
    assert "is named like frame 00000" in line
    assert "not among the selected frames" in line


@pytest.mark.faults
def test_wrong_size_mask_with_a_dit_preset_fails_before_any_model(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    small = tmp_path / "small.png"
    write_mask(small, np.ones((20, 30), np.uint8))
    args = ["track", str(shared_data / DOG), "--mask", str(small), "--end", "4", "--preset", "sd3"]
    code, _, err = run([*args, "--out", str(tmp_path / "o")], capsys)
    assert "is 30x20 but the video frames are 854x480" in one_line_error(code, err)
    assert not (tmp_path / "o.incomplete").exists()


@pytest.mark.faults
def test_bad_outputs_are_one_line_before_any_model(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_model: None,
) -> None:
    frames, mask = clip
    base = ["track", str(frames), "--mask", str(mask), *LAB]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = run([*base, "--out", str(a_file)], capsys)
    assert f"--out {a_file} is a file; pass a folder" in one_line_error(code, err)
    # --out . in a folder holding the video
    monkeypatch.chdir(tmp_path)
    code, _, err = run([*base, "--out", "."], capsys)
    assert "--out . is or holds the video" in one_line_error(code, err)
    # an --out under a file (like a read-only parent: the folder cannot be made)
    code, _, err = run([*base, "--out", str(a_file / "masks")], capsys)
    assert "cannot create output folder" in one_line_error(code, err)
    # a read-only parent (root ignores chmod, so the refusal is simulated)
    with monkeypatch.context() as m:

        def read_only(self: Path, *args: object, **kwargs: object) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))

        m.setattr(Path, "mkdir", read_only)
        code, _, err = run([*base, "--out", str(tmp_path / "ro" / "masks")], capsys)
    assert "cannot create output folder" in one_line_error(code, err)
    assert "Permission denied" in err
    # the overlay path too
    code, _, err = run(
        [*base, "--out", str(tmp_path / "m"), "--overlay", str(a_file / "o.mp4")], capsys
    )
    assert "cannot write --overlay" in one_line_error(code, err)
    code, _, err = run(
        [*base, "--out", str(tmp_path / "m"), "--overlay", str(frames / "00000.jpg")], capsys
    )
    assert "--overlay" in one_line_error(code, err)
    assert "would replace a file of the video" in err
    # extract: an unwritable --out is found before extracting
    code, _, err = run(["extract", str(frames), "--out", str(a_file / "f.safetensors")], capsys)
    assert "cannot write --out" in one_line_error(code, err)
    assert a_file.read_text() == "x"


@pytest.mark.faults
def test_full_disk_at_the_start_is_one_line(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_model: None,
) -> None:
    frames, mask = clip

    def full(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "masks"
    code, _, err = run(["track", str(frames), "--mask", str(mask), "--out", str(out), *LAB], capsys)
    assert "No space left on device" in one_line_error(code, err)
    assert not (tmp_path / "masks.incomplete").exists()


@pytest.mark.faults
def test_overwrite_keeps_files_the_previous_run_did_not_write(
    clip: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames, mask = clip
    out = tmp_path / "masks"
    base = ["track", str(frames), "--mask", str(mask), "--out", str(out), *LAB]
    assert run([*base, "--end", "6"], capsys)[0] == 0
    (out / "notes.txt").write_text("mine")
    Image.new("L", (4, 4)).save(out / "sketch.png")
    (out / "empty-folder-of-mine").mkdir()
    assert run([*base, "--end", "4", "--overwrite"], capsys)[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "empty-folder-of-mine").is_dir()
    assert (out / "sketch.png").is_file()
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert json.loads((out / "config.json").read_text())["frames"] == 4


@pytest.mark.faults
def test_sigkilled_run_resumes_byte_identical(
    clip: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real SIGKILL (after 3 masks): the lock file and owner note it leaves block nothing."""
    import signal
    import subprocess
    import sys

    frames, mask = clip
    base = ["track", str(frames), "--mask", str(mask), *LAB]
    out = tmp_path / "masks"
    driver = (
        "import os, signal, sys\n"
        "from ditf_track import cli\n"
        "from ditf_track.cli import track\n"
        "real, n = track.write_mask, [0]\n"
        "def write(*a, **k):\n"
        "    if n[0] == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    n[0] += 1\n"
        "    return real(*a, **k)\n"
        "track.write_mask = write\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run(
        [sys.executable, "-c", driver, *base, "--out", str(out)], env=env, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    work = tmp_path / "masks.incomplete"
    assert (work / ".ditf-track.lock").exists()
    assert len(list(work.glob("0*.png"))) == 3
    code, _, err = run([*base, "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    fresh = tmp_path / "fresh"
    assert run([*base, "--out", str(fresh)], capsys)[0] == 0
    assert {k: v for k, v in snapshot(out).items() if k.endswith(".png")} == {
        k: v for k, v in snapshot(fresh).items() if k.endswith(".png")
    }
    assert sorted(snapshot(out)) == sorted(snapshot(fresh))


# -- media and devices (faults) ----------------------------------------------------------
damaged = test_video_readers.damaged


@pytest.fixture(scope="module")
def first_mask(tmp_path_factory: pytest.TempPathFactory) -> Path:
    labels = np.zeros((272, 640), np.uint8)
    labels[100:180, 200:400] = 1
    return write_mask(tmp_path_factory.mktemp("mask") / "first.png", labels)


@pytest.mark.faults
def test_cli_damaged_video_one_line_without_decoder_chatter(
    damaged: tuple[Path, int],
    first_mask: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    path, first_bad = damaged
    base = ["track", str(path), "--mask", str(first_mask), "--preset", "lab", "--quiet"]
    base += ["--short-side", "64", "--no-disk-cache"]
    assert cli.main([*base, "--end", "8", "--out", str(tmp_path / "ok")]) == 0
    assert len(list((tmp_path / "ok").glob("*.png"))) == 8
    capfd.readouterr()
    assert cli.main([*base, "--end", "10", "--out", str(tmp_path / "bad")]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"ditf-track: error: video {path} could not be decoded at frame ")
    assert f" at frame {first_bad} of 250 " in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.faults
def test_cli_truncated_video_one_line_without_decoder_chatter(
    shared_data: Path, first_mask: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = (shared_data / "videos" / "bikes.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: lost
    args = ["track", str(truncated), "--mask", str(first_mask), "--preset", "lab", "--end", "8"]
    assert cli.main([*args, "--out", str(tmp_path / "out")]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"ditf-track: error: video {truncated} cannot be opened")


@pytest.mark.faults
def test_cli_refuses_jpeg_mask_in_one_line(
    shared_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with Image.open(shared_data / DOG_MASK) as image:
        image.save(tmp_path / "first.jpg", "JPEG", quality=90)
    args = ["track", str(shared_data / DOG), "--mask", str(tmp_path / "first.jpg")]
    args += ["--preset", "lab", "--end", "3", "--out", str(tmp_path / "out")]
    assert cli.main(args) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert "first.jpg is a JPEG" in err
    assert "save the mask losslessly as a PNG: a palette PNG with one id per object" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.faults
def test_lab_with_device_cuda_says_cpu_and_records_it(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["track", str(shared_data / DOG), "--mask", str(shared_data / DOG_MASK)]
    args += ["--preset", "lab", "--device", "cuda", "--end", "3", "--short-side", "64"]
    with caplog.at_level(logging.WARNING, logger="ditf_track"):
        assert cli.main([*args, "--quiet", "--out", str(tmp_path / "out")]) == 0
    said = [r.getMessage() for r in caplog.records if "on the CPU" in r.getMessage()]
    assert said == [
        "the lab preset computes colours on the CPU (OpenCV); device 'cuda' is not used"
    ]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["device"] == "cpu"


@pytest.mark.faults
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_dit_with_device_cuda_without_cuda_is_one_clear_line(
    shared_data: Path,
    tmp_path: Path,
    tiny_model: Callable[..., Path],
    capfd: pytest.CaptureFixture[str],
) -> None:
    model = tiny_model("flux")
    args = ["track", str(shared_data / DOG), "--mask", str(shared_data / DOG_MASK)]
    args += ["--model", str(model), "--family", "flux", "--t", "90", "--k", "3"]
    args += ["--device", "cuda", "--end", "3", "--out", str(tmp_path / "out")]
    capfd.readouterr()  # building the tiny model draws a progress bar
    assert cli.main(args) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert "device 'cuda' was asked for but CUDA is not available" in err
    assert not (tmp_path / "out").exists()


# -- model loading (faults) --------------------------------------------------------------


REPO_ROOT = Path(__file__).resolve().parents[1]


DEFAULT_HUB_ID = "PixArt-alpha/PixArt-XL-2-1024-MS"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port that refuses connections: bound, never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.faults
def test_unreachable_hub_is_one_fast_line(
    shared_data: Path, tmp_path: Path, closed_port: int
) -> None:
    """Default preset, no network, HF_HUB_OFFLINE unset: once 29 s and 22 lines, now one."""
    unset = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port}",
        HF_HOME=str(tmp_path / "hf-home"),
        DITF_TRACK_CACHE=str(tmp_path / "cache"),
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
    )
    # time main() only: importing torch on a busy CI machine is not what is measured here
    script = (
        "import sys, time\n"
        "from ditf_track.cli import main\n"
        "start = time.perf_counter()\n"
        "code = main(sys.argv[1:])\n"
        "print(f'elapsed={time.perf_counter() - start:.2f}')\n"
        "sys.exit(code)\n"
    )
    out = tmp_path / "masks"
    proc = subprocess.run(
        [sys.executable, "-c", script, *davis_args(shared_data, out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("ditf-track: error: could not reach the Hugging Face Hub")
    assert f"127.0.0.1:{closed_port}" in line
    assert "offline mode" not in line
    assert f"hf download {DEFAULT_HUB_ID} --local-dir PATH" in line
    assert "--model PATH" in line
    assert "--local-files-only" in line
    assert "--preset lab" in line
    elapsed = float(proc.stdout.strip().rsplit("elapsed=", 1)[1])
    assert elapsed < 10, f"{elapsed:.1f} s to say the Hub cannot be reached"
    assert not out.exists()


@pytest.mark.faults
def test_offline_mode_is_named_only_when_on(
    shared_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # the suite's HF_HUB_OFFLINE=1 is the user's switch here
    code = cli.main([*davis_args(shared_data, tmp_path / "out")])
    err = capfd.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "offline mode is on (HF_HUB_OFFLINE / --local-files-only)" in err
    assert f"hf download {DEFAULT_HUB_ID} --local-dir PATH" in err
    assert "--preset lab" in err


@pytest.mark.faults
def test_damaged_model_through_the_cli(
    tiny_model: Callable[..., Path],
    shared_data: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    folder = copy_model(tiny_model, "flux", tmp_path / "model")
    victim = folder / "transformer/diffusion_pytorch_model.safetensors"
    truncate(victim)
    args = [*davis_args(shared_data, tmp_path / "out"), "--short-side", "64"]
    args += ["--model", str(folder), "--family", "flux", "--t", "90", "--k", "2"]
    capfd.readouterr()  # building the tiny model prints its own bars
    code = cli.main([*args, "--cache-dir", str(tmp_path / "c")])
    err = capfd.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ditf-track: error: model file {victim} is damaged")


@pytest.mark.faults
def test_small_object_warning_does_not_advise_the_default(
    shared_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    labels = read_mask(shared_data / "davis/Annotations/480p/dog/00000.png").labels.copy()
    labels[10:12, 10:12] = 2  # 4 px, far below one feature cell
    mask = write_mask(tmp_path / "00000.png", labels)
    for mode, advice in (("area", False), ("nearest", True)):
        args = davis_args(shared_data, tmp_path / mode, end=3)
        args[args.index("--mask") + 1] = str(mask)
        code = cli.main([*args, "--preset", "lab", "--short-side", "64", "--label-mode", mode])
        err = capfd.readouterr().err
        assert code == 0, err
        (line,) = [line for line in err.splitlines() if line.strip()]
        assert line.startswith("ditf-track: WARNING: object(s) 2 in ")
        assert ("use area labels" in line) is advice


# -- scene cuts: nothing carried across a shot change (bikes.mp4: cuts at 30, 76, ...) --------


BIKES = "videos/bikes.mp4"


def _bikes_masks(tmp_path: Path) -> tuple[Path, Path]:
    """A rectangle on frame 0 (object 1) and another on frame 40 (object 2), 640x272."""
    first = np.zeros((272, 640), np.uint8)
    first[100:200, 250:400] = 1
    forty = np.zeros((272, 640), np.uint8)
    forty[150:250, 100:300] = 2
    return write_mask(tmp_path / "first.png", first), write_mask(tmp_path / "forty.png", forty)


def _ids_per_frame(out: Path, count: int) -> list[tuple[int, ...]]:
    """The object ids of each PNG of ``out``, in frame order (there must be ``count``)."""
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == count
    return [tuple(int(i) for i in np.unique(read_mask(p).labels) if i) for p in pngs]


def test_masks_stop_at_scene_cuts_until_an_annotation_on_their_side(
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bikes.mp4 frames 0..79 (cuts at 30 and 76): a mask on frame 0 fills 0-29 only; one more
    on frame 40 fills 30-75 (backward to 30, forward to 75); 76+ stay empty, one PNG each.
    --across-cuts writes byte for byte what a run without cut handling writes."""
    first, forty = _bikes_masks(tmp_path)
    base = ["track", str(shared_data / BIKES), "--end", "80", *LAB, "--short-side", "48"]
    code, stdout, _ = run([*base, "--mask", str(first), "--out", str(tmp_path / "one")], capsys)
    assert code == 0
    assert "80 masks (objects 1; 50 empty: no annotation in their shot)" in stdout
    assert "(features: 30 extracted, 0 from the cache)" in stdout
    assert _ids_per_frame(tmp_path / "one", 80) == [(1,)] * 30 + [()] * 50
    config = json.loads((tmp_path / "one" / "config.json").read_text())
    assert (config["cuts"], config["across_cuts"]) == ([30, 76], False)

    both = [*base, "--mask", str(first), "--mask", f"40:{forty}"]
    assert run([*both, "--out", str(tmp_path / "two")], capsys)[0] == 0
    assert _ids_per_frame(tmp_path / "two", 80) == [(1,)] * 30 + [(2,)] * 46 + [()] * 4

    assert run([*both, "--across-cuts", "--out", str(tmp_path / "across")], capsys)[0] == 0
    across = json.loads((tmp_path / "across" / "config.json").read_text())
    assert (across["cuts"], across["across_cuts"]) == ([30, 76], True)
    assert _ids_per_frame(tmp_path / "across", 80) == [(1,)] * 40 + [(2,)] * 40
    monkeypatch.setattr(cli_track, "detect_cuts", lambda *_a, **_k: [])  # no cut handling
    assert run([*both, "--out", str(tmp_path / "none")], capsys)[0] == 0
    for t in range(80):
        name = f"{t:05d}.png"
        assert (tmp_path / "across" / name).read_bytes() == (tmp_path / "none" / name).read_bytes()


def test_cuts_are_detected_before_the_model_loads_with_a_bar_and_a_log_line(
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A strided range from frame 20: the cut at 30 separates 28 and 32, the one at 76 lies
    after the last selected frame (44) but is within the range read (20..45)."""
    first, _ = _bikes_masks(tmp_path)
    order: list[str] = []
    real_detect, real_build = cli_track.detect_cuts, cli_track.build_tracker
    monkeypatch.setattr(
        cli_track, "detect_cuts", lambda *a, **k: order.append("cuts") or real_detect(*a, **k)
    )
    monkeypatch.setattr(
        cli_track, "build_tracker", lambda *a, **k: order.append("model") or real_build(*a, **k)
    )
    bars: list[Any] = []

    class Bar:  # tqdm hides its bars off a terminal
        def __init__(self, **kwargs: Any) -> None:
            self.desc, self.total, self.n = kwargs["desc"], kwargs["total"], 0
            bars.append(self)

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            order.append(f"{self.desc} closed")

    monkeypatch.setattr(cli_track, "tqdm", Bar)
    out = tmp_path / "strided"
    args = ["--verbose", "track", str(shared_data / BIKES), "--start", "20", "--end", "46"]
    args += ["--stride", "4", "--mask", f"0:{first}", "--out", str(out)]
    args += [a for a in LAB if a != "--quiet"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert order[:3] == ["cuts", "cuts closed", "model"]
    # every frame of 20..45, not the 7 selected
    assert (bars[0].desc, bars[0].total, bars[0].n) == ("cuts", 26, 26)
    assert (
        "ditf-track: INFO: scene cuts at frames 30 (file indices); nothing is carried across "
        "them (--across-cuts to carry it)" in err
    )
    assert json.loads((out / "config.json").read_text())["cuts"] == [30]
    # selected 20 24 28 | 32 36 40 44
    assert _ids_per_frame(out, 7) == [(1,)] * 3 + [()] * 4


def test_a_clip_without_cuts_is_byte_identical_with_and_without_cut_handling(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = davis_args(shared_data, tmp_path / "on", end=8)
    assert run([*base, *LAB], capsys)[0] == 0
    off = davis_args(shared_data, tmp_path / "off", end=8)
    assert run([*off, *LAB, "--across-cuts"], capsys)[0] == 0
    assert json.loads((tmp_path / "on" / "config.json").read_text())["cuts"] == []
    names = sorted(p.name for p in (tmp_path / "on").glob("*.png"))
    assert len(names) == 8
    for name in names:
        assert (tmp_path / "on" / name).read_bytes() == (tmp_path / "off" / name).read_bytes()


def test_points_are_not_carried_across_scene_cuts(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A point queried on frame 10 (shot 0-29) and one on frame 40 (shot 30-75): each is
    invisible, at NaN, outside its shot; --across-cuts tracks both through every frame."""
    points = write_points(tmp_path / "points.csv", ["frame,x,y,id", "10,320,150,1", "40,200,200,2"])
    base = ["track", str(shared_data / BIKES), "--end", "80", "--points", str(points)]
    base += [*LAB, "--short-side", "48"]
    assert run([*base, "--out", str(tmp_path / "cut")], capsys)[0] == 0
    with np.load(tmp_path / "cut" / "tracks.npz") as npz:
        tracks, occluded = npz["tracks"], npz["occluded"]
    shot = np.zeros((2, 80), bool)
    shot[0, :30] = shot[1, 30:76] = True
    assert np.isfinite(tracks[shot]).all()
    assert np.isnan(tracks[~shot]).all()
    assert occluded[~shot].all()
    assert not occluded[0, 10]
    assert not occluded[1, 40]
    with (tmp_path / "cut" / "tracks.csv").open() as fh:
        rows = {(int(r["frame"]), int(r["id"])): r for r in csv.DictReader(fh)}
    assert (rows[50, 1]["visible"], rows[50, 1]["x"]) == ("0", "nan")
    assert rows[20, 1]["x"] != "nan"

    assert run([*base, "--across-cuts", "--out", str(tmp_path / "across")], capsys)[0] == 0
    with np.load(tmp_path / "across" / "tracks.npz") as npz:
        assert np.isfinite(npz["tracks"]).all()
        np.testing.assert_array_equal(npz["tracks"][shot], tracks[shot])


# -- precomputed features: track --features --------------------------------------------------
#: ``extract`` with the lab preset at short side 64 (a 4 x 7 grid on 854 x 480 frames).
LAB_EXTRACT = ["--preset", "lab", "--short-side", "64"]
#: ``track --features``: the model options are the file's, so only these remain.
FEATURES_RUN = ["--no-disk-cache", "--quiet"]


def extract_lab(
    frames: Path, out: Path, capsys: pytest.CaptureFixture[str], *selection: str
) -> Path:
    code, _, err = run(
        ["extract", str(frames), *selection, "--out", str(out), *LAB_EXTRACT], capsys
    )
    assert code == 0, err
    return out


def test_track_features_gives_the_pngs_and_tracks_of_the_same_features(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``extract --preset lab`` then ``track --features`` writes byte for byte the masks and
    tracks of ``track --preset lab``, for the whole file and for ``--start 2 --end 6`` (which
    reads rows 2..5 of an 8-frame file: row 0 would differ, or rows 0..3 of a file extracted
    with ``--start 2 --end 6``); config.json records the file."""
    frames = shared_data / DOG
    feats = extract_lab(frames, tmp_path / "dog.safetensors", capsys, "--end", "8")
    part = extract_lab(frames, tmp_path / "part.safetensors", capsys, "--start", "2", "--end", "6")
    points = write_points(tmp_path / "p.csv", ["frame,x,y,id", "1,400,250,3", "2,450,240,4"])
    whole, selected = ["--end", "8"], ["--start", "2", "--end", "6"]
    for selection, file in ((selected, feats), (selected, part), (whole, feats)):
        base = [
            "track",
            str(frames),
            "--mask",
            f"0:{shared_data / DOG_MASK}",
            "--points",
            str(points),
            *selection,
        ]
        lab_out, feats_out = tmp_path / "lab", tmp_path / "feats"
        code, _, err = run([*base, "--out", str(lab_out), *LAB, "--overwrite"], capsys)
        assert code == 0, err
        code, stdout, err = run(
            [
                *base,
                "--out",
                str(feats_out),
                "--features",
                str(file),
                *FEATURES_RUN,
                "--overwrite",
            ],
            capsys,
        )
        assert code == 0, err
        count = 8 if selection == whole else 4
        assert f"wrote {count} masks (objects 1) and 2 point tracks" in stdout
        assert f"(features: {count} frames read from {file})" in stdout
        lab_files, feats_files = snapshot(lab_out), snapshot(feats_out)
        assert sorted(lab_files) == sorted(feats_files)
        assert len([n for n in lab_files if n.endswith(".png")]) == count
        for name in lab_files:
            if name != "config.json":
                assert feats_files[name] == lab_files[name], name
    config = json.loads((feats_out / "config.json").read_text())
    assert config["config"]["features"]["features_file"] == str(feats)
    assert config["config"]["features"]["preset"] is None
    stat = feats.stat()
    recorded = config["extractor"]
    assert recorded["extractor"] == "precomputed"
    assert recorded["path"] == str(feats.resolve())
    assert (recorded["size"], recorded["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    assert recorded["shape"] == [8, 3, 4, 7]
    assert config["fingerprint"]["inputs"]["features file"] == recorded["fingerprint"]
    assert config["input_size"] == [64, 112]


def test_track_features_from_a_bf16_file_without_metadata(
    clip: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any safetensors file with a float ``features`` (T, C, h, w), T the video's frames: a
    bf16 file of 5 channels gives the masks of the float32 file of the same (rounded) values."""
    frames, mask = clip
    raw = torch.randn(8, 5, 4, 7, generator=torch.Generator().manual_seed(1)).bfloat16()
    bf16, fp32 = tmp_path / "bf16.safetensors", tmp_path / "fp32.safetensors"
    save_file({"features": raw}, str(bf16))
    save_file({"features": raw.float()}, str(fp32))
    outs = []
    for feats in (bf16, fp32):
        out = tmp_path / feats.stem
        args = ["track", str(frames), "--mask", str(mask), "--out", str(out), "--features"]
        code, stdout, err = run([*args, str(feats), *FEATURES_RUN], capsys)
        assert code == 0, err
        assert "wrote 8 masks" in stdout
        outs.append(snapshot(out))
    assert json.loads(outs[0]["config.json"])["extractor"]["dtype"] == "BF16"
    assert {n: b for n, b in outs[0].items() if n.endswith(".png")} == {
        n: b for n, b in outs[1].items() if n.endswith(".png")
    }


@pytest.mark.faults
def test_track_features_faults_are_one_line_before_the_run_folder(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_model: None,
) -> None:
    """Each fault of --features is one line naming the problem and the fix, and leaves no run
    folder: model options, a missing, damaged or wrong file, a frame it lacks, another grid."""
    frames, mask = clip
    good = torch.rand(8, 3, 4, 7)
    files = tmp_path / "files"
    files.mkdir()

    def made(name: str, tensors: dict[str, torch.Tensor]) -> str:
        save_file(tensors, str(files / name))
        return str(files / name)

    corrupt = files / "corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 64)
    part = files / "part.safetensors"  # as extract --start 2 --end 6 writes it
    meta = {"ditf_track": json.dumps({"frame_indices": [2, 3, 4, 5], "stride": 16})}
    save_file({"features": good[2:6]}, str(part), metadata=meta)
    cases = [
        (["--preset", "lab"], made("ok.safetensors", {"features": good}), "drop --preset "),
        (["--t", "90", "--k", "3"], str(files / "ok.safetensors"), "drop --t, --k "),
        (["--short-side", "64"], str(files / "ok.safetensors"), "drop --short-side "),
        ([], str(files / "missing.safetensors"), "cannot read features file"),
        ([], str(corrupt), "is not a readable safetensors file"),
        ([], made("named.safetensors", {"maps": good}), "holds no tensor named 'features'"),
        ([], made("int.safetensors", {"features": good.int()}), "is I32, not a float tensor"),
        ([], made("3d.safetensors", {"features": good[0]}), "not (T, C, h, w)"),
        ([], made("7.safetensors", {"features": good[:7]}), "holds 7 frames but"),
        (
            [],
            made("grid.safetensors", {"features": good[..., :4].contiguous()}),
            "4x4 grid (h x w) does not",
        ),
        ([], str(part), "has no features for frame 0 (it holds frames 2-5)"),
    ]
    for extra, feats, message in cases:
        out = tmp_path / "out"
        args = ["track", str(frames), "--mask", str(mask), "--out", str(out), "--features", feats]
        code, _, err = run([*args, *extra, "--quiet"], capsys)
        line = one_line_error(code, err)
        assert message in line, line
        assert not out.exists(), feats
        assert not out.with_name("out.incomplete").exists(), feats


@pytest.mark.faults
def test_track_features_resume_refuses_another_features_file(
    clip: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file's fingerprint (header, size, ends) is part of the run's: a resume with the file
    rewritten (same shape) is refused, the same file is 'already complete'."""
    frames, mask = clip
    feats = tmp_path / "f.safetensors"
    save_file({"features": torch.rand(8, 3, 4, 7)}, str(feats))
    out = tmp_path / "out"
    base = ["track", str(frames), "--mask", str(mask), "--out", str(out), "--features", str(feats)]
    code, _, err = run([*base, *FEATURES_RUN], capsys)
    assert code == 0, err
    code, stdout, _ = run([*base, *FEATURES_RUN, "--resume"], capsys)
    assert code == 0
    assert "already complete" in stdout
    save_file({"features": torch.rand(8, 3, 4, 7)}, str(feats))
    code, _, err = run([*base, *FEATURES_RUN, "--resume"], capsys)
    assert "(the features file changed)" in one_line_error(code, err)
