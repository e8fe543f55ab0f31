"""Media faults: lossy masks, damaged videos, native decoder chatter, overlay codec, CLI sizes."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import random
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditf_track import cli
from ditf_track.errors import InputError
from ditf_track.masks import DAVIS_PALETTE, read_mask, write_mask
from ditf_track.video import open_video, write_overlay_video

PALETTE = np.frombuffer(DAVIS_PALETTE, np.uint8).reshape(256, 3)
DOG_MASK = "davis/Annotations/480p/dog/00000.png"  # one object, binary L {0, 255}
BIKE_MASK = "davis2017_firstframe/Annotations/480p/bike-packing/00000.png"  # 2 objects, P
# Lossy colour masks with more than 254 colours fail on the object limit, with the same fix.
LOSSY = r"(looks lossy|more than 254 objects \(a lossy).*palette PNG with one id per object"
MASK_FOLDERS = (
    "davis/Annotations/480p",
    "davis/Predictions/osvos/480p",
    "davis2017_firstframe/Annotations/480p",
    "vspw_firstframe/Annotations",
)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded.load()
        return decoded.copy()


def _renderings(path: Path) -> list[Image.Image]:
    """The mask as stored, and as an RGB image in its DAVIS colours (a colour-coded mask)."""
    with Image.open(path) as image:
        image.load()
        labels = np.asarray(image.convert("L") if image.mode == "L" else image)
    ids = (labels > 0).astype(np.uint8) if image.mode == "L" else labels
    return [image, Image.fromarray(PALETTE[ids])]


def _all_masks(shared_data: Path) -> list[Path]:
    return sorted(p for folder in MASK_FOLDERS for p in (shared_data / folder).rglob("*.png"))


# ---- lossy masks ------------------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.parametrize("source", [DOG_MASK, BIKE_MASK])
@pytest.mark.parametrize("quality", [75, 95, 100])
def test_jpeg_mask_is_refused_as_jpg_and_as_resaved_png(
    tmp_path: Path, shared_data: Path, source: str, quality: int
) -> None:
    rgb = _renderings(shared_data / source)[1]
    grey = rgb.convert("L")
    rgb.save(tmp_path / "mask.jpg", "JPEG", quality=quality)
    with pytest.raises(InputError, match=r"mask\.jpg is a JPEG.*palette PNG"):
        read_mask(tmp_path / "mask.jpg")
    rgb.save(tmp_path / "disguised.png", "JPEG", quality=quality)
    with pytest.raises(InputError, match=r"holds JPEG data.*palette PNG"):
        read_mask(tmp_path / "disguised.png")
    for name, image in (("rgb.png", rgb), ("grey.png", grey)):
        _jpeg(image, quality).save(tmp_path / name)  # decoded JPEG re-saved losslessly
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(InputError, match=LOSSY) as info:
                read_mask(tmp_path / name)
        assert "\n" not in str(info.value)


def test_real_masks_first_and_last_accepted_also_as_rgb(tmp_path: Path, shared_data: Path) -> None:
    folders = sorted({p.parent for p in _all_masks(shared_data)})
    assert len(folders) == 12
    for folder in folders:
        files = sorted(folder.glob("*.png"))
        for path in {files[0], files[-1]}:
            rgb = _renderings(path)[1]
            expected = read_mask(path)
            rgb.save(tmp_path / "rgb.png")
            with pytest.warns(UserWarning, match="DAVIS palette"):
                back = read_mask(tmp_path / "rgb.png")
            np.testing.assert_array_equal(back.labels, expected.labels)


@pytest.mark.slow
def test_every_real_mask_accepted(tmp_path: Path, shared_data: Path) -> None:
    masks = _all_masks(shared_data)
    assert len(masks) == 462
    for path in masks:
        mask = read_mask(path)
        assert mask.object_ids, path


# ---- damaged videos ---------------------------------------------------------------------------


def _damage(src: Path, dst: Path, first_packet: int, packets: int = 40) -> int:
    """Copy ``src`` with random bytes over video packets ``first_packet..+packets`` (decode
    order); returns the smallest frame index (display order) among them."""
    av = pytest.importorskip("av")
    data = bytearray(src.read_bytes())
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        rate, base = stream.average_rate, stream.time_base
        found = [(p.pos, p.size, p.pts) for p in container.demux(stream) if p.size]
    rng = random.Random(0)
    damaged = found[first_packet : first_packet + packets]
    for pos, size, _ in damaged:
        data[pos : pos + size] = bytes(rng.randrange(256) for _ in range(size))
    dst.write_bytes(bytes(data))
    return min(round(pts * base * rate) for _, _, pts in damaged)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, int]:
    """bikes.mp4 damaged from packet 9 on: frames 0..8 intact, frame 9 the first lost."""
    path = tmp_path_factory.mktemp("damaged") / "bikes.mp4"
    first_bad = _damage(shared_data / "videos" / "bikes.mp4", path, first_packet=9)
    assert first_bad == 9
    return path, first_bad


@pytest.fixture(scope="module")
def first_mask(tmp_path_factory: pytest.TempPathFactory) -> Path:
    labels = np.zeros((272, 640), np.uint8)
    labels[100:180, 200:400] = 1
    return write_mask(tmp_path_factory.mktemp("mask") / "first.png", labels)


@pytest.mark.faults
def test_intact_range_of_damaged_video_reads_and_damage_is_named(
    damaged: tuple[Path, int], shared_data: Path
) -> None:
    path, first_bad = damaged
    with open_video(shared_data / "videos" / "bikes.mp4", end=first_bad, backend="pyav") as ref:
        expected = ref.read_batch(range(first_bad))
    with open_video(path, end=first_bad) as source:  # decord fails here: falls back
        np.testing.assert_array_equal(source.read_batch(range(first_bad)), expected)
        assert source.backend == "pyav"
    with (
        open_video(path, end=first_bad + 3) as source,
        pytest.raises(InputError, match=f"could not be decoded at frame {first_bad} of 250"),
    ):
        source.read_batch(range(first_bad + 3))


@pytest.mark.faults
def test_decord_failure_on_intact_frames_falls_back(
    monkeypatch: pytest.MonkeyPatch, shared_data: Path
) -> None:
    """decord's read-ahead thread can fail on damage far beyond the frames asked for."""
    decord = pytest.importorskip("decord")

    def failing(self: object, indices: list[int]) -> None:
        raise decord.DECORDError("Check failed: avcodec_send_packet Error sending packet")

    monkeypatch.setattr(decord.VideoReader, "get_batch", failing)
    with open_video(shared_data / "videos" / "bikes.mp4", end=8) as source:
        frames = source.read_batch(range(8))
        assert source.backend == "pyav"
    with open_video(shared_data / "videos" / "bikes.mp4", end=8, backend="pyav") as ref:
        np.testing.assert_array_equal(frames, ref.read_batch(range(8)))


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


# ---- overlay video ----------------------------------------------------------------------------


def test_overlay_is_h264_for_odd_sizes_with_the_core_install(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    av = pytest.importorskip("av")
    real_find_spec = importlib.util.find_spec

    def core_only(name: str, *args: object) -> object:
        return None if name == "imageio_ffmpeg" else real_find_spec(name, *args)  # dev extra

    monkeypatch.setattr(importlib.util, "find_spec", core_only)
    with open_video(shared_data / "davis" / "JPEGImages" / "480p" / "blackswan", end=5) as source:
        frames = [frame[: 481 - 2, :853] for frame in source]  # 479 x 853: both sides odd
    labels = read_mask(shared_data / "davis" / "Annotations" / "480p" / "blackswan" / "00000.png")
    masks = [labels.labels[:479, :853]] * 5
    out = write_overlay_video(tmp_path / "overlay.mp4", frames, masks, None, fps=24)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.height, stream.width) == (480, 854)  # padded by one row and column
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(decoded) == 5
    # the padding repeats the last row/column; the picture is the input's
    assert np.abs(decoded[2][479, :853].astype(int) - frames[2][478]).mean() < 8
    assert np.abs(decoded[2][:479, 853].astype(int) - frames[2][:, 852]).mean() < 8
    background = masks[2] == 0  # the object is tinted
    assert np.abs(decoded[2][:479, :853][background].astype(int) - frames[2][background]).mean() < 4


# ---- command line: mask, sizes, device ---------------------------------------------------------

DOG_FRAMES = "davis/JPEGImages/480p/dog"


@pytest.mark.faults
def test_cli_refuses_jpeg_mask_in_one_line(
    shared_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with Image.open(shared_data / DOG_MASK) as image:
        image.save(tmp_path / "first.jpg", "JPEG", quality=90)
    args = ["track", str(shared_data / DOG_FRAMES), "--mask", str(tmp_path / "first.jpg")]
    args += ["--preset", "lab", "--end", "3", "--out", str(tmp_path / "out")]
    assert cli.main(args) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert "first.jpg is a JPEG" in err
    assert "save the mask losslessly as a PNG: a palette PNG with one id per object" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.faults
@pytest.mark.parametrize("value", ["0", "-4"])
@pytest.mark.parametrize("command", ["track", "extract", "eval davis", "eval tapvid"])
def test_short_side_below_one_refused_at_parse_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, value: str
) -> None:
    args = [*command.split(), "--short-side", value]
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, str(tmp_path / "video.mp4"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"ditf-track {command}: error: argument --short-side: {value} must be at least 1 "
        f"(see ditf-track {command} --help)"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.faults
def test_lab_with_device_cuda_says_cpu_and_records_it(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["track", str(shared_data / DOG_FRAMES), "--mask", str(shared_data / DOG_MASK)]
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
    args = ["track", str(shared_data / DOG_FRAMES), "--mask", str(shared_data / DOG_MASK)]
    args += ["--model", str(model), "--family", "flux", "--t", "90", "--k", "3"]
    args += ["--device", "cuda", "--end", "3", "--out", str(tmp_path / "out")]
    capfd.readouterr()  # building the tiny model draws a progress bar
    assert cli.main(args) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert "device 'cuda' was asked for but CUDA is not available" in err
    assert not (tmp_path / "out").exists()
