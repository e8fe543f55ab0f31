"""Writing DiTF features of an image, a video or a frame folder to one safetensors file.

A video's features do not fit in memory (a Flux frame at 60×106 in bf16 is ~39 MB), and
``safetensors.torch.save_file`` needs the whole tensor at once. The file format is simple — an
8-byte little-endian header length, a JSON header with each tensor's dtype, shape and byte
offsets, then the raw bytes — and every frame has the same shape, so the header is known after
the first frame and the frames are appended as they are extracted. The result loads with
``safetensors.torch.load_file`` like any other file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ._atomic import move_into_place, temporary_path
from ._version import __version__
from .errors import InputError, OutputError
from .features import FeatureExtractor
from .images import model_input_size, read_image, resize_image
from .noise import frame_noise_id, image_noise_id
from .progress import Progress, ProgressEvent
from .video import VideoSource, open_video, resize_frames

_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


class StreamingSafetensorsWriter:
    """One ``(T, ...)`` tensor written frame by frame to a safetensors file, atomically.

    The header is written when the first frame arrives; the file appears under its final name
    only after all ``length`` frames were written (:meth:`close`), so an interrupted run never
    leaves a file that looks complete.
    """

    def __init__(self, path: str | os.PathLike[str], name: str, length: int) -> None:
        self.path = Path(path)
        self.name = name
        self.length = length
        self.written = 0
        self.metadata: dict[str, str] = {}
        self._tmp: Path | None = None
        self._file: BinaryIO | None = None
        self._frame_shape: tuple[int, ...] | None = None
        self._dtype: torch.dtype | None = None

    def write(self, frames: torch.Tensor) -> None:
        """Append ``frames`` ``(B, ...)``; every frame must have the first frame's shape."""
        if self._file is None:
            self._open(tuple(frames.shape[1:]), frames.dtype)
        assert self._file is not None
        if tuple(frames.shape[1:]) != self._frame_shape or frames.dtype != self._dtype:
            raise ValueError("every frame must have the first frame's shape and dtype")
        if self.written + len(frames) > self.length:
            raise ValueError(f"more than the {self.length} frames announced")
        raw = frames.detach().contiguous().cpu().view(torch.uint8).numpy()
        self._file.write(raw.tobytes())
        self.written += len(frames)

    def _open(self, frame_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"unsupported dtype {dtype}")
        self._frame_shape, self._dtype = frame_shape, dtype
        nbytes = self.length * int(np.prod(frame_shape)) * torch.finfo(dtype).bits // 8
        header: dict[str, Any] = {
            self.name: {
                "dtype": _DTYPES[dtype],
                "shape": [self.length, *frame_shape],
                "data_offsets": [0, nbytes],
            },
            "__metadata__": self.metadata,
        }
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
        self._tmp = temporary_path(self.path)
        self._file = self._tmp.open("wb")
        self._file.write(struct.pack("<Q", len(text)) + text)

    def close(self) -> Path:
        if self._file is None or self.written != self.length:
            self.abort()
            raise OutputError(
                f"{self.path}: {self.written} of {self.length} frames were written; nothing saved"
            )
        self._file.close()
        assert self._tmp is not None
        return move_into_place(self._tmp, self.path, "features file")

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


def open_input(path: str | os.PathLike[str], **range_kwargs: Any) -> VideoSource | np.ndarray:
    """An image file as ``(H, W, 3) uint8``, or a video / frame folder as a :class:`VideoSource`."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        if (
            range_kwargs.get("start")
            or range_kwargs.get("end")
            or range_kwargs.get("stride", 1) > 1
        ):
            raise InputError(f"{p} is an image; --start/--end/--stride apply to videos only")
        return read_image(p)
    return open_video(p, **range_kwargs)


def extract_to_safetensors(
    extractor: FeatureExtractor,
    source: VideoSource | np.ndarray,
    out: str | os.PathLike[str],
    *,
    size: tuple[int, int],
    batch_size: int = 4,
    progress: Progress | None = None,
    extra_metadata: dict[str, Any] | None = None,
    massive_channels: Sequence[int] | None = None,
) -> Path:
    """Extract features for every frame of ``source`` at model input ``size`` into ``out``.

    The tensor ``features`` is ``(T, C, h, w)`` in the extractor's dtype; the metadata entry
    ``ditf_track`` (JSON) holds the frame names (a video's also their ``frame_indices`` in the
    file, so ``track --features`` finds a selection's frames), sizes, the massive channels
    (``massive_channels`` if given — a video's come from
    :class:`~ditf_track.tracker.ClipFeatures`, frame 0 — else those found on the first batch;
    held for every frame) and the extractor's identity.
    ``progress`` gets an ``extract`` :class:`~ditf_track.progress.ProgressEvent` after each batch.
    Noise is seeded per frame by its index in the file (per image by its content), as in
    ``track``, so both compute the same features for a frame.
    """
    frames_iter: Iterator[tuple[Sequence[str], np.ndarray, list[str]]]
    indices: dict[str, list[int]] = {}  # a video's frame indices in its file: track --features
    if isinstance(source, np.ndarray):
        names: list[str] = ["image"]
        original = source.shape[:2]
        image = resize_image(source, size)
        frames_iter = iter([(names, image[None], [image_noise_id(image)])])
    else:
        names = list(source.frame_names)
        indices["frame_indices"] = [int(i) for i in source.frame_indices]
        original = (source.height, source.width)
        frames_iter = (
            (
                [names[i] for i in batch.positions],
                resize_frames(batch.frames, size),
                [frame_noise_id(int(source.frame_indices[i])) for i in batch.positions],
            )
            for batch in source.iter_frames(batch_size=batch_size)
        )
    writer = StreamingSafetensorsWriter(out, "features", len(names))
    channels = tuple(int(c) for c in massive_channels) if massive_channels is not None else None
    done = 0
    try:
        for batch_names, frames, noise_ids in frames_iter:
            maps = extractor.extract(frames, massive_channels=channels, noise_ids=noise_ids)
            if channels is None:
                channels = tuple(maps.meta.get("massive_channels", maps.discarded_channels))
            if "ditf_track" not in writer.metadata:
                writer.metadata["ditf_track"] = json.dumps(
                    {
                        "version": __version__,
                        "frame_names": names,
                        **indices,
                        "original_size": list(original),
                        "input_size": list(size),
                        "stride": maps.stride,
                        "grid_size": list(maps.grid_size),
                        "massive_channels": list(channels),
                        "discarded_channels": list(maps.discarded_channels),
                        "extractor": extractor.identity(),
                        **(extra_metadata or {}),
                    }
                )
            writer.write(maps.features)
            done += len(batch_names)
            if progress is not None:
                progress(ProgressEvent("extract", done, len(names)))
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def input_size_for(
    source: VideoSource | np.ndarray,
    *,
    square: int | None,
    short_side: int | None,
    long_side: int | None,
    multiple: int,
) -> tuple[int, int]:
    """The model input size: one of square / short side / long side, multiples of the stride."""
    h, w = (
        (source.shape[0], source.shape[1])
        if isinstance(source, np.ndarray)
        else (
            source.height,
            source.width,
        )
    )
    return model_input_size(
        h, w, square=square, short_side=short_side, long_side=long_side, multiple=multiple
    )
