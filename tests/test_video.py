"""video → frames (video.py): folders and video files, ranges, streaming, content hashes, errors.

The readers behind ``open_video`` are tested in test_video_readers.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ditf_track.errors import ConfigError, InputError
from ditf_track.images import read_image
from ditf_track.video import (
    Backend,
    natural_sort_key,
    open_video,
    video_from_array,
)

BACKENDS: list[Backend] = ["decord", "pyav", "opencv"]  # test_video_readers.py


def remux(src: Path, dst: Path, options: dict[str, str] | None = None) -> Path:
    """Copy the video stream of ``src`` into another container without re-encoding."""
    av = pytest.importorskip("av")
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=options or {}) as out:
        stream = inp.streams.video[0]
        ostream = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = ostream
            out.mux(packet)
    return dst


@pytest.fixture(scope="module")
def bikes(shared_data: Path) -> Path:
    return shared_data / "videos" / "bikes.mp4"


# ---- frame folders ------------------------------------------------------------------------


def test_davis_folder_counts_sizes_names(shared_data: Path) -> None:
    folder = shared_data / "davis" / "JPEGImages" / "480p" / "dog"
    source = open_video(folder)
    assert (len(source), source.height, source.width) == (60, 480, 854)
    assert source.kind == "frames"
    assert source.backend == "images"
    assert source.fps is None
    assert source.shape == (60, 480, 854, 3)
    assert source.frame_names[:3] == ["00000", "00001", "00002"]
    assert source.frame_names[-1] == "00059"

    sub = open_video(folder, start=5, end=30, stride=5)
    assert sub.frame_names == ["00005", "00010", "00015", "00020", "00025"]
    assert sub.frame_indices.tolist() == [5, 10, 15, 20, 25]
    frame = sub.read(1)
    assert frame.dtype == np.uint8
    assert frame.shape == (480, 854, 3)
    np.testing.assert_array_equal(frame, read_image(folder / "00010.jpg"))
    # end beyond the last frame is clipped like a slice
    assert len(open_video(folder, start=50, end=10_000)) == 10


def test_vspw_folder_names_do_not_start_at_zero(shared_data: Path) -> None:
    folder = shared_data / "vspw_firstframe" / "JPEGImages" / "1001_3iEIq5HBY1s"
    source = open_video(folder, stride=7)
    assert (source.height, source.width, source.total_frames) == (1080, 1920, 20)
    assert source.frame_names == ["00002058", "00002065", "00002072"]


def test_folder_natural_sort_and_hidden_files(tmp_path: Path) -> None:
    for value, name in [(10, "10.png"), (2, "2.png"), (1, "1.jpg"), (0, "._1.png")]:
        Image.fromarray(np.full((4, 6, 3), value, np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a frame")
    source = open_video(tmp_path)
    assert source.frame_names == ["1", "2", "10"]
    assert [int(f[0, 0, 0]) for f in source] == [1, 2, 10]
    assert sorted(["a10", "a9", "a1"], key=natural_sort_key) == ["a1", "a9", "a10"]


# ---- video files ----------------------------------------------------------------------------


def test_bigbuckbunny_size(shared_data: Path) -> None:
    source = open_video(shared_data / "videos" / "bigbuckbunny.mp4")
    assert (len(source), source.height, source.width) == (132, 720, 1280)


# ---- streaming -------------------------------------------------------------------------------


def test_iter_frames_streams_batches(bikes: Path) -> None:
    source = open_video(bikes, end=50)
    decoded: list[int] = []
    real_decode = source._decode

    def spy(positions: Sequence[int]) -> list[np.ndarray]:
        decoded.extend(positions)
        return real_decode(positions)

    source._decode = spy  # type: ignore[method-assign]
    batches = source.iter_frames(batch_size=8)
    first = next(batches)
    # Only the first batch has been decoded when it is handed out.
    assert first.positions.tolist() == list(range(8))
    assert decoded == list(range(8))
    assert first.frames.shape == (8, 272, 640, 3)
    assert first.frames.dtype == np.uint8
    sizes = [len(b.positions) for b in batches]
    assert sizes == [8, 8, 8, 8, 8, 2]

    # positions in any order with repeats: visited once each, increasing
    picked = list(source.iter_frames(positions=[30, 2, 30, 11], batch_size=2))
    assert [b.positions.tolist() for b in picked] == [[2, 11], [30]]


def test_lazy_array_indexing(bikes: Path) -> None:
    source = open_video(bikes, end=20)
    assert source.dtype == np.uint8
    assert source.ndim == 4
    np.testing.assert_array_equal(source[3], source.read(3))
    assert source[2:5].shape == (3, 272, 640, 3)
    assert source[1, 10:20, 5:8].shape == (10, 3, 3)
    assert source[::10, 0].shape == (2, 640, 3)
    with pytest.raises(IndexError):
        source.read(20)


# ---- content hash ----------------------------------------------------------------------------


def test_content_hash(tmp_path: Path, bikes: Path, shared_data: Path) -> None:
    h = open_video(bikes).content_hash()
    assert len(h) == 64
    assert h == open_video(bikes, end=None).content_hash()
    assert h == open_video(bikes, end=10_000).content_hash()  # same resolved range
    assert h != open_video(bikes, stride=2).content_hash()
    assert h != open_video(bikes, start=1).content_hash()
    copy = shutil.copy(bikes, tmp_path / "renamed.mp4")
    assert open_video(copy).content_hash() == h  # content, not path
    remuxed = remux(bikes, tmp_path / "remuxed.mp4")
    assert open_video(remuxed).content_hash() != h

    dog = shared_data / "davis" / "JPEGImages" / "480p" / "dog"
    for name in ["00000.jpg", "00001.jpg", "00002.jpg"]:
        shutil.copy(dog / name, tmp_path / name)
    assert open_video(tmp_path).content_hash() == open_video(dog, end=3).content_hash()
    assert open_video(dog, end=3).content_hash() != open_video(dog, end=4).content_hash()
    (tmp_path / "00002.jpg").write_bytes((dog / "00003.jpg").read_bytes())
    assert open_video(tmp_path).content_hash() != open_video(dog, end=3).content_hash()


def test_file_hash_ignores_the_selection(tmp_path: Path, bikes: Path, shared_data: Path) -> None:
    """The feature cache's video key: the whole file or folder, whatever frames are selected."""
    h = open_video(bikes).file_hash()
    assert len(h) == 64
    assert h == open_video(bikes, end=8).file_hash() == open_video(bikes, start=3).file_hash()
    assert h == open_video(bikes, stride=2).file_hash()
    assert h != open_video(bikes).content_hash()
    assert open_video(shutil.copy(bikes, tmp_path / "renamed.mp4")).file_hash() == h
    assert open_video(remux(bikes, tmp_path / "remuxed.mp4")).file_hash() != h

    dog = shared_data / "davis" / "JPEGImages" / "480p" / "dog"
    assert open_video(dog, end=3).file_hash() == open_video(dog, start=5).file_hash()
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ["00000.jpg", "00001.jpg", "00002.jpg"]:
        shutil.copy(dog / name, folder / name)
    first = open_video(folder, end=2).file_hash()
    (folder / "00002.jpg").write_bytes((dog / "00003.jpg").read_bytes())  # an unselected frame
    assert open_video(folder, end=2).file_hash() != first
    frames = np.random.default_rng(0).integers(0, 255, (3, 8, 10, 3), dtype=np.uint8)
    changed = frames.copy()
    changed[2, 0, 0, 0] ^= 1
    assert video_from_array(frames).file_hash() != video_from_array(changed).file_hash()


# ---- errors -----------------------------------------------------------------------------------


def raises_naming(path: Path, **kwargs: Any) -> str:
    def open_and_decode() -> None:
        source = open_video(path, **kwargs)
        for _ in source.iter_frames(batch_size=32):
            pass

    with pytest.raises(InputError) as exc:
        open_and_decode()
    message = str(exc.value)
    assert str(path) in message
    assert "\n" not in message
    return message


def test_errors_missing_and_unsupported(tmp_path: Path) -> None:
    assert "does not exist" in raises_naming(tmp_path / "missing.mp4")
    notes = tmp_path / "clip.txt"
    notes.write_text("hello")
    assert "unsupported extension" in raises_naming(notes)
    empty = tmp_path / "frames"
    empty.mkdir()
    (empty / "readme.md").write_text("no frames here")
    assert "no .jpg" in raises_naming(empty)


def test_errors_range(bikes: Path) -> None:
    message = raises_naming(bikes, start=250)
    assert "250 frames" in message
    with pytest.raises(ConfigError):
        open_video(bikes, start=3, end=3)
    with pytest.raises(ConfigError):
        open_video(bikes, stride=0)


def test_errors_folder_sizes_and_duplicates(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "00000.png")
    Image.fromarray(np.zeros((4, 7, 3), np.uint8)).save(tmp_path / "00001.png")
    message = raises_naming(tmp_path)
    assert "00001.png" in message
    assert "same size" in message
    (tmp_path / "00001.png").unlink()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "00000.jpg")
    assert "two frames named" in raises_naming(tmp_path)


# ---- images -------------------------------------------------------------------------------------


# ---- model input size -------------------------------------------------------------------------


# ---- overlay video ----------------------------------------------------------------------------


def test_video_from_array_hash_follows_pixels() -> None:
    frames = np.random.default_rng(0).integers(0, 255, (3, 8, 10, 3), dtype=np.uint8)
    source = video_from_array(frames)
    assert source.frame_names == ["00000", "00001", "00002"]
    assert video_from_array(frames.copy()).content_hash() == source.content_hash()
    changed = frames.copy()
    changed[1, 4, 4, 0] ^= 1
    assert video_from_array(changed).content_hash() != source.content_hash()
    with pytest.raises(InputError, match="uint8"):
        video_from_array(frames.astype(np.float32))
