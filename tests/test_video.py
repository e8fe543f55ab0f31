"""video → frames: folders and video files, ranges, readers, streaming, errors, sizing, overlay."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
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

BACKENDS: list[Backend] = ["decord", "pyav", "opencv"]


def _remux(src: Path, dst: Path, options: dict[str, str] | None = None) -> Path:
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


@pytest.fixture(scope="module")
def bikes_frames(bikes: Path) -> np.ndarray:
    """Every 10th frame of bikes.mp4 as decoded by the default reader: (25, 272, 640, 3)."""
    with open_video(bikes) as source:
        return source.read_batch(range(0, 250, 10))


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


def test_bigbuckbunny_size(shared_data: Path) -> None:
    source = open_video(shared_data / "videos" / "bigbuckbunny.mp4")
    assert (len(source), source.height, source.width) == (132, 720, 1280)


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
    path = _remux(bikes, tmp_path / f"bikes.{container}")
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
    remuxed = _remux(bikes, tmp_path / "remuxed.mp4")
    assert open_video(remuxed).content_hash() != h

    dog = shared_data / "davis" / "JPEGImages" / "480p" / "dog"
    for name in ["00000.jpg", "00001.jpg", "00002.jpg"]:
        shutil.copy(dog / name, tmp_path / name)
    assert open_video(tmp_path).content_hash() == open_video(dog, end=3).content_hash()
    assert open_video(dog, end=3).content_hash() != open_video(dog, end=4).content_hash()
    (tmp_path / "00002.jpg").write_bytes((dog / "00003.jpg").read_bytes())
    assert open_video(tmp_path).content_hash() != open_video(dog, end=3).content_hash()


# ---- errors -----------------------------------------------------------------------------------


def _raises_naming(path: Path, **kwargs: Any) -> str:
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
    assert "does not exist" in _raises_naming(tmp_path / "missing.mp4")
    notes = tmp_path / "clip.txt"
    notes.write_text("hello")
    assert "unsupported extension" in _raises_naming(notes)
    empty = tmp_path / "frames"
    empty.mkdir()
    (empty / "readme.md").write_text("no frames here")
    assert "no .jpg" in _raises_naming(empty)


def test_errors_corrupt_videos(tmp_path: Path, bikes: Path) -> None:
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 20)
    assert "cannot be opened" in _raises_naming(text)

    # bikes.mp4 keeps its index (moov) at the end: half the file cannot even be opened.
    truncated = tmp_path / "truncated.mp4"
    data = bikes.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert "ffmpeg -i" in _raises_naming(truncated)

    # With the index first (faststart) it opens, and fails where the data stops.
    fast = _remux(bikes, tmp_path / "fast.mp4", {"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    assert "truncated or corrupt" in _raises_naming(cut)
    # decord refuses it at open (it indexes every packet); the next reader takes over
    assert open_video(cut).backend == "pyav"


def test_auto_falls_back_when_decord_is_missing(
    bikes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ditf_track.video as video

    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name in ("decord", "av") else real_find_spec(name, *args)

    monkeypatch.setattr(video.importlib.util, "find_spec", find_spec)
    assert open_video(bikes).backend == "opencv"
    with pytest.raises(ConfigError, match="pip install decord"):
        open_video(bikes, backend="decord")


def test_errors_range(bikes: Path) -> None:
    message = _raises_naming(bikes, start=250)
    assert "250 frames" in message
    with pytest.raises(ConfigError):
        open_video(bikes, start=3, end=3)
    with pytest.raises(ConfigError):
        open_video(bikes, stride=0)


def test_errors_folder_sizes_and_duplicates(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "00000.png")
    Image.fromarray(np.zeros((4, 7, 3), np.uint8)).save(tmp_path / "00001.png")
    message = _raises_naming(tmp_path)
    assert "00001.png" in message
    assert "same size" in message
    (tmp_path / "00001.png").unlink()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "00000.jpg")
    assert "two frames named" in _raises_naming(tmp_path)


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
