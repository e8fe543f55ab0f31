"""Video → frames: read video files and frame folders as a stream of ``(H, W, 3) uint8`` RGB.

:func:`open_video` returns a :class:`VideoSource`, a small handle that knows the size, frame rate
and frame names of the selected frames and decodes them on demand, so a long video is never
held whole in memory. Positions ``i`` used by the API are positions in the selected range
(``0 .. len(source) - 1``); ``source.frame_indices[i]`` is the index in the file or folder.

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

Frame folders hold ``.jpg .jpeg .png`` files, sorted by natural order of the name (``2.jpg``
before ``10.jpg``); their stems become the frame names used for output files.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import cv2
import numpy as np

from .errors import ConfigError, InputError
from .images import Interpolation, image_size, read_image, resize_image

# Overlay videos are drawn in viz/overlay.py; their names stay importable from here.
from .viz.overlay import FramePoints, write_overlay_video

__all__ = [
    "FRAME_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Backend",
    "FrameBatch",
    "FramePoints",
    "VideoSource",
    "natural_sort_key",
    "open_video",
    "resize_frames",
    "video_from_array",
    "write_overlay_video",
]

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv")
FRAME_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
Backend = Literal["auto", "decord", "pyav", "opencv"]
_VIDEO_BACKENDS: tuple[str, ...] = ("decord", "pyav", "opencv")


def _reencode_hint(path: Path) -> str:
    return (
        f"re-encode it (ffmpeg -i {path} -c:v libx264 -pix_fmt yuv420p fixed.mp4) or extract "
        f"its frames (ffmpeg -i {path} -q:v 2 -start_number 0 FRAMES/%05d.jpg)"
    )


class FrameBatch(NamedTuple):
    """One batch from :meth:`VideoSource.iter_frames`.

    ``positions``: ``(B,) int64`` positions in the selected range, increasing;
    ``frames``: ``(B, H, W, 3) uint8`` RGB.
    """

    positions: np.ndarray
    frames: np.ndarray


def natural_sort_key(name: str) -> tuple[tuple[Any, ...], str]:
    """Sort key that orders digit runs by value: ``2.jpg < 10.jpg``, ``a9 < a10``."""
    parts = re.split(r"(\d+)", name)
    # re.split with a group alternates str, digits, str, ... so types line up position-wise.
    key = tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))
    return key, name


# --------------------------------------------------------------------------------------------
# Readers: each decodes a sorted list of file indices. Not thread-safe; VideoSource locks.


class _Reader(Protocol):
    backend: str
    num_frames: int
    height: int
    width: int
    fps: float | None

    def read_sorted(self, indices: Sequence[int]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


class _DecodeError(InputError):
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
) -> _DecodeError:
    why = f" ({' '.join(str(exc).split())[:160]})" if exc is not None else ""
    return _DecodeError(
        f"video {path} could not be decoded at frame {index} of {total}{why}: the file is "
        f"truncated or corrupt; {_reencode_hint(path)}",
        backend,
        index,
    )


@contextlib.contextmanager
def _native_stderr_to_log() -> Iterator[None]:
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


class _FolderReader:
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
                raise _size_mismatch(self.files[i], frame.shape[:2], (self.height, self.width))
            out.append(frame)
        return out

    def close(self) -> None:
        pass


class _ArrayReader:
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


def _size_mismatch(path: Path, got: tuple[int, ...], want: tuple[int, int]) -> InputError:
    return InputError(
        f"frame {path} is {got[1]}x{got[0]} (WxH) but the first frame is {want[1]}x{want[0]}; "
        "all frames of a folder must have the same size, resize or remove it"
    )


def _open_reader(name: str, path: Path) -> _Reader:
    with _native_stderr_to_log():
        if name == "decord":
            return _DecordReader(path)
        if name == "pyav":
            return _PyAVReader(path)
        return _OpenCVReader(path)


def _open_video_file(path: Path, backend: Backend) -> tuple[_Reader, list[str]]:
    """The first reader of ``backend``'s order that opens ``path``, and the ones after it."""
    order = _VIDEO_BACKENDS if backend == "auto" else (backend,)
    if backend != "auto" and backend not in _VIDEO_BACKENDS:
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
            reader = _open_reader(name, path)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            failures.append(f"{name}: {reason}")
            log.debug("reader %s could not open %s: %s", name, path, reason)
        else:
            return reader, list(order[order.index(name) + 1 :])
    raise InputError(
        f"video {path} cannot be opened ({'; '.join(failures)}); it is not a readable video "
        f"or it is corrupt: {_reencode_hint(path)}"
    )


# --------------------------------------------------------------------------------------------


class VideoSource:
    """Frames ``frame_indices`` of one video file or frame folder, decoded on demand.

    Attributes:
        path: the video file or frame folder (a label for in-memory frames).
        kind: ``"video"``, ``"frames"`` (a folder) or ``"array"`` (:func:`video_from_array`).
        backend: the reader in use: ``"decord"``, ``"pyav"``, ``"opencv"``, ``"images"`` or
            ``"array"``.
        height, width: frame size in pixels (after the container's rotation).
        fps: frames per second of the file (``None`` for folders, which carry no timing).
            The selected frames play at ``fps / stride``.
        total_frames: frames in the whole file or folder.
        frame_indices: ``(T,) int64`` index in the file/folder of each selected position.
        frame_names: one name per position for output files: for videos the file index
            zero-padded to 5 digits (``"00000"``, ``"00005"`` with stride 5); for folders the
            file stem (``"00002058"``).

    Frames are ``(H, W, 3) uint8`` RGB. The object also behaves as a read-only lazy
    ``(T, H, W, 3) uint8`` array (``shape``, ``dtype``, ``ndim``, ``source[t]``,
    ``source[a:b]``), which napari can display without loading the whole video.
    Reads are serialised by a lock, so a GUI thread and a worker may share one source.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(
        self,
        path: Path,
        kind: Literal["video", "frames", "array"],
        reader: _Reader,
        start: int,
        stop: int,
        stride: int,
        frame_names: Sequence[str],
        files: Sequence[Path] = (),
        fallbacks: Sequence[str] = (),
    ) -> None:
        self.path = path
        self.kind = kind
        self._reader: _Reader | None = reader
        self.backend: str = reader.backend
        self.height: int = reader.height
        self.width: int = reader.width
        self.fps: float | None = reader.fps
        self.total_frames: int = reader.num_frames
        self.start, self.stop, self.stride = start, stop, stride
        self.frame_indices: np.ndarray = np.arange(start, stop, stride, dtype=np.int64)
        self.frame_names: list[str] = list(frame_names)
        self._files = list(files)
        self._fallbacks = list(fallbacks)  # readers to try, in order, if this one fails
        self._lock = threading.Lock()

    # ---- sizes -----------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        """Number of selected frames ``T``."""
        return len(self.frame_indices)

    def __len__(self) -> int:
        return len(self.frame_indices)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(T, H, W, 3)``."""
        return (len(self), self.height, self.width, 3)

    def __repr__(self) -> str:
        return (
            f"VideoSource({str(self.path)!r}, kind={self.kind!r}, backend={self.backend!r}, "
            f"frames={len(self)} of {self.total_frames}, range={self.start}:{self.stop}:"
            f"{self.stride}, size={self.height}x{self.width} (HxW), fps={self.fps})"
        )

    # ---- reading ---------------------------------------------------------------------------
    def _position(self, i: int) -> int:
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"frame position {i} is outside 0..{n - 1} of {self.path}")
        return j

    def _decode(self, positions: Sequence[int]) -> list[np.ndarray]:
        """Decode sorted, unique positions (under the lock; nothing is yielded while held)."""
        file_indices = [int(self.frame_indices[p]) for p in positions]
        with self._lock:
            frames = self._read_with_fallback(file_indices)
        for frame in frames:
            if frame.shape != (self.height, self.width, 3):
                raise InputError(
                    f"video {self.path} changes frame size mid-stream ({frame.shape[1]}x"
                    f"{frame.shape[0]} vs {self.width}x{self.height}); {_reencode_hint(self.path)}"
                )
        return frames

    def _read_with_fallback(self, indices: list[int]) -> list[np.ndarray]:
        """Decode file ``indices``; on a decode error switch to the next reader for good.

        If every reader fails, the error of the first sequential reader (PyAV, then OpenCV)
        is raised: it names the frame of the damaged packet, decord only where it noticed.
        """
        failures: list[_DecodeError] = []
        while True:
            if self._reader is None:
                raise ValueError(f"{self.path} was closed; open it again with open_video")
            try:
                if not failures:
                    return self._reader.read_sorted(indices)
                with _native_stderr_to_log():
                    return self._reader.read_sorted(indices)
            except _DecodeError as exc:
                failures.append(exc)
                reader = self._next_reader()
                if reader is None:
                    named = [f for f in failures if f.backend != "decord"] or failures
                    raise named[0] from None
                log.info(
                    "%s could not decode %s (%s); reading it with %s instead",
                    self.backend,
                    self.path,
                    exc,
                    reader.backend,
                )
                self._reader.close()
                self._reader, self.backend = reader, reader.backend

    def _next_reader(self) -> _Reader | None:
        while self._fallbacks:
            name = self._fallbacks.pop(0)
            try:
                return _open_reader(name, self.path)
            except Exception as exc:
                log.debug("fallback reader %s could not open %s: %s", name, self.path, exc)
        return None

    def read(self, i: int) -> np.ndarray:
        """Frame at position ``i`` (negative counts from the end): ``(H, W, 3) uint8`` RGB."""
        return self._decode([self._position(i)])[0]

    def read_batch(self, positions: Iterable[int]) -> np.ndarray:
        """Frames at ``positions``, in the order given: ``(B, H, W, 3) uint8`` RGB.

        Decodes in increasing order (each distinct position once), so any order costs one pass.
        Holds all B frames; for long ranges use :meth:`iter_frames`.
        """
        wanted = [self._position(p) for p in positions]
        if not wanted:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        unique = sorted(set(wanted))
        decoded = dict(zip(unique, self._decode(unique)))
        return np.stack([decoded[p] for p in wanted])

    def iter_frames(
        self, positions: Iterable[int] | None = None, batch_size: int = 8
    ) -> Iterator[FrameBatch]:
        """Stream frames as :class:`FrameBatch` ``(positions (B,), frames (B, H, W, 3) uint8)``.

        ``positions`` (default: all) are visited once each in increasing order whatever order
        they are given in, ``batch_size`` at a time, so at most one batch is in memory and the
        file is decoded in a single forward pass.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1")
        if positions is None:
            order = list(range(len(self)))
        else:
            order = sorted({self._position(p) for p in positions})
        for k in range(0, len(order), batch_size):
            chunk = order[k : k + batch_size]
            frames = self._decode(chunk)
            yield FrameBatch(np.asarray(chunk, dtype=np.int64), np.stack(frames))

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames one at a time, ``(H, W, 3) uint8``, in order."""
        for batch in self.iter_frames(batch_size=1):
            yield batch.frames[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        """Lazy-array indexing: the first index selects positions, the rest index the frames."""
        first, rest = (key[0], tuple(key[1:])) if isinstance(key, tuple) else (key, ())
        if isinstance(first, (int, np.integer)):
            frame = self.read(int(first))
            return frame[rest] if rest else frame
        if isinstance(first, slice):
            frames = self.read_batch(range(len(self))[first])
        elif first is Ellipsis:
            raise TypeError("VideoSource does not take '...' indexing; index the time axis first")
        else:
            frames = self.read_batch(np.asarray(first, dtype=np.int64).reshape(-1).tolist())
        return frames[(slice(None), *rest)] if rest else frames

    # ---- identity ----------------------------------------------------------------------------
    def content_hash(self) -> str:
        """SHA-256 hex digest identifying these frames, for the feature-cache key.

        Cheap for big inputs: it reads at most about 1 MiB of a video file. It hashes

        * for a video file: the byte size, then the whole file if it is at most 1 MiB, else 16
          chunks of 64 KiB at evenly spaced offsets (first and last bytes included);
        * for a folder: for every selected frame file, its name, byte size and first and last
          4 KiB (the whole file if smaller than 8 KiB);
        * for in-memory frames: their shape and every pixel;
        * always: the resolved selection ``start:stop:stride`` and the frame count.

        Paths and modification times are not hashed: a copied or renamed video keeps its key.
        Different selections of the same file give different hashes.
        """
        h = hashlib.sha256(b"ditf-track content v1\0")
        if self.kind == "video":
            _hash_file_sampled(h, self.path, chunk=64 * 1024, samples=16)
        elif self.kind == "array":
            assert isinstance(self._reader, _ArrayReader)
            h.update(f"array {self._reader.frames.shape}\0".encode())
            for i in self.frame_indices:
                h.update(np.ascontiguousarray(self._reader.frames[int(i)]).tobytes())
        else:
            for i in self.frame_indices:
                f = self._files[int(i)]
                h.update(f.name.encode() + b"\0")
                _hash_file_ends(h, f, 4 * 1024)
        h.update(f"range {self.start}:{self.stop}:{self.stride} n={len(self)}".encode())
        return h.hexdigest()

    # ---- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Release the decoder (file handles); the source cannot read afterwards."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hash_file_sampled(h: Any, path: Path, chunk: int, samples: int) -> None:
    size = path.stat().st_size
    h.update(f"size {size}\0".encode())
    with path.open("rb") as f:
        if size <= chunk * samples:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return
        for offset in np.linspace(0, size - chunk, samples).astype(np.int64):
            f.seek(int(offset))
            h.update(f.read(chunk))


def _hash_file_ends(h: Any, path: Path, chunk: int) -> None:
    size = path.stat().st_size
    h.update(f"size {size}\0".encode())
    with path.open("rb") as f:
        if size <= 2 * chunk:
            h.update(f.read())
            return
        h.update(f.read(chunk))
        f.seek(size - chunk)
        h.update(f.read(chunk))


def _list_frame_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise InputError(
            f"folder {folder} holds no .jpg/.jpeg/.png frames; point to a frame folder or a "
            f"video file ({', '.join(VIDEO_EXTENSIONS)})"
        )
    files.sort(key=lambda p: natural_sort_key(p.name))
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise InputError(
                f"folder {folder} holds two frames named {p.stem!r} ({seen[p.stem].name}, "
                f"{p.name}); keep one image per frame"
            )
        seen[p.stem] = p
    return files


def _resolve_range(path: Path, total: int, start: int, end: int | None, stride: int) -> int:
    if stride < 1:
        raise ConfigError(f"stride={stride} must be at least 1")
    if start < 0:
        raise ConfigError(f"start={start} must be >= 0")
    if end is not None and end <= start:
        raise ConfigError(f"end={end} must be greater than start={start} (end is exclusive)")
    if start >= total:
        raise InputError(
            f"start={start} selects no frame of {path}, which has {total} frames; "
            f"use start < {total}"
        )
    return total if end is None else min(end, total)


def open_video(
    path: str | os.PathLike[str],
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    *,
    backend: Backend = "auto",
) -> VideoSource:
    """Open a video file or a frame folder and select frames ``start:end:stride``.

    ``end`` is exclusive and clipped to the number of frames (``None``: to the end), like a
    Python slice. ``backend`` forces a video reader (``"decord"``, ``"pyav"``, ``"opencv"``);
    ``"auto"`` tries them in that order, and later hands over to the next one if a reader
    fails on a frame. The first selected frame is decoded here, so a file that cannot be read
    fails now rather than mid-run; a file damaged or truncated after that fails with
    :class:`InputError`, naming the first damaged frame, only when that frame is read.

    Raises:
        InputError: missing path, unsupported extension, folder without frames, unreadable or
            corrupt video, empty range, frames of different sizes in a folder.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"video {p} does not exist; check the path")
    if p.is_dir():
        files = _list_frame_files(p)
        stop = _resolve_range(p, len(files), start, end, stride)
        selected = files[start:stop:stride]
        size = image_size(selected[0])
        for f in selected[1:]:
            # Header-only reads: a folder with a stray frame of another size fails now.
            other = image_size(f)
            if other != size:
                raise _size_mismatch(f, other, size)
        reader: _Reader = _FolderReader(files, size)
        names = [f.stem for f in selected]
        source = VideoSource(p, "frames", reader, start, stop, stride, names, files)
    elif p.suffix.lower() in VIDEO_EXTENSIONS:
        reader, fallbacks = _open_video_file(p, backend)
        stop = _resolve_range(p, reader.num_frames, start, end, stride)
        names = [f"{i:05d}" for i in range(start, stop, stride)]
        source = VideoSource(p, "video", reader, start, stop, stride, names, (), fallbacks)
    else:
        raise InputError(
            f"{p} has an unsupported extension {p.suffix!r}; pass a video "
            f"({', '.join(VIDEO_EXTENSIONS)}) or a folder of .jpg/.png frames"
        )
    source.read(0)  # fail early on unreadable content
    return source


def video_from_array(
    frames: np.ndarray,
    frame_names: Sequence[str] | None = None,
    *,
    name: str = "frames",
    fps: float | None = None,
) -> VideoSource:
    """A :class:`VideoSource` over frames already in memory, ``(T, H, W, 3) uint8`` RGB.

    ``frame_names`` default to ``"00000"``, ``"00001"``, ...; ``name`` labels the source
    (its ``path``). The frames are not copied; do not modify them while the source is in use.
    """
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or len(arr) == 0:
        raise InputError(
            f"frames must be a non-empty (T, H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}"
        )
    names = [f"{i:05d}" for i in range(len(arr))] if frame_names is None else list(frame_names)
    if len(names) != len(arr):
        raise InputError(f"{len(names)} frame names for {len(arr)} frames; give one per frame")
    reader = _ArrayReader(arr, fps)
    return VideoSource(Path(name), "array", reader, 0, len(arr), 1, names)


def resize_frames(
    frames: np.ndarray, size: tuple[int, int], interpolation: Interpolation = "auto"
) -> np.ndarray:
    """Resize ``(N, H, W, 3) uint8`` frames to ``(N, H', W', 3) uint8``, ``size = (H', W')``.

    Uses :func:`ditf_track.images.resize_image` per frame: OpenCV ``INTER_AREA`` (antialiased
    pixel-area averaging) when shrinking, ``INTER_LINEAR`` when enlarging; pass
    ``interpolation="bilinear"`` to follow the DINO/DiTF DAVIS protocol (plain ``cv2.resize``).
    Pick ``size`` with :func:`ditf_track.images.model_input_size`.
    """
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be (N,H,W,3), got shape {frames.shape}")
    out = np.empty((frames.shape[0], int(size[0]), int(size[1]), 3), dtype=frames.dtype)
    for i, frame in enumerate(frames):
        out[i] = resize_image(frame, size, interpolation)
    return out
