"""Writers: a Labels layer as a DAVIS folder of palette PNGs, Points/Tracks as ``tracks.csv``.

Both write what the CLI writes, with ditf-track's own functions, so a result saved from napari
and one from ``ditf-track track`` are the same files:

* Labels ``(T, H, W)`` → ``<folder>/<name>.png``, one palette PNG per frame
  (:func:`ditf_track.masks.write_mask`); names come from ``metadata["frame_names"]`` when the
  layer carries one name per frame (layers from this plugin's reader and widget do), else
  ``00000``, ``00001``, ...; the palette from ``metadata["palette"]``, else DAVIS's.
* Points ``(N, 3)`` as ``(t, y, x)`` or Tracks ``(N, 4)`` as ``(track_id, t, y, x)`` →
  the CLI's ``tracks.csv`` layout, ``frame,x,y,id,visible`` rows (which
  :func:`ditf_track.coords.read_points_csv` and ``--points`` read back); ids from the
  ``id``/``track_id`` feature (Points) or the track column (Tracks), visibility from a
  ``visible`` feature (default: visible).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ditf_track import DAVIS_PALETTE, OutputError, write_mask, write_points_csv

__all__ = ["frame_names_for", "write_davis_labels", "write_points_layer", "write_tracks_layer"]


def frame_names_for(count: int, metadata: Mapping[str, Any] | None) -> list[str]:
    """``metadata["frame_names"]`` if it names ``count`` frames, else ``00000``, ``00001``, ..."""
    names = (metadata or {}).get("frame_names")
    if isinstance(names, Sequence) and not isinstance(names, str) and len(names) == count:
        return [str(n) for n in names]
    return [f"{i:05d}" for i in range(count)]


def write_davis_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer ``(T, H, W)`` (or one ``(H, W)`` frame) as DAVIS palette PNGs.

    ``path`` is the folder (created). PNGs of the same names are replaced; a folder holding
    any other file is refused, so no stale frame of an older result stays next to the new ones.

    Raises:
        OutputError: labels of another shape, ids outside 0..255, or a folder in use.
    """
    labels = np.asarray(data)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3:
        raise OutputError(
            f"labels of shape {labels.shape} cannot be saved as DAVIS PNGs; give (T, H, W) masks"
        )
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > 255:
        raise OutputError(
            f"labels hold id {high if high > 255 else low}; DAVIS PNGs hold ids 0..255 "
            "(1..254 objects, 255 void): relabel the objects first"
        )
    metadata = attributes.get("metadata") or {}
    names = frame_names_for(len(labels), metadata)
    palette = metadata.get("palette")
    if not (isinstance(palette, (bytes, bytearray)) and len(palette) == 768):
        palette = DAVIS_PALETTE
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file; give a folder for the DAVIS PNGs")
    targets = {f"{n}.png" for n in names}
    if folder.is_dir():
        others = sorted(p.name for p in folder.iterdir() if p.name not in targets)
        if others:
            raise OutputError(
                f"folder {folder} already holds other files ({', '.join(others[:3])}); choose a "
                "new or empty folder"
            )
    written = []
    for name, frame in zip(names, labels):
        written.append(str(write_mask(folder / f"{name}.png", frame.astype(np.uint8), palette)))
    return [str(folder)] if written else []


def _feature(attributes: Mapping[str, Any], *names: str) -> np.ndarray | None:
    for source in ("features", "properties"):
        table = attributes.get(source)
        if table is None:
            continue
        for name in names:
            if name in table and len(table[name]):
                return np.asarray(table[name])
    return None


def write_points_layer(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Points layer ``(N, 3)`` as ``(t, y, x)`` (or ``(N, 2)`` on frame 0) as a CSV the
    CLI's ``--points`` reads; ids from the ``id``/``track_id`` feature (default ``0..N-1``)."""
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise OutputError(
            f"points of shape {arr.shape} are not (t, y, x); save a Points layer over a video"
        )
    n = len(arr)
    ids = _feature(attributes, "id", "track_id")
    frames = arr[:, 0] if arr.shape[1] == 3 else np.zeros(n)
    return _write_rows(path, frames, arr[:, -2:], np.arange(n) if ids is None else ids, attributes)


def write_tracks_layer(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Tracks layer ``(N, 4)`` as ``(track_id, t, y, x)`` as the CLI's ``tracks.csv``."""
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise OutputError(
            f"tracks of shape {arr.shape} are not (track_id, t, y, x); save 2D+time tracks"
        )
    return _write_rows(path, arr[:, 1], arr[:, 2:4], arr[:, 0], attributes)


def _write_rows(
    path: str,
    frames: np.ndarray,
    points: np.ndarray,
    ids: np.ndarray,
    attributes: Mapping[str, Any],
) -> list[str]:
    """The CLI's ``tracks.csv``: ``frame,x,y,id,visible`` rows (x before y, as in every CSV),
    frame-major, positions rounded to 1/1000 px, written atomically by
    :func:`ditf_track.coords.write_points_csv`."""
    if not np.all(np.isfinite(frames)) or np.any(np.abs(frames - np.rint(frames)) > 1e-6):
        raise OutputError("points sit between frames (non-whole t); snap them to frames first")
    feature = _feature(attributes, "visible")
    visible = np.ones(len(points), bool) if feature is None else feature.astype(bool)
    whole = np.rint(frames).astype(np.int64)
    order = np.argsort(whole, kind="stable")
    target = Path(path if os.path.splitext(path)[1] else f"{path}.csv")
    write_points_csv(
        target,
        whole[order],
        np.round(np.asarray(points, np.float64)[order], 3),
        np.asarray(ids).astype(np.int64)[order],
        visible[order],
    )
    return [str(target)]
