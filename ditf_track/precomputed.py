"""Bring your own features: a safetensors file of per-frame feature maps as a feature extractor.

:class:`PrecomputedFeatures` reads the tensor ``features`` ``(T, C, h, w)`` (any float dtype, any
C) of a file — the one ``ditf-track extract`` writes, or one made by another program or on
another machine — and hands the tracker the map of the frame it asks for, L2-normalised over C
in float32. It lets propagation run on features of any model, and be checked against other
implementations on the same features.

Which row is which frame: row ``i`` is the frame whose index in the video file or folder is
``i`` (T = the video's frame count; a ``--start/--end/--stride`` selection indexes into it), unless
the file's ``ditf_track`` metadata lists ``frame_indices`` (``extract`` on a selection records
them), then row ``i`` is frame ``frame_indices[i]``. The tracker names each frame by its
noise id, which is its index in the file (:func:`~ditf_track.noise.frame_noise_id`), so a frame
gets its own row whatever the selection or batch.

Which cells: the grid ``(h, w)`` must be the one the tracker's resize rule gives the frame
(:func:`expected_grid`): the grid's short side is exact and its long side is the frame's long
side scaled by the same factor, rounded to the nearest cell — a grid keeping the frame's aspect
within half a cell. A cell is ``stride`` model-input pixels: the metadata's ``stride`` (``extract``
records it), else :data:`DEFAULT_STRIDE`; only how label maps are upsampled depends on it.

Memory: one frame is read at a time, through ``safe_open(...).get_slice("features")[i]`` on a
file opened for that read only, so nothing grows with T (a 2,000-frame Flux file is ~78 GB).
The header (names, dtype, shape, metadata) is checked when the extractor is made, before any
work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .devices import resolve_device
from .errors import InputError
from .features import FeatureMaps
from .images import model_input_size

if TYPE_CHECKING:
    from .video import VideoSource

#: The tensor a features file holds (``extract`` writes it under this name).
FEATURES_TENSOR = "features"
#: The metadata entry ``extract`` writes (JSON: frame names and indices, sizes, stride, ...).
METADATA_KEY = "ditf_track"
#: Model-input pixels per cell when the file does not say: a DiT's token stride (VAE 8×, 2×2
#: patches), so the maps match a DiT's at the same input size.
DEFAULT_STRIDE = 16
#: safetensors dtypes read as features (converted to float32 after reading).
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
#: Vectors whose norm is this close to 1 are taken as normalised already (float32 rounding of
#: a C-dimensional unit vector's norm stays within a few ulps, 1.2e-7 each).
UNIT_TOLERANCE = 1e-6
#: Bytes hashed at each end of the file for its fingerprint (with the header and the size).
_SAMPLE_BYTES = 1 << 20
_FRAME_ID = re.compile(r"frame:(\d+)")


def frame_index(noise_id: str) -> int:
    """The file index of a video frame from its noise id (the inverse of
    :func:`~ditf_track.noise.frame_noise_id`); an image's id is refused."""
    match = _FRAME_ID.fullmatch(str(noise_id))
    if match is None:
        raise InputError(
            f"precomputed features are per video frame, but an item's id is {noise_id!r}; "
            "use them to track a video (ditf-track track VIDEO --features FILE)"
        )
    return int(match.group(1))


def expected_grid(
    frame_size: tuple[int, int], grid: tuple[int, int], stride: int
) -> tuple[int, int]:
    """The grid ``(h, w)`` the tracker gives a frame ``(H, W)`` at the short side of ``grid``
    (short side exact, long side rounded to the nearest cell; see the module docstring): the
    tracker's own size rule at short side ``stride · min(grid)``, in cells."""
    h, w = model_input_size(*frame_size, short_side=stride * min(grid), multiple=stride)
    return h // stride, w // stride


class PrecomputedFeatures:
    """A :class:`~ditf_track.features.FeatureExtractor` that reads a features file.

    ``extract`` returns the rows of the frames named by ``noise_ids`` (their file indices) as
    ``(N, C, h, w)`` float32 unit vectors on ``device``; the images only fix the input size,
    which must be ``(h·stride, w·stride)``. ``stride`` replaces the file's (or the default).
    Every header fault is an :class:`~ditf_track.errors.InputError` raised here.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = "cpu",
        stride: int | None = None,
    ) -> None:
        self.path = Path(path)
        header = _read_header(self.path)
        self.shape: tuple[int, int, int, int] = header["shape"]
        self.dtype: str = header["dtype"]
        self.meta: dict[str, Any] = header["meta"]
        self.file_size: int = header["size"]
        self.mtime_ns: int = header["mtime_ns"]
        self.fingerprint: str = header["fingerprint"]
        given = stride if stride is not None else self.meta.get("stride", DEFAULT_STRIDE)
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise InputError(
                f"features file {self.path}: stride {given!r} must be an integer >= 1; give "
                "stride= or fix the file's ditf_track metadata"
            )
        self.stride = given
        self._device = resolve_device(device)
        indices = self.meta.get("frame_indices")
        self.rows: dict[int, int] | None = None
        if indices is not None:
            valid = isinstance(indices, list) and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices
            )
            if not valid or len(set(indices)) != len(indices) or len(indices) != self.shape[0]:
                raise InputError(
                    f"features file {self.path}: the frame_indices of its metadata are not "
                    f"{self.shape[0]} distinct frame indices, one per row; re-extract it "
                    "(ditf-track extract)"
                )
            self.rows = {f: row for row, f in enumerate(indices)}

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def num_frames(self) -> int:
        return self.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` cells of every frame."""
        return self.shape[2], self.shape[3]

    @property
    def input_size(self) -> tuple[int, int]:
        """The model input ``(H', W')`` the grid stands for: ``stride`` pixels per cell."""
        return self.shape[2] * self.stride, self.shape[3] * self.stride

    @property
    def short_side(self) -> int:
        """The tracker's short side that gives the file's grid (with ``multiple=stride``)."""
        return min(self.input_size)

    def identity(self) -> dict[str, Any]:
        """What the maps depend on: the file (content fingerprint, size, mtime, shape, dtype),
        the stride and the normalisation; config.json records it."""
        return {
            "extractor": "precomputed",
            "path": str(self.path.resolve()),
            "size": self.file_size,
            "mtime_ns": self.mtime_ns,
            "fingerprint": self.fingerprint,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "stride": self.stride,
            "normalize": "l2 over C, float32",
        }

    def row(self, file_index: int) -> int:
        """The row of the frame with index ``file_index`` in the video, or a one-line error."""
        if self.rows is not None:
            found = self.rows.get(int(file_index))
            if found is None:
                listed = sorted(self.rows)
                raise InputError(
                    f"features file {self.path} has no features for frame {file_index} (it "
                    f"holds frames {_ranges(listed)}); select frames it holds (--start/--end/"
                    "--stride) or extract the whole video"
                )
            return found
        if not 0 <= file_index < self.num_frames:
            raise InputError(
                f"features file {self.path} holds {self.num_frames} frames, so it has none for "
                f"frame {file_index}; give the features of this video (one row per frame)"
            )
        return int(file_index)

    def read(self, file_index: int) -> torch.Tensor:
        """The ``(C, h, w)`` map of one frame, as stored (only its bytes are read)."""
        row = self.row(file_index)
        try:
            with safe_open(str(self.path), framework="pt") as f:
                return f.get_slice(FEATURES_TENSOR)[row]
        except (OSError, SafetensorError) as exc:
            raise InputError(
                f"cannot read frame {file_index} of features file {self.path} ({exc}); check "
                "the file"
            ) from exc

    def check_video(self, video: VideoSource) -> None:
        """One line, before any work, if the file cannot serve ``video``'s selected frames:
        a frame it lacks, another frame size, or a grid that does not tile the frames."""
        frame_size = (video.height, video.width)
        original = self.meta.get("original_size")
        if isinstance(original, list) and len(original) == 2 and tuple(original) != frame_size:
            raise InputError(
                f"features file {self.path} was extracted from {original[1]}x{original[0]} frames "
                f"but {video.path} has {video.width}x{video.height} frames; give the features "
                "of this video"
            )
        if self.rows is None and self.num_frames != video.total_frames:
            raise InputError(
                f"features file {self.path} holds {self.num_frames} frames but {video.path} has "
                f"{video.total_frames}; give one row per frame of the video (or a file from "
                "ditf-track extract, which records the frames it holds)"
            )
        for index in video.frame_indices:
            self.row(int(index))
        expected = expected_grid(frame_size, self.grid, self.stride)
        if expected != self.grid:
            raise InputError(
                f"features file {self.path}: a {self.grid[0]}x{self.grid[1]} grid (h x w) does "
                f"not tile {video.width}x{video.height} frames evenly (a {min(self.grid)}-cell "
                f"short side needs {expected[0]}x{expected[1]}); give features on a grid with "
                "the frames' aspect (e.g. ditf-track extract --short-side)"
            )

    def extract(
        self,
        images: np.ndarray | torch.Tensor,
        *,
        massive_channels: Sequence[int] | None = None,
        noise_ids: Sequence[str] | None = None,
    ) -> FeatureMaps:
        """The maps of the frames ``noise_ids`` names (one per image); ``images`` ``(N, H', W',
        3)`` only have to be the input size. ``massive_channels`` are ignored: the file's maps
        are final."""
        if images.ndim == 3:
            images = images[None]
        n, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
        if (height, width) != self.input_size:
            raise InputError(
                f"features file {self.path} has a {self.grid[0]}x{self.grid[1]} grid, which is "
                f"{self.input_size[1]}x{self.input_size[0]} at stride {self.stride}, but the "
                f"frames were resized to {width}x{height}; track at short side "
                f"{self.short_side}"
            )
        if noise_ids is None or len(noise_ids) != n:
            raise InputError(
                "precomputed features need each frame's index (its noise id, "
                "ditf_track.noise.frame_noise_id); pass noise_ids, one per image"
            )
        maps = torch.stack([self.read(frame_index(i)) for i in noise_ids])
        maps = unit_vectors(maps.to(self.device, torch.float32))
        channels = tuple(int(c) for c in self.meta.get("massive_channels", ()))
        return FeatureMaps(
            maps,
            self.stride,
            self.input_size,
            discarded_channels=tuple(int(c) for c in self.meta.get("discarded_channels", ())),
            meta={"massive_channels": list(channels), "features_file": str(self.path)},
        )


def unit_vectors(maps: torch.Tensor) -> torch.Tensor:
    """``(N, C, h, w)`` float32 maps L2-normalised over C; a vector already of unit length to
    float32 rounding (``|‖v‖ − 1| ≤`` :data:`UNIT_TOLERANCE`) is kept bit for bit, so the maps
    of an extractor that normalised them (``extract``'s) give exactly that extractor's results
    (normalising twice moves values by an ulp, and a point track by 0.001 px)."""
    norm = maps.norm(dim=1, keepdim=True)
    unit = (norm - 1).abs() <= UNIT_TOLERANCE
    return torch.where(unit, maps, maps / norm.clamp_min(1e-12))


def _read_header(path: Path) -> dict[str, Any]:
    """The checked header of a features file: shape, dtype, metadata, size, mtime and the
    fingerprint (BLAKE2b of the header, the size and the first and last MiB: 78 GB are not
    hashed)."""
    where = f"features file {path}"
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read {where} ({exc.strerror or exc}); check the path") from exc
    if not path.is_file():
        raise InputError(f"{where} is not a file; give a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            if FEATURES_TENSOR not in names:
                shown = ", ".join(names[:5]) or "none"
                raise InputError(
                    f"{where} holds no tensor named '{FEATURES_TENSOR}' (it holds: {shown}); "
                    f"save the maps (T, C, h, w) under the name '{FEATURES_TENSOR}'"
                )
            tensor = f.get_slice(FEATURES_TENSOR)
            shape, dtype = [int(s) for s in tensor.get_shape()], str(tensor.get_dtype())
            metadata = f.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise InputError(
            f"{where} is not a readable safetensors file ({exc}); give the file ditf-track "
            "extract wrote, or re-copy it"
        ) from exc
    if dtype not in FLOAT_DTYPES:
        raise InputError(
            f"{where}: '{FEATURES_TENSOR}' is {dtype}, not a float tensor; save the features "
            "as float32, float16 or bfloat16"
        )
    if len(shape) != 4:
        raise InputError(
            f"{where}: '{FEATURES_TENSOR}' has shape {shape}, not (T, C, h, w); save one "
            "(C, h, w) map per frame stacked over the frames"
        )
    if min(shape) < 1:
        raise InputError(f"{where}: '{FEATURES_TENSOR}' has shape {shape}, with an empty axis")
    meta: dict[str, Any] = {}
    if METADATA_KEY in metadata:
        try:
            meta = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{where}: its '{METADATA_KEY}' metadata is not JSON ({exc}); re-extract it"
            ) from exc
        if not isinstance(meta, dict):
            raise InputError(f"{where}: its '{METADATA_KEY}' metadata is not a JSON object")
    return {
        "shape": tuple(shape),
        "dtype": dtype,
        "meta": meta,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "fingerprint": _fingerprint(path, stat.st_size),
    }


def _fingerprint(path: Path, size: int) -> str:
    """BLAKE2b of the size, the header and the first and last :data:`_SAMPLE_BYTES` of data."""
    h = hashlib.blake2b(f"{size}\0".encode(), digest_size=16)
    with path.open("rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        h.update(fh.read(min(header_len, size)))
        h.update(fh.read(_SAMPLE_BYTES))
        fh.seek(max(size - _SAMPLE_BYTES, fh.tell()))
        h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()


def _ranges(indices: Sequence[int]) -> str:
    """``[2, 3, 4, 7]`` → ``"2-4, 7"`` (the first few runs)."""
    runs: list[str] = []
    start = prev = None
    for i in [*indices, None]:
        if i is not None and prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ", ".join(runs[:4]) + (", ..." if len(runs) > 4 else "")


__all__ = [
    "DEFAULT_STRIDE",
    "FEATURES_TENSOR",
    "PrecomputedFeatures",
    "expected_grid",
    "frame_index",
]
