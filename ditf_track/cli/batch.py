"""``ditf-track batch JOBS``: many ``track`` runs with the model loaded once.

Each clip is a ``track`` run: the same validate → run → write functions of
:mod:`ditf_track.cli.track`, the same run-folder protocol, the same fingerprint; a clip whose
finished folder matches its fingerprint is skipped, an interrupted one is resumed. Every row is
validated before a model loads. In-process by default; ``--ray`` spreads the clips over Ray
workers (:func:`ditf_track.batch.run_pool`), each holding one extractor. A worker runs its clip as
a ``track`` run into a hidden staging folder beside OUT; the driver, which holds OUT's lock
meanwhile, moves the files into OUT's work folder and publishes it, so only the driver writes
OUT's run state and a clip whose worker died leaves nothing that looks complete.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .._malloc import fix_mmap_threshold
from ..batch import (
    Clip,
    PoolStats,
    Throughput,
    check_cluster_fits,
    connect,
    davis_clips,
    duplicate_outs,
    import_ray,
    read_jobs,
    run_pool,
)
from ..config import TrackerConfig
from ..errors import ConfigError, DitfError, OutputError
from ..eval.runs.davis import DavisRun, propagate_sequence, sequence_record
from ..features import FeatureExtractor
from ..masks import DAVIS_PALETTE
from ..outputs import (
    CONFIG_FILE,
    RunDir,
    discard_run,
    read_state,
    refuse_input_overlap,
)
from ..progress import Progress, ProgressEvent
from ..propagate import PointParams
from . import track
from ._options import add_tracker_options, build_tracker
from ._ray import (
    add_ray_options,
    check_ray_options,
    load_extractor,
    worker_exit_after,
    worker_memory,
    worker_pool,
)

log = logging.getLogger("ditf_track")

#: Called on the driver after each clip is published (in-process: or found complete); tests
#: stop the driver there.
after_clip: Callable[[Clip], None] | None = None


def add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="track many clips with the model loaded once (optionally on a Ray cluster)",
        description="Run `track` on every clip of JOBS: a CSV (header video,mask,points,out; "
        "several masks joined by ';') or JSON-lines file, paths relative to it; or a "
        "DAVIS-layout root with --split and --out. Every row is checked before the model "
        "loads; a clip whose finished folder has the same inputs and settings is skipped, an "
        "interrupted one continued. Failed clips are listed at the end (non-zero exit).",
    )
    p.add_argument("jobs", type=Path, help="a CSV/JSONL jobs file or a DAVIS-layout root")
    p.add_argument(
        "--split",
        metavar="NAME|FILE",
        help="with a DAVIS root: a text file of sequence names or a split under ImageSets/",
    )
    p.add_argument(
        "--out", type=Path, help="with a DAVIS root: the folder that gets one OUT/SEQ per clip"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute every clip, replacing earlier runs (deletes only the files they wrote)",
    )
    p.add_argument("--start", type=int, default=0, help="first frame of every clip (default 0)")
    p.add_argument("--end", type=int, help="stop before this frame (default: the last)")
    p.add_argument("--stride", type=int, default=1, help="take every N-th frame (default 1)")
    p.add_argument(
        "--across-cuts", action="store_true", help="carry labels and points across scene cuts"
    )
    add_ray_options(p, "--workers", "clips")
    add_tracker_options(
        p,
        "model input short side in pixels (default: the preset's, 960)",
        quiet=True,
        point_defaults=PointParams.motion(),
    )
    p.set_defaults(handler=run_batch)


# -- validate: every row, before a model loads --------------------------------------------------
@dataclass
class Planned:
    """A clip that passed validation: its ``track`` options and checked job."""

    clip: Clip
    args: argparse.Namespace
    job: track.TrackJob


@functools.cache
def _track_defaults() -> dict[str, Any]:
    """``track``'s options and their defaults (a clip's run must fingerprint like ``track``)."""
    parser = argparse.ArgumentParser()
    track.add_track(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return vars(sub.choices["track"].parse_args(["VIDEO"]))


def clip_args(args: argparse.Namespace, clip: Clip) -> argparse.Namespace:
    """The options of ``ditf-track track VIDEO --mask ... --out OUT`` with batch's settings."""
    values = dict(_track_defaults())
    values.update({k: getattr(args, k) for k in values if hasattr(args, k) and k != "handler"})
    values.update(
        video=clip.video,
        mask=list(clip.masks),
        points=clip.points,
        out=clip.out,
        overlay=None,
        quiet=True,
        resume=not args.overwrite,
        overwrite=args.overwrite,
        command="track",
        verbose=getattr(args, "verbose", False),
    )
    return argparse.Namespace(**values)


def read_clips(args: argparse.Namespace) -> list[Clip]:
    if args.jobs.is_dir():
        if args.split is None or args.out is None:
            raise ConfigError(
                f"{args.jobs} is a folder: give a DAVIS-layout root with --split NAME|FILE and "
                "--out FOLDER, or a CSV/JSONL jobs file"
            )
        return davis_clips(args.jobs, args.split, args.out)
    if args.split is not None or args.out is not None:
        raise ConfigError(
            "--split and --out go with a DAVIS root; a jobs file names each clip's out"
        )
    return read_jobs(args.jobs)


def plan(
    args: argparse.Namespace, clips: list[Clip]
) -> tuple[list[Planned], list[tuple[str, str]]]:
    """Validate every clip as ``track`` would (files, mask sizes, points) and the outs (one per
    clip, none an input of any clip); returns the good ones and each bad row's (where, error)."""
    errors: dict[int, str] = dict(duplicate_outs(clips))
    planned: dict[int, Planned] = {}
    for i, clip in enumerate(clips):
        if i in errors:
            continue
        cargs = clip_args(args, clip)
        try:
            planned[i] = Planned(clip, cargs, track.validate(cargs))
        except DitfError as exc:
            errors[i] = str(exc)
    inputs = [item for p in planned.values() for item in p.job.inputs]
    for i, p in planned.items():
        try:
            refuse_input_overlap(p.job.out, inputs)
            refuse_input_overlap(p.job.out.with_name(f"{p.job.out.name}.incomplete"), inputs)
        except DitfError as exc:
            errors[i] = str(exc)
    good = [p for i, p in sorted(planned.items()) if i not in errors]
    return good, [(clips[i].where, msg) for i, msg in sorted(errors.items())]


# -- run ------------------------------------------------------------------------------------------
def run_batch(args: argparse.Namespace) -> int:
    ray = import_ray() if args.ray else None
    check_ray_options(args)
    clips = read_clips(args)
    planned, errors = plan(args, clips)
    for where, message in errors:
        print(f"ditf-track: error: {where}: {message}", file=sys.stderr)
    failed = [where for where, _ in errors]
    tally = Tally(total=len(clips), quiet=args.quiet)
    stats: PoolStats | None = None
    try:
        if planned and ray is None:
            _run_in_process(planned, tally, failed)
        elif planned:
            stats = _run_on_ray(ray, args, planned, tally, failed)
    finally:
        tally.close()
    order = {clip.where: i for i, clip in enumerate(clips)}
    failed.sort(key=order.__getitem__)
    pool = f"; {stats.started} worker(s), {stats.died} replaced" if stats is not None else ""
    print(
        f"batch: {tally.computed} clip(s) computed, {tally.skipped} already complete, "
        f"{len(failed)} failed{pool}"
    )
    if failed:
        shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        raise DitfError(
            f"{len(failed)} of {len(clips)} clips failed ({shown}); fix them and run batch "
            "again: finished clips are skipped"
        )
    return 0


class Tally:
    """The one progress bar (clips done, frames/s, workers alive) and the counts behind it."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.computed = 0
        self.skipped = 0
        self.throughput = Throughput()
        self.workers: int | None = None
        self.bar = tqdm(total=total, desc="batch", unit="clip", disable=True if quiet else None)

    def clip_done(self, computed: bool, frames: int = 0) -> None:
        self.computed += computed
        self.skipped += not computed
        self.throughput.frames += frames
        self.bar.update(1)
        self.refresh()

    def refresh(self) -> None:
        postfix = {"frames/s": f"{self.throughput.fps():.1f}"}
        if self.workers is not None:
            postfix["workers"] = str(self.workers)
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _open(p: Planned) -> RunDir:
    run_dir = RunDir(
        p.job.out,
        "track",
        inputs=p.job.inputs,
        patterns=track.TRACK_PATTERNS,
        resume=p.args.resume,
        overwrite=p.args.overwrite,
    ).open()
    try:
        run_dir.check_fingerprint(p.job.fingerprint)
    except BaseException:
        run_dir.close()
        raise
    return run_dir


def _run_in_process(planned: list[Planned], tally: Tally, failed: list[str]) -> None:
    fix_mmap_threshold()
    extractor = load_extractor(planned[0].job.config)

    last = 0  # the propagate count of the clip being tracked

    def on_progress(event: ProgressEvent) -> None:
        nonlocal last
        if event.phase == "propagate":
            tally.throughput.frames += max(event.done - last, 0)
            last = event.done
            tally.refresh()

    for p in planned:
        last = 0
        try:
            run_dir = _open(p)
            try:
                computed = not run_dir.complete
                if computed:
                    tracker, state, record = track.run(
                        p.args, p.job, run_dir, extractor=extractor, progress=on_progress
                    )
                    track.write(p.job, run_dir, tracker, state, record)
            finally:
                run_dir.close()
            remove_staging(staging_path(p.job.out))  # left by a Ray run killed earlier
        except DitfError as exc:
            print(f"ditf-track: error: {p.clip.where}: {exc}", file=sys.stderr)
            failed.append(p.clip.where)
            tally.bar.update(1)
            continue
        tally.clip_done(computed)
        if after_clip is not None:
            after_clip(p.clip)


# -- Ray: workers compute into staging folders, the driver publishes ------------------------------
def staging_path(out: Path) -> Path:
    """Where a worker runs a clip bound for ``out``: a hidden sibling (same file system, so
    the driver moves files, never copies them)."""
    return out.with_name(f".{out.name}.staging")


def stage_clip(extractor: FeatureExtractor, payload: Any, attempt: int) -> dict[str, Any]:
    """On a worker: the clip as a ``track`` run into its staging folder (validate → run →
    write); returns the staged folder and the frame count."""
    args, exit_after = payload
    job = track.validate(args)
    progress = _fault_hook(exit_after, attempt)
    run_dir = RunDir(
        job.out, "track", inputs=job.inputs, patterns=track.TRACK_PATTERNS, overwrite=True
    ).open()
    try:
        tracker, state, record = track.run(
            args, job, run_dir, extractor=extractor, progress=progress
        )
        out, _ = track.write(job, run_dir, tracker, state, record)
    finally:
        run_dir.close()
    return {"staged": str(out), "frames": state.num_frames}


def _fault_hook(exit_after: int | None, attempt: int) -> Progress | None:
    """The worker's exit after ``exit_after`` propagated frames of a first attempt (tests)."""
    if exit_after is None or attempt > 0:
        return None

    def progress(event: ProgressEvent) -> None:
        if event.phase == "propagate" and event.done >= exit_after:
            os._exit(3)  # as if the worker were killed mid-clip

    return progress


def publish_staged(run_dir: RunDir, staged: Path) -> Path:
    """Move a worker's finished clip into OUT's work folder and publish it with the same
    ``config.json`` record (the driver's only write of OUT's run state)."""
    config = read_state(staged / CONFIG_FILE)
    for name in config.get("files") or []:
        target = run_dir.work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / name, target)
    record = {k: v for k, v in config.items() if k not in ("tool", "command", "files")}
    out = run_dir.publish(record)
    remove_staging(staged)
    return out


def remove_staging(staged: Path) -> None:
    """Delete a clip's staging folders: what the worker's ``track`` run wrote there, never a
    file it does not write (:func:`~ditf_track.outputs.discard_run`)."""
    for folder in (staged, staged.with_name(f"{staged.name}.incomplete")):
        discard_run(folder, track.TRACK_PATTERNS)


def _run_on_ray(
    ray: Any, args: argparse.Namespace, planned: list[Planned], tally: Tally, failed: list[str]
) -> PoolStats:
    started = connect(ray, args.ray)
    exit_after = worker_exit_after()
    open_dirs: dict[int, RunDir] = {}

    def prepare(i: int) -> Any:
        p = planned[i]
        try:
            run_dir = _open(p)
        except DitfError as exc:
            fail(i, str(exc))
            return None
        if run_dir.complete:
            run_dir.close()
            tally.clip_done(False)
            return None
        open_dirs[i] = run_dir
        staged = argparse.Namespace(
            **{**vars(p.args), "out": staging_path(p.job.out), "resume": False, "overwrite": True}
        )
        return staged, exit_after

    def finish(i: int, result: dict[str, Any]) -> None:
        run_dir = open_dirs.pop(i)
        try:
            publish_staged(run_dir, Path(result["staged"]))
        except DitfError as exc:
            run_dir.close()
            fail(i, str(exc))
            return
        tally.clip_done(True, int(result["frames"]))
        if after_clip is not None:
            after_clip(planned[i].clip)

    def fail(i: int, message: str) -> None:
        p = planned[i]
        if i in open_dirs:
            open_dirs.pop(i).close()
        remove_staging(staging_path(p.job.out))
        print(f"ditf-track: error: {p.clip.where}: {message}", file=sys.stderr)
        failed.append(p.clip.where)
        tally.bar.update(1)

    def on_change(stats: PoolStats) -> None:
        tally.workers = stats.alive
        tally.refresh()

    try:
        pool = worker_pool(args, worker_memory(args, planned[0].job.config))
        check_cluster_fits(ray, pool, "--workers")
        return run_pool(
            ray,
            range(len(planned)),
            setup=functools.partial(load_extractor, planned[0].job.config, args.cpus_per_worker),
            work=stage_clip,
            prepare=prepare,
            finish=finish,
            fail=fail,
            pool=pool,
            on_change=on_change,
        )
    finally:
        for run_dir in open_dirs.values():
            with contextlib.suppress(OutputError):
                run_dir.close()
        if started:
            ray.shutdown()


# -- eval davis --data --ray: sequences propagated by workers, written by the driver --------------
def propagate_davis_sequence(extractor: FeatureExtractor, payload: Any, attempt: int) -> Any:
    """On a worker: one DAVIS sequence by the official protocol; returns its masks (frame name,
    ids), palette, frame count and ``run.json`` record for the driver to write."""
    config, frames_root, gt_root, name, exit_after = payload
    tracker = build_tracker(config, extractor)
    try:
        state, masks = propagate_sequence(
            tracker, frames_root, gt_root, name, _fault_hook(exit_after, attempt)
        )
        frames = list(masks)
        palette = state.palette or DAVIS_PALETTE
        return frames, palette, state.num_frames, sequence_record(tracker, state)
    finally:
        tracker.cache.close()


def propagate_davis_on_ray(args: argparse.Namespace, config: TrackerConfig, run: DavisRun) -> None:
    """Propagate the sequences of ``run`` not yet complete on Ray workers; each finished one is
    written by :meth:`DavisRun.write_sequence` here, on the driver, which holds the run's lock.
    The run then replays them all, as a resumed in-process run would."""
    ray = import_ray()
    check_ray_options(args)
    names = [name for name in run.sequences if not run.is_done(name)]
    if not names:
        return
    started = connect(ray, args.ray)
    exit_after = worker_exit_after()
    failures: list[str] = []
    bar = tqdm(total=len(names), desc="sequences", unit="seq", disable=None)

    def finish(i: int, result: Any) -> None:
        frames, palette, num_frames, record = result
        run.write_sequence(names[i], frames, palette, num_frames, lambda: record)
        bar.update(1)

    def fail(i: int, message: str) -> None:
        failures.append(names[i])
        print(f"ditf-track: error: sequence {names[i]}: {message}", file=sys.stderr)
        bar.update(1)

    def on_change(stats: PoolStats) -> None:
        bar.set_postfix({"workers": stats.alive}, refresh=True)

    try:
        pool = worker_pool(args, worker_memory(args, config))
        check_cluster_fits(ray, pool, "--workers")
        stats = run_pool(
            ray,
            range(len(names)),
            setup=functools.partial(load_extractor, config, args.cpus_per_worker),
            work=propagate_davis_sequence,
            prepare=lambda i: (config, run.frames_root, run.gt_root, names[i], exit_after),
            finish=finish,
            fail=fail,
            pool=pool,
            on_change=on_change,
        )
    finally:
        bar.close()
        if started:
            ray.shutdown()
    print(
        f"Ray: {len(names) - len(failures)} sequence(s) propagated; {stats.started} worker(s), "
        f"{stats.died} replaced"
    )
    if failures:
        raise DitfError(
            f"{len(failures)} of {len(names)} sequences failed ({', '.join(failures[:5])}); "
            "the others are written: run again with --resume"
        )
