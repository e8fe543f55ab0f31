"""Video I/O throughput: decode per reader, frame folders, resize, label grids, overlay writing.

Reads the real clips in ../shared/data (set DITF_SHARED_DATA to move it), prints a table and
appends it to benchmarks/RESULTS.md with the date, CPU and commit. Numbers are best of
``--repeat`` runs (wall clock), so other load on the machine only ever slows them down.

    python benchmarks/bench_video_io.py [--repeat 2] [--no-append]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import append_results, device_name

from ditf_track.images import model_input_size
from ditf_track.masks import labels_to_grid, read_mask
from ditf_track.video import open_video, resize_frames
from ditf_track.viz.overlay import write_overlay_video

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DITF_SHARED_DATA", ROOT.parent / "shared" / "data"))


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def decode_all(path: Path, backend: str) -> int:
    with open_video(path, backend=backend) as source:  # type: ignore[arg-type]
        return sum(len(batch.positions) for batch in source.iter_frames(batch_size=16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (best kept)")
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []

    videos = {
        "bikes.mp4 640x272": DATA / "videos" / "bikes.mp4",
        "bigbuckbunny.mp4 1280x720": DATA / "videos" / "bigbuckbunny.mp4",
    }
    for label, path in videos.items():
        for backend in ("decord", "pyav", "opencv"):
            n = decode_all(path, backend)
            t = best_of(args.repeat, lambda p=path, b=backend: decode_all(p, b))
            rows.append(
                (f"decode {label}, {backend}, open + all {n} frames", f"{n / t:.0f}", "fps")
            )
        with open_video(path, backend="decord") as source:
            rng = np.random.default_rng(0)
            picks = rng.choice(len(source), size=20, replace=False).tolist()
            for backend in ("decord", "pyav", "opencv"):
                with open_video(path, backend=backend) as src:  # type: ignore[arg-type]
                    t = best_of(args.repeat, lambda s=src, p=picks: s.read_batch(p))
                rows.append((f"random read_batch(20) {label}, {backend}", f"{t * 1000:.0f}", "ms"))

    folders = {
        "DAVIS dog 854x480 jpg": DATA / "davis" / "JPEGImages" / "480p" / "dog",
        "VSPW 1920x1080 jpg": DATA / "vspw_firstframe" / "JPEGImages" / "1001_3iEIq5HBY1s",
    }
    for label, path in folders.items():
        n = len(open_video(path))
        t = best_of(args.repeat, lambda p=path: decode_all(p, "auto"))
        rows.append((f"folder {label}, open + all {n} frames", f"{n / t:.0f}", "fps"))
        t = best_of(args.repeat, lambda p=path: open_video(p).content_hash())
        rows.append((f"content_hash (+open) {label}", f"{t * 1000:.0f}", "ms"))
    t = best_of(args.repeat, lambda: open_video(videos["bigbuckbunny.mp4 1280x720"]).content_hash())
    rows.append(("content_hash (+open) bigbuckbunny.mp4 (1.06 MB)", f"{t * 1000:.0f}", "ms"))

    frames = open_video(folders["DAVIS dog 854x480 jpg"], end=16).read_batch(range(16))
    for short_side in (480, 960):
        size = model_input_size(480, 854, short_side=short_side)
        t = best_of(args.repeat, lambda s=size: resize_frames(frames, s))
        rows.append(
            (f"resize_frames 854x480 → {size[1]}x{size[0]}", f"{t / 16 * 1000:.2f}", "ms/frame")
        )

    mask = read_mask(DATA / "vspw_firstframe" / "Annotations" / "1001_3iEIq5HBY1s" / "00002058.png")
    for mode in ("nearest", "area"):
        t = best_of(
            args.repeat, lambda m=mode: labels_to_grid(mask.labels, mask.object_ids, (68, 120), m)
        )
        rows.append((f"labels_to_grid 1080p, 44 objects → 68x120, {mode}", f"{t * 1000:.1f}", "ms"))

    dog = open_video(folders["DAVIS dog 854x480 jpg"], end=30)
    labels = read_mask(DATA / "davis" / "Annotations" / "480p" / "dog" / "00000.png").labels
    with tempfile.TemporaryDirectory() as tmp:
        for writer in ("opencv", "ffmpeg"):
            try:
                t = best_of(
                    args.repeat,
                    lambda w=writer: write_overlay_video(
                        Path(tmp) / f"{w}.mp4",
                        iter(dog),
                        [labels] * 30,
                        None,
                        24,
                        writer=w,  # type: ignore[arg-type]
                    ),
                )
            except ImportError:
                continue
            rows.append(
                (
                    f"write_overlay_video 854x480, {writer} (incl. frame reads)",
                    f"{30 / t:.0f}",
                    "fps",
                )
            )

    width = max(len(r[0]) for r in rows)
    lines = [
        f"| {'measurement'.ljust(width)} | value | unit |",
        f"|{'-' * (width + 2)}|------:|------|",
    ]
    lines += [f"| {name.ljust(width)} | {value} | {unit} |" for name, value, unit in rows]
    table = "\n".join(lines)
    print(table)
    if args.no_append:
        return
    append_results(
        "Video I/O (`benchmarks/bench_video_io.py`)",
        f"{device_name()}; best of {args.repeat}; machine shared with other jobs, so these are "
        f"lower bounds on speed.\n\n{table}",
    )


if __name__ == "__main__":
    main()
