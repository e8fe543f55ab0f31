"""`ditf-track match` end to end on a tiny Flux: files, columns, the PNG, and bad input."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import test_dinov2
from PIL import Image

from ditf_track import cli

tiny_dinov2 = test_dinov2.tiny_dinov2
DOG = "davis/JPEGImages/480p/dog"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def images(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A real frame (854x480) and a smaller later frame (427x240), so the sizes differ."""
    a = shared_data / DOG / "00003.jpg"
    b = tmp_path / "b.png"
    with Image.open(shared_data / DOG / "00008.jpg") as im:
        im.resize((427, 240)).save(b)
    return a, b


def model_args(tiny_model: Callable[..., Path]) -> list[str]:
    folder = str(tiny_model("flux"))
    return ["--model", folder, "--family", "flux", "--t", "260", "--k", "3", "--long-side", "64"]


def test_match_points(
    images: tuple[Path, Path],
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = images
    points = tmp_path / "points.csv"
    points.write_text("id,x,y\nnose,420,200\ntail,100.5,300\n")
    out = tmp_path / "out"
    args = ["match", str(a), str(b), "--points", str(points), "--out", str(out)]
    code, stdout, _ = run([*args, *model_args(tiny_model)], capsys)
    assert code == 0
    assert "2 points matched" in stdout
    rows = list(csv.DictReader((out / "matches.csv").open()))
    assert list(rows[0]) == ["id", "xa", "ya", "xb", "yb", "score"]
    assert [r["id"] for r in rows] == ["nose", "tail"]
    assert (float(rows[1]["xa"]), float(rows[1]["ya"])) == (100.5, 300.0)
    for r in rows:
        assert 0 <= float(r["xb"]) <= 426
        assert 0 <= float(r["yb"]) <= 239
        assert -1.0 <= float(r["score"]) <= 1.0
    with Image.open(out / "matches.png") as png:
        assert png.size == (854 + 427, 480)  # side by side, top-aligned
        pixels = np.asarray(png.convert("RGB"))
    assert pixels[400:, 854:].min() == 255  # white below the shorter image B
    config = json.loads((out / "config.json").read_text())
    assert config["mode"] == "points"
    assert config["image_hw"] == [[480, 854], [240, 427]]
    assert config["matcher"]["long_side"] == 64
    assert config["matcher"]["extractor"]["family"] == "flux"
    assert config["discarded_channels"] == []
    assert "model_revision" in config
    assert config["versions"]["ditf_track"]
    assert not any(p.name.endswith(".incomplete") for p in tmp_path.iterdir())


def test_match_dense(
    images: tuple[Path, Path],
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = images
    out = tmp_path / "dense"
    args = ["match", str(a), str(b), "--dense", "12", "--refine", "--out", str(out)]
    code, stdout, _ = run([*args, *model_args(tiny_model)], capsys)
    assert code == 0
    rows = list(csv.DictReader((out / "matches.csv").open()))
    assert list(rows[0]) == ["xa", "ya", "xb", "yb", "score"]
    assert 1 <= len(rows) <= 12
    assert f"{len(rows)} matches" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["mode"] == "dense"
    assert config["matcher"]["refine"] == {"radius": 7, "temperature": 0.02}
    # a second run into the same folder needs --overwrite
    code, _, err = run([*args, *model_args(tiny_model)], capsys)
    assert code == 1
    assert "--overwrite" in err


def test_match_with_dinov2(
    images: tuple[Path, Path],
    tiny_model: Callable[..., Path],
    tiny_dinov2: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = images
    out = tmp_path / "fused"
    args = ["match", str(a), str(b), "--dense", "8", "--out", str(out)]
    fusion = ["--dinov2", str(tiny_dinov2), "--dinov2-layer", "2", "--dinov2-size", "112"]
    code, _, _ = run([*args, *fusion, "--pca-dim", "16", *model_args(tiny_model)], capsys)
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["matcher"]["dinov2"]["layer"] == 2
    assert config["matcher"]["dinov2"]["image_size"] == 112
    assert config["pca_dim"] == 16  # the tiny Flux has 32 channels: reduced to 16
    assert config["descriptor_dim"] == 16 + test_dinov2.HIDDEN


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("unreadable", "cannot be read as an image"),
        ("outside", r"point 1 \(x=900, y=10\) lies outside image A"),
        ("columns", r"lacks column\(s\) y"),
        ("refine", "--no-upsample"),
        ("missing", "does not exist"),
    ],
)
def test_match_bad_input_is_one_line(
    setup: str,
    message: str,
    images: tuple[Path, Path],
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = images
    points = tmp_path / "points.csv"
    points.write_text("x,y\n10,10\n900,10\n" if setup == "outside" else "x,y\n10,10\n")
    extra: list[str] = []
    if setup == "unreadable":
        b = tmp_path / "broken.jpg"
        b.write_text("not an image")
    elif setup == "columns":
        points.write_text("x,z\n10,10\n")
    elif setup == "refine":
        extra = ["--refine"]
    elif setup == "missing":
        a = tmp_path / "nope.jpg"
    out = tmp_path / "out"
    args = ["match", str(a), str(b), "--points", str(points), "--out", str(out), *extra]
    code, _, err = run([*args, *model_args(tiny_model)], capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("ditf-track: error: ")
    import re

    assert re.search(message, err), err
    assert not out.exists()
