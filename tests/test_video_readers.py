"""The video readers (decord, PyAV, OpenCV): sizes, pixels, seeks, containers, rotation, and
the hand-over to the next reader when one is missing or fails, and damaged videos (the intact
range reads, the damage is named)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from test_video import BACKENDS, raises_naming, remux

from ditf_track import _video_readers
from ditf_track.errors import ConfigError, InputError
from ditf_track.video import Backend, open_video


@pytest.fixture(scope="module")
def bikes(shared_data: Path) -> Path:
    return shared_data / "videos" / "bikes.mp4"


@pytest.fixture(scope="module")
def bikes_frames(bikes: Path) -> np.ndarray:
    """Every 10th frame of bikes.mp4 as decoded by the default reader: (25, 272, 640, 3)."""
    with open_video(bikes) as source:
        return source.read_batch(range(0, 250, 10))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mp4_counts_sizes_names(bikes: Path, backend: Backend) -> None:
    source = open_video(bikes, backend=backend)
    assert source.backend == backend
    assert (len(source), source.height, source.width) == (250, 272, 640)
    assert source.fps == pytest.approx(25.0)
    assert source.frame_names[:2] == ["00000", "00001"]
    sub = open_video(bikes, start=10, end=100, stride=7, backend=backend)
    assert len(sub) == len(range(10, 100, 7)) == 13
    assert sub.frame_names[:3] == ["00010", "00017", "00024"]
    assert sub.frame_indices[-1] == 94
    with open_video(bikes, stride=5, backend=backend) as strided:
        assert strided.frame_names[:3] == ["00000", "00005", "00010"]


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_readers_agree_on_pixels(bikes: Path, bikes_frames: np.ndarray, backend: Backend) -> None:
    # All three wrap FFmpeg's H.264 decoder; a different colour conversion would show here.
    source = open_video(bikes, backend=backend)
    assert len(source) == len(open_video(bikes, backend="decord"))
    frames = source.read_batch(range(0, 250, 10))
    diff = np.abs(frames.astype(np.int16) - bikes_frames)
    assert diff.mean() < 0.5
    assert np.percentile(diff, 99.9) <= 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_access_matches_sequential(
    bikes: Path, bikes_frames: np.ndarray, backend: Backend
) -> None:
    # Backward jumps and long forward jumps exercise the seeks (key frames at 0,30,76,137,...).
    source = open_video(bikes, start=0, stride=10, backend=backend)
    order = [24, 3, 20, 10, 0, 15, 15, 7, 23, 1]
    frames = source.read_batch(order)
    for k, pos in enumerate(order):
        np.testing.assert_allclose(frames[k], bikes_frames[pos], atol=4)
    np.testing.assert_allclose(source[-1], bikes_frames[-1], atol=4)


@pytest.mark.parametrize("container", ["mkv", "mov"])
def test_other_containers(tmp_path: Path, bikes: Path, container: str) -> None:
    # mkv stores no frame count: PyAV counts packets, the others read the index.
    path = remux(bikes, tmp_path / f"bikes.{container}")
    for backend in BACKENDS:
        source = open_video(path, backend=backend)
        assert (len(source), source.height, source.width) == (250, 272, 640), backend


def test_avi_from_opencv_writer(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    for t in range(12):
        writer.write(np.full((48, 64, 3), 20 * t, np.uint8))
    writer.release()
    source = open_video(path)
    assert (len(source), source.height, source.width) == (12, 48, 64)
    assert [round(float(f.mean()) / 20) for f in source] == list(range(12))


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is None, reason="no ffmpeg binary")
def test_rotated_video_upright_with_every_reader(tmp_path: Path, bikes: Path) -> None:
    import subprocess

    import imageio_ffmpeg

    rotated = tmp_path / "rotated.mp4"
    done = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y",
            "-loglevel",
            "error",
            "-display_rotation",
            "90",
            "-i",
            str(bikes),
            "-frames:v",
            "40",
            "-c",
            "copy",
            str(rotated),
        ],
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("this ffmpeg cannot set -display_rotation")
    frames = {}
    for backend in BACKENDS:
        source = open_video(rotated, backend=backend)
        assert (source.height, source.width) == (640, 272), backend
        frames[backend] = source.read(5)
    upright = open_video(bikes).read(5)
    # display rotation 90 = counter-clockwise: np.rot90 with k=1
    for backend, frame in frames.items():
        assert np.abs(frame.astype(np.int16) - np.rot90(upright)).mean() < 0.5, backend


def test_errors_corrupt_videos(tmp_path: Path, bikes: Path) -> None:
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 20)
    assert "cannot be opened" in raises_naming(text)

    # bikes.mp4 keeps its index (moov) at the end: half the file cannot even be opened.
    truncated = tmp_path / "truncated.mp4"
    data = bikes.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert "ffmpeg -i" in raises_naming(truncated)

    # With the index first (faststart) it opens, and fails where the data stops.
    fast = remux(bikes, tmp_path / "fast.mp4", {"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    assert "truncated or corrupt" in raises_naming(cut)
    # decord refuses it at open (it indexes every packet); the next reader takes over
    assert open_video(cut).backend == "pyav"


def test_auto_falls_back_when_decord_is_missing(
    bikes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name in ("decord", "av") else real_find_spec(name, *args)

    monkeypatch.setattr(_video_readers.importlib.util, "find_spec", find_spec)
    assert open_video(bikes).backend == "opencv"
    with pytest.raises(ConfigError, match="pip install decord"):
        open_video(bikes, backend="decord")


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
