"""``ditf-track track`` (the main job): masks and points through a video.

One run is validate → run → write on the run-folder protocol
(:class:`~ditf_track.outputs.RunDir`): every cheap input is checked before a model is resolved,
the masks stream into ``OUT.incomplete/`` as they are propagated, and ``OUT`` appears only once
everything (tracks files, ``config.json``) is written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .._malloc import fix_mmap_threshold
from ..batch import check_cluster_fits, connect, import_ray, run_pool
from ..cache import cache_root
from ..config import TrackerConfig
from ..coords import (
    QueryPoints,
    flatten_tracks,
    read_points_csv,
    swap_xy,
    write_points_csv,
    write_tracks_npz,
)
from ..cuts import detect_cuts
from ..errors import ConfigError, InputError, OutputError
from ..extractor import extractor_from_config
from ..features import FeatureExtractor
from ..masks import DAVIS_PALETTE, LabelMask, read_mask, require_objects, write_mask
from ..outputs import (
    RunDir,
    check_writable_file,
    environment_versions,
    input_digest,
    refuse_input_overlap,
    to_json_safe,
)
from ..precomputed import PrecomputedFeatures
from ..progress import Progress, ProgressEvent
from ..propagate import PointParams
from ..tracker import Tracker, TrackerState, run_facts
from ..tracker.prefetch import ChunkGate, ChunkJob, StreamedCache, extract_chunk, plan_chunks
from ..tracker.schedule import blank_frames
from ..video import VideoSource, open_video
from ..viz.overlay import FramePoints, write_overlay_video
from . import _ray
from ._options import add_tracker_options, build_tracker, tracker_config

#: Files a track run writes into its folder (a fresh start clears them from OUT.incomplete/).
TRACK_PATTERNS = ("*.png", "tracks.csv", "tracks.npz")
#: Options that do not change what a run writes, left out of its fingerprint.
_UNFINGERPRINTED = frozenset(
    {"out", "overwrite", "resume", "quiet", "overlay", "verbose", "handler", "command"}
    | {"cache_dir", "no_disk_cache", "mask", "points", "video", "local_files_only"}
    | {"ray", "ray_workers", "gpus_per_worker", "cpus_per_worker", "worker_memory", "max_retries"}
)
log = logging.getLogger("ditf_track")


def add_track(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "track",
        help="propagate masks and points through a video (the main job; `ditf-track VIDEO ...` "
        "for short)",
        description="Propagate the objects painted in --mask and/or the points of --points "
        "through VIDEO (mp4/avi/mov/mkv or a folder of jpg/png frames). Masks: one DAVIS "
        "palette PNG per frame, named like the frames. Points: tracks.csv (frame,x,y,id,visible) "
        "and tracks.npz (TAP-Vid layout: tracks [N,T,2] as (x, y) pixels, occluded [N,T]). "
        "Plus config.json. Output goes to OUT.incomplete/ and is renamed to OUT only when "
        "everything is written.",
    )
    p.add_argument("video", type=Path, help="a video file or a folder of frames")
    p.add_argument(
        "--mask",
        action="append",
        default=[],
        metavar="[N:]MASK.png",
        help="annotated objects (palette PNG with ids, binary PNG, or colour-coded RGB PNG); "
        "N: is a 0-based position in the selected frames; without it, a file named like a "
        "frame (e.g. 00020.png) annotates that frame, any other file frame 0. Repeat for "
        "objects appearing later and for corrections",
    )
    p.add_argument(
        "--points",
        type=Path,
        metavar="POINTS.csv",
        help="points to track: a CSV with the header frame,x,y[,id] (frame: 0-based position in "
        "the selected frames; x, y: pixels of the original frame); each point is tracked "
        "forward and backward from its own frame",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default ./<video name>_masks/, or _tracks/ with only --points)",
    )
    p.add_argument(
        "--overlay",
        type=Path,
        metavar="OUT.mp4",
        help="also write an mp4 with the masks blended in and the points drawn with trails",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier ditf-track run in --out (deletes only the files it wrote)",
    )
    mode.add_argument(
        "--resume", action="store_true", help="continue an interrupted run (OUT.incomplete/)"
    )
    p.add_argument("--start", type=int, default=0, help="first frame (default 0)")
    p.add_argument("--end", type=int, help="stop before this frame (default: the last)")
    p.add_argument("--stride", type=int, default=1, help="take every N-th frame (default 1)")
    p.add_argument(
        "--across-cuts",
        action="store_true",
        help="carry labels and points across scene cuts (by default nothing crosses a detected "
        "shot change: frames beyond it stay empty until an annotation on their side of it)",
    )
    p.add_argument(
        "--features",
        type=Path,
        metavar="FEATS.safetensors",
        help="propagate with precomputed features instead of a model: the file `ditf-track "
        "extract` writes, or any safetensors file with a float tensor 'features' (T, C, h, w), "
        "one map per frame of VIDEO, on a grid with the frames' aspect (no model options)",
    )
    add_tracker_options(
        p,
        "model input short side in pixels (default: the preset's, 960)",
        quiet=True,
        point_defaults=PointParams.motion(),
    )
    _ray.add_ray_options(p, "--workers", "chunks of frames")
    p.set_defaults(handler=run_track)


# -- validate: every cheap input, before a model is resolved ---------------------------------
@dataclass(frozen=True)
class TrackJob:
    """A track run's checked inputs (nothing loaded yet)."""

    video: VideoSource
    out: Path
    masks: list[tuple[int, Path]]  # (frame position, file), in the order given
    label_masks: list[LabelMask]  # the files read, same order
    queries: QueryPoints | None
    points_file: Path | None
    inputs: list[tuple[str, Path | None]]  # (label, path) of every file read: never overwritten
    fingerprint: dict[str, Any]
    config: TrackerConfig


def validate(args: argparse.Namespace) -> TrackJob:
    if not args.mask and args.points is None:
        raise ConfigError(
            "give what to track: --mask FIRST.png (or --mask N:FILE.png) and/or --points POINTS.csv"
        )
    video = open_video(args.video, args.start, args.end, args.stride)
    stem = args.video.stem if args.video.is_file() else args.video.name
    out = args.out or Path.cwd() / f"{stem}_{'masks' if args.mask else 'tracks'}"
    masks = parse_mask_args(args.mask, video)
    label_masks = check_masks(masks, video)
    queries = read_points_csv(args.points)[0] if args.points is not None else None
    if queries is not None:
        check_queries(queries, args.points, video)
    inputs: list[tuple[str, Path | None]] = [
        ("video", args.video),
        *((f"mask {f}", p) for f, p in masks),
        ("points file", args.points),
    ]
    config = tracker_config(args)
    fingerprint = run_fingerprint(args, inputs)
    if args.features is not None:
        config = dataclasses.replace(
            config,
            features=dataclasses.replace(config.features, features_file=str(args.features)),
        )
        fingerprint["inputs"]["features file"] = check_features_file(
            args.features, video, args.device
        )
        inputs.append(("features file", args.features))
    if args.overlay:
        refuse_input_overlap(args.overlay, inputs, "--overlay")
        check_writable_file(args.overlay, "--overlay")
    return TrackJob(
        video=video,
        out=out,
        masks=masks,
        label_masks=label_masks,
        queries=queries,
        points_file=args.points,
        inputs=inputs,
        fingerprint=fingerprint,
        config=config,
    )


def check_features_file(path: Path, video: VideoSource, device: str) -> str:
    """``--features``: the file's header and the device, then its frames and grid against the
    selected frames (one line each, before the run folder); returns its fingerprint (header,
    size and ends: never the whole file) for the resume check."""
    features = PrecomputedFeatures(path, device=device)
    features.check_video(video)
    return features.fingerprint


def parse_mask_args(values: list[str], video: VideoSource) -> list[tuple[int, Path]]:
    """``[N:]FILE`` → (frame position, file); a file named like a selected frame annotates that
    frame, one named like a frame outside the selection is refused, any other file frame 0."""
    names = video.frame_names
    out: list[tuple[int, Path]] = []
    for value in values:
        match = re.fullmatch(r"(\d+):(.+)", value)
        if match:
            out.append((int(match.group(1)), Path(match.group(2))))
            continue
        path = Path(value)
        if path.stem in names:
            out.append((names.index(path.stem), path))
        elif _names_a_frame(path.stem, video):
            raise InputError(
                f"--mask {value} is named like frame {path.stem} of {video.path}, which is not "
                "among the selected frames (--start/--end/--stride); select that frame, or "
                f"place the mask explicitly with N:{value}"
            )
        else:
            out.append((0, path))
    frames = [f for f, _ in out]
    if len(set(frames)) != len(frames):
        raise InputError(f"two --mask options annotate the same frame {frames}; give one per frame")
    for frame_idx, path in out:
        if frame_idx >= len(video):
            raise InputError(
                f"--mask {frame_idx}:{path}: frame {frame_idx} is out of range: {len(video)} "
                f"frames are selected (0..{len(video) - 1}); give a position in range"
            )
    return out


def _names_a_frame(stem: str, video: VideoSource) -> bool:
    """Whether ``stem`` is the name of some frame of the whole video, selected or not."""
    if video.kind == "frames":
        return any(f.stem == stem for f in Path(video.path).iterdir() if f.is_file())
    return stem.isdigit() and stem == f"{int(stem):05d}" and int(stem) < video.total_frames


def check_masks(masks: list[tuple[int, Path]], video: VideoSource) -> list[LabelMask]:
    """Read every mask now (size, ids, objects) so that a bad one fails before the model loads.

    Returns the masks read (in the order given), so that each file is read once and its
    warnings (e.g. an RGB mask's id numbering) are shown once.
    """
    read = []
    for _, path in masks:
        mask = read_mask(path)
        if mask.labels.shape != (video.height, video.width):
            raise InputError(
                f"{path} is {mask.labels.shape[1]}x{mask.labels.shape[0]} but the video frames "
                f"are {video.width}x{video.height}; give a mask of the frame size"
            )
        require_objects(mask, path)
        read.append(mask)
    return read


def check_queries(queries: QueryPoints, path: Path, video: VideoSource) -> None:
    """Points file rows: unique ids, frames among the selected ones, positions in the frame."""
    if len(queries.ids) == 0:
        raise InputError(f"points file {path} has no points; add rows frame,x,y")
    values, counts = np.unique(queries.ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(
            f"points file {path} gives id {int(values[counts > 1][0])} twice; a "
            "point is queried once (give each row its own id)"
        )
    frames = np.asarray(queries.frame_idx)
    bad = (frames < 0) | (frames >= len(video))
    if bad.any():
        raise InputError(
            f"points file {path}: frame {int(frames[bad][0])} is out of range: the video has "
            f"{len(video)} frames (0..{len(video) - 1}); frame is a position in the selection"
        )
    pts = np.asarray(queries.points, dtype=np.float64)
    height, width = video.height, video.width
    outside = ~np.isfinite(pts).all(axis=1)
    outside |= (pts[:, 0] < -0.5) | (pts[:, 0] >= height - 0.5)
    outside |= (pts[:, 1] < -0.5) | (pts[:, 1] >= width - 0.5)
    if outside.any():
        y, x = pts[np.argmax(outside)]
        frame = int(frames[np.argmax(outside)])
        raise InputError(
            f"points file {path}: point (x={x:g}, y={y:g}) on frame {frame} lies outside the "
            f"{width}x{height} frame ({int(outside.sum())} point(s) do); give x in "
            f"[0, {width - 1}] and y in [0, {height - 1}]"
        )


def run_fingerprint(
    args: argparse.Namespace, inputs: list[tuple[str, Path | None]]
) -> dict[str, Any]:
    """Content digests of the inputs and the options that shape the result (resume check)."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _UNFINGERPRINTED}
    digests = {label: input_digest(path) for label, path in inputs if path is not None}
    return {"inputs": digests, "settings": settings}


# -- run: the model, the annotations, the propagation into OUT.incomplete/ -------------------
def run_track(args: argparse.Namespace) -> int:
    fix_mmap_threshold()  # per-frame buffers back to the system: flat memory on long videos
    ray = check_ray(args) if args.ray else None
    job = validate(args)
    if ray is None:
        return _run_track(args, job, None)
    started = connect(ray, args.ray)
    try:
        pool = _ray.worker_pool(args, _ray.worker_memory(args, job.config))
        check_cluster_fits(ray, pool, "--workers")
        return _run_track(args, job, ray)
    finally:
        if started:
            ray.shutdown()


def check_ray(args: argparse.Namespace) -> Any:
    """Ray and the options ``--ray`` goes with (before anything is read): the workers hand the
    features over through the on-disk feature cache, so there must be one."""
    ray = import_ray()
    _ray.check_ray_options(args)
    if args.no_disk_cache:
        raise ConfigError(
            "--ray hands the features to the driver through the on-disk feature cache; drop "
            "--no-disk-cache (and give --cache-dir on a file system every node shares)"
        )
    if args.features is not None:
        raise ConfigError(
            "--features reads precomputed features: there is nothing for --ray workers to "
            "extract; drop --ray"
        )
    return ray


def _run_track(args: argparse.Namespace, job: TrackJob, ray: Any) -> int:
    run_dir = RunDir(
        job.out,
        "track",
        inputs=job.inputs,
        patterns=TRACK_PATTERNS,
        resume=args.resume,
        overwrite=args.overwrite,
    ).open()
    try:
        run_dir.check_fingerprint(job.fingerprint)
        if run_dir.complete:
            print(f"{run_dir.out} is already complete; nothing to do")
            return 0
        tracker, state, record = run(args, job, run_dir, ray=ray)
        out, tracks = write(job, run_dir, tracker, state, record)
    finally:
        run_dir.close()
    report(args, job, tracker, state, out, tracks)
    return 0


def run(
    args: argparse.Namespace,
    job: TrackJob,
    run_dir: RunDir,
    *,
    extractor: FeatureExtractor | None = None,
    progress: Progress | None = None,
    ray: Any = None,
) -> tuple[Tracker, TrackerState, dict[str, Any]]:
    """Load the model (or take ``extractor``, loaded once for many clips by ``batch``), annotate,
    record the run (refusing a resume with other facts), then propagate, each mask written to the
    work folder as it comes; ``progress`` hears every extract/propagate event. With ``ray`` (a
    connected Ray module) the features of the frames after frame 0 are extracted by Ray
    workers meanwhile (:func:`prefetch_on_ray`)."""
    cuts = find_cuts(job.video, args.across_cuts, quiet=args.quiet)
    tracker = build_tracker(job.config, extractor) if ray is None else streamed_tracker(job.config)
    state = tracker.init_state(job.video, cuts=() if args.across_cuts else cuts)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for (frame_idx, _), mask in zip(job.masks, job.label_masks):
            tracker.add_mask(state, frame_idx, mask)
    if job.queries is not None:
        for frame_idx, (points, ids) in job.queries.by_frame().items():
            tracker.add_points(state, frame_idx, points, ids)
    tracker.massive_channels(state)  # frame 0's, before config.json records them
    record = run_record(job, tracker, state)
    record.update(cuts=cuts, across_cuts=bool(args.across_cuts))
    previous = (run_dir.previous or {}).get("run")
    if previous is not None and _resumable(previous) != _resumable(to_json_safe(record)):
        raise OutputError(
            f"the interrupted run in {run_dir.work} used other settings; pass --overwrite to "
            "start over"
        )
    run_dir.write_state({"fingerprint": job.fingerprint, "run": record})
    palette = state.palette or DAVIS_PALETTE
    bars: dict[str, Any] = {}

    def on_progress(event: ProgressEvent) -> None:
        if progress is not None:
            progress(event)
        if args.quiet or (ray is not None and event.phase == "extract"):
            return  # on Ray, the workers' chunks have their own bar
        label = {"extract": "extract features", "propagate": "propagate"}[event.phase]
        bar = bars.get(event.phase)
        if bar is None:
            bar = bars[event.phase] = tqdm(
                total=event.total, desc=label, unit="frame", position=len(bars), disable=None
            )
        bar.update(event.done - bar.n)

    names = state.frame_names

    def write_labels(frame_idx: int, labels: np.ndarray) -> Path:
        target = run_dir.work / f"{names[frame_idx]}.png"
        if not (args.resume and target.exists()):
            write_mask(target, labels, palette)
        return target

    # Each mask is written as the state stores it and read back from there, so the state holds
    # no more than its last few label maps in memory.
    state.masks.write_with(write_labels)
    try:
        with contextlib.ExitStack() as stack:
            if ray is not None:
                stack.enter_context(prefetch_on_ray(ray, args, job, tracker, state))
            for _result in tracker.propagate(state, progress=on_progress):
                pass
    finally:
        state.masks.write_with(None)
        for bar in bars.values():
            bar.close()
        tracker.cache.close()
    return tracker, state, record


def streamed_tracker(config: TrackerConfig) -> Tracker:
    """The driver's tracker on Ray: its reads of a frame wait for the worker bringing it
    (:class:`~ditf_track.tracker.prefetch.StreamedCache`, on the on-disk cache)."""
    extractor = extractor_from_config(config.features, "video", config.runtime, warn=log.warning)
    cache = StreamedCache(cache_root(config.runtime.cache_dir), device=extractor.device)
    return Tracker.from_config(config, extractor=extractor, cache=cache, warn=log.warning)


@contextlib.contextmanager
def prefetch_on_ray(
    ray: Any, args: argparse.Namespace, job: TrackJob, tracker: Tracker, state: TrackerState
) -> Iterator[None]:
    """Ray workers extract the frames propagation will read, in chunks of the tracker's batch
    size, in the order it reads them, into the shared feature cache, at most ``2 * --workers``
    chunks ahead of the one propagation reads; a thread hears them (:func:`run_pool`: a worker
    that dies is replaced and its chunk sent again) while the caller propagates."""
    assert isinstance(tracker.cache, StreamedCache)
    assert tracker.cache.root is not None
    clip = state.features  # frame 0's channels are fixed (run() asked for them)
    chunks = plan_chunks(tracker, state)
    gate = ChunkGate([[clip.key(f) for f in c] for c in chunks], 2 * args.ray_workers)
    base = ChunkJob(
        video=str(Path(job.video.path).resolve()),
        start=args.start,
        end=args.end,
        stride=args.stride,
        video_hash=clip.video_hash,
        input_size=clip.input_size,
        interpolation=clip.interpolation,
        cache_dir=str(tracker.cache.root.resolve()),
        frames=(),
        channels=clip.massive_channels,
        exit_at=_ray.worker_exit_after(),
    )
    pool = _ray.worker_pool(args, _ray.worker_memory(args, job.config))  # checked by run_track
    total = sum(map(len, chunks))
    bar = tqdm(total=total, desc="extract features (Ray)", unit="frame", disable=args.quiet or None)
    outcome: dict[str, Any] = {}

    def prepare(i: int) -> ChunkJob | None:
        return dataclasses.replace(base, frames=tuple(chunks[i])) if gate.admit(i) else None

    def finish(i: int, frames: int) -> None:
        tracker.extracted_frames += frames
        bar.update(frames)
        gate.done(i)

    def fail(i: int, message: str) -> None:
        gate.fail(f"the features of frames {chunks[i][0]}..{chunks[i][-1]} failed: {message}")

    def pump() -> None:
        try:
            outcome["stats"] = run_pool(
                ray,
                range(len(chunks)),
                setup=functools.partial(_ray.load_extractor, job.config, args.cpus_per_worker),
                work=extract_chunk,
                prepare=prepare,
                finish=finish,
                fail=fail,
                pool=pool,
                on_change=lambda stats: bar.set_postfix({"workers": stats.alive}, refresh=True),
            )
        except Exception as exc:  # any: the driver must not wait forever
            gate.fail(f"the Ray workers stopped ({str(exc).splitlines()[0]}); run again")
        finally:  # a chunk never sent fails the read that waits for it
            gate.fail("the Ray workers stopped before every chunk was extracted; run again")

    tracker.cache.gate = gate
    thread = threading.Thread(target=pump, name="ditf-track-ray", daemon=True)
    thread.start()
    try:
        yield
    finally:
        gate.stop()
        thread.join()
        tracker.cache.gate = None
        bar.close()
    stats = outcome.get("stats")
    if stats is not None:
        print(
            f"Ray: {total} frame(s) extracted in {len(chunks)} chunk(s) by {stats.started} "
            f"worker(s), {stats.died} replaced"
        )


def find_cuts(video: VideoSource, across: bool, *, quiet: bool) -> list[int]:
    """The scene cuts of the selected range (file indices of the frames that start a shot),
    read on every frame of ``start:end`` before the model loads, with a "cuts" bar."""
    bar: Any = None

    def on_progress(event: ProgressEvent) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=event.total, desc="cuts", unit="frame", disable=None)
        bar.update(event.done - bar.n)

    try:
        cuts = detect_cuts(video, progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
    first, last = int(video.frame_indices[0]), int(video.frame_indices[-1])
    if not cuts:
        log.info("no scene cut in frames %d..%d", first, last)
    else:
        log.info(
            "scene cuts at frames %s (file indices); %s",
            ", ".join(map(str, cuts)),
            "labels and points carried across them (--across-cuts)"
            if across
            else "nothing is carried across them (--across-cuts to carry it)",
        )
    return cuts


def run_record(job: TrackJob, tracker: Tracker, state: TrackerState) -> dict[str, Any]:
    """What ``config.json`` records of a run besides its fingerprint: the whole
    :class:`~ditf_track.config.TrackerConfig` (``config``, what was asked) and the run facts
    (what the run read and resolved: the clip, the model's identity and device, frame 0's
    massive channels, the annotations, the versions)."""
    record: dict[str, Any] = {
        "config": job.config.to_dict(),
        "masks": {str(f): str(p) for f, p in job.masks},
        "versions": environment_versions(),
        **run_facts(tracker, state),
    }
    if job.points_file is not None:
        record["points_file"] = str(job.points_file)
    return record


def _resumable(record: dict[str, Any]) -> dict[str, Any]:
    """A record without ``config.runtime`` (where features are cached, offline or not): a
    resumed run may change those; everything else must match."""
    config = {k: v for k, v in record.get("config", {}).items() if k != "runtime"}
    return {**record, "config": config}


# -- write: the tracks files and config.json, then OUT; the overlay and the summary ----------
def write(
    job: TrackJob,
    run_dir: RunDir,
    tracker: Tracker,
    state: TrackerState,
    record: dict[str, Any],
) -> tuple[Path, tuple[np.ndarray, np.ndarray] | None]:
    """Check every frame got its mask, write the tracks files and publish ``OUT``."""
    work = run_dir.work
    if job.masks:
        missing = [n for n in state.frame_names if not (work / f"{n}.png").exists()]
        if missing:
            raise InputError(f"{len(missing)} frame(s) got no mask (first: {missing[0]})")
    tracks = None
    if job.queries is not None:
        tracks = state.point_tracks()
        write_tracks(work, state, *tracks)
    record["features"] = {"extracted": tracker.extracted_frames}
    return run_dir.publish({"fingerprint": job.fingerprint, **record}), tracks


def write_tracks(
    folder: Path, state: TrackerState, points: np.ndarray, visible: np.ndarray
) -> None:
    """tracks.csv (frame,x,y,id,visible: the --points columns plus visible; frame-major) and
    tracks.npz (TAP-Vid layout: tracks (N, T, 2) as (x, y) original pixels, occluded (N, T))."""
    ids = state.point_ids
    rows, flags = flatten_tracks(np.round(points, 3), visible, ids)
    write_points_csv(folder / "tracks.csv", rows.frame_idx, rows.points, rows.ids, flags)
    query_frames, query_yx = state.point_queries_array
    write_tracks_npz(
        folder / "tracks.npz",
        tracks=swap_xy(points.transpose(1, 0, 2)).astype(np.float32),
        occluded=~visible.T,
        ids=ids,
        frame_names=np.asarray(state.frame_names),
        query_points=np.column_stack([query_frames, query_yx]).astype(np.float32),
    )


def report(
    args: argparse.Namespace,
    job: TrackJob,
    tracker: Tracker,
    state: TrackerState,
    out: Path,
    tracks: tuple[np.ndarray, np.ndarray] | None,
) -> None:
    """The overlay video (read back from the published masks) and the one-line summary."""
    if args.overlay:
        write_overlay(
            args.overlay,
            job.video,
            out if job.masks else None,
            state.palette or DAVIS_PALETTE,
            tracks,
            state.point_ids,
        )
    # frames of a shot without annotation are written empty, from no features
    blank = len(blank_frames(sorted(state.annotations), state.num_frames, state.shot_starts))
    read = state.num_frames - (blank if tracks is None else 0)
    cached = max(read - tracker.extracted_frames, 0)
    written = []
    if job.masks:
        empty = f"; {blank} empty: no annotation in their shot" if blank else ""
        written.append(
            f"{state.num_frames} masks (objects {', '.join(map(str, state.object_ids))}{empty})"
        )
    if tracks is not None:
        visible = float(tracks[1].mean()) if tracks[1].size else 0.0
        written.append(
            f"{len(state.point_ids)} point tracks over {state.num_frames} frames "
            f"({args.points_mode} mode, {100 * visible:.0f}% visible)"
        )
    source = f"{tracker.extracted_frames} extracted, {cached} from the cache"
    if args.features is not None:
        source = f"{tracker.extracted_frames} frames read from {args.features}"
    print(f"wrote {' and '.join(written)} to {out} (features: {source})")


def write_overlay(
    path: Path,
    video: VideoSource,
    masks_dir: Path | None,
    palette: bytes,
    tracks: tuple[np.ndarray, np.ndarray] | None = None,
    ids: np.ndarray | None = None,
) -> None:
    frames = (batch_frame for batch in video.iter_frames() for batch_frame in batch.frames)
    masks = (
        (read_mask(masks_dir / f"{name}.png").labels for name in video.frame_names)
        if masks_dir is not None
        else None
    )
    points = (
        [FramePoints(tracks[0][t], tracks[1][t], ids) for t in range(len(tracks[0]))]
        if tracks is not None
        else None
    )
    write_overlay_video(path, frames, masks, palette, fps=video.fps or 24.0, points=points)
    print(f"wrote {path}")
