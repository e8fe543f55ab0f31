"""Video readers behind :func:`ditf_track.video.open_video`: each decodes sorted frame indices.

Readers, in the order tried for video files (``.mp4 .avi .mov .mkv``):

1. decord (fastest, frame-accurate seeks; wheels only for Linux x86-64),
2. PyAV (``av``),
3. OpenCV (``cv2.VideoCapture``).

A reader that is missing or cannot open the file hands over to the next, and so does one that
fails to decode a frame later (decord's read-ahead thread can fail on damage far beyond the
frames asked for): the next reader decodes the same frames, so an intact range of a file damaged
elsewhere still reads. A frame no reader can decode is named by the sequential readers, which
know the packet that failed. The three wrap FFmpeg's decoders, so they return the same pixels
(identical on the test clips), and all apply the container's rotation (display matrix): a phone
video comes out upright whichever reader is used. Their native log lines (FFmpeg's
``[h264 @ 0x...]``, decord's ``ERROR opening``) are kept off the terminal: the library log
levels are lowered, and what is still written to file descriptor 2 while opening a file or
falling back goes to this module's debug log.

Frame folders are read by :class:`FolderReader` (one image file per frame), frames already in
memory by :class:`ArrayReader`. Readers are not thread-safe: ``VideoSource`` locks around
them, and switches to the next reader when one fails to decode.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from .errors import ConfigError, InputError
from .images import read_image

log = logging.getLogger(__name__)

Backend = Literal["auto", "decord", "pyav", "opencv"]
VIDEO_BACKENDS: tuple[str, ...] = ("decord", "pyav", "opencv")


def reencode_hint(path: Path) -> str:
    """The fix for a video no reader can decode: re-encode it or extract its frames."""
    return (
        f"re-encode it (ffmpeg -i {path} -c:v libx264 -pix_fmt yuv420p fixed.mp4) or extract "
        f"its frames (ffmpeg -i {path} -q:v 2 -start_number 0 FRAMES/%05d.jpg)"
    )


class Reader(Protocol):
    """What :class:`~ditf_track.video.VideoSource` needs of a reader."""

    backend: str
    num_frames: int
    height: int
    width: int
    fps: float | None

    def read_sorted(self, indices: Sequence[int]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


class DecodeError(InputError):
    """A frame a reader could not decode; ``index`` is the file index it names."""

    def __init__(self, message: str, backend: str, index: int) -> None:
        super().__init__(message)
        self.backend = backend
        self.index = index


class _DamagedPacket(Exception):
    """A packet the decoder refused; ``index`` is the frame it holds (from its timestamp)."""

    def __init__(self, index: int | None) -> None:
        super().__init__(f"damaged packet at frame {index}")
        self.index = index


def _decode_error(
    path: Path, index: int, total: int, exc: BaseException | None, backend: str
) -> DecodeError:
    why = f" ({' '.join(str(exc).split())[:160]})" if exc is not None else ""
    return DecodeError(
        f"video {path} could not be decoded at frame {index} of {total}{why}: the file is "
        f"truncated or corrupt; {reencode_hint(path)}",
        backend,
        index,
    )


@contextlib.contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 meanwhile to the debug log.

    FFmpeg (inside decord and OpenCV) and decord's own logger write straight to fd 2, so
    Python-level redirection does not catch them. Used only around opening a file and the
    fallback path, which are short and synchronous; other threads' stderr output in that
    window goes to the debug log too.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (pythonw) or no sys.stderr
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines = sink.read().decode(errors="replace").split("\n")
            text = " | ".join(line.strip() for line in lines[:20] if line.strip())
            if text:
                log.debug("native decoder output: %s", text)


def _rotate(frame: np.ndarray, degrees_ccw: int) -> np.ndarray:
    k = round(degrees_ccw / 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k)) if k else frame


class _DecordReader:
    """decord.VideoReader; ``get_batch`` on sorted indices seeks to key frames as needed."""

    backend = "decord"

    def __init__(self, path: Path, batch_size: int = 16) -> None:
        import decord

        decord.logging.set_level(decord.logging.QUIET)  # FFmpeg's per-packet error lines
        self.path = path
        self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
        self.num_frames = len(self._vr)
        if self.num_frames < 1:
            raise RuntimeError("no frames")
        first = self._to_numpy(self._vr[0])
        self.height, self.width = first.shape[:2]
        fps = float(self._vr.get_avg_fps())
        self.fps = fps if fps > 0 else None
        self._batch_size = batch_size

    @staticmethod
    def _to_numpy(x: Any) -> np.ndarray:
        # decord returns its own NDArray, or a torch tensor if someone set the torch bridge.
        if hasattr(x, "asnumpy"):
            return np.asarray(x.asnumpy())
        if hasattr(x, "numpy"):
            return np.asarray(x.numpy())
        return np.asarray(x)

    def read_sorted(self, indices: Sequence[int]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for i in range(0, len(indices), self._batch_size):
            chunk = list(indices[i : i + self._batch_size])
            try:
                batch = self._to_numpy(self._vr.get_batch(chunk))
            except Exception as exc:  # decord raises DECORDError / RuntimeError
                # Its read-ahead thread may have failed on any later packet: chunk[0] is only
                # where the failure surfaced; the sequential readers name the damaged frame.
                raise _decode_error(self.path, chunk[0], self.num_frames, exc, "decord") from exc
            out.extend(batch[j] for j in range(len(chunk)))
        return out

    def close(self) -> None:
        self._vr = None


class _SequentialReader:
    """Shared logic of the decoders that read forward (PyAV, OpenCV).

    The decoder sits at ``_next``: reading index ``i >= _next`` skips forward (decoding but not
    converting the frames in between); a backward jump or a long forward one seeks (to the key
    frame before ``i``) when the format allows it, else restarts from the file's start.
    """

    backend = "sequential"
    # Beyond this many frames ahead a seek (to the previous key frame) beats decoding forward.
    _SEEK_AHEAD = 64

    path: Path
    num_frames: int
    _next: int

    def _restart(self) -> None:
        raise NotImplementedError

    def _seek(self, index: int) -> bool:
        """Move so that the next decoded frame is at or before ``index``; False if impossible."""
        return False

    def _grab(self) -> bool:
        """Decode the frame at ``_next`` without converting it; False at the end of the file."""
        raise NotImplementedError

    def _retrieve(self) -> np.ndarray:
        """RGB pixels of the frame last grabbed."""
        raise NotImplementedError

    def read_sorted(self, indices: Sequence[int]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for index in indices:
            jump = index < self._next or index - self._next > self._SEEK_AHEAD
            if jump and not self._seek(index):
                self._restart()
            try:
                while self._next <= index:
                    if not self._grab():
                        raise _decode_error(
                            self.path, self._next, self.num_frames, None, self.backend
                        )
                    self._next += 1
                out.append(self._retrieve())
            except InputError:
                raise
            except _DamagedPacket as exc:
                # The first damaged frame, which may lie after the one asked for: decoders
                # hold frames back (reordering, frame threads).
                at = self._next if exc.index is None else exc.index
                cause = exc.__cause__ or exc
                raise _decode_error(self.path, at, self.num_frames, cause, self.backend) from exc
            except Exception as exc:  # av.FFmpegError, cv2.error
                raise _decode_error(
                    self.path, self._next, self.num_frames, exc, self.backend
                ) from exc
        return out


class _PyAVReader(_SequentialReader):
    backend = "pyav"

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        self._av = av
        self._container: Any = None
        self._restart()
        stream = self._stream
        rate = stream.average_rate or stream.guessed_rate
        self._rate: Fraction | None = Fraction(rate) if rate else None
        self.fps = float(rate) if rate else None
        self._time_base = stream.time_base
        self._start_pts = stream.start_time or 0
        if not self._grab():
            raise RuntimeError("no decodable frame")
        first = self._retrieve()
        self.height, self.width = first.shape[:2]
        self.num_frames = stream.frames if stream.frames > 0 else self._count_packets()
        self._restart()

    def _count_packets(self) -> int:
        # Containers such as mkv carry no frame count: count the video packets (no decoding).
        with self._av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            return sum(1 for packet in container.demux(stream) if packet.size)

    def _restart(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._av.open(str(self.path))
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._frames = self._decode_packets()
        self._frame: Any = None
        self._pending = False  # True after a seek: _frame is decoded but not yet counted
        self._next = 0

    def _index_of(self, frame: Any) -> int | None:
        """File index of a frame or packet from its timestamp (``None`` if it has none)."""
        pts = frame.pts if frame.pts is not None else getattr(frame, "dts", None)
        if pts is None or self._rate is None or self._time_base is None:
            return None
        seconds = (pts - self._start_pts) * self._time_base
        return round(seconds * self._rate)

    def _decode_packets(self) -> Iterator[Any]:
        """``container.decode(stream)`` that reads up to a damaged frame and names it.

        A refused packet is skipped, like FFmpeg's own tools do, so the frames before the
        damage still come out (with frame threads they are held back until later packets are
        sent); the first frame at or after the damage raises :class:`_DamagedPacket`.
        """
        damaged: int | None = None
        cause: BaseException | None = None
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()  # the final empty packet flushes the decoder
            except self._av.FFmpegError as exc:
                if cause is None:
                    damaged, cause = self._first_damaged_frame(packet), exc
                continue
            for frame in frames:
                index = self._index_of(frame)
                if cause is not None and (damaged is None or index is None or index >= damaged):
                    raise _DamagedPacket(damaged) from cause
                yield frame
        if cause is not None:
            raise _DamagedPacket(damaged) from cause

    def _first_damaged_frame(self, failed: Any) -> int | None:
        """Smallest frame index of the packets a one-thread decoder refuses, near ``failed``.

        With frame threads a packet's error surfaces while later packets are being sent, and
        B-frames are stored after the frame they precede, so the packet that raised is not
        the first damaged frame. This re-decodes from the key frame about 128 frames before it
        on one thread (errors then come with their own packet) and keeps the smallest index
        among the refused packets up to 32 packets after the first.
        """
        near = self._index_of(failed)
        first: int | None = None
        try:
            with self._av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "SLICE"
                stream.thread_count = 1
                if near is not None and self._rate is not None and near > 128:
                    target = self._start_pts + int((near - 128) / self._rate / self._time_base)
                    container.seek(target, backward=True, any_frame=False, stream=stream)
                after = 0
                for packet in container.demux(stream):
                    try:
                        packet.decode()
                    except self._av.FFmpegError:
                        index = self._index_of(packet)
                        if index is not None:
                            first = index if first is None else min(first, index)
                    if first is not None:
                        after += 1
                        if after > 32:
                            break
        except Exception as exc:  # the file cannot be reopened or seeked: keep the estimate
            log.debug("could not locate the damage in %s: %s", self.path, exc)
        return near if first is None else first

    def _seek(self, index: int) -> bool:
        if self._rate is None or self._time_base is None:
            return False
        target = self._start_pts + int(index / self._rate / self._time_base)
        try:
            self._container.seek(target, backward=True, any_frame=False, stream=self._stream)
            self._frames = self._decode_packets()
            frame = next(self._frames)
        except Exception:
            return False
        landed = self._index_of(frame)
        if landed is None or landed > index or landed < 0:
            return False
        self._frame, self._pending = frame, True
        self._next = landed
        return True

    def _grab(self) -> bool:
        if self._pending:
            self._pending = False
            return True
        try:
            self._frame = next(self._frames)
        except StopIteration:
            return False
        return True

    def _retrieve(self) -> np.ndarray:
        frame = self._frame
        rgb = frame.to_ndarray(format="rgb24")
        return _rotate(rgb, int(getattr(frame, "rotation", 0) or 0))

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class _OpenCVReader(_SequentialReader):
    backend = "opencv"

    def __init__(self, path: Path) -> None:
        # Read once, when OpenCV first loads FFmpeg: quiet its per-packet error lines.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        self.path = path
        self._cap: Any = cv2.VideoCapture(str(path))
        self._next = 0
        if not self._cap.isOpened():
            raise RuntimeError("cv2.VideoCapture could not open the file")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        self.fps = fps if fps > 0 else None
        if not self._grab():
            raise RuntimeError("no decodable frame")
        first = self._retrieve()
        self.height, self.width = first.shape[:2]
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:  # some containers report no count: grab through the file once
            count = 1
            while self._grab():
                count += 1
        self.num_frames = count
        self._restart()

    def _restart(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = cv2.VideoCapture(str(self.path))
        self._next = 0

    def _seek(self, index: int) -> bool:
        # OpenCV's FFmpeg backend seeks to the key frame before `index` and decodes forward.
        if not self._cap.set(cv2.CAP_PROP_POS_FRAMES, index):
            return False
        self._next = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES))
        return 0 <= self._next <= index

    def _grab(self) -> bool:
        return bool(self._cap.grab())

    def _retrieve(self) -> np.ndarray:
        ok, bgr = self._cap.retrieve()
        if not ok:
            raise RuntimeError("cv2.VideoCapture.retrieve failed")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderReader:
    """Frames stored as image files; sizes checked against the first frame."""

    backend = "images"

    def __init__(self, files: Sequence[Path], size: tuple[int, int]) -> None:
        self.files = list(files)
        self.num_frames = len(self.files)
        self.height, self.width = size
        self.fps: float | None = None

    def read_sorted(self, indices: Sequence[int]) -> list[np.ndarray]:
        out = []
        for i in indices:
            frame = read_image(self.files[i])
            if frame.shape[:2] != (self.height, self.width):
                raise size_mismatch(self.files[i], frame.shape[:2], (self.height, self.width))
            out.append(frame)
        return out

    def close(self) -> None:
        pass


class ArrayReader:
    """Frames already in memory, ``(T, H, W, 3) uint8`` (e.g. a TAP-Vid example)."""

    backend = "array"

    def __init__(self, frames: np.ndarray, fps: float | None) -> None:
        self.frames = frames
        self.num_frames = int(frames.shape[0])
        self.height, self.width = int(frames.shape[1]), int(frames.shape[2])
        self.fps = fps

    def read_sorted(self, indices: Sequence[int]) -> list[np.ndarray]:
        return [self.frames[i] for i in indices]

    def close(self) -> None:
        pass


def size_mismatch(path: Path, got: tuple[int, ...], want: tuple[int, int]) -> InputError:
    return InputError(
        f"frame {path} is {got[1]}x{got[0]} (WxH) but the first frame is {want[1]}x{want[0]}; "
        "all frames of a folder must have the same size, resize or remove it"
    )


def open_reader(name: str, path: Path) -> Reader:
    with native_stderr_to_log():
        if name == "decord":
            return _DecordReader(path)
        if name == "pyav":
            return _PyAVReader(path)
        return _OpenCVReader(path)


def open_video_file(path: Path, backend: Backend) -> tuple[Reader, list[str]]:
    """The first reader of ``backend``'s order that opens ``path``, and the ones after it."""
    order = VIDEO_BACKENDS if backend == "auto" else (backend,)
    if backend != "auto" and backend not in VIDEO_BACKENDS:
        raise ConfigError(f"backend={backend!r} is not one of auto, decord, pyav, opencv")
    modules = {"decord": "decord", "pyav": "av", "opencv": "cv2"}
    failures: list[str] = []
    for name in order:
        if importlib.util.find_spec(modules[name]) is None:
            if backend != "auto":
                raise ConfigError(
                    f"video backend {name!r} is not installed; pip install {modules[name]} "
                    "or use backend='auto'"
                )
            failures.append(f"{name}: not installed")
            continue
        try:
            reader = open_reader(name, path)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            failures.append(f"{name}: {reason}")
            log.debug("reader %s could not open %s: %s", name, path, reason)
        else:
            return reader, list(order[order.index(name) + 1 :])
    raise InputError(
        f"video {path} cannot be opened ({'; '.join(failures)}); it is not a readable video "
        f"or it is corrupt: {reencode_hint(path)}"
    )
