"""The main job end to end: `ditf-track VIDEO --mask FIRST.png` with a tiny DiT and with lab."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from ditf_track import cli
from ditf_track import extractor as extractor_module
from ditf_track.cli import _options as cli_options
from ditf_track.features import FeatureMaps
from ditf_track.masks import DAVIS_PALETTE, read_mask, write_mask


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


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
    assert config["propagation"] == {"n_context": 7, "radius": 12, "topk": 5, "temperature": 0.1}
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
    from ditf_track.video import open_video

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

    def extract(self, images: Any, *, massive_channels: Any = None) -> FeatureMaps:
        found = (min(len(images), 3) - 1,) if massive_channels is None else massive_channels
        maps = self.inner.extract(images, massive_channels=found)
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
