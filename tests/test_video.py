"""video → frames: folders and video files, ranges, streaming, errors, sizing, overlay.

The readers behind ``open_video`` are tested in test_video_readers.py.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ditf_track.errors import ConfigError, InputError
from ditf_track.images import image_size, model_input_size, read_image, resize_image
from ditf_track.masks import DAVIS_PALETTE, read_mask
from ditf_track.video import (
    Backend,
    FramePoints,
    natural_sort_key,
    open_video,
    resize_frames,
    write_overlay_video,
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


def test_read_image_exif_orientation_and_errors(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels must be rotated 90° clockwise for display
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = read_image(path)
    assert image.shape == (40, 20, 3)
    assert image_size(path) == (40, 20)
    assert image[:20].mean() > 200
    assert image[20:].mean() < 50

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match=r"broken\.jpg"):
        read_image(broken)
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_resize_area_and_frames() -> None:
    image = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    small = resize_image(image, (2, 2))  # area: exact 2×2 block means
    np.testing.assert_array_equal(small, [[25, 45], [105, 125]])
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    out = resize_frames(frames, (32, 48))
    assert out.shape == (3, 32, 48, 3)
    assert out.dtype == np.uint8
    constant = np.full((2, 30, 50, 3), 77, np.uint8)
    assert (resize_frames(constant, (64, 96)) == 77).all()  # enlarging: bilinear


# ---- model input size -------------------------------------------------------------------------


def test_model_input_size_reference_protocols() -> None:
    assert model_input_size(480, 854, short_side=960) == (960, 1712)  # 1708 → nearest 16
    # DINO eval_video_segmentation.py: short side 480, long side floored to a multiple of 64
    assert model_input_size(480, 854, short_side=480, long_multiple=64, rounding="floor") == (
        480,
        832,
    )
    # DiTF eval_davis.py: short side --img_size, long side floored to a multiple of 32
    assert model_input_size(480, 854, short_side=960, long_multiple=32, rounding="floor") == (
        960,
        1696,
    )
    assert model_input_size(854, 480, short_side=960) == (1712, 960)  # portrait
    assert model_input_size(1080, 1920, long_side=1024) == (576, 1024)
    assert model_input_size(480, 854, square=768) == (768, 768)
    assert model_input_size(480, 854) == (480, 848)
    assert model_input_size(3, 1000, short_side=4) == (16, 1328)  # never 0
    with pytest.raises(ConfigError):
        model_input_size(480, 854, short_side=480, long_side=960)


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 4000),
    w=st.integers(1, 4000),
    target=st.integers(16, 2048),
    multiple=st.sampled_from([8, 14, 16, 32, 64]),
    which=st.sampled_from(["short_side", "long_side"]),
)
def test_model_input_size_properties(
    h: int, w: int, target: int, multiple: int, which: str
) -> None:
    sides: dict[str, Any] = {which: target}
    out_h, out_w = model_input_size(h, w, multiple=multiple, **sides)
    assert out_h % multiple == 0
    assert out_w % multiple == 0
    assert out_h > 0
    assert out_w > 0
    scale = target / (min(h, w) if which == "short_side" else max(h, w))
    for got, exact in ((out_h, h * scale), (out_w, w * scale)):
        # nearest multiple: within half a stride, unless lifted to the minimum of one stride
        assert abs(got - exact) <= multiple / 2 + 1e-9 or got == multiple
    floor_h, floor_w = model_input_size(h, w, multiple=multiple, rounding="floor", **sides)
    assert floor_h <= max(h * scale, multiple) + 1e-9
    assert floor_w <= max(w * scale, multiple) + 1e-9


# ---- overlay video ----------------------------------------------------------------------------


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
