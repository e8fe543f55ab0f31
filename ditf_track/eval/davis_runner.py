"""DAVIS runner: propagate every sequence of a split from its first annotation, then score it.

The protocol is the official DiTF DAVIS script's, which is DINO's ``eval_video_segmentation``
with DiTF features: frames resized so the short side is the preset's (960) and the long side
floored to a multiple of 32, bilinearly (OpenCV); the first-frame mask brought to the token grid
by nearest sampling (DINO's ``read_seg``); the first frame plus the 7 last frames as context,
a 12-cell square window, top-5, τ = 0.1; the annotated first frame written as given. The masks
are then scored with :func:`~ditf_track.eval.davis.evaluate_davis` (the official conventions).

An output folder holds ``<sequence>/<frame>.png`` for every sequence, ``config.json``,
``metrics.json`` and the official ``global_results-<split>.csv`` and
``per-sequence_results-<split>.csv``. Each sequence is written to ``<sequence>.incomplete/``
and renamed when all its frames are written, so ``resume`` skips exactly the sequences that are
complete.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, OutputError
from ..masks import DAVIS_PALETTE, write_mask
from ..outputs import check_resume_config, environment_versions, prepare_run_dir, write_json
from ..tracker import ProgressEvent, Tracker, tracker_config
from .davis import DavisResult, evaluate_davis, write_davis_csvs, write_davis_json

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


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


class DavisRun:
    """Propagate the sequences of ``split`` under ``data_root`` into ``out`` with ``tracker``.

    ``data_root`` has the official DAVIS-2017 layout (``JPEGImages/480p/<seq>/*.jpg``,
    ``Annotations/480p/<seq>/*.png``, ``ImageSets/2017/<split>.txt``). Iterate for one
    :class:`SequenceOutcome` per sequence (``progress`` receives the tracker's events), then
    :meth:`finish` scores them and writes the metrics.
    """

    def __init__(
        self,
        data_root: str | Path,
        tracker: Tracker,
        out: str | Path,
        *,
        split: str = "val",
        resume: bool = False,
        overwrite: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(data_root)
        self.frames_root = self.root / "JPEGImages" / "480p"
        self.gt_root = self.root / "Annotations" / "480p"
        for folder in (self.frames_root, self.gt_root):
            if not folder.is_dir():
                raise InputError(
                    f"{folder} does not exist; --data must be a DAVIS root with JPEGImages/480p "
                    "and Annotations/480p"
                )
        self.split = split
        self.sequences = read_split(self.root, split)
        for name in self.sequences:
            if not (self.frames_root / name).is_dir() or not (self.gt_root / name).is_dir():
                raise InputError(
                    f"sequence {name!r} of split {split!r} has no frames or annotations under "
                    f"{self.root}; check --data and --split"
                )
        self.tracker = tracker
        self.split_name = Path(split).stem
        owned = [
            CONFIG_FILE,
            METRICS_FILE,
            f"global_results-{self.split_name}.csv",
            f"per-sequence_results-{self.split_name}.csv",
        ]
        self.out = prepare_run_dir(out, owned=owned, resume=resume, overwrite=overwrite)
        if overwrite:
            for name in self.sequences:
                for folder in (self.out / name, self.out / f"{name}.incomplete"):
                    if folder.is_dir():
                        shutil.rmtree(folder)
        identity = {**tracker.extractor.identity()}
        params = tracker.params
        fingerprint = {
            "benchmark": "davis",
            "split": self.sequences,
            "extractor": identity,
            "propagation": [params.n_context, params.radius, params.topk, params.temperature],
            "sizing": [tracker.short_side, tracker.long_multiple, tracker.rounding],
            "label_mode": tracker.label_mode,
            "interpolation": tracker.interpolation,
            **dict(options or {}),
        }
        if resume:
            check_resume_config(self.out / CONFIG_FILE, fingerprint)
        write_json(
            self.out / CONFIG_FILE,
            {
                "fingerprint": fingerprint,
                "data": str(self.root),
                "split": split,
                "protocol": "official DiTF DAVIS script / DINO label propagation",
                "versions": environment_versions(),
            },
            "run configuration",
        )
        self.resume = resume

    def __len__(self) -> int:
        return len(self.sequences)

    def is_done(self, name: str) -> bool:
        return (self.out / name).is_dir()

    def iterate(
        self, progress: Callable[[ProgressEvent], None] | None = None
    ) -> Iterator[SequenceOutcome]:
        """Propagate each sequence not yet complete; yield every sequence's outcome in order."""
        for name in self.sequences:
            target = self.out / name
            if self.is_done(name):
                frames = len(list(target.glob("*.png")))
                yield SequenceOutcome(name, frames, resumed=True)
                continue
            yield SequenceOutcome(name, self._run_sequence(name, progress), resumed=False)

    def __iter__(self) -> Iterator[SequenceOutcome]:
        return self.iterate()

    def _run_sequence(self, name: str, progress: Callable[[ProgressEvent], None] | None) -> int:
        tracker = self.tracker
        state = tracker.init_state(self.frames_root / name)
        first = self.gt_root / name / f"{state.frame_names[0]}.png"
        if not first.is_file():
            raise InputError(f"sequence {name!r} has no first-frame annotation {first}")
        tracker.add_mask(state, 0, first)
        palette = state.palette or DAVIS_PALETTE
        work = self.out / f"{name}.incomplete"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        written = 0
        for result in tracker.propagate(state, progress=progress):
            if result.labels is not None:
                write_mask(work / f"{result.frame_name}.png", result.labels, palette)
                written += 1
        if written != state.num_frames:
            raise OutputError(f"sequence {name!r}: {written} of {state.num_frames} masks written")
        write_json(work / "run.json", tracker_config(tracker, state), "sequence configuration")
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
        write_davis_json(result, self.out / METRICS_FILE)
        write_davis_csvs(result, self.out, self.split_name)
        return result
