"""The ``ditf-track`` command line. The only module that prints.

``ditf-track VIDEO --mask FIRST.png`` is shorthand for ``ditf-track track VIDEO ...``: a first
argument that is not a subcommand means ``track``. Every :class:`~ditf_track.errors.DitfError`
becomes one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ._version import __version__
from .errors import ConfigError, DitfError

log = logging.getLogger("ditf_track")

Handler = Callable[[argparse.Namespace], int]


class _OneLineParser(argparse.ArgumentParser):
    """argparse without its usage block on errors: a wrong option is one line, like every error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="ditf-track",
        description=(
            "Diffusion Transformer features (DiTF) for mask and keypoint propagation in video, "
            "image-pair matching and the standard evaluators. "
            "`ditf-track VIDEO --mask FIRST.png` is short for `ditf-track track VIDEO ...`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ditf-track {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail (to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


# -- options shared by every command that builds a feature extractor --------------------------
def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """--preset / --model / --family, the device, and every DiTF setting as an override."""
    from .features import CONDITION_MODES, DISCARD_STAGES, FEATURE_MODES
    from .presets import DEFAULT_PRESET, available_presets

    g = parser.add_argument_group("model")
    g.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=f"model and settings preset: {', '.join(available_presets())} (default "
        f"{DEFAULT_PRESET}, ungated; 'lab' is a weight-free colour baseline, not DiTF)",
    )
    g.add_argument(
        "--model",
        metavar="PATH_OR_ID",
        help="a hub id or a local folder in the hub's layout (transformer/, vae/, "
        "text_encoder*/, tokenizer*/, scheduler/); with --preset, replaces its model",
    )
    g.add_argument(
        "--family",
        choices=["pixart", "sd3", "flux"],
        help="the DiT family of --model when no --preset is given (SD3.5 is sd3)",
    )
    g.add_argument("--revision", help="hub revision (branch, tag or commit) of the model")
    g.add_argument(
        "--local-files-only",
        action="store_true",
        help="never touch the network: use the local Hugging Face cache (as HF_HUB_OFFLINE=1)",
    )
    g.add_argument(
        "--device",
        default="auto",
        help="auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps (default auto)",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto = bf16 on CUDA sm80+, fp16 on older CUDA and MPS, fp32 on CPU",
    )
    g.add_argument(
        "--cache-dir",
        help="cache root for text embeddings and features (default $DITF_TRACK_CACHE or "
        "~/.cache/ditf-track)",
    )
    d = parser.add_argument_group("DiTF settings (default: the preset's)")
    d.add_argument("--t", type=int, help="diffusion timestep in 0..999")
    d.add_argument("--k", type=int, help="block index (Flux: 0-18 double, 19-56 single)")
    d.add_argument("--prompt", help="text condition (default: the preset's; '' = empty prompt)")
    d.add_argument("--guidance", type=float, help="Flux-dev guidance value (default 3.5)")
    d.add_argument(
        "--feature-mode",
        choices=FEATURE_MODES,
        help="original = block feature without AdaLN; adaln; adaln+discard (DiTF, default)",
    )
    d.add_argument(
        "--condition",
        choices=CONDITION_MODES,
        help="what conditions the AdaLN modulation: timestep and text (default), t or c alone",
    )
    d.add_argument(
        "--discard-stage",
        choices=DISCARD_STAGES,
        help="zero the massive channels after the AdaLN (the paper, default) or before the "
        "LayerNorm (the official code)",
    )
    d.add_argument(
        "--discard-ratio",
        type=float,
        help="a channel is massive at |v| >= RATIO x median |v| (default 100, the paper)",
    )
    d.add_argument("--seed", type=int, help="noise seed (default 0)")
    d.add_argument("--ensemble", type=int, help="noise draws averaged before the LayerNorm")
    d.add_argument("--batch-size", type=int, help="images per forward pass (default: all)")


def _feature_config(args: argparse.Namespace, **resize: Any) -> Any:
    """The model options as a :class:`~ditf_track.config.FeatureConfig` (no model loaded)."""
    from .config import SETTING_OVERRIDES, FeatureConfig
    from .presets import DEFAULT_PRESET

    preset = args.preset
    if preset is None and args.model is None:
        preset = DEFAULT_PRESET
    overrides: dict[str, Any] = {name: getattr(args, name, None) for name in SETTING_OVERRIDES}
    return FeatureConfig(
        preset=preset,
        model=args.model,
        family=args.family,
        revision=args.revision,
        dtype=args.dtype,
        short_side=getattr(args, "short_side", None),
        **overrides,
        **resize,
    )


def _runtime(args: argparse.Namespace) -> Any:
    from .config import Runtime

    return Runtime(
        device=args.device,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        disk_cache=not getattr(args, "no_disk_cache", False),
        local_files_only=args.local_files_only,
    )


def _extractor_from_args(args: argparse.Namespace, task: str) -> Any:
    """Build the extractor the model options describe (a DiTFExtractor or the lab baseline)."""
    from .extractor import extractor_from_config

    features = _feature_config(args)
    unused = features.unused()
    if unused is not None:
        log.warning(unused)
    return extractor_from_config(features, task, _runtime(args))  # type: ignore[arg-type]


def _tracker_config(args: argparse.Namespace, points_mode: str | None = None, **resize: Any) -> Any:
    """Every option that builds a tracker as a :class:`~ditf_track.config.TrackerConfig`;
    ``points_mode`` replaces ``--points-mode`` (an evaluation's per-dataset default)."""
    from .config import TrackerConfig

    point_options: dict[str, Any] = {}
    if hasattr(args, "points_mode"):  # the commands with point options
        point_options = {
            "points_mode": points_mode or args.points_mode,
            "point_params": _point_params(args),
        }
    return TrackerConfig(
        features=_feature_config(args, **resize),
        params=_propagation_params(args),
        label_mode=args.label_mode,
        runtime=_runtime(args),
        **point_options,
    )


def _tracker_from_args(
    args: argparse.Namespace, points_mode: str | None = None, **resize: Any
) -> Any:
    """The tracker the options describe (the model loaded, the feature cache opened)."""
    return _build_tracker(_tracker_config(args, points_mode, **resize))


def _build_tracker(config: Any) -> Any:
    """:meth:`Tracker.from_config`, saying first which given settings it has no use for."""
    from .tracker import Tracker

    unused = config.features.unused()
    if unused is not None:
        log.warning(unused)
    return Tracker.from_config(config)


# -- track (the main job) ---------------------------------------------------------------------
def _add_propagation_options(parser: argparse.ArgumentParser, label_default: str = "area") -> None:
    g = parser.add_argument_group("propagation (default: DINO's and the official DiTF DAVIS set)")
    g.add_argument(
        "--params",
        choices=["dino", "dift"],
        default="dino",
        help="named set: dino = n 7, r 12, k 5, tau 0.1 (default); "
        "dift = n 28, r 15, k 15, tau 0.2",
    )
    g.add_argument("--context", type=int, help="number of last propagated frames used as context")
    g.add_argument("--radius", type=int, help="square search window radius in feature cells")
    g.add_argument(
        "--global-search", action="store_true", help="no window: search the whole frame (FAISS)"
    )
    g.add_argument("--topk", type=int, help="neighbours kept over all context frames")
    g.add_argument("--temperature", type=float, help="softmax temperature of the affinities")
    g.add_argument(
        "--label-mode",
        choices=["area", "nearest"],
        default=label_default,
        help="bring masks to the feature grid by area averaging (soft labels; keeps objects "
        "smaller than a cell) or nearest sampling (DINO's protocol) (default %(default)s)",
    )


def _propagation_params(args: argparse.Namespace) -> Any:
    from .propagate import PropagationParams

    base = PropagationParams.dift() if args.params == "dift" else PropagationParams.dino()
    return PropagationParams(
        n_context=base.n_context if args.context is None else args.context,
        radius=None
        if args.global_search
        else (base.radius if args.radius is None else args.radius),
        topk=base.topk if args.topk is None else args.topk,
        temperature=base.temperature if args.temperature is None else args.temperature,
    )


def _add_track(sub: argparse._SubParsersAction) -> None:
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
        "--short-side",
        type=_positive_int,
        help="model input short side in pixels (default: the preset's, 960)",
    )
    p.add_argument(
        "--no-disk-cache", action="store_true", help="keep features in memory only (no files)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_propagation_options(p)
    _add_point_options(p)
    _add_model_options(p)
    p.set_defaults(handler=_run_track)


def _add_point_options(
    parser: argparse.ArgumentParser,
    mode_default: str | None = "query",
    mode_default_help: str = "default query",
) -> None:
    from .propagate import PointParams

    d = PointParams()
    g = parser.add_argument_group("points (see ditf_track.propagate.points)")
    g.add_argument(
        "--points-mode",
        choices=["query", "heatmap"],
        default=mode_default,
        help="query: match each point's feature in every frame, refined by a soft-argmax "
        "(TAP-Vid protocol); heatmap: propagate a Gaussian map per point with the mask "
        f"propagation settings (JHMDB protocol); {mode_default_help}",
    )
    g.add_argument(
        "--point-window",
        type=int,
        metavar="CELLS",
        help="query mode: search only within CELLS feature cells of the previous frame's "
        "position (default: the whole frame)",
    )
    g.add_argument(
        "--min-similarity",
        type=float,
        default=d.min_similarity,
        help=f"query mode: a point whose best cosine is lower is not visible (default "
        f"{d.min_similarity})",
    )
    g.add_argument(
        "--cycle-threshold",
        type=float,
        default=d.cycle_threshold,
        metavar="CELLS",
        help="query mode: the match, matched back into the query frame, must land within CELLS "
        f"cells of the query for the point to be visible (default {d.cycle_threshold}; a "
        "negative value switches the check off)",
    )
    g.add_argument(
        "--heatmap-sigma",
        type=float,
        default=d.sigma,
        metavar="CELLS",
        help=f"heatmap mode: Gaussian width in feature cells (default {d.sigma}, CRW's)",
    )


def _point_params(args: argparse.Namespace) -> Any:
    from .propagate import PointParams

    cycle = args.cycle_threshold
    return PointParams(
        radius=args.point_window,
        min_similarity=args.min_similarity,
        cycle_threshold=None if cycle is not None and cycle < 0 else cycle,
        sigma=args.heatmap_sigma,
    )


def _parse_mask_args(values: list[str], video: Any) -> list[tuple[int, Path]]:
    """``[N:]FILE`` → (frame position, file); a file named like a selected frame annotates that
    frame, one named like a frame outside the selection is refused, any other file frame 0."""
    import re

    from .errors import InputError

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


def _names_a_frame(stem: str, video: Any) -> bool:
    """Whether ``stem`` is the name of some frame of the whole video, selected or not."""
    if video.kind == "frames":
        return any(f.stem == stem for f in Path(video.path).iterdir() if f.is_file())
    return stem.isdigit() and stem == f"{int(stem):05d}" and int(stem) < video.total_frames


def _check_masks(masks: list[tuple[int, Path]], video: Any) -> list[Any]:
    """Read every mask now (size, ids, objects) so that a bad one fails before the model loads.

    Returns the masks read (:class:`LabelMask`, in the order given), so that each file is read
    once and its warnings (e.g. an RGB mask's id numbering) are shown once.
    """
    from .errors import InputError
    from .masks import read_mask, require_objects

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


def _check_queries(queries: Any, path: Path, video: Any) -> None:
    """Points file rows: unique ids, frames among the selected ones, positions in the frame."""
    from .errors import InputError

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


#: Files a track run writes into its folder (a fresh start clears them from OUT.incomplete/).
TRACK_PATTERNS = ("*.png", "tracks.csv", "tracks.npz")
#: Options that do not change what a run writes, left out of its fingerprint.
_UNFINGERPRINTED = frozenset(
    {"out", "overwrite", "resume", "quiet", "overlay", "verbose", "handler", "command"}
    | {"cache_dir", "no_disk_cache", "mask", "points", "video", "local_files_only"}
)


def _run_fingerprint(
    args: argparse.Namespace, inputs: list[tuple[str, Path | None]]
) -> dict[str, Any]:
    """Content digests of the inputs and the options that shape the result (resume check)."""
    from .outputs import input_digest

    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _UNFINGERPRINTED}
    digests = {label: input_digest(path) for label, path in inputs if path is not None}
    return {"inputs": digests, "settings": settings}


def _run_track(args: argparse.Namespace) -> int:
    import warnings

    from tqdm import tqdm

    from .coords import read_points_csv
    from .errors import ConfigError, InputError, OutputError
    from .masks import DAVIS_PALETTE, write_mask
    from .outputs import RunDir, check_writable_file, refuse_input_overlap, to_json_safe
    from .tracker import ProgressEvent, tracker_config
    from .video import open_video

    if not args.mask and args.points is None:
        raise ConfigError(
            "give what to track: --mask FIRST.png (or --mask N:FILE.png) and/or --points POINTS.csv"
        )
    # Every cheap input is checked before a model is resolved or loaded.
    video = open_video(args.video, args.start, args.end, args.stride)
    stem = args.video.stem if args.video.is_file() else args.video.name
    out = args.out or Path.cwd() / f"{stem}_{'masks' if args.mask else 'tracks'}"
    masks = _parse_mask_args(args.mask, video)
    label_masks = _check_masks(masks, video)
    queries = read_points_csv(args.points)[0] if args.points is not None else None
    if queries is not None:
        _check_queries(queries, args.points, video)
    inputs: list[tuple[str, Path | None]] = [
        ("video", args.video),
        *((f"mask {f}", p) for f, p in masks),
        ("points file", args.points),
    ]
    if args.overlay:
        refuse_input_overlap(args.overlay, inputs, "--overlay")
        check_writable_file(args.overlay, "--overlay")
    fingerprint = _run_fingerprint(args, inputs)
    config = _tracker_config(args)
    run_dir = RunDir(
        out,
        "track",
        inputs=inputs,
        patterns=TRACK_PATTERNS,
        resume=args.resume,
        overwrite=args.overwrite,
    ).open()
    try:
        run_dir.check_fingerprint(fingerprint)
        if run_dir.complete:
            print(f"{run_dir.out} is already complete; nothing to do")
            return 0
        work = run_dir.work
        tracker = _build_tracker(config)
        cache = tracker.cache
        state = tracker.init_state(video)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            for (frame_idx, _), mask in zip(masks, label_masks):
                tracker.add_mask(state, frame_idx, mask)
        if queries is not None:
            for frame_idx, (points, ids) in queries.by_frame().items():
                tracker.add_points(state, frame_idx, points, ids)
        tracker.massive_channels(state)  # frame 0's, before config.json records them
        run = {"masks": {str(f): str(p) for f, p in masks}, **tracker_config(tracker, state)}
        if args.points is not None:
            run["points_file"] = str(args.points)
        previous = (run_dir.previous or {}).get("run")
        if previous is not None and previous != to_json_safe(run):
            raise OutputError(
                f"the interrupted run in {work} used other settings; pass --overwrite to start over"
            )
        run_dir.write_state({"fingerprint": fingerprint, "run": run})
        palette = state.palette or DAVIS_PALETTE
        bars: dict[str, Any] = {}

        def on_progress(event: ProgressEvent) -> None:
            if args.quiet:
                return
            label = {"extract": "extract features", "propagate": "propagate"}[event.phase]
            bar = bars.get(event.phase)
            if bar is None:
                bar = bars[event.phase] = tqdm(
                    total=event.total, desc=label, unit="frame", position=len(bars), disable=None
                )
            bar.update(event.done - bar.n)

        try:
            for result in tracker.propagate(state, progress=on_progress):
                target = work / f"{result.frame_name}.png"
                if result.labels is not None and not (args.resume and target.exists()):
                    write_mask(target, result.labels, palette)
        finally:
            for bar in bars.values():
                bar.close()
            cache.close()
        if masks:
            missing = [n for n in state.frame_names if not (work / f"{n}.png").exists()]
            if missing:
                raise InputError(f"{len(missing)} frame(s) got no mask (first: {missing[0]})")
        tracks = None
        if queries is not None:
            tracks = state.point_tracks()
            _write_tracks(work, state, *tracks)
        run["features"] = {"extracted": tracker.extracted_frames}
        out = run_dir.publish({"fingerprint": fingerprint, **run})
    finally:
        run_dir.close()
    if args.overlay:
        _write_overlay(
            args.overlay, video, out if masks else None, palette, tracks, state.point_ids
        )
    cached = max(state.num_frames - tracker.extracted_frames, 0)
    written = []
    if masks:
        written.append(
            f"{state.num_frames} masks (objects {', '.join(map(str, state.object_ids))})"
        )
    if tracks is not None:
        visible = float(tracks[1].mean()) if tracks[1].size else 0.0
        written.append(
            f"{len(state.point_ids)} point tracks over {state.num_frames} frames "
            f"({args.points_mode} mode, {100 * visible:.0f}% visible)"
        )
    print(
        f"wrote {' and '.join(written)} to {out} (features: {tracker.extracted_frames} "
        f"extracted, {cached} from the cache)"
    )
    return 0


def _write_tracks(folder: Path, state: Any, points: np.ndarray, visible: np.ndarray) -> None:
    """tracks.csv (frame,x,y,id,visible: the --points columns plus visible; frame-major) and
    tracks.npz (TAP-Vid layout: tracks (N, T, 2) as (x, y) original pixels, occluded (N, T))."""
    from ._atomic import atomic_path
    from .coords import flatten_tracks, swap_xy, write_points_csv

    ids = state.point_ids
    rows, flags = flatten_tracks(np.round(points, 3), visible, ids)
    write_points_csv(folder / "tracks.csv", rows.frame_idx, rows.points, rows.ids, flags)
    query_frames, query_yx = state.point_queries_array
    with atomic_path(folder / "tracks.npz", "tracks file") as tmp, tmp.open("wb") as fh:
        np.savez(
            fh,
            tracks=swap_xy(points.transpose(1, 0, 2)).astype(np.float32),
            occluded=~visible.T,
            ids=ids,
            frame_names=np.asarray(state.frame_names),
            query_points=np.column_stack([query_frames, query_yx]).astype(np.float32),
        )


def _write_overlay(
    path: Path,
    video: Any,
    masks_dir: Path | None,
    palette: bytes,
    tracks: tuple[np.ndarray, np.ndarray] | None = None,
    ids: np.ndarray | None = None,
) -> None:
    from .masks import read_mask
    from .viz.overlay import FramePoints, write_overlay_video

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


# -- extract ----------------------------------------------------------------------------------
def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="DiTF features of an image, a video or a frame folder to a safetensors file",
        description="Write the DiTF feature maps of INPUT to --out: one tensor 'features' "
        "(T, C, h, w) on the token grid, L2-normalised per cell, with the frame names, sizes, "
        "massive channels and settings in the file's metadata ('ditf_track', JSON). Images use "
        "the preset's correspondence settings (960x960 by default), videos and frame folders "
        "its video settings (short side 960).",
    )
    p.add_argument("input", type=Path, help="an image, a video (mp4/avi/mov/mkv) or a frame folder")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, help="square model input side (images default 960)")
    size.add_argument(
        "--short-side", type=_positive_int, help="resize the short side to N (videos: 960)"
    )
    size.add_argument("--long-side", type=int, help="resize the long side to N")
    p.add_argument("--start", type=int, default=0, help="first frame of a video (default 0)")
    p.add_argument("--end", type=int, help="stop before this frame (default: the last)")
    p.add_argument("--stride", type=int, default=1, help="take every N-th frame (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_model_options(p)
    p.set_defaults(handler=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .clip_features import ClipFeatures
    from .config import DEFAULT_TRACKER_BATCH
    from .errors import OutputError
    from .export import extract_to_safetensors, input_size_for, open_input
    from .outputs import check_writable_file, refuse_input_overlap
    from .video import VideoSource

    refuse_input_overlap(args.out, [("input", args.input)])
    if args.out.exists() and not args.out.is_dir() and not args.overwrite:
        raise OutputError(f"{args.out} exists; choose another --out or pass --overwrite")
    source = open_input(args.input, start=args.start, end=args.end, stride=args.stride)
    check_writable_file(args.out, "--out")
    is_image = isinstance(source, np.ndarray)
    task = "correspondence" if is_image else "video"
    extractor = _extractor_from_args(args, task)
    square, short, long = args.size, args.short_side, args.long_side
    if square is None and short is None and long is None:
        if is_image:
            square = _preset_size(args, task, "image_size")
        else:
            short = _preset_size(args, task, "short_side")
    size = input_size_for(
        source, square=square, short_side=short, long_side=long, multiple=extractor.stride
    )
    total = 1 if is_image else len(source)
    # A video's massive channels: frame 0 of the selection, the rule `track` follows too.
    channels = None
    if isinstance(source, VideoSource):
        channels = ClipFeatures(extractor, source, size).massive_channels
    with tqdm(total=total, desc="extract features", unit="frame", disable=None) as bar:
        path = extract_to_safetensors(
            extractor,
            source,
            args.out,
            size=size,
            batch_size=args.batch_size or DEFAULT_TRACKER_BATCH,
            progress=lambda event: bar.update(event.done - bar.n),
            massive_channels=channels,
        )
    print(f"{path}: {total} frame(s) at {size[1]}x{size[0]}")
    return 0


# -- inspect ----------------------------------------------------------------------------------
def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="per-channel statistics, massive channels and figures for one image",
        description="Read one image's block-k feature and write stats.csv (per channel, before "
        "and after AdaLN), massive_channels.json, and figures like the paper's Figs. 2-5: "
        "activations.png (magnitude per channel), gate.png (AdaLN gate vs the massive "
        "channels) and pca.png (PCA-RGB maps before/after AdaLN and after the discard).",
    )
    p.add_argument("image", type=Path, help="an image file (jpg, png, ...)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--size",
        type=int,
        help="square model input side in pixels (default: the preset's, 960)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier ditf-track run in --out (deletes only the files it wrote)",
    )
    _add_model_options(p)
    p.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .extractor import DiTFExtractor
    from .images import model_input_size, read_image, resize_image
    from .inspect import INSPECT_FILES, inspect_features
    from .outputs import RunDir

    image = read_image(args.image)
    if args.preset == "lab":
        raise ConfigError("inspect needs a DiT (the lab preset has no block features)")
    run_dir = RunDir(
        args.out,
        "inspect",
        inputs=[("image", args.image)],
        patterns=INSPECT_FILES,
        overwrite=args.overwrite,
    ).open()
    try:
        extractor = _extractor_from_args(args, "correspondence")
        if not isinstance(extractor, DiTFExtractor):
            raise ConfigError("inspect needs a DiT (the lab preset has no block features)")
        side = args.size or _preset_size(args, "correspondence", "image_size")
        size = model_input_size(*image.shape[:2], square=side, multiple=extractor.stride)
        report = inspect_features(extractor, resize_image(image, size), run_dir.work)
        run_dir.publish(
            {
                "image": str(args.image),
                "input_size": list(size),
                "massive_channels": list(report.massive_channels),
                "extractor": extractor.identity(),
            }
        )
    finally:
        run_dir.close()
    channels = ", ".join(map(str, report.massive_channels)) or "none"
    print(f"massive channels (>= {report.stats_z.ratio:g}x median |z|): {channels}")
    for f in report.files:
        print(args.out / f.name)
    return 0


def _preset_size(args: argparse.Namespace, task: str, size: str) -> int:
    """A size setting of the chosen preset's task (the default preset without --model)."""
    from .presets import preset_size

    return preset_size(_feature_config(args).preset, task, size)  # type: ignore[arg-type]


# -- options shared by the pair commands (match, eval spair/pf-pascal/ap-10k/hpatches) ---------
def _add_matcher_options(parser: argparse.ArgumentParser, *, points: bool = True) -> None:
    """Image size, target search and DINOv2 fusion of a :class:`~ditf_track.match.Matcher`."""
    from .dinov2 import DINOV2_IMAGE_SIZE, DINOV2_LAYER, DINOV2_MODEL, PCA_DIM

    g = parser.add_argument_group("matching")
    g.add_argument(
        "--long-side",
        type=int,
        metavar="N",
        help="model input long side in pixels, aspect kept, sides multiples of 16 (default: "
        "the preset's pair size, 960 as in the paper; the official SPair script uses 640)",
    )
    if points:
        g.add_argument(
            "--no-upsample",
            dest="upsample",
            action="store_false",
            help="search the target's feature cells instead of every pixel of the target map "
            "upsampled to the image size (the official SPair protocol, default)",
        )
        g.add_argument(
            "--refine",
            action="store_true",
            help="soft-argmax refinement of grid matches (needs --no-upsample for points)",
        )
        g.add_argument(
            "--refine-radius",
            type=int,
            default=7,
            metavar="CELLS",
            help="soft-argmax window radius in cells (default 7, GeoAware-SC)",
        )
        g.add_argument(
            "--refine-temperature",
            type=float,
            default=0.02,
            metavar="T",
            help="soft-argmax temperature on the cosine (default 0.02, GeoAware-SC/SFNet)",
        )
    g.add_argument(
        "--dinov2",
        nargs="?",
        const=DINOV2_MODEL,
        default=None,
        metavar="PATH_OR_ID",
        help=f"concatenate DINOv2 features (default model {DINOV2_MODEL}: ViT-B/14, block 11 "
        "tokens, 840x840 input)",
    )
    g.add_argument(
        "--dinov2-layer",
        type=int,
        default=DINOV2_LAYER,
        metavar="L",
        help=f"DINOv2 block whose output tokens are used, 0-indexed (default {DINOV2_LAYER}, "
        "the last block of ViT-B; SD-DINO uses 23 for ViT-L)",
    )
    g.add_argument(
        "--dinov2-size",
        type=int,
        default=DINOV2_IMAGE_SIZE,
        metavar="S",
        help=f"DINOv2 input: long side S, zero-padded to SxS (default {DINOV2_IMAGE_SIZE})",
    )
    g.add_argument(
        "--pca-dim",
        type=int,
        default=PCA_DIM,
        metavar="D",
        help=f"with --dinov2, reduce wider DiT features by a PCA fitted on the pair to D "
        f"dimensions (default {PCA_DIM}, the paper; 0 = no PCA)",
    )


def _matcher_from_args(args: argparse.Namespace) -> Any:
    from .dinov2 import DINOv2Extractor
    from .match import Matcher, SoftArgmax

    refine = None
    if getattr(args, "refine", False):
        refine = SoftArgmax(args.refine_radius, args.refine_temperature)
    extractor = _extractor_from_args(args, "correspondence")
    dinov2 = None
    if args.dinov2 is not None:
        dinov2 = DINOv2Extractor.from_pretrained(
            args.dinov2,
            layer=args.dinov2_layer,
            image_size=args.dinov2_size,
            device=args.device,
            dtype=args.dtype,
            local_files_only=args.local_files_only or None,
        )
    return Matcher(
        extractor,
        long_side=args.long_side,
        upsample=getattr(args, "upsample", False),
        refine=refine,
        dinov2=dinov2,
        pca_dim=args.pca_dim or None,
    )


# -- match ------------------------------------------------------------------------------------
def _add_match(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "match",
        help="match points (or a dense grid) of image A into image B",
        description="Match two images with DiTF features. --points matches each point of A to "
        "its most similar location in B; --dense N (or neither) keeps the mutual nearest "
        "neighbours between N grid points of A (every feature cell without N) and every cell "
        "of B. Writes matches.csv (xa,ya,xb,yb,score in pixels), matches.png (the images side "
        "by side with a line per match) and config.json.",
    )
    p.add_argument("image_a", type=Path, metavar="IMAGE_A", help="source image")
    p.add_argument("image_b", type=Path, metavar="IMAGE_B", help="target image")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--points",
        type=Path,
        metavar="POINTS.csv",
        help="CSV with header x,y[,id]: pixel coordinates in image A",
    )
    which.add_argument(
        "--dense",
        type=int,
        metavar="N",
        help="about N points on a regular grid over A (default: every feature cell of A)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier ditf-track run in --out (deletes only the files it wrote)",
    )
    _add_model_options(p)
    _add_matcher_options(p)
    p.set_defaults(handler=_run_match)


def _run_match(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .images import read_image
    from .match import check_points, read_match_points
    from .outputs import RunDir

    image_a, image_b = read_image(args.image_a), read_image(args.image_b)
    points = ids = None
    if args.points is not None:
        points, ids = read_match_points(args.points)
        check_points(points, image_a.shape[:2], f"image A ({args.image_a})")
    if args.dense is not None and args.dense < 1:
        raise ConfigError(f"--dense {args.dense} must be at least 1 point")
    if args.points is not None and args.refine and args.upsample:
        raise ConfigError("--refine refines grid matches; add --no-upsample to match --points")
    inputs = [("image A", args.image_a), ("image B", args.image_b), ("points file", args.points)]
    run_dir = RunDir(
        args.out,
        "match",
        inputs=inputs,
        patterns=("matches.csv", "matches.png"),
        overwrite=args.overwrite,
    ).open()
    try:
        _match_into(args, run_dir, image_a, image_b, points, ids)
    finally:
        run_dir.close()
    return 0


def _match_into(
    args: argparse.Namespace,
    run_dir: Any,
    image_a: np.ndarray,
    image_b: np.ndarray,
    points: np.ndarray | None,
    ids: np.ndarray | None,
) -> None:
    """The model-dependent part of ``match``, once ``--out`` is open and locked."""
    from .match import write_matches_csv
    from .outputs import environment_versions
    from .viz.matches import draw_matches

    matcher = _matcher_from_args(args)
    pair = matcher.features_for_pair(image_a, image_b)
    if points is not None:
        points_b, scores = matcher.match_points_in(pair, points)
        matches = np.concatenate([points, points_b], axis=1)
        mode = "points"
    else:
        matches, scores = matcher.match_dense_in(pair, args.dense)
        mode = "dense"
    write_matches_csv(run_dir.work / "matches.csv", matches, scores, ids)
    draw_matches(run_dir.work / "matches.png", image_a, image_b, matches)
    identity = matcher.identity()
    run_dir.publish(
        {
            "command": "match",
            "image_a": str(args.image_a),
            "image_b": str(args.image_b),
            "image_hw": [list(image_a.shape[:2]), list(image_b.shape[:2])],
            "mode": mode,
            "points": str(args.points) if args.points is not None else None,
            "dense": args.dense,
            "num_matches": len(matches),
            "matcher": identity,
            "model_revision": identity["extractor"].get("revision"),
            **pair.meta,
            "versions": environment_versions(),
        },
    )
    kept = f"{len(matches)} matches" if mode == "dense" else f"{len(matches)} points matched"
    print(f"{kept}; mean score {float(np.mean(scores)) if len(scores) else float('nan'):.3f}")
    for name in ("matches.csv", "matches.png", "config.json"):
        print(args.out / name)


def _add_cache(sub: argparse._SubParsersAction) -> None:
    """``ditf-track cache info|clear``: what the feature/text cache holds, and freeing it."""
    from .cache import DEFAULT_DEVICE_FRACTION, cache_info, clear_cache, format_size

    def sized(count: int, nbytes: int | None = None) -> str:
        return f"{count}" if nbytes is None else f"{count} ({format_size(nbytes)})"

    def info(args: argparse.Namespace) -> int:
        got = cache_info(args.cache_dir)
        share = f"{DEFAULT_DEVICE_FRACTION:.0%}"
        rows = [
            ("cache directory", str(got.directory)),
            ("feature files", sized(got.feature_files, got.feature_bytes)),
            ("clip metadata files", sized(got.clip_files)),
            ("text embedding files", sized(got.text_files, got.text_bytes)),
            ("disk budget (features)", format_size(got.disk_budget or 0)),
            (
                "memory budget (default)",
                f"{format_size(got.device_budget or 0)}, on CUDA at most {share} of free memory",
            ),
        ]
        if got.temp_files:
            rows.append(("unfinished temp files", f"{got.temp_files} (cache clear removes them)"))
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
        return 0

    def clear(args: argparse.Namespace) -> int:
        done = clear_cache(args.cache_dir, text=args.text)
        parts = [
            f"{done.feature_files} feature files ({format_size(done.feature_bytes)})",
            f"{done.clip_files} clip metadata files",
        ]
        if args.text:
            parts.append(f"{done.text_files} text embedding files ({format_size(done.text_bytes)})")
        print(f"freed {format_size(done.freed_bytes)}: {', '.join(parts)}")
        return 0

    cache = sub.add_parser(
        "cache",
        help="show or clear the feature cache",
        description="Per-frame DiTF features and text embeddings are cached on disk (default "
        "$DITF_TRACK_CACHE or ~/.cache/ditf-track) so that a second run extracts nothing.",
    )

    def usage(_args: argparse.Namespace) -> int:
        cache.print_help()
        return 2

    cache.set_defaults(handler=usage)
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    for name, handler, help_text in (
        ("info", info, "print the cache folder, its files, their size and the budgets"),
        ("clear", clear, "delete the cached features (and text embeddings with --text)"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument(
            "--cache-dir",
            metavar="DIR",
            default=None,
            help="cache folder (default: $DITF_TRACK_CACHE or ~/.cache/ditf-track)",
        )
        if name == "clear":
            action.add_argument(
                "--text",
                action="store_true",
                help="also delete the cached text embeddings (re-encoding loads the text encoders)",
            )
        action.set_defaults(handler=handler)


# -- eval -------------------------------------------------------------------------------------
def _add_eval(sub: argparse._SubParsersAction) -> None:
    """``ditf-track eval <benchmark>``: one sub-subcommand per evaluator (``_add_eval_*``)."""
    parser = sub.add_parser(
        "eval",
        help="score results on a standard benchmark",
        description="Score results on a standard benchmark with its official protocol.",
    )
    eval_sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for add in _EVAL_BENCHMARKS:
        add(eval_sub)


def _add_run_options(parser: argparse.ArgumentParser, items: str = "pairs") -> None:
    """--out/--resume/--overwrite/--limit; ``items`` names what the run's log records."""
    g = parser.add_argument_group("run")
    g.add_argument("--out", type=Path, required=True, help="output folder of the run")
    g.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in a non-empty --out (finished {items} are not recomputed)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in --out (deletes only the files an earlier run there wrote)",
    )
    g.add_argument(
        "--limit", type=int, metavar="N", help=f"only the first N {items} (a quick check)"
    )


def _add_pck_benchmark(
    eval_sub: argparse._SubParsersAction, name: str, title: str, data_help: str
) -> argparse.ArgumentParser:
    p = eval_sub.add_parser(
        name,
        help=f"{title}: PCK of DiTF nearest-neighbour matches",
        description=f"{title} semantic correspondence: match each source keypoint into the "
        "target image and report PCK per point and per image, per category and overall. "
        "Writes config.json, pairs.jsonl (resume state), metrics.json and per_category.csv.",
    )
    p.add_argument("--data", type=Path, required=True, metavar="ROOT", help=data_help)
    _add_run_options(p)
    _add_model_options(p)
    _add_matcher_options(p)
    p.set_defaults(handler=_run_eval_pck, benchmark_key=name)
    return p


def _add_eval_spair(eval_sub: argparse._SubParsersAction) -> None:
    from .eval.correspondence import SPAIR_SPLITS

    p = _add_pck_benchmark(
        eval_sub, "spair", "SPair-71k", "the SPair-71k folder (PairAnnotation/, JPEGImages/)"
    )
    p.add_argument("--split", default="test", choices=SPAIR_SPLITS, help="default test")
    p.add_argument("--categories", type=_names, metavar="A,B", help="only these categories")


def _add_eval_pfpascal(eval_sub: argparse._SubParsersAction) -> None:
    p = _add_pck_benchmark(
        eval_sub,
        "pf-pascal",
        "PF-PASCAL",
        "the PF-dataset-PASCAL folder (with test_pairs_pf_pascal.csv and JPEGImages/)",
    )
    p.add_argument("--split", default="test", help="pair list <split>_pairs_pf_pascal.csv")
    p.add_argument("--categories", type=_names, metavar="A,B", help="only these categories")


def _add_eval_ap10k(eval_sub: argparse._SubParsersAction) -> None:
    from .eval.correspondence import AP10K_SUBSETS

    p = _add_pck_benchmark(
        eval_sub,
        "ap-10k",
        "AP-10K",
        "the ap-10k folder (ImageAnnotation/, JPEGImages/, PairAnnotation/ from GeoAware-SC)",
    )
    p.add_argument(
        "--subset", default="intra-species", choices=AP10K_SUBSETS, help="default intra-species"
    )
    p.add_argument("--split", default="test", help="default test")


def _add_eval_hpatches(eval_sub: argparse._SubParsersAction) -> None:
    from .eval.hpatches import MAX_KEYPOINTS
    from .eval.runners import DETECTORS

    p = eval_sub.add_parser(
        "hpatches",
        help="HPatches homography accuracy (corner error at 1/3/5 px)",
        description="HPatches: keypoints from an OpenCV detector, DiTF descriptors at them, "
        "mutual nearest neighbours, cv2.findHomography (LMEDS) and the mean corner error; "
        "accuracy at 1, 3 and 5 px for all, illumination and viewpoint sequences. Writes "
        "config.json, pairs.jsonl, metrics.json, per_category.csv and per_pair.csv.",
    )
    p.add_argument(
        "--data", type=Path, required=True, metavar="ROOT", help="hpatches-sequences-release"
    )
    p.add_argument(
        "--detector",
        default="sift",
        choices=DETECTORS,
        help="OpenCV keypoint detector (default sift; the paper's SuperPoint needs weights "
        "that are not bundled)",
    )
    p.add_argument(
        "--max-keypoints",
        type=int,
        default=MAX_KEYPOINTS,
        metavar="N",
        help=f"strongest keypoints per image (default {MAX_KEYPOINTS})",
    )
    p.add_argument(
        "--method", default="LMEDS", choices=("LMEDS", "RANSAC"), help="cv2.findHomography"
    )
    p.add_argument(
        "--exclude-high-res",
        action="store_true",
        help="leave out the 8 sequences above 1600x1200 (the 108-sequence set of D2-Net)",
    )
    _add_run_options(p)
    _add_model_options(p)
    _add_matcher_options(p, points=False)
    p.set_defaults(handler=_run_eval_hpatches)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no names in {text!r}; use e.g. cat,dog")
    return names


def _open_eval_dir(
    args: argparse.Namespace,
    benchmark: str,
    owned: Sequence[str],
    inputs: Sequence[tuple[str, Path | None]],
) -> Any:
    """An evaluation's --out, checked and locked before any model is resolved."""
    from .eval.runners import open_eval_dir

    return open_eval_dir(
        args.out, benchmark, owned, inputs=inputs, resume=args.resume, overwrite=args.overwrite
    )


def _limited(items: list[Any], limit: int | None) -> list[Any]:
    if limit is None:
        return items
    if limit < 1:
        from .errors import ConfigError

        raise ConfigError(f"--limit {limit} must be at least 1")
    return items[:limit]


def _run_eval_pck(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .eval import correspondence as corr
    from .eval.runners import PCKEvaluation
    from .outputs import listing_digest

    name = args.benchmark_key
    options: dict[str, Any] = {"data": str(args.data.resolve()), "split": args.split}
    options["data_digest"] = listing_digest(args.data)
    if name == "spair":
        pairs = corr.load_spair_pairs(args.data, args.split, args.categories)
        options["categories"] = args.categories
    elif name == "pf-pascal":
        pairs = corr.load_pf_pascal_pairs(args.data, args.split, categories=args.categories)
        options["categories"] = args.categories
    else:
        pairs = corr.load_ap10k_pairs(args.data, args.subset, args.split)
        options["subset"] = args.subset
    pairs = _limited(pairs, args.limit)
    run_dir = _open_eval_dir(args, name, PCKEvaluation.owned, [("data", args.data)])
    try:
        run = PCKEvaluation(
            name,
            pairs,
            _matcher_from_args(args),
            run_dir,
            options=options,
            resume=args.resume,
            overwrite=args.overwrite,
        )
        if run.num_resumable:
            print(f"resuming: {run.num_resumable} of {len(run)} pairs already done")
        with tqdm(run, total=len(run), desc=name, unit="pair", disable=None) as bar:
            for outcome in bar:
                pck = outcome.pck.get("pck@0.10", 0)
                bar.set_postfix_str(f"{outcome.category} PCK@0.10 {pck:.2f}")
        metrics = run.finish()
    finally:
        run_dir.close()
    alphas = metrics["alphas"]
    print(f"{name}: {metrics['num_pairs']} pairs, {metrics['num_points']} points")
    for kind in ("pck_per_point", "pck_per_image"):
        values = "  ".join(
            f"@{a:.2f} {100 * (metrics[f'{kind}@{a:.2f}'] or 0):.1f}" for a in alphas
        )
        print(f"{kind:15s} {values}")
    print(run.out / "metrics.json")
    return 0


def _run_eval_hpatches(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .eval.hpatches import load_hpatches
    from .eval.runners import HPatchesEvaluation
    from .outputs import listing_digest

    sequences = _limited(
        load_hpatches(args.data, exclude_high_res=args.exclude_high_res), args.limit
    )
    run_dir = _open_eval_dir(args, "hpatches", HPatchesEvaluation.owned, [("data", args.data)])
    try:
        run = HPatchesEvaluation(
            sequences,
            _matcher_from_args(args),
            run_dir,
            detector=args.detector,
            max_keypoints=args.max_keypoints,
            method=args.method,
            options={
                "data": str(args.data.resolve()),
                "exclude_high_res": args.exclude_high_res,
                "data_digest": listing_digest(args.data),
            },
            resume=args.resume,
            overwrite=args.overwrite,
        )
        with tqdm(run, total=len(run), desc="hpatches", unit="pair", disable=None) as bar:
            for outcome in bar:
                bar.set_postfix_str(
                    f"{outcome.sequence}/{outcome.target} err {outcome.corner_error:.1f}"
                )
        metrics = run.finish()
    finally:
        run_dir.close()
    for group in ("all", "illumination", "viewpoint"):
        acc = "  ".join(
            f"@{e}px {100 * (metrics[group][e] or 0):.1f}" for e in metrics["thresholds_px"]
        )
        print(f"{group:13s} {acc}  ({metrics['num_pairs'][group]} pairs)")
    print(run.out / "metrics.json")
    return 0


def _add_eval_davis(eval_sub: argparse._SubParsersAction) -> None:
    parser = eval_sub.add_parser(
        "davis",
        help="DAVIS video object segmentation: J&F (region J, boundary F)",
        description=(
            "DAVIS semi-supervised J&F with the official davis2017-evaluation conventions: the "
            "first and last frame are not scored, objects are the ids of the first ground-truth "
            "frame, ground-truth 255 counts as background, boundary tolerance 0.008 of the "
            "diagonal. Prints the official global and per-sequence tables."
        ),
    )
    # Where the masks to score come from: exactly one source per run.
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--pred",
        metavar="PRED_ROOT",
        type=Path,
        help="folder of predicted masks, <sequence>/<frame>.png (palette or grayscale ids), "
        "named like the ground-truth frames",
    )
    source.add_argument(
        "--data",
        metavar="DAVIS_ROOT",
        type=Path,
        help="a DAVIS-2017 root (JPEGImages/480p, Annotations/480p, ImageSets/2017): propagate "
        "every sequence of --split from its first annotation with --preset's video settings "
        "(the official DiTF DAVIS protocol), write the masks to --out and score them",
    )
    parser.add_argument(
        "--gt",
        metavar="GT_ROOT",
        type=Path,
        help="ground-truth folder, <sequence>/<frame>.png (e.g. DAVIS/Annotations/480p); "
        "required with --pred",
    )
    parser.add_argument(
        "--sequences",
        metavar="A,B|LIST.txt",
        type=_sequence_list,
        help="sequences to score, in this order: comma-separated names, or a text file with one "
        "name per line such as DAVIS/ImageSets/2017/val.txt (default: every sequence folder of "
        "the ground truth)",
    )
    parser.add_argument(
        "--mode",
        choices=("multi", "binary"),
        help="multi: DAVIS-2017 palette ids, scored per object; binary: DAVIS-2016 {0,255} "
        "masks, one object (ground truth > 0 against prediction > 0). Default: binary when every "
        "first ground-truth frame holds only 0 and 255, else multi",
    )
    parser.add_argument(
        "--json", metavar="OUT.json", type=Path, help="also write the metrics as JSON here"
    )
    parser.add_argument(
        "--csv",
        metavar="DIR",
        type=Path,
        help="also write the official global_results-<set>.csv and "
        "per-sequence_results-<set>.csv into this folder",
    )
    parser.add_argument(
        "--set",
        dest="subset",
        metavar="SET",
        default="val",
        help="subset name used in the CSV file names and table titles (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        metavar="N",
        type=_positive_int,
        help="processes to score with (default: the number of usable CPU cores; 1 = no pool)",
    )
    run = parser.add_argument_group("with --data")
    run.add_argument(
        "--split",
        default="val",
        help="val, train, or a text file with one sequence name per line (default val)",
    )
    run.add_argument("--out", type=Path, help="output folder for the masks and metrics")
    run.add_argument(
        "--resume", action="store_true", help="skip the sequences already written completely"
    )
    run.add_argument("--overwrite", action="store_true", help="start the run in --out again")
    run.add_argument(
        "--short-side",
        type=_positive_int,
        help="model input short side (default: the preset's, 960)",
    )
    run.add_argument(
        "--no-disk-cache", action="store_true", help="keep features in memory only (no files)"
    )
    _add_propagation_options(parser, label_default="nearest")
    _add_model_options(parser)
    parser.set_defaults(handler=_run_eval_davis)


def _run_davis_propagation(args: argparse.Namespace) -> int:
    """``eval davis --data``: propagate a split with the official protocol, then score it."""
    from .eval.davis_runner import davis_sequences, open_davis_dir

    if args.out is None:
        raise ConfigError("--data needs --out DIR for the masks and metrics")
    davis_sequences(args.data, args.split)
    run_dir = open_davis_dir(args.out, args.split, args.data, args.resume, args.overwrite)
    try:
        return _propagate_davis(args, run_dir)
    finally:
        run_dir.close()


def _propagate_davis(args: argparse.Namespace, run_dir: Any) -> int:
    """The model-dependent part of ``eval davis --data``, once ``--out`` is open and locked."""
    from tqdm import tqdm

    from .eval.davis_runner import DavisRun
    from .tracker import ProgressEvent

    # The official DiTF DAVIS script: long side floored to a multiple of 32, OpenCV bilinear.
    tracker = _tracker_from_args(args, long_multiple=32, rounding="floor", interpolation="bilinear")
    cache = tracker.cache
    run = DavisRun(
        args.data,
        tracker,
        run_dir,
        split=args.split,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    frames_bar = tqdm(desc="frames", unit="frame", position=1, disable=None, leave=False)

    def on_progress(event: ProgressEvent) -> None:
        if event.phase == "propagate":
            if event.done == 0:
                frames_bar.reset(total=event.total)
            frames_bar.update(event.done - frames_bar.n)

    try:
        with tqdm(total=len(run), desc="sequences", unit="seq", disable=None) as bar:
            for outcome in run.iterate(progress=on_progress):
                bar.set_postfix_str(outcome.name + (" (done before)" if outcome.resumed else ""))
                bar.update(1)
    finally:
        frames_bar.close()
        cache.close()
    result = run.finish(workers=args.workers)
    columns, rows = result.global_table()
    print(_format_table(columns, rows))
    seq_columns, seq_rows = result.per_sequence_table()
    print(_format_table(seq_columns, seq_rows))
    print(f"masks, metrics.json and CSVs written to {args.out}")
    return 0


def _sequence_list(text: str) -> list[str]:
    """Names from ``a,b,c`` or from a file with one name per line (DAVIS ImageSets style)."""
    path = Path(text)
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read sequence list {path}: {exc}") from None
    else:
        names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no sequence names in {text!r}; use e.g. blackswan,dog")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Right-aligned columns like pandas' to_string(index=False); floats with 3 decimals."""
    cells = [list(columns)] + [
        [v if isinstance(v, str) else f"{v:.3f}" for v in row] for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        " ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells
    )


def _run_eval_davis(args: argparse.Namespace) -> int:
    from .eval.davis_folders import evaluate_davis, write_davis_csvs, write_davis_json
    from .outputs import check_writable_file, refuse_input_overlap
    from .progress import ProgressEvent

    if args.data is not None:
        return _run_davis_propagation(args)
    if args.gt is None:
        raise ConfigError("--pred needs --gt GT_ROOT (the folder of <sequence>/<frame>.png)")
    inputs = [("ground truth", args.gt), ("predictions", args.pred)]
    if args.json is not None:
        refuse_input_overlap(args.json, inputs, "--json")
        check_writable_file(args.json, "--json")
    if args.csv is not None:
        table = args.csv / f"global_results-{args.subset}.csv"
        refuse_input_overlap(table, inputs, "--csv")
        check_writable_file(table, "--csv")

    def progress(event: ProgressEvent) -> None:
        log.info("[%d/%d] %s", event.done, event.total, event.item)

    result = evaluate_davis(
        args.pred,
        args.gt,
        sequences=args.sequences,
        mode=args.mode,
        workers=args.workers,
        progress=progress,
    )
    global_columns, global_rows = result.global_table()
    rule = "-" * 27
    print(f"{rule} Global results for {args.subset} {rule}")
    print(_format_table(global_columns, global_rows))
    seq_columns, seq_rows = result.per_sequence_table()
    print(f"\n---------- Per sequence results for {args.subset} ----------")
    print(_format_table(seq_columns, seq_rows))
    if args.json is not None:
        print(f"\nmetrics written to {write_davis_json(result, args.json)}")
    if args.csv is not None:
        paths = write_davis_csvs(result, args.csv, args.subset)
        print(f"CSVs written to {paths[0]} and {paths[1]}")
    return 0


def _add_tracker_eval_options(
    parser: argparse.ArgumentParser,
    mode_default: str | None = "query",
    mode_default_help: str = "default query",
) -> None:
    """What builds the :class:`~ditf_track.tracker.Tracker` of a point-tracking evaluation."""
    parser.add_argument(
        "--short-side",
        type=_positive_int,
        help="model input short side in pixels (default: the preset's video setting, 960)",
    )
    parser.add_argument(
        "--no-disk-cache", action="store_true", help="keep features in memory only (no files)"
    )
    _add_propagation_options(parser)
    _add_point_options(parser, mode_default, mode_default_help)
    _add_model_options(parser)


def _add_eval_tapvid(eval_sub: argparse._SubParsersAction) -> None:
    p = eval_sub.add_parser(
        "tapvid",
        help="TAP-Vid point tracking: AJ, delta_avg, OA (DAVIS pickle or Kinetics shards)",
        description="TAP-Vid with the reference protocol (google-deepmind/tapnet): queries "
        "sampled 'first' or 'strided', tracks scored at 256x256 (average Jaccard, "
        "average_pts_within_thresh, occlusion accuracy), per video and the mean over videos. "
        "Features come from the stored frames at the tracker's short side, not from 256x256. "
        "Writes config.json, videos.jsonl (resume state), tracks/<video>.npz, metrics.json and "
        "per_video.csv.",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="PKL_OR_DIR",
        help="tapvid_davis.pkl, or the folder of TAP-Vid-Kinetics shards *_of_0010.pkl",
    )
    p.add_argument(
        "--query-mode", choices=["first", "strided"], default="first", help="default first"
    )
    _add_run_options(p, "videos")
    _add_tracker_eval_options(p)
    p.set_defaults(handler=_run_eval_tapvid)


def _run_eval_tapvid(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .errors import InputError
    from .eval.tracking import TapVidEvaluation

    if not args.data.exists():
        raise InputError(f"TAP-Vid path {args.data} does not exist; pass tapvid_davis.pkl")
    _limited([], args.limit)
    run_dir = _open_eval_dir(args, "tapvid", TapVidEvaluation.owned, [("data", args.data)])
    try:
        tracker = _tracker_from_args(args, args.points_mode)
        run = TapVidEvaluation(
            args.data,
            tracker,
            run_dir,
            query_mode=args.query_mode,
            limit=args.limit,
            options={"data": str(args.data.resolve())},
            resume=args.resume,
            overwrite=args.overwrite,
        )
        try:
            with tqdm(run, desc="tapvid", unit="video", disable=None) as bar:
                for outcome in bar:
                    aj = outcome.metrics["average_jaccard"]
                    bar.set_postfix_str(f"{outcome.video} AJ {aj:.3f}")
        finally:
            tracker.cache.close()
        metrics = run.finish()
    finally:
        run_dir.close()
    print(
        f"TAP-Vid ({args.query_mode}): {metrics['num_videos']} videos, "
        f"{metrics['num_points']} queries"
    )
    for key, label in (
        ("average_jaccard", "AJ"),
        ("average_pts_within_thresh", "delta_avg"),
        ("occlusion_accuracy", "OA"),
    ):
        value = metrics[key]
        print(f"{label:10s} {'n/a' if value is None else f'{100 * value:.1f}'}")
    print(run.out / "metrics.json")
    return 0


def _add_eval_keypoints(eval_sub: argparse._SubParsersAction) -> None:
    p = eval_sub.add_parser(
        "keypoints",
        help="keypoint tracking PCK: BADJA (PIPs protocol) or JHMDB (CRW protocol)",
        description="Track annotated keypoints and score PCK. BADJA: --data a "
        "joint_annotations/<seq>.json with --frames/--masks the sequence's DAVIS JPEGImages and "
        "Annotations folders (or a folder of json files with --frames/--masks holding one "
        "<seq>/ folder each); PCK@0.2 of sqrt(mask area), mean over videos. JHMDB: --data the "
        "root with joint_positions/ and Rename_Images/; PCK@0.1/0.2 of 0.6 x the joint box "
        "diagonal, pooled per joint. Writes config.json, videos.jsonl, tracks/, metrics.json "
        "and per_video.csv.",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="JSON_OR_ROOT",
        help="BADJA <seq>.json or joint_annotations/ folder, or the JHMDB root",
    )
    p.add_argument("--frames", type=Path, help="BADJA: DAVIS frames (sequence folder or root)")
    p.add_argument("--masks", type=Path, help="BADJA: DAVIS GT masks (sequence folder or root)")
    p.add_argument(
        "--videos",
        type=Path,
        metavar="LIST.txt",
        help="JHMDB: only these videos (<class>/<video> per line, or CRW's split-list lines)",
    )
    _add_run_options(p, "videos")
    # BADJA is scored by query-point trackers (PIPs), JHMDB by heat-map propagation (CRW).
    _add_tracker_eval_options(
        p, None, "default: query for BADJA (as PIPs), heatmap for JHMDB (as CRW)"
    )
    p.set_defaults(handler=_run_eval_keypoints)


def _run_eval_keypoints(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .errors import ConfigError, InputError
    from .eval.tracking import KeypointEvaluation, badja_videos, jhmdb_videos

    data: Path = args.data
    videos: list[Any]
    if data.is_dir() and (data / "joint_positions").is_dir():
        dataset = "jhmdb"
        videos = jhmdb_videos(data, args.videos)
    elif data.suffix == ".json" or (data.is_dir() and any(data.glob("*.json"))):
        dataset = "badja"
        if args.frames is None or args.masks is None:
            raise ConfigError(
                "BADJA needs --frames and --masks: the DAVIS JPEGImages and Annotations folders "
                "of the sequence (e.g. JPEGImages/480p/dog, Annotations/480p/dog)"
            )
        videos = badja_videos(data, args.frames, args.masks)
    else:
        raise InputError(
            f"--data {data} is neither a BADJA <seq>.json (or folder of them) nor a JHMDB root "
            "with joint_positions/; check the path"
        )
    videos = _limited(videos, args.limit)
    mode = args.points_mode or ("query" if dataset == "badja" else "heatmap")
    inputs = [("data", data), ("frames", args.frames), ("masks", args.masks)]
    inputs.append(("video list", args.videos))
    run_dir = _open_eval_dir(args, "keypoints", KeypointEvaluation.owned, inputs)
    try:
        tracker = _tracker_from_args(args, mode)
        options = {
            "data": str(data.resolve()),
            "frames": str(args.frames.resolve()) if args.frames else None,
            "masks": str(args.masks.resolve()) if args.masks else None,
            "videos": [v.name for v in videos],
        }
        run = KeypointEvaluation(
            dataset,  # type: ignore[arg-type]
            videos,
            tracker,
            run_dir,
            options=options,
            resume=args.resume,
            overwrite=args.overwrite,
        )
        if run.num_resumable:
            print(f"resuming: {run.num_resumable} of {len(run)} videos already done")
        try:
            with tqdm(run, total=len(run), desc=dataset, unit="video", disable=None) as bar:
                for outcome in bar:
                    shown = "  ".join(f"{k} {100 * v:.1f}" for k, v in outcome.metrics.items())
                    bar.set_postfix_str(f"{outcome.video} {shown}")
        finally:
            tracker.cache.close()
        metrics = run.finish()
    finally:
        run_dir.close()
    print(
        f"{dataset} ({mode} points): {metrics['num_videos']} videos, "
        f"{metrics['num_points']} queried keypoints"
    )
    for key, value in metrics.items():
        if key.startswith("PCK@"):
            print(f"{key:8s} {'n/a' if value is None else f'{100 * value:.1f}'}")
    print(run.out / "metrics.json")
    return 0


_EVAL_BENCHMARKS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_eval_davis,
    _add_eval_spair,
    _add_eval_pfpascal,
    _add_eval_ap10k,
    _add_eval_hpatches,
    _add_eval_tapvid,
    _add_eval_keypoints,
]
_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_track,
    _add_extract,
    _add_inspect,
    _add_cache,
    _add_match,
    _add_eval,
]


def _command_names() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _default_to_track(argv: list[str]) -> list[str]:
    """Insert ``track`` when the first positional argument is not a subcommand."""
    names = _command_names()
    if "track" not in names:
        return argv
    for i, arg in enumerate(argv):
        if arg in ("-h", "--help", "--version"):
            return argv
        if arg in ("-v", "--verbose"):
            continue
        if arg in names:
            return argv
        return [*argv[:i], "track", *argv[i:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    from ._cli_logging import cli_logging

    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(_default_to_track(args_list))
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        with cli_logging(args.verbose):
            return handler(args)
    except DitfError as exc:
        print(f"ditf-track: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "ditf-track: interrupted; nothing incomplete was left looking complete "
            "(run again with --resume to continue where supported)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
