"""Every coordinate conversion of ditf-track, in one tested module.

**Our convention.** Points are ``(y, x)`` float pixels of the original frame (``(t, y, x)``
where time is part of it, like napari). Integer coordinates are pixel *centres*: pixel ``(0, 0)``
covers ``[-0.5, 0.5)²`` and the frame spans ``[-0.5, H - 0.5) × [-0.5, W - 0.5)``. This is
napari's, OpenCV's and scikit-image's convention, and ``align_corners=False`` in PyTorch.

Derived maps (all exact affine maps, applied per axis):

* **resize** ``(H, W) → (H', W')`` with the image's corners aligned (how ``cv2.resize`` and
  ``F.interpolate(align_corners=False)`` place pixels): ``y' = (y + 0.5) · H'/H − 0.5``;
* **token grid** of stride ``s`` (cell ``c`` covers model-input pixels ``c·s … c·s + s − 1``),
  in continuous cell coordinates whose integers are cell centres:
  ``g = (p + 0.5) / s − 0.5`` and back ``p = (g + 0.5) · s − 0.5``; so pixel ``(s − 1) / 2``
  (the centre of cell 0's pixels) is cell 0;
* **grid_sample** (``align_corners=False``) wants ``(x, y)`` in ``[-1, 1]`` with −1 / +1 at the
  outer edges of the border cells: ``u = (2g + 1) / w − 1``.

**Formats outside the API:**

* napari Points layers: rows ``(t, y, x)``, same pixel convention: a reshuffle only;
* CoTracker queries: rows ``(t, x, y)`` in pixels of the frame it sees: a reshuffle only;
* TAP-Vid (``google-deepmind/tapnet``): the pickles store tracks as ``(x, y)`` normalised to
  ``[0, 1]``; the reference loader (``tapnet/tapvid/evaluation_datasets.py``,
  ``create_davis_dataset``/``create_kinetics_dataset``) multiplies them by the resized frame
  size, **×256 (not ×255)** (``points * [W, H]``), and the metrics take query points
  ``[t, y, x]`` and tracks ``[x, y]`` in those units. The generator
  (``tapnet/tapvid/generate_tapvid.py``) stores ``(u·W − 0.5) / W`` for an annotation ``u``,
  so ``x_norm · W`` is already a pixel-centre coordinate of the original frame. Hence the maps
  are **plain scalings**, with no half-pixel shift: ours ``x = x_norm · W``; 256-space
  ``r = x_norm · 256``, so ``x = r · W / 256``. (That is not the corner-aligned
  :func:`rescale_points`; it is what the benchmark's numbers mean. The DAVIS pickle ships
  without its generator; the same convention is assumed, as in ``ditf_track.eval.tapvid``.)
* CSV files: ``frame,x,y[,id][,visible]`` rows, pixel centres at integers (x before y, as
  spreadsheets and most tools write them).

Functions taking ``(..., 2)`` points accept NumPy arrays (returned as float64) and torch
tensors (returned as tensors of the same dtype and device).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

from ._atomic import atomic_path
from .errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "TAPVID_SIZE",
    "QueryPoints",
    "flatten_tracks",
    "frame_to_grid",
    "frame_to_model",
    "grid_cell_index",
    "grid_sample_coords",
    "grid_to_frame",
    "grid_to_pixel",
    "model_to_frame",
    "napari_to_points",
    "pixel_to_grid",
    "points_to_csv_rows",
    "points_to_napari",
    "points_to_tapvid_queries",
    "points_to_tapvid_tracks",
    "points_to_txy",
    "read_points_csv",
    "read_points_text",
    "rescale_points",
    "rows_to_points",
    "swap_xy",
    "tapvid_normalized_to_points",
    "tapvid_queries_to_points",
    "tapvid_tracks_to_points",
    "txy_to_points",
    "write_points_csv",
    "write_tracks_npz",
]

#: TAP-Vid is scored on 256×256 frames (co-tracker#4: "TAP-Vid benchmarks require evaluation
#: on 256x256 videos"); normalised points are multiplied by this size, not size − 1, and
#: converted to and from our pixels by plain scaling (see the module docstring).
TAPVID_SIZE = 256

ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


class QueryPoints(NamedTuple):
    """Points on given frames, in our convention.

    ``frame_idx``: ``(N,) int64`` frame positions; ``points``: ``(N, 2) float64`` as
    ``(y, x)`` pixels of the original frame; ``ids``: ``(N,) int64`` track ids.
    """

    frame_idx: np.ndarray
    points: np.ndarray
    ids: np.ndarray

    def by_frame(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """``{frame: (points (n, 2) as (y, x), ids (n,))}``, frames in increasing order."""
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for t in np.unique(self.frame_idx):
            sel = self.frame_idx == t
            out[int(t)] = (self.points[sel], self.ids[sel])
        return out


# --------------------------------------------------------------------------------------------
# helpers that work for NumPy arrays and torch tensors


def _is_torch(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "torch"


def _as_points(points: Any) -> Any:
    if _is_torch(points):
        if points.shape[-1] != 2:
            raise ValueError(f"points must be (..., 2), got shape {tuple(points.shape)}")
        return points
    arr = np.asarray(points, dtype=np.float64)
    if arr.shape[-1:] != (2,):
        raise ValueError(f"points must be (..., 2), got shape {arr.shape}")
    return arr


def _stack(a: Any, b: Any, like: Any) -> Any:
    if _is_torch(like):
        import torch

        return torch.stack((a, b), dim=-1)
    return np.stack((a, b), axis=-1)


def _map_yx(points: Any, fy: Callable[[Any], Any], fx: Callable[[Any], Any]) -> Any:
    p = _as_points(points)
    return _stack(fy(p[..., 0]), fx(p[..., 1]), p)


def swap_xy(points: ArrayT) -> ArrayT:
    """``(..., 2)`` ``(y, x)`` ↔ ``(x, y)``: swaps the last axis (its own inverse)."""
    p = _as_points(points)
    return _stack(p[..., 1], p[..., 0], p)


# --------------------------------------------------------------------------------------------
# frame ↔ model input ↔ token grid


def rescale_points(
    points: ArrayT, from_hw: tuple[float, float], to_hw: tuple[float, float]
) -> ArrayT:
    """``(y, x)`` pixels of an image of size ``from_hw`` → the same spots at size ``to_hw``.

    ``y' = (y + 0.5) · H'/H − 0.5`` (corners aligned, pixel centres at integers).
    """
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return _map_yx(points, lambda y: (y + 0.5) * sy - 0.5, lambda x: (x + 0.5) * sx - 0.5)


def frame_to_model(points: ArrayT, frame_hw: tuple[int, int], model_hw: tuple[int, int]) -> ArrayT:
    """``(y, x)`` in the original frame → ``(y, x)`` in the resized model input."""
    return rescale_points(points, frame_hw, model_hw)


def model_to_frame(points: ArrayT, model_hw: tuple[int, int], frame_hw: tuple[int, int]) -> ArrayT:
    """``(y, x)`` in the model input → ``(y, x)`` in the original frame."""
    return rescale_points(points, model_hw, frame_hw)


def pixel_to_grid(points: ArrayT, stride: int) -> ArrayT:
    """``(y, x)`` model-input pixels → continuous token-grid coordinates ``(p + 0.5)/s − 0.5``."""
    return _map_yx(points, lambda y: (y + 0.5) / stride - 0.5, lambda x: (x + 0.5) / stride - 0.5)


def grid_to_pixel(grid_points: ArrayT, stride: int) -> ArrayT:
    """Continuous token-grid ``(y, x)`` → model-input pixels ``(g + 0.5)·s − 0.5``."""
    return _map_yx(
        grid_points, lambda y: (y + 0.5) * stride - 0.5, lambda x: (x + 0.5) * stride - 0.5
    )


def frame_to_grid(
    points: ArrayT, frame_hw: tuple[int, int], model_hw: tuple[int, int], stride: int
) -> ArrayT:
    """``(y, x)`` in the original frame → continuous token-grid ``(y, x)``."""
    return pixel_to_grid(frame_to_model(points, frame_hw, model_hw), stride)


def grid_to_frame(
    grid_points: ArrayT, frame_hw: tuple[int, int], model_hw: tuple[int, int], stride: int
) -> ArrayT:
    """Continuous token-grid ``(y, x)`` → ``(y, x)`` in the original frame (e.g. matches)."""
    return model_to_frame(grid_to_pixel(grid_points, stride), model_hw, frame_hw)


def grid_sample_coords(grid_points: ArrayT, grid_hw: tuple[int, int]) -> ArrayT:
    """Token-grid ``(y, x)`` → ``(x, y)`` in ``[-1, 1]`` for ``F.grid_sample(align_corners=False)``.

    Cell centre ``g`` maps to ``(2g + 1)/n − 1``, so sampling at integer ``g`` returns that
    cell's descriptor exactly, and bilinear sampling in between blends its neighbours.
    """
    h, w = grid_hw
    p = _as_points(grid_points)
    return _stack((2 * p[..., 1] + 1) / w - 1, (2 * p[..., 0] + 1) / h - 1, p)


def grid_cell_index(grid_points: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Nearest cell ``(row, col)`` ``(..., 2) int64`` of continuous grid ``(y, x)``, clipped."""
    p = np.asarray(grid_points, dtype=np.float64)
    idx = np.floor(p + 0.5).astype(np.int64)
    idx[..., 0] = np.clip(idx[..., 0], 0, grid_hw[0] - 1)
    idx[..., 1] = np.clip(idx[..., 1], 0, grid_hw[1] - 1)
    return idx


# --------------------------------------------------------------------------------------------
# napari and CoTracker rows


def _frame_column(t: np.ndarray, what: str) -> np.ndarray:
    if t.size and not np.all(np.isfinite(t)):
        raise InputError(f"{what}: frame values must be finite numbers")
    frames = np.rint(t)
    if t.size and np.max(np.abs(frames - t)) > 1e-6:
        raise InputError(f"{what}: frame values {t[np.abs(frames - t) > 1e-6][:3]} are not whole")
    if t.size and frames.min() < 0:
        raise InputError(f"{what}: frame {int(frames.min())} is negative; frames start at 0")
    return frames.astype(np.int64)


def _ids_or_range(ids: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"ids has {arr.size} entries for {n} points")
    return arr


def napari_to_points(
    data: np.ndarray, ids: Sequence[int] | np.ndarray | None = None
) -> QueryPoints:
    """napari Points ``data (N, 3)`` as ``(t, y, x)`` → :class:`QueryPoints`.

    ``ids`` (e.g. the layer's ``features["id"]``) default to ``0..N-1``. ``t`` must be whole.
    """
    arr = np.asarray(data, dtype=np.float64).reshape(-1, 3)
    frames = _frame_column(arr[:, 0], "napari points")
    return QueryPoints(frames, arr[:, 1:3].copy(), _ids_or_range(ids, len(arr)))


def points_to_napari(frame_idx: Sequence[int] | np.ndarray, points: np.ndarray) -> np.ndarray:
    """``frame_idx (N,)`` and ``points (N, 2)`` as ``(y, x)`` → napari ``(N, 3)`` ``(t, y, x)``."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    t = np.broadcast_to(np.asarray(frame_idx, dtype=np.float64), (len(p),))
    return np.column_stack((t, p))


def txy_to_points(
    queries: np.ndarray, ids: Sequence[int] | np.ndarray | None = None
) -> QueryPoints:
    """CoTracker-style queries ``(N, 3)`` as ``(t, x, y)`` → :class:`QueryPoints`."""
    arr = np.asarray(queries, dtype=np.float64).reshape(-1, 3)
    frames = _frame_column(arr[:, 0], "(t, x, y) queries")
    return QueryPoints(frames, arr[:, [2, 1]], _ids_or_range(ids, len(arr)))


def points_to_txy(frame_idx: Sequence[int] | np.ndarray, points: np.ndarray) -> np.ndarray:
    """``frame_idx (N,)``, ``points (N, 2)`` ``(y, x)`` → CoTracker ``(N, 3)`` ``(t, x, y)``."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    t = np.broadcast_to(np.asarray(frame_idx, dtype=np.float64), (len(p),))
    return np.column_stack((t, p[:, 1], p[:, 0]))


# --------------------------------------------------------------------------------------------
# TAP-Vid


def _tapvid_to_ours(r: Any, size: float, resolution: float) -> Any:
    return r * (size / resolution)  # plain scaling: generate_tapvid.py already shifted by 0.5


def _ours_to_tapvid(p: Any, size: float, resolution: float) -> Any:
    return p * (resolution / size)


def tapvid_queries_to_points(
    query_points: np.ndarray,
    frame_hw: tuple[int, int],
    resolution: tuple[int, int] = (TAPVID_SIZE, TAPVID_SIZE),
    ids: Sequence[int] | np.ndarray | None = None,
) -> QueryPoints:
    """TAP-Vid ``query_points (N, 3)`` ``[t, y, x]`` at ``resolution`` → ours at ``frame_hw``."""
    q = np.asarray(query_points, dtype=np.float64).reshape(-1, 3)
    frames = _frame_column(q[:, 0], "TAP-Vid query points")
    (h, w), (rh, rw) = frame_hw, resolution
    yx = np.column_stack((_tapvid_to_ours(q[:, 1], h, rh), _tapvid_to_ours(q[:, 2], w, rw)))
    return QueryPoints(frames, yx, _ids_or_range(ids, len(q)))


def points_to_tapvid_queries(
    frame_idx: Sequence[int] | np.ndarray,
    points: np.ndarray,
    frame_hw: tuple[int, int],
    resolution: tuple[int, int] = (TAPVID_SIZE, TAPVID_SIZE),
) -> np.ndarray:
    """Ours ``(y, x)`` at ``frame_hw`` → TAP-Vid ``(N, 3)`` ``[t, y, x]`` at ``resolution``."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    t = np.broadcast_to(np.asarray(frame_idx, dtype=np.float64), (len(p),))
    (h, w), (rh, rw) = frame_hw, resolution
    return np.column_stack((t, _ours_to_tapvid(p[:, 0], h, rh), _ours_to_tapvid(p[:, 1], w, rw)))


def tapvid_tracks_to_points(
    tracks: ArrayT,
    frame_hw: tuple[int, int],
    resolution: tuple[int, int] = (TAPVID_SIZE, TAPVID_SIZE),
) -> ArrayT:
    """TAP-Vid tracks ``(..., 2)`` ``[x, y]`` at ``resolution`` → ours ``(..., 2)`` ``(y, x)``."""
    (h, w), (rh, rw) = frame_hw, resolution
    p = _as_points(tracks)
    return _stack(_tapvid_to_ours(p[..., 1], h, rh), _tapvid_to_ours(p[..., 0], w, rw), p)


def points_to_tapvid_tracks(
    points: ArrayT,
    frame_hw: tuple[int, int],
    resolution: tuple[int, int] = (TAPVID_SIZE, TAPVID_SIZE),
) -> ArrayT:
    """Ours ``(..., 2)`` ``(y, x)`` at ``frame_hw`` → TAP-Vid ``[x, y]`` at ``resolution``."""
    (h, w), (rh, rw) = frame_hw, resolution
    p = _as_points(points)
    return _stack(_ours_to_tapvid(p[..., 1], w, rw), _ours_to_tapvid(p[..., 0], h, rh), p)


def tapvid_normalized_to_points(points_xy01: ArrayT, frame_hw: tuple[int, int]) -> ArrayT:
    """TAP-Vid pickle ``points`` ``(..., 2)`` ``(x, y)`` in ``[0, 1]`` → ours ``(y, x)`` pixels.

    ``points * [W, H]`` as the reference loader does, at any frame size (``(256, 256)`` gives the
    evaluation's 256-space, but swapped to ``(y, x)``).
    """
    return tapvid_tracks_to_points(points_xy01, frame_hw, resolution=(1, 1))


# --------------------------------------------------------------------------------------------
# CSV files: frame,x,y[,id][,visible]

_FRAME_NAMES = ("frame", "t", "frame_idx", "time")
_ID_NAMES = ("id", "track_id", "track", "point_id")
_VISIBLE_NAMES = ("visible", "visibility")


def rows_to_points(
    rows: Iterable[Sequence[str | float]], source: str = "points"
) -> tuple[QueryPoints, np.ndarray]:
    """CSV rows → (:class:`QueryPoints`, ``visible (N,) bool``).

    Columns are ``frame, x, y[, id][, visible]`` (x before y). A first row that is not numeric
    is a header: its names (``frame``/``t``, ``x``, ``y``, ``id``/``track_id``,
    ``visible``) then pick the columns in any order. Missing ids become ``0..N-1``, missing
    visibility ``True``. Blank lines and lines starting with ``#`` are skipped.
    """
    data = [list(r) for r in rows if r and any(str(c).strip() for c in r)]
    data = [r for r in data if not str(r[0]).lstrip().startswith("#")]
    cols = {"frame": 0, "x": 1, "y": 2, "id": 3, "visible": 4}
    start_line = 1
    if data and not _is_number(data[0][0]):
        header = [str(c).strip().lower() for c in data[0]]
        cols = {}
        for key, names in (
            ("frame", _FRAME_NAMES),
            ("x", ("x",)),
            ("y", ("y",)),
            ("id", _ID_NAMES),
            ("visible", _VISIBLE_NAMES),
        ):
            found = [i for i, name in enumerate(header) if name in names]
            if found:
                cols[key] = found[0]
        missing = [k for k in ("frame", "x", "y") if k not in cols]
        if missing:
            raise InputError(
                f"{source}: header {header} lacks column(s) {missing}; "
                "use the header frame,x,y[,id][,visible]"
            )
        data, start_line = data[1:], 2
    frames, xs, ys, ids, vis = [], [], [], [], []
    for n, row in enumerate(data, start=start_line):
        try:
            frames.append(float(row[cols["frame"]]))
            xs.append(float(row[cols["x"]]))
            ys.append(float(row[cols["y"]]))
            if "id" in cols and cols["id"] < len(row) and str(row[cols["id"]]).strip():
                ids.append(int(float(row[cols["id"]])))
            if "visible" in cols and cols["visible"] < len(row):
                vis.append(_parse_bool(row[cols["visible"]]))
        except (ValueError, IndexError) as exc:
            raise InputError(
                f"{source}: row {n} {row} is not frame,x,y[,id][,visible] numbers ({exc}); "
                "fix or remove it"
            ) from exc
    n_rows = len(frames)
    if ids and len(ids) != n_rows:
        raise InputError(f"{source}: some rows have an id and some do not; give all or none")
    if vis and len(vis) != n_rows:
        vis = vis + [True] * (n_rows - len(vis))
    t = _frame_column(np.asarray(frames, dtype=np.float64), source)
    yx = np.column_stack((ys, xs)).astype(np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(yx)):
        raise InputError(f"{source}: x and y must be finite numbers")
    visible = np.asarray(vis, dtype=bool) if vis else np.ones(n_rows, dtype=bool)
    return QueryPoints(t, yx, _ids_or_range(ids or None, n_rows)), visible


def _is_number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _parse_bool(value: object) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "t", "1.0"):
        return True
    if text in ("0", "false", "no", "n", "f", "0.0", ""):
        return False
    raise ValueError(f"visible value {value!r} is not true/false/1/0")


def points_to_csv_rows(
    frame_idx: Sequence[int] | np.ndarray,
    points: np.ndarray,
    ids: Sequence[int] | np.ndarray | None = None,
    visible: Sequence[bool] | np.ndarray | None = None,
) -> list[list[str]]:
    """Our arrays → CSV rows with a header: ``frame,x,y,id[,visible]`` (x before y)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    t = np.broadcast_to(np.asarray(frame_idx, dtype=np.int64), (len(p),))
    i = _ids_or_range(ids, len(p))
    header = ["frame", "x", "y", "id"]
    if visible is not None:
        header.append("visible")
        v = np.broadcast_to(np.asarray(visible, dtype=bool), (len(p),))
    rows = [header]
    for k in range(len(p)):
        row = [str(int(t[k])), repr(float(p[k, 1])), repr(float(p[k, 0])), str(int(i[k]))]
        if visible is not None:
            row.append("1" if v[k] else "0")
        rows.append(row)
    return rows


def read_points_text(path: str | os.PathLike[str], missing_hint: str = "check the path") -> str:
    """The text of a points CSV (BOM dropped); a missing or unreadable file is one-line error."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"points file {p} does not exist; {missing_hint}")
    try:
        return p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"points file {p} cannot be read ({exc}); save it as UTF-8 CSV") from exc


def read_points_csv(path: str | os.PathLike[str]) -> tuple[QueryPoints, np.ndarray]:
    """Read a ``frame,x,y[,id][,visible]`` CSV (see :func:`rows_to_points`)."""
    text = read_points_text(path)
    return rows_to_points(csv.reader(io.StringIO(text)), source=f"points file {Path(path)}")


def write_points_csv(
    path: str | os.PathLike[str],
    frame_idx: Sequence[int] | np.ndarray,
    points: np.ndarray,
    ids: Sequence[int] | np.ndarray | None = None,
    visible: Sequence[bool] | np.ndarray | None = None,
) -> Path:
    """Write our arrays as ``frame,x,y,id[,visible]`` CSV, atomically (temp file, rename)."""
    out = Path(path)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(
        points_to_csv_rows(frame_idx, points, ids, visible)
    )
    with atomic_path(out, "points file") as tmp, tmp.open("x", encoding="utf-8") as f:
        f.write(buf.getvalue())
    return out


def write_tracks_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> Path:
    """Track arrays as one ``.npz`` (TAP-Vid's names: ``tracks (N, T, 2)`` as (x, y),
    ``occluded (N, T)``, plus what the caller adds), atomically (temp file, rename)."""
    out = Path(path)
    with atomic_path(out, "tracks file") as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return out


def flatten_tracks(
    tracks: np.ndarray,
    visible: np.ndarray | None = None,
    ids: Sequence[int] | np.ndarray | None = None,
    frame_idx: Sequence[int] | np.ndarray | None = None,
) -> tuple[QueryPoints, np.ndarray]:
    """Tracks ``(T, N, 2)`` ``(y, x)`` (+ ``visible (T, N)``) → one row per (frame, track).

    Rows are frame-major. ``frame_idx (T,)`` defaults to ``0..T-1``, ``ids (N,)`` to
    ``0..N-1``. Feed the result to :func:`write_points_csv`.
    """
    tr = np.asarray(tracks, dtype=np.float64)
    if tr.ndim != 3 or tr.shape[2] != 2:
        raise ValueError(f"tracks must be (T,N,2), got shape {tr.shape}")
    t_count, n = tr.shape[:2]
    frames = np.arange(t_count) if frame_idx is None else np.asarray(frame_idx, np.int64)
    track_ids = _ids_or_range(ids, n)
    vis = np.ones((t_count, n), bool) if visible is None else np.asarray(visible, bool)
    q = QueryPoints(
        np.repeat(frames.astype(np.int64), n), tr.reshape(-1, 2), np.tile(track_ids, t_count)
    )
    return q, vis.reshape(-1)
