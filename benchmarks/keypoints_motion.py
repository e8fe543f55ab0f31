"""Keypoints that follow the motion: global query search against the window with re-detection.

Workload: the shared BADJA joints of DAVIS ``dog`` (../shared/data, SOURCES.md §4), tracked by
``ditf-track eval keypoints`` (in-process, the PIPs protocol: the 17 joints visible at the first
annotated frame 00003, tracked forward through frames 00003 … 00055) with the weight-free
``lab`` preset, features in memory only. Two modes:

* ``global`` — the evaluation runners' default, the TAP-Vid protocol: every frame searched whole;
* ``window + re-detect`` — :meth:`PointParams.motion() <ditf_track.propagate.PointParams.motion>`,
  the default of ``ditf-track track`` and the napari widget (``--point-window 3 --redetect 0.5``).

Reported per mode: PCK@0.2 (of sqrt(GT mask area)) as the runner scores it, and the jumps: a
frame-to-frame displacement of a track longer than 4 token cells (Euclidean, on the model grid),
counted over every consecutive pair of tracked frames of every joint (52 x 17 = 884 steps).
Prints a table and appends it to benchmarks/RESULTS.md.

    PYTHONPATH=. python benchmarks/keypoints_motion.py [--short-side 960 480] [--no-append]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import append_results, device_name

from ditf_track.cli import main as cli_main
from ditf_track.config import FeatureConfig, Runtime, TrackerConfig
from ditf_track.coords import frame_to_grid
from ditf_track.eval.keypoints import load_badja
from ditf_track.propagate import PointParams
from ditf_track.testing import shared_data_root
from ditf_track.tracker import Tracker
from ditf_track.video import open_video

#: A displacement between consecutive frames longer than this many cells is a jump.
JUMP_CELLS = 4.0


def modes() -> list[tuple[str, list[str]]]:
    """Each mode's name and its ``eval keypoints`` options."""
    motion = PointParams.motion()
    return [
        ("global (eval default)", []),
        (
            "window + re-detect (track default)",
            ["--point-window", str(motion.radius), "--redetect", str(motion.redetect)],
        ),
    ]


def input_size(frames: Path, first: int, last: int, short_side: int) -> tuple[tuple[int, int], ...]:
    """``(frame_size, input_size)`` of the clip the runner tracks, as the tracker resizes it."""
    config = TrackerConfig(
        FeatureConfig(preset="lab", short_side=short_side), runtime=Runtime(disk_cache=False)
    )
    state = Tracker.from_config(config).init_state(open_video(frames, first, last + 1))
    return state.frame_size, state.input_size


def jumps(tracks_yx: np.ndarray, frame_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Frame-to-frame displacements ``(T-1, Q)`` in cells of tracks ``(T, Q, 2)`` pixels."""
    grid = frame_to_grid(tracks_yx, frame_size, size, 16)
    return np.linalg.norm(np.diff(grid, axis=0), axis=-1)


def measure(data: Path, short_side: int, options: list[str], out: Path) -> tuple[float, np.ndarray]:
    """PCK@0.2 and the tracks ``(T, Q, 2)`` ``(y, x)`` of one ``eval keypoints`` run."""
    davis = data / "davis"
    args = ["eval", "keypoints", "--data", str(data / "points/badja/dog.json")]
    args += ["--frames", str(davis / "JPEGImages/480p/dog")]
    args += ["--masks", str(davis / "Annotations/480p/dog")]
    args += ["--preset", "lab", "--short-side", str(short_side), "--no-disk-cache"]
    args += ["--out", str(out), *options]
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(args)
    if code != 0:
        raise SystemExit(f"eval keypoints failed ({code}): {' '.join(args)}")
    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(out / "tracks/dog.npz") as npz:
        tracks = npz["tracks"]
    return float(metrics["PCK@0.2"]), tracks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-side", type=int, nargs="+", default=[960])
    parser.add_argument("--data", type=Path, default=shared_data_root(Path(__file__).parents[1]))
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()

    frames = load_badja(
        args.data / "points/badja/dog.json", mask_dir=args.data / "davis/Annotations/480p/dog"
    )
    first, last = frames[0].frame_index, frames[-1].frame_index
    header = (
        "| short side | grid | mode | PCK@0.2 | jumps > 4 cells | steps | largest step (cells) "
        "| s |\n|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.short_side:
            frame_size, size = input_size(
                args.data / "davis/JPEGImages/480p/dog", first, last, side
            )
            for k, (name, options) in enumerate(modes()):
                start = time.perf_counter()
                pck, tracks = measure(args.data, side, options, Path(tmp) / f"{side}-{k}")
                seconds = time.perf_counter() - start
                steps = jumps(tracks, frame_size, size)
                rows.append(
                    f"| {side} | {size[0] // 16}x{size[1] // 16} | {name} | {100 * pck:.1f} % "
                    f"| {int((steps > JUMP_CELLS).sum())} | {steps.size} | {steps.max():.1f} "
                    f"| {seconds:.1f} |"
                )
                print(rows[-1], flush=True)
    motion = PointParams.motion()
    text = (
        f"BADJA dog (17 joints from frame 00003, 53 frames), lab preset, `eval keypoints`; "
        f"window + re-detect = radius {motion.radius}, ratio {motion.redetect}; "
        f"device: {device_name()}\n\n" + header + "\n".join(rows)
    )
    print()
    print(header + "\n".join(rows))
    if not args.no_append:
        append_results("Keypoints that follow the motion (benchmarks/keypoints_motion.py)", text)


if __name__ == "__main__":
    main()
