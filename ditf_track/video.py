"""Video → frames: read video files and frame folders as a stream of ``(H, W, 3) uint8`` RGB.

:func:`open_video` returns a :class:`VideoSource`, a small handle that knows the size, frame rate
and frame names of the selected frames and decodes them on demand, so a long video is never
held whole in memory. Positions ``i`` used by the API are positions in the selected range
(``0 .. len(source) - 1``); ``source.frame_indices[i]`` is the index in the file or folder.

The readers (decord, then PyAV, then OpenCV for video files, with hand-over when one fails;
image files for frame folders) are in :mod:`ditf_track._video_readers`.

Frame folders hold ``.jpg .jpeg .png`` files, sorted by natural order of the name (``2.jpg``
before ``10.jpg``); their stems become the frame names used for output files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from ._video_readers import (
    ArrayReader,
    Backend,
    DecodeError,
    FolderReader,
    Reader,
    native_stderr_to_log,
    open_reader,
    open_video_file,
    reencode_hint,
    size_mismatch,
)
from .errors import ConfigError, InputError
from .images import Interpolation, image_size, resize_image

__all__ = [
    "FRAME_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Backend",
    "FrameBatch",
    "VideoSource",
    "natural_sort_key",
    "open_video",
    "resize_frames",
    "video_from_array",
]

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv")
FRAME_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")


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
        reader: Reader,
        start: int,
        stop: int,
        stride: int,
        frame_names: Sequence[str],
        files: Sequence[Path] = (),
        fallbacks: Sequence[str] = (),
    ) -> None:
        self.path = path
        self.kind = kind
        self._reader: Reader | None = reader
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
                    f"{frame.shape[0]} vs {self.width}x{self.height}); {reencode_hint(self.path)}"
                )
        return frames

    def _read_with_fallback(self, indices: list[int]) -> list[np.ndarray]:
        """Decode file ``indices``; on a decode error switch to the next reader for good.

        If every reader fails, the error of the first sequential reader (PyAV, then OpenCV)
        is raised: it names the frame of the damaged packet, decord only where it noticed.
        """
        failures: list[DecodeError] = []
        while True:
            if self._reader is None:
                raise ValueError(f"{self.path} was closed; open it again with open_video")
            try:
                if not failures:
                    return self._reader.read_sorted(indices)
                with native_stderr_to_log():
                    return self._reader.read_sorted(indices)
            except DecodeError as exc:
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

    def _next_reader(self) -> Reader | None:
        while self._fallbacks:
            name = self._fallbacks.pop(0)
            try:
                return open_reader(name, self.path)
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
            assert isinstance(self._reader, ArrayReader)
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

    def file_hash(self) -> str:
        """SHA-256 hex digest of the whole file or folder, whatever the selection: the feature
        cache keys frames by this and their file index, so ``--end 8`` and a whole-file run
        share their frames' features.

        Hashed as :meth:`content_hash` does, but over every frame file of a folder (every
        frame of in-memory frames) and without the selection range.
        """
        h = hashlib.sha256(b"ditf-track file v1\0")
        if self.kind == "video":
            _hash_file_sampled(h, self.path, chunk=64 * 1024, samples=16)
        elif self.kind == "array":
            assert isinstance(self._reader, ArrayReader)
            h.update(f"array {self._reader.frames.shape}\0".encode())
            h.update(np.ascontiguousarray(self._reader.frames).tobytes())
        else:
            for f in self._files:
                h.update(f.name.encode() + b"\0")
                _hash_file_ends(h, f, 4 * 1024)
        h.update(f"frames {self.total_frames}".encode())
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
                raise size_mismatch(f, other, size)
        reader: Reader = FolderReader(files, size)
        names = [f.stem for f in selected]
        source = VideoSource(p, "frames", reader, start, stop, stride, names, files)
    elif p.suffix.lower() in VIDEO_EXTENSIONS:
        reader, fallbacks = open_video_file(p, backend)
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
    reader = ArrayReader(arr, fps)
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
