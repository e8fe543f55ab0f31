"""Reader: videos and frame folders as Image layers, DAVIS annotation folders as Labels layers,
and ``frame,x,y[,id][,visible]`` CSV files as Points layers.

napari asks :func:`napari_get_reader` about every path the user opens; it must never raise
(napari-plugin-template ``_reader.py``), so anything it cannot read gets ``None`` and another
reader may take it.

* ``.mp4 .avi .mov .mkv`` and folders of ``.jpg/.png`` frames → Image ``(T, H, W, 3) uint8``,
  lazily: the layer's data is the :class:`~ditf_track.video.VideoSource` itself, which decodes
  only the frames napari shows.
* a folder of palette PNGs (DAVIS-2017) or binary PNGs (DAVIS-2016, values {0, 255}) →
  Labels ``(T, H, W) uint8``. When every file is named by a number (``00000.png``) each mask
  goes to frame ``number − first number``, so a sparse annotation folder (``00000.png``,
  ``00040.png``) lines up with its video; other names are stacked in natural order.
* a CSV with a ``frame,x,y`` header (the CLI's points and tracks files) → Points ``(N, 3)``
  as ``(t, y, x)`` with ``id`` and ``visible`` features.

Every layer's ``metadata["frame_names"]`` holds the frame names, which the writer reuses.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ditf_track import DitfError, InputError, points_to_napari, read_mask, read_points_csv
from ditf_track.video import FRAME_EXTENSIONS, VIDEO_EXTENSIONS, natural_sort_key, open_video

__all__ = ["napari_get_reader", "read_annotation_folder"]

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[Any], list[LayerData]]

# A numbered annotation folder spanning more frames than this is stacked instead of placed
# by number (placing would allocate span x H x W bytes, mostly empty).
_MAX_NUMBERED_SPAN = 20_000


def napari_get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """A reader function for ``path``, or ``None`` if this plugin cannot read it. Never raises."""
    try:
        return _get_reader(path)
    except Exception as exc:  # napari's contract: a reader that cannot read returns None
        log.debug("napari-ditf-track cannot read %r: %s", path, exc)
        return None


def _get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    if not isinstance(path, (str, os.PathLike)):
        paths = list(path)
        if len(paths) != 1:
            return None  # a stack of several files is not a video
        path = paths[0]
    p = Path(path)
    if p.is_dir():
        files = _image_files(p)
        if not files:
            return None
        if _is_annotation(files[0]) and all(f.suffix.lower() == ".png" for f in files):
            return lambda _path: [read_annotation_folder(p)]
        return _video_reader(p)
    if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
        return _video_reader(p)
    if p.suffix.lower() == ".csv" and p.is_file():
        return _csv_reader(p)
    return None


def _image_files(folder: Path) -> list[Path]:
    files = [
        f
        for f in folder.iterdir()
        if f.suffix.lower() in FRAME_EXTENSIONS and not f.name.startswith(".") and f.is_file()
    ]
    return sorted(files, key=lambda f: natural_sort_key(f.name))


def _is_annotation(png: Path) -> bool:
    """A palette PNG, or a grey/1-bit PNG holding only 0/1/255 (a binary mask)."""
    if png.suffix.lower() != ".png":
        return False
    with Image.open(png) as img:
        if img.mode in ("P", "PA", "1"):
            return True
        if img.mode != "L":
            return False
        values = np.unique(np.asarray(img))
    return set(values.tolist()) <= {0, 1, 255}


def _video_reader(path: Path) -> ReaderFunction | None:
    try:
        source = open_video(path)  # decodes frame 0: an unreadable file is refused here
    except DitfError as exc:
        log.info("napari-ditf-track cannot open %s: %s", path, exc)
        return None
    meta = {"frame_names": list(source.frame_names), "path": str(path), "fps": source.fps}
    kwargs = {
        "name": path.stem if path.is_file() else path.name,
        "rgb": True,
        "contrast_limits": (0, 255),
        "metadata": meta,
    }
    return lambda _path: [(source, kwargs, "image")]


def read_annotation_folder(folder: str | os.PathLike[str]) -> LayerData:
    """A folder of mask PNGs → ``(labels (T, H, W) uint8, layer kwargs, "labels")``.

    Raises :class:`~ditf_track.errors.InputError` for unreadable masks or masks of different
    sizes (napari shows the message).
    """
    folder = Path(folder)
    files = [f for f in _image_files(folder) if f.suffix.lower() == ".png"]
    masks = [read_mask(f) for f in files]
    sizes = {m.labels.shape for m in masks}
    if len(sizes) != 1:
        raise InputError(
            f"masks in {folder} have different sizes {sorted(sizes)}; all masks of a video "
            "must have the frame size"
        )
    stems = [f.stem for f in files]
    positions = list(range(len(files)))
    names = list(stems)
    if all(s.isdigit() for s in stems):
        numbers = [int(s) for s in stems]
        first, span = min(numbers), max(numbers) - min(numbers) + 1
        if span <= _MAX_NUMBERED_SPAN:
            width = len(stems[0])
            positions = [n - first for n in numbers]
            names = [f"{first + i:0{width}d}" for i in range(span)]
    labels = np.zeros((len(names), *masks[0].labels.shape), np.uint8)
    for pos, mask in zip(positions, masks):
        labels[pos] = mask.labels
    palette = next((m.palette for m in masks if m.palette is not None), None)
    meta: dict[str, Any] = {"frame_names": names, "path": str(folder)}
    if palette is not None:
        meta["palette"] = palette
    return labels, {"name": folder.name, "metadata": meta}, "labels"


def _csv_reader(path: Path) -> ReaderFunction | None:
    try:
        queries, visible = read_points_csv(path)
    except DitfError as exc:
        log.debug("%s is not a frame,x,y points file: %s", path, exc)
        return None
    with path.open(encoding="utf-8-sig", newline="") as f:
        header = {c.strip().lower() for c in next(csv.reader(f), [])}
    if not ({"x", "y"} <= header and header & {"frame", "t", "frame_idx", "time"}):
        return None  # headerless numbers may be anything; napari's own CSV reader takes those
    data = points_to_napari(queries.frame_idx, queries.points)  # (N, 3) as (t, y, x)
    kwargs = {
        "name": path.stem,
        "features": {"id": queries.ids, "visible": visible},
        "face_color": "yellow",
        "metadata": {"path": str(path)},
    }
    return lambda _path: [(data, kwargs, "points")]
