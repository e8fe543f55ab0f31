"""Overlay videos: masks blended in and point tracks drawn onto frames, written as an mp4.

:func:`write_overlay_video` streams ``(H, W, 3) uint8`` RGB frames (one at a time, never the
whole clip) through the first available encoder: H.264 via PyAV (a core dependency whose wheels
bundle libx264), H.264 via imageio-ffmpeg, or OpenCV's MPEG-4 Part 2. Points are ``(y, x)``
pixels of the frame.
"""

from __future__ import annotations

import collections
import importlib.util
import itertools
import logging
import os
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import cv2
import numpy as np

from .._atomic import atomic_path
from ..errors import ConfigError, InputError, OutputError
from ..masks import DAVIS_PALETTE

__all__ = ["FramePoints", "write_overlay_video"]

log = logging.getLogger(__name__)


class FramePoints(NamedTuple):
    """Points to draw on one frame of an overlay video.

    ``points``: ``(N, 2) float`` as ``(y, x)`` pixels of the frame; ``visible``: ``(N,) bool``
    or ``None`` (all visible); ``ids``: ``(N,) int`` track ids or ``None`` (``0..N-1``), which
    pick the colour and link trails across frames.
    """

    points: np.ndarray
    visible: np.ndarray | None = None
    ids: np.ndarray | None = None


def _palette_array(palette: bytes | Sequence[int] | np.ndarray | None) -> np.ndarray:
    if palette is None:
        palette = DAVIS_PALETTE
    arr = np.frombuffer(bytes(palette), np.uint8) if isinstance(palette, bytes) else palette
    arr = np.asarray(arr, dtype=np.uint8).reshape(-1)
    if arr.size > 768 or arr.size % 3:
        raise ConfigError(f"palette has {arr.size} values; give 256 RGB triplets (768 values)")
    out = np.zeros((256, 3), np.uint8)
    out[: arr.size // 3] = arr.reshape(-1, 3)
    return out


def _track_colour(palette: np.ndarray, track_id: int) -> tuple[int, int, int]:
    # Ids 1..254 use their palette entry; others wrap into 1..254 (0 is black, 255 void).
    index = track_id if 1 <= track_id <= 254 else 1 + track_id % 254
    r, g, b = (int(v) for v in palette[index])
    return r, g, b


def _blend_labels(
    frame: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float
) -> np.ndarray:
    if labels.shape != frame.shape[:2]:
        # Masks at another resolution (e.g. the model's): nearest keeps ids intact.
        labels = cv2.resize(
            labels, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST
        )
    objects = (labels != 0) & (labels != 255)
    out = frame.astype(np.float32)
    tint = colours[labels].astype(np.float32)
    out[objects] = (1 - alpha) * out[objects] + alpha * tint[objects]
    # Object outlines in full colour make touching objects and thin parts readable.
    eroded = cv2.erode(labels, np.ones((3, 3), np.uint8))
    edge = objects & (eroded != labels)
    out[edge] = tint[edge]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _draw_points(
    canvas_bgr: np.ndarray,
    history: collections.deque[dict[int, tuple[float, float]]],
    palette: np.ndarray,
    radius: int,
) -> None:
    shift = 4  # OpenCV fixed-point drawing: coordinates × 16 give sub-pixel positions
    scale = 1 << shift
    current = history[-1]
    tracks: dict[int, list[tuple[int, int]]] = {}
    for step in history:
        for tid, (y, x) in step.items():
            tracks.setdefault(tid, []).append((round(x * scale), round(y * scale)))
    for tid, pts in tracks.items():
        r, g, b = _track_colour(palette, tid)
        for a, c in itertools.pairwise(pts):
            cv2.line(canvas_bgr, a, c, (b, g, r), 1, cv2.LINE_AA, shift)
        if tid in current:
            cv2.circle(canvas_bgr, pts[-1], radius * scale, (b, g, r), -1, cv2.LINE_AA, shift)
            cv2.circle(canvas_bgr, pts[-1], radius * scale, (0, 0, 0), 1, cv2.LINE_AA, shift)


_MISSING: Any = object()


class _VideoWriter(Protocol):
    def write(self, frame_rgb: np.ndarray) -> None: ...

    def close(self) -> None: ...


class _OpenCVWriter:
    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        fourcc = cv2.VideoWriter.fourcc(*"mp4v")
        self._writer = cv2.VideoWriter(str(path), fourcc, fps, (size[1], size[0]))
        if not self._writer.isOpened():
            raise OutputError(
                f"cannot write video {path} with OpenCV (mp4v); check the folder is writable"
            )

    def write(self, frame_rgb: np.ndarray) -> None:
        self._writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()


def _even_size(size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` rounded up to even sides: H.264 in yuv420p (what browsers and QuickTime
    play) stores colour at half resolution, so both sides must be even."""
    return size[0] + size[0] % 2, size[1] + size[1] % 2


def _pad_to(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pad ``(H, W, 3)`` at the bottom and right to ``size`` by repeating the edge pixels."""
    dh, dw = size[0] - frame.shape[0], size[1] - frame.shape[1]
    return np.pad(frame, ((0, dh), (0, dw), (0, 0)), mode="edge") if dh or dw else frame


def _h264_encoder() -> str | None:
    """The H.264 encoder in PyAV's FFmpeg (its wheels bundle libx264), or ``None``."""
    if importlib.util.find_spec("av") is None:
        return None
    import av

    available = av.codecs_available
    return next((name for name in ("libx264", "libopenh264") if name in available), None)


class _PyAVWriter:
    """H.264 (yuv420p) through PyAV's FFmpeg, a core dependency: plays in browsers and
    QuickTime. Odd sides are padded by one row/column repeating the edge (see _even_size)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, encoder: str) -> None:
        import av

        self._av = av
        self._size = _even_size(size)
        self._rate = Fraction(fps).limit_denominator(1001)  # 29.97 → 30000/1001
        # Index first (mp4/mov), so players start before the whole file has downloaded.
        options = {"movflags": "+faststart"} if path.suffix.lower() in (".mp4", ".mov") else {}
        try:
            container: Any = av.open(str(path), "w", options=options)
            stream: Any = container.add_stream(encoder, rate=self._rate)
        except (av.FFmpegError, ValueError) as exc:
            raise OutputError(
                f"cannot write video {path} with PyAV ({exc}); use a .mp4 name in a writable folder"
            ) from exc
        stream.height, stream.width = self._size
        stream.pix_fmt = "yuv420p"
        if encoder == "libx264":
            stream.options = {"crf": "20", "preset": "medium"}
        self._container, self._stream = container, stream
        self._count = 0

    def write(self, frame_rgb: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(
            np.ascontiguousarray(_pad_to(frame_rgb, self._size)), format="rgb24"
        )
        frame.pts = self._count
        frame.time_base = 1 / self._rate
        self._count += 1
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self._stream.encode():  # flush the frames the encoder holds back
                self._container.mux(packet)
        finally:
            self._container.close()


class _FFmpegWriter:
    """H.264 via imageio-ffmpeg's ffmpeg binary (when installed); odd sides padded."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        import imageio_ffmpeg

        self._size = _even_size(size)
        self._gen = imageio_ffmpeg.write_frames(
            str(path),
            (self._size[1], self._size[0]),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=7,
            macro_block_size=1,
            output_params=["-movflags", "+faststart"],
            ffmpeg_log_level="error",
        )
        self._gen.send(None)

    def write(self, frame_rgb: np.ndarray) -> None:
        self._gen.send(np.ascontiguousarray(_pad_to(frame_rgb, self._size)))

    def close(self) -> None:
        self._gen.close()


def write_overlay_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    masks: Iterable[np.ndarray | None] | None,
    palette: bytes | Sequence[int] | np.ndarray | None,
    fps: float,
    alpha: float = 0.5,
    points: Iterable[FramePoints | None] | None = None,
    *,
    trail: int = 10,
    point_radius: int = 3,
    writer: Literal["auto", "pyav", "ffmpeg", "opencv"] = "auto",
) -> Path:
    """Write an mp4 of ``frames`` with masks blended in and point tracks drawn, for a quick look.

    Args:
        path: the ``.mp4`` to write; written to a temporary name in the same folder, then
            renamed, so a crash never leaves a half-written file under ``path``.
        frames: ``(H, W, 3) uint8`` RGB frames (any iterable; consumed once, streamed).
        masks: one ``(H, W) uint8`` id map per frame (0 background, 255 void, others objects)
            or ``None`` for a frame without mask; ``masks=None`` draws no masks. Maps of another
            size are resized (nearest) to the frame.
        palette: 768 palette bytes (or ``(256, 3)`` values) giving each id's colour;
            ``None`` uses the DAVIS palette.
        fps: playback frame rate.
        alpha: opacity of the mask colour; outlines are drawn opaque.
        points: one :class:`FramePoints` (``(y, x)`` pixels) or ``None`` per frame; each
            visible point is a dot with a line through its last ``trail`` visible positions.
        writer: ``"pyav"`` (H.264 through PyAV, a core dependency whose wheels bundle
            libx264), ``"ffmpeg"`` (H.264 through imageio-ffmpeg, if installed), ``"opencv"``
            (``cv2.VideoWriter`` with MPEG-4 Part 2, ``mp4v``, which browsers and QuickTime do
            not play) or ``"auto"`` (the first of these that is available). The H.264 writers
            use yuv420p, which needs even sides: an odd height or width is padded by one
            row/column repeating the edge pixels, so the file is up to 1 pixel larger.

    Returns:
        The path written.

    Raises:
        InputError: no frames, frames of different sizes, or more masks/points than frames.
        OutputError: the file cannot be written.
    """
    out_path = Path(path)
    if fps <= 0:
        raise ConfigError(f"fps={fps} must be positive")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha} must be within [0, 1]")
    if writer not in ("auto", "pyav", "ffmpeg", "opencv"):
        raise ConfigError(f"writer={writer!r} is not one of auto, pyav, ffmpeg, opencv")
    encoder = _h264_encoder() if writer in ("auto", "pyav") else None
    if writer == "pyav" and encoder is None:
        raise ConfigError(
            "writer='pyav' needs PyAV with an H.264 encoder (pip install av); use writer='auto'"
        )
    colours = _palette_array(palette)
    frame_iter = iter(frames)
    mask_iter = iter(masks) if masks is not None else None
    point_iter = iter(points) if points is not None else None
    try:
        first = np.asarray(next(frame_iter))
    except StopIteration:
        raise InputError(f"no frames to write to {out_path}; pass at least one frame") from None
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
        raise InputError(f"overlay frames must be (H,W,3) uint8, got {first.shape} {first.dtype}")
    size = (first.shape[0], first.shape[1])
    if writer == "auto":
        if encoder is not None:
            writer = "pyav"
        elif importlib.util.find_spec("imageio_ffmpeg") is not None:
            writer = "ffmpeg"
        else:
            writer = "opencv"
            log.warning(
                "no H.264 encoder found (PyAV is missing): writing %s as MPEG-4 Part 2, which "
                "browsers and QuickTime do not play; pip install av for H.264",
                out_path,
            )
    history: collections.deque[dict[int, tuple[float, float]]] = collections.deque(
        maxlen=max(1, trail)
    )
    with atomic_path(out_path, "overlay video") as tmp:
        sink: _VideoWriter
        if writer == "pyav":
            assert encoder is not None
            sink = _PyAVWriter(tmp, size, fps, encoder)
        elif writer == "ffmpeg":
            sink = _FFmpegWriter(tmp, size, fps)
        else:
            sink = _OpenCVWriter(tmp, size, fps)
        try:
            frame: np.ndarray | None = first
            t = 0
            while frame is not None:
                if frame.shape != first.shape:
                    raise InputError(
                        f"frame {t} is {frame.shape} but frame 0 is {first.shape}; overlay "
                        "frames must share one size"
                    )
                canvas = frame
                if mask_iter is not None:
                    labels = next(mask_iter, _MISSING)
                    if labels is _MISSING:
                        raise InputError(
                            f"masks ran out at frame {t}; give one mask (or None) per frame"
                        )
                    if labels is not None:
                        canvas = _blend_labels(frame, np.asarray(labels, np.uint8), colours, alpha)
                if point_iter is not None:
                    fp = next(point_iter, _MISSING)
                    if fp is _MISSING:
                        raise InputError(
                            f"points ran out at frame {t}; give points (or None) per frame"
                        )
                    history.append(_visible_points(fp))
                    bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
                    _draw_points(bgr, history, colours, point_radius)
                    canvas = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                sink.write(np.ascontiguousarray(canvas))
                t += 1
                nxt = next(frame_iter, None)
                frame = None if nxt is None else np.asarray(nxt)
        finally:
            sink.close()
    return out_path


def _visible_points(fp: FramePoints | None) -> dict[int, tuple[float, float]]:
    if fp is None:
        return {}
    pts = np.asarray(fp.points, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    visible = np.ones(n, bool) if fp.visible is None else np.asarray(fp.visible, bool)
    ids = np.arange(n) if fp.ids is None else np.asarray(fp.ids, np.int64)
    return {
        int(i): (float(y), float(x))
        for (y, x), v, i in zip(pts, visible, ids)
        if v and np.isfinite(y) and np.isfinite(x)
    }
