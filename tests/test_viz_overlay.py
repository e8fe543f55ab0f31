"""Overlay videos (viz/overlay.py): every writer, H.264 for odd sizes, errors leave no file."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from ditf_track.errors import InputError
from ditf_track.masks import DAVIS_PALETTE, read_mask
from ditf_track.video import open_video
from ditf_track.viz.overlay import FramePoints, write_overlay_video


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


WRITERS: list[Literal["pyav", "ffmpeg", "opencv"]] = ["pyav", "opencv"]
if importlib.util.find_spec("imageio_ffmpeg") is not None:
    WRITERS.append("ffmpeg")


@pytest.mark.parametrize("writer", WRITERS)
def test_overlay_video_round_trip(
    tmp_path: Path, shared_data: Path, writer: Literal["pyav", "ffmpeg", "opencv"]
) -> None:
    source = open_video(shared_data / "davis" / "JPEGImages" / "480p" / "blackswan", end=6)
    labels = read_mask(shared_data / "davis" / "Annotations" / "480p" / "blackswan" / "00000.png")
    masks = [labels.labels, None, labels.labels[::2, ::2], None, None, labels.labels]
    points = [
        FramePoints(np.array([[100.0 + 5 * t, 200.0]]), np.array([True]), np.array([3]))
        for t in range(6)
    ]
    out = write_overlay_video(
        tmp_path / "sub" / "overlay.mp4",
        iter(source),
        masks,
        None,
        fps=12,
        points=points,
        writer=writer,
    )
    assert [p.name for p in out.parent.iterdir()] == ["overlay.mp4"]  # no temp file left
    back = open_video(out)
    assert (len(back), back.height, back.width) == (6, 480, 854)
    assert back.fps == pytest.approx(12)
    obj = labels.labels == 1
    red = np.frombuffer(DAVIS_PALETTE, np.uint8)[3:6]  # id 1 = (128, 0, 0)
    tinted, plain = back.read(0)[obj].mean(0), source.read(0)[obj].mean(0)
    assert tinted[0] - plain[0] > 0.3 * (red[0] - plain[0])  # pulled towards red
    np.testing.assert_allclose(back.read(1)[obj].mean(0), plain, atol=6)  # no mask on frame 1


def test_overlay_errors_leave_no_file(tmp_path: Path) -> None:
    frames = [np.zeros((32, 48, 3), np.uint8)] * 4
    with pytest.raises(InputError, match="masks ran out"):
        write_overlay_video(tmp_path / "o.mp4", frames, [None], None, fps=5, writer="opencv")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="no frames"):
        write_overlay_video(tmp_path / "o.mp4", [], None, None, fps=5)
