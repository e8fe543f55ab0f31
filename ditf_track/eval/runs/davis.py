"""DAVIS runner: propagate every sequence of a split from its first annotation, then score it.

The protocol is the official DiTF DAVIS script's, which is DINO's ``eval_video_segmentation``
with DiTF features: frames resized so the short side is the preset's (960) and the long side
floored to a multiple of 32, bilinearly (OpenCV); the first-frame mask brought to the token grid
by nearest sampling (DINO's ``read_seg``); the first frame plus the 7 last frames as context,
a 12-cell square window, top-5, τ = 0.1; the annotated first frame written as given. The masks
are then scored with :func:`~ditf_track.eval.davis_folders.evaluate_davis` (the official
conventions).

An output folder holds ``<sequence>/<frame>.png`` for every sequence, ``config.json``,
``metrics.json`` (the official metrics, with the profile and numerics they were computed
with) and the official ``global_results-<split>.csv`` and
``per-sequence_results-<split>.csv``. Each sequence is written to ``<sequence>.incomplete/``
and renamed when all its frames are written, so ``resume`` skips exactly the sequences that are
complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..._atomic import atomic_path
from ...errors import InputError, OutputError
from ...masks import DAVIS_PALETTE, write_mask
from ...outputs import (
    TEMP_PATTERN,
    TOOL,
    RunDir,
    environment_versions,
    is_run_record,
    listing_digest,
    write_json,
)
from ...progress import Progress
from ...tracker import Tracker, TrackerState, run_facts
from .._run import CONFIG_FILE, METRICS_FILE, ResumableRun
from ..davis import DavisResult
from ..davis_folders import evaluate_davis, write_davis_csvs

SEQUENCE_FILE = "run.json"


@dataclass(frozen=True)
class SequenceOutcome:
    """One propagated sequence: its name, frame count, and whether it was already complete."""

    name: str
    frames: int
    resumed: bool


def read_split(data_root: Path, split: str) -> list[str]:
    """Sequence names of ``ImageSets/2017/<split>.txt``, or of a text file given as ``split``."""
    path = Path(split)
    if not path.is_file():
        path = data_root / "ImageSets" / "2017" / f"{split}.txt"
    if not path.is_file():
        raise InputError(
            f"no split file {path}; pass --split val|train or a text file with one sequence "
            "name per line"
        )
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise InputError(f"split file {path} lists no sequence")
    return names


def davis_sequences(data_root: Path, split: str) -> list[str]:
    """The split's sequence names, after checking that each has frames and annotations."""
    frames_root = data_root / "JPEGImages" / "480p"
    gt_root = data_root / "Annotations" / "480p"
    for folder in (frames_root, gt_root):
        if not folder.is_dir():
            raise InputError(
                f"{folder} does not exist; --data must be a DAVIS root with JPEGImages/480p "
                "and Annotations/480p"
            )
    sequences = read_split(data_root, split)
    for name in sequences:
        if not (frames_root / name).is_dir() or not (gt_root / name).is_dir():
            raise InputError(
                f"sequence {name!r} of split {split!r} has no frames or annotations under "
                f"{data_root}; check --data and --split"
            )
    return sequences


def davis_owned_files(split: str) -> list[str]:
    """The run-level files of a DAVIS run (besides one folder per sequence)."""
    name = Path(split).stem
    return [
        CONFIG_FILE,
        METRICS_FILE,
        f"global_results-{name}.csv",
        f"per-sequence_results-{name}.csv",
    ]


class DavisRun(ResumableRun[str, SequenceOutcome]):
    """Propagate the sequences of ``split`` under ``data_root`` into ``out`` with ``tracker``.

    ``data_root`` has the official DAVIS-2017 layout (``JPEGImages/480p/<seq>/*.jpg``,
    ``Annotations/480p/<seq>/*.png``, ``ImageSets/2017/<split>.txt``). Iterate for one
    :class:`SequenceOutcome` per sequence (``progress`` receives the tracker's events), then
    :meth:`finish` scores them and writes the metrics. The resume state is the sequence folders
    themselves (no record log): a complete one is replayed, so iterating again is allowed.
    """

    iterate_once = False

    def __init__(
        self,
        data_root: str | Path,
        tracker: Tracker,
        out: str | Path | RunDir,
        *,
        split: str = "val",
        resume: bool = False,
        overwrite: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(data_root)
        self.frames_root = self.root / "JPEGImages" / "480p"
        self.gt_root = self.root / "Annotations" / "480p"
        self.split = split
        self.sequences = davis_sequences(self.root, split)
        self.tracker = tracker
        self.split_name = Path(split).stem
        self._progress: Progress | None = None

        def open_dir() -> RunDir:
            assert not isinstance(out, RunDir)
            return open_davis_dir(out, split, self.root, resume, overwrite)

        def clear(run_dir: RunDir) -> None:
            if overwrite:
                for name in self.sequences:
                    for folder in (run_dir.out / name, run_dir.out / f"{name}.incomplete"):
                        _clear_sequence(folder)

        identity = {**tracker.extractor.identity()}
        params = tracker.params
        fingerprint = {
            "benchmark": "davis",
            "split": self.sequences,
            "extractor": identity,
            "propagation": [params.n_context, params.radius, params.topk, params.temperature],
            "numerics": params.numerics,
            "sizing": [tracker.short_side, tracker.long_multiple, tracker.rounding],
            "label_mode": tracker.label_mode,
            "interpolation": tracker.interpolation,
            "data_digest": listing_digest(
                root / name for root in (self.frames_root, self.gt_root) for name in self.sequences
            ),
            **dict(options or {}),
        }
        state = {
            "data": str(self.root),
            "split": split,
            "protocol": "official DiTF DAVIS script / DINO label propagation",
        }
        self._start(
            out,
            "davis",
            fingerprint,
            state,
            resume=resume,
            overwrite=overwrite,
            open_dir=open_dir,
            prepare=clear,
        )
        self.resume = resume

    def __len__(self) -> int:
        return len(self.sequences)

    def is_done(self, name: str) -> bool:
        """A sequence folder is complete when it holds the run.json written after its masks."""
        return is_run_record(self.out / name / SEQUENCE_FILE)

    def is_resumable(self, key: str) -> bool:
        """A complete sequence folder is replayed (the DAVIS run keeps no record log)."""
        return self.is_done(key)

    def iterate(self, progress: Progress | None = None) -> Iterator[SequenceOutcome]:
        """Propagate each sequence not yet complete; yield every sequence's outcome in order."""
        self._progress = progress
        yield from self._iterate()

    def __iter__(self) -> Iterator[SequenceOutcome]:
        return self.iterate()

    def _items(self) -> list[str]:
        return self.sequences

    def _key(self, item: str) -> str:
        return item

    def _replay(self, item: str, key: str) -> dict[str, Any] | None:
        if not self.is_done(item):
            return None
        return {"key": item, "frames": len(list((self.out / item).glob("*.png")))}

    def _compute(self, item: str) -> dict[str, Any]:
        return {"key": item, "frames": self._run_sequence(item, self._progress)}

    def _commit(self, record: dict[str, Any]) -> None:
        """Nothing to do: :meth:`_run_sequence` renamed the finished sequence folder."""

    def _score(self, item: str, record: Mapping[str, Any], resumed: bool) -> SequenceOutcome:
        return SequenceOutcome(item, int(record["frames"]), resumed)

    def _run_sequence(self, name: str, progress: Progress | None) -> int:
        state, masks = propagate_sequence(
            self.tracker, self.frames_root, self.gt_root, name, progress
        )
        return self.write_sequence(
            name,
            masks,
            state.palette or DAVIS_PALETTE,
            state.num_frames,
            lambda: sequence_record(self.tracker, state),
        )

    def write_sequence(
        self,
        name: str,
        masks: Iterable[tuple[str, np.ndarray]],
        palette: bytes,
        num_frames: int,
        record: Callable[[], dict[str, Any]],
    ) -> int:
        """Write a sequence's masks ``(frame name, (H, W) ids)`` as they come (propagated here
        or by a Ray worker) into ``<name>.incomplete/``, then its ``run.json`` (``record()``,
        asked once the masks are written) and rename the folder: the sequence is complete."""
        work = self.out / f"{name}.incomplete"
        _clear_sequence(work)
        _clear_sequence(self.out / name)  # not finished: refused unless empty
        work.mkdir(parents=True, exist_ok=True)
        written = 0
        for frame_name, labels in masks:
            write_mask(work / f"{frame_name}.png", labels, palette)
            written += 1
        if written != num_frames:
            raise OutputError(f"sequence {name!r}: {written} of {num_frames} masks written")
        write_json(work / SEQUENCE_FILE, record(), "sequence configuration")
        work.rename(self.out / name)
        return written

    def finish(self, workers: int | None = None) -> DavisResult:
        """Score every sequence with the official conventions; write metrics and CSVs."""
        missing = [n for n in self.sequences if not self.is_done(n)]
        if missing:
            raise OutputError(
                f"{len(missing)} sequence(s) are not propagated yet (first: {missing[0]}); run "
                "again with --resume"
            )
        result = evaluate_davis(self.out, self.gt_root, sequences=self.sequences, workers=workers)
        # Which computation the numbers are of: the profile the extractor resolved (None for a
        # model with no profiles, the lab baseline) and the propagation numerics.
        metrics = {
            **result.to_json_dict(),
            "profile": self.tracker.extractor.identity().get("profile"),
            "numerics": self.tracker.params.numerics,
        }

        def write() -> None:
            with atomic_path(self.out / METRICS_FILE, "DAVIS metrics") as tmp:
                tmp.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            write_davis_csvs(result, self.out, self.split_name)

        self._write_locked(write)
        return result


def propagate_sequence(
    tracker: Tracker, frames_root: Path, gt_root: Path, name: str, progress: Progress | None = None
) -> tuple[TrackerState, Iterator[tuple[str, np.ndarray]]]:
    """A sequence's state and its masks ``(frame name, (H, W) ids)``, propagated from its
    first annotation as they are iterated (the official protocol's half that needs a model)."""
    state = tracker.init_state(frames_root / name)
    first = gt_root / name / f"{state.frame_names[0]}.png"
    if not first.is_file():
        raise InputError(f"sequence {name!r} has no first-frame annotation {first}")
    tracker.add_mask(state, 0, first)
    results = tracker.propagate(state, progress=progress)
    masks = ((r.frame_name, r.labels) for r in results if r.labels is not None)
    return state, masks


def sequence_record(tracker: Tracker, state: TrackerState) -> dict[str, Any]:
    """A finished sequence's ``run.json``: the run facts and the versions."""
    return {"tool": TOOL, "versions": environment_versions(), **run_facts(tracker, state)}


def open_davis_dir(
    out: str | Path,
    split: str,
    data_root: str | Path,
    resume: bool = False,
    overwrite: bool = False,
) -> RunDir:
    """Open (check, lock) a DAVIS run's folder; the CLI calls it before building a model."""
    return RunDir(
        out,
        "eval davis",
        inputs=[("DAVIS root", data_root)],
        patterns=davis_owned_files(split),
        resume=resume,
        overwrite=overwrite,
        in_place=True,
    ).open()


def _clear_sequence(folder: Path) -> None:
    """Delete what a sequence run writes (masks, run.json, temporaries), never other files.

    A folder without ditf-track's run.json that holds anything but masks is left alone and
    refused: it is not ours.
    """
    if not folder.is_dir():
        return
    if not any(folder.iterdir()):
        folder.rmdir()
        return
    ours = is_run_record(folder / SEQUENCE_FILE) or folder.name.endswith(".incomplete")
    others = [
        p
        for p in folder.iterdir()
        if not (p.suffix == ".png" or p.name == SEQUENCE_FILE or p.match(TEMP_PATTERN))
    ]
    if not ours or others:
        raise OutputError(
            f"{folder} holds files ditf-track did not write; move them away or pick another --out"
        )
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
