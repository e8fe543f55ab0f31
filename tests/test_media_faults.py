"""Media faults: damaged videos (the intact range reads, the damage is named) and the overlay
codec. Lossy masks are in test_masks.py, the command line's media faults in test_cli_track.py."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest

from ditf_track.errors import InputError
from ditf_track.masks import read_mask
from ditf_track.video import open_video, write_overlay_video

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
