"""DAVIS J&F on folders of PNG masks, as the official tool reads them, over a process pool.

The metric itself (J, F, the statistics, the official conventions) is :mod:`ditf_track.eval.davis`;
this module reads ``<root>/<sequence>/<frame>.png`` like the official tool (frames sorted by file
name, the first and last not scored, object count from the first ground-truth frame), checks the
folders with one-line errors, and writes the official CSVs and a JSON of the results.

Speed: the official tool scores each object on the whole frame; here every (frame, object) is cut to
the bounding box of prediction ∪ ground truth (plus the one-pixel boundary margin), which gives the
same boundary maps, dilations and counts, and chunks of frames are spread over worker processes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from .._atomic import atomic_path
from ..errors import InputError
from ..progress import Progress, ProgressEvent
from .davis import (
    BOUND_TH,
    VOID_ID,
    DavisResult,
    Mode,
    SequenceResult,
    boundary_radius,
    disk_footprint,
    object_count,
    score_frame,
    validate_mode,
)

log = logging.getLogger(__name__)

_READABLE_MODES = ("P", "L", "1")
_FRAMES_PER_TASK = 8


# ----------------------------------------------------------------------------- files


def _pixels(image: Image.Image) -> NDArray[np.uint8]:
    """``(H, W)`` uint8 copy of a decoded P or L image's pixel values.

    ``np.asarray(image)`` goes through ``tobytes()``, which costs about as much as decoding the
    PNG (0.4 ms per 480p frame). Instead the pixels are pasted once into a numpy buffer that an
    image made by ``Image.frombuffer`` shares (the documented zero-copy "raw" mapping).
    """
    image.load()
    width, height = image.size
    if image.mode not in ("P", "L") or width == 0 or height == 0:
        return np.asarray(image, dtype=np.uint8)
    out = np.empty((height, width), dtype=np.uint8)
    shared = Image.frombuffer(image.mode, (width, height), out, "raw", image.mode, 0, 1)
    shared.im.paste(image.im, (0, 0, width, height))
    return out


def read_label_png(path: Path) -> NDArray[np.uint8]:
    """``(H, W)`` uint8 ids of a palette (P), grayscale (L) or 1-bit PNG (indices, not colours)."""
    try:
        with Image.open(path) as image:
            image_mode = image.mode
            if image_mode in _READABLE_MODES:
                return _pixels(image)
    except FileNotFoundError:
        raise InputError(
            f"mask {path} does not exist; write one PNG per frame named like the ground truth"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read mask {path} ({exc}); save it as a PNG image") from None
    raise InputError(
        f"mask {path} is a {image_mode} image; save object ids as a palette (P) or grayscale (L) "
        "PNG"
    )


def _png_stems(folder: Path) -> list[str]:
    """Frame stems in the official order: ``*.png`` (no hidden files), sorted by file name."""
    names = sorted(
        p.name for p in folder.glob("*.png") if not p.name.startswith(".") and p.is_file()
    )
    return [name[: -len(".png")] for name in names]


@dataclass(frozen=True)
class _SequencePlan:
    """One sequence to score: its folders, all ground-truth frame stems (frames[1:-1] are scored),
    its object count and its frame size ``(H, W)``."""

    name: str
    gt_dir: Path
    pred_dir: Path
    frames: tuple[str, ...]
    n_objects: int
    shape: tuple[int, int]


@dataclass(frozen=True)
class _Task:
    plan: _SequencePlan
    start: int
    stop: int
    mode: Mode
    bound_th: float


def _run_task(task: _Task) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(N, stop-start) J and F of scored frames plan.frames[start:stop]."""
    plan = task.plan
    footprint = disk_footprint(boundary_radius(*plan.shape, task.bound_th))
    j = np.zeros((plan.n_objects, task.stop - task.start))
    f = np.zeros_like(j)
    for col, stem in enumerate(plan.frames[task.start : task.stop]):
        gt_path = plan.gt_dir / f"{stem}.png"
        pred_path = plan.pred_dir / f"{stem}.png"
        gt = read_label_png(gt_path)
        pred = read_label_png(pred_path)
        if gt.shape != plan.shape:
            raise InputError(
                f"ground truth {gt_path} is {gt.shape[1]}x{gt.shape[0]} but the sequence's first "
                f"frame is {plan.shape[1]}x{plan.shape[0]}; all frames must have one size"
            )
        if pred.shape != gt.shape:
            raise InputError(
                f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but its ground truth "
                f"is {gt.shape[1]}x{gt.shape[0]}; save predictions at the ground-truth resolution"
            )
        label = f"frame {plan.name}/{stem}.png"
        j[:, col], f[:, col] = score_frame(pred, gt, plan.n_objects, task.mode, footprint, label)
    return j, f


def _looks_binary(first_gt: NDArray[np.uint8]) -> bool:
    """DAVIS-2016 style: only 0 and 255, with some 255 (a palette GT with objects has 1..N)."""
    values = np.unique(first_gt)
    return bool(values[-1] == VOID_ID and np.isin(values, (0, VOID_ID)).all())


def _list_sequences(gt_root: Path, sequences: Sequence[str] | None) -> list[str]:
    available = sorted(p.name for p in gt_root.iterdir() if p.is_dir())
    if sequences is None:
        if not available:
            raise InputError(
                f"ground-truth root {gt_root} has no sequence folders; pass the folder that holds "
                "<sequence>/<frame>.png (e.g. DAVIS/Annotations/480p)"
            )
        return available
    names = list(dict.fromkeys(sequences))
    unknown = [s for s in names if s not in available]
    if unknown:
        shown = ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
        raise InputError(
            f"sequence {unknown[0]!r} is not in the ground truth {gt_root}; pick from: {shown}"
        )
    if not names:
        raise InputError("no sequences given; pass names like --sequences blackswan,dog")
    return names


@dataclass(frozen=True)
class _FirstFrame:
    """What the first ground-truth frame decides: the object count in each mode, the style."""

    n_multi: int
    n_binary: int
    looks_binary: bool


def _plan_sequence(gt_root: Path, pred_root: Path, name: str) -> tuple[_SequencePlan, _FirstFrame]:
    gt_dir = gt_root / name
    pred_dir = pred_root / name
    frames = _png_stems(gt_dir)
    if len(frames) < 3:
        raise InputError(
            f"ground truth {gt_dir} has {len(frames)} PNG frame(s); DAVIS scores all but the first "
            "and last, so it needs at least 3"
        )
    if not pred_dir.is_dir():
        if _png_stems(pred_root):  # one sequence's masks (a track --out folder) given as --pred
            fix = (
                f"pass --pred {pred_root.parent}"
                if pred_root.name == name
                else f"write them with --out preds/{name} and pass --pred preds"
            )
            raise InputError(
                f"prediction folder {pred_dir} does not exist, but {pred_root} holds frame PNGs "
                f"itself; --pred takes the folder that holds one folder per sequence: {fix}"
            )
        raise InputError(
            f"prediction folder {pred_dir} does not exist; write <pred>/{name}/<frame>.png for "
            "every evaluated sequence, or leave the sequence out with --sequences"
        )
    for stem in frames[1:-1]:
        if not (pred_dir / f"{stem}.png").is_file():
            raise InputError(
                f"prediction {pred_dir / (stem + '.png')} is missing; write one PNG per "
                "ground-truth frame with the same name"
            )
    first = read_label_png(gt_dir / f"{frames[0]}.png")
    shape = (int(first.shape[0]), int(first.shape[1]))
    info = _FirstFrame(
        n_multi=object_count(first, "multi"),
        n_binary=object_count(first, "binary"),
        looks_binary=_looks_binary(first),
    )
    return _SequencePlan(name, gt_dir, pred_dir, tuple(frames), 0, shape), info


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _executor(workers: int) -> Executor:
    """A process pool started by fork on Linux, else a thread pool.

    fork gives workers the parent's imports at no cost and needs no ``__main__`` guard in the
    caller's script (spawn/forkserver would re-import it); it is Linux's long-standing default,
    also for PyTorch's DataLoader. Elsewhere fork is unsafe (macOS) or missing (Windows); there
    threads still overlap PNG decoding and OpenCV, which release the GIL.
    """
    if sys.platform.startswith("linux"):
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


def _chunks(plan: _SequencePlan, mode: Mode, bound_th: float) -> Iterator[_Task]:
    n_scored = len(plan.frames) - 2
    for start in range(0, n_scored, _FRAMES_PER_TASK):
        stop = min(start + _FRAMES_PER_TASK, n_scored)
        yield _Task(plan, start + 1, stop + 1, mode, bound_th)


def evaluate_davis(
    pred_root: str | os.PathLike[str],
    gt_root: str | os.PathLike[str],
    sequences: Iterable[str] | None = None,
    mode: Mode | None = None,
    workers: int | None = None,
    *,
    bound_th: float = BOUND_TH,
    progress: Progress | None = None,
) -> DavisResult:
    """Score ``pred_root/<seq>/<frame>.png`` against ``gt_root/<seq>/<frame>.png``.

    ``sequences``: names to score, in this order (default: every folder of ``gt_root``, sorted).
    ``mode``: ``"multi"`` (DAVIS-2017 palette ids) or ``"binary"`` (DAVIS-2016 {0, 255}); None picks
    binary when every first ground-truth frame holds only 0 and 255. ``workers``: parallel workers,
    processes on Linux and threads elsewhere (default: the usable CPU cores; 1 runs in this
    process). ``progress`` gets a ``score`` event (``item`` the sequence) as each sequence finishes.
    """
    pred_dir, gt_dir = Path(pred_root), Path(gt_root)
    if not gt_dir.is_dir():
        raise InputError(f"ground-truth root {gt_dir} is not a folder; pass DAVIS/Annotations/480p")
    if not pred_dir.is_dir():
        raise InputError(f"prediction root {pred_dir} is not a folder; pass the results folder")
    if mode is not None:
        mode = validate_mode(mode)
    if workers is not None and workers < 1:
        raise InputError(f"workers={workers} must be at least 1")
    names = _list_sequences(gt_dir, None if sequences is None else list(sequences))

    planned = [_plan_sequence(gt_dir, pred_dir, name) for name in names]
    if mode is None:
        binary = [plan.name for plan, first in planned if first.looks_binary]
        palette = [plan.name for plan, first in planned if not first.looks_binary]
        if binary and palette:
            raise InputError(
                f"ground truth mixes DAVIS-2016 binary ({binary[0]}) and palette ({palette[0]}) "
                "sequences; pass --mode binary or --mode multi"
            )
        mode = "binary" if binary else "multi"
        log.info("DAVIS ground truth looks %s", mode)
    plans = []
    for plan, first in planned:
        n_objects = first.n_binary if mode == "binary" else first.n_multi
        if n_objects == 0:
            hint = " (it looks DAVIS-2016 binary: use --mode binary)" if first.looks_binary else ""
            log.warning("sequence %s has no object in its first frame%s; skipped", plan.name, hint)
            continue
        plans.append(dataclasses.replace(plan, n_objects=n_objects))
    if not plans:
        hint = (
            "the ground truth looks DAVIS-2016 binary: pass --mode binary"
            if mode == "multi" and any(first.looks_binary for _, first in planned)
            else "check the ground-truth root"
        )
        raise InputError(
            f"no object to score in {gt_dir}: every first ground-truth frame is empty in {mode} "
            f"mode; {hint}"
        )

    tasks = [task for plan in plans for task in _chunks(plan, mode, bound_th)]
    for plan in plans:  # cached here, so that forked workers inherit it (and skimage's import)
        disk_footprint(boundary_radius(*plan.shape, bound_th))
    n_workers = min(_default_workers() if workers is None else workers, len(tasks))
    pieces: dict[str, list[tuple[NDArray[np.float64], NDArray[np.float64]]]] = {
        p.name: [] for p in plans
    }
    remaining = {p.name: sum(1 for t in tasks if t.plan.name == p.name) for p in plans}
    done = 0

    def collect(task: _Task, piece: tuple[NDArray[np.float64], NDArray[np.float64]]) -> None:
        nonlocal done
        pieces[task.plan.name].append(piece)
        remaining[task.plan.name] -= 1
        if remaining[task.plan.name] == 0:
            done += 1
            if progress is not None:
                progress(ProgressEvent("score", done, len(plans), task.plan.name))

    if n_workers <= 1:
        for task in tasks:
            collect(task, _run_task(task))
    else:
        pool = _executor(n_workers)
        try:
            with warnings.catch_warnings():
                # Python >= 3.12 warns on fork in a process with threads, which numpy's and
                # OpenCV's imports always start. The workers only decode PNGs and run numpy and
                # OpenCV on their own arrays (as DataLoader workers do under the same warning).
                warnings.filterwarnings("ignore", ".*fork.*", DeprecationWarning)
                # map keeps task order, so each sequence's chunks arrive in frame order.
                for task, piece in zip(tasks, pool.map(_run_task, tasks)):
                    collect(task, piece)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    results = tuple(
        SequenceResult(
            name=plan.name,
            frames=plan.frames[1:-1],
            j=np.concatenate([j for j, _ in pieces[plan.name]], axis=1),
            f=np.concatenate([f for _, f in pieces[plan.name]], axis=1),
        )
        for plan in plans
    )
    return DavisResult(sequences=results, mode=mode, bound_th=bound_th)


# ----------------------------------------------------------------------------- writers


def _write_text(path: Path, text: str, what: str) -> None:
    with atomic_path(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def _csv_text(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    # The official CSVs are pandas to_csv(index=False, float_format="%.3f").
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([v if isinstance(v, str) else f"{v:.3f}" for v in row] for row in rows)
    return buf.getvalue()


def davis_csv_names(subset: str = "val") -> tuple[str, str]:
    """The official file names: ``global_results-<set>.csv``, ``per-sequence_results-<set>.csv``."""
    return f"global_results-{subset}.csv", f"per-sequence_results-{subset}.csv"


def write_davis_csvs(
    result: DavisResult, out_dir: str | os.PathLike[str], subset: str = "val"
) -> tuple[Path, Path]:
    """Write the two official CSVs (3 decimals, official names and columns) into ``out_dir``."""
    out = Path(out_dir)
    global_name, per_seq_name = davis_csv_names(subset)
    columns, rows = result.global_table()
    _write_text(out / global_name, _csv_text(columns, rows), "DAVIS global results")
    seq_columns, seq_rows = result.per_sequence_table()
    _write_text(out / per_seq_name, _csv_text(seq_columns, seq_rows), "DAVIS per-sequence results")
    return out / global_name, out / per_seq_name


def write_davis_json(result: DavisResult, path: str | os.PathLike[str]) -> Path:
    """Write :meth:`DavisResult.to_json_dict` to ``path`` (full float precision)."""
    out = Path(path)
    _write_text(out, json.dumps(result.to_json_dict(), indent=2) + "\n", "DAVIS metrics")
    return out
