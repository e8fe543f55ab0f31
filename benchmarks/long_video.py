"""Peak memory of ``ditf-track track`` on long videos: does it stay flat as the video grows?

Each case runs ``ditf-track track --preset lab`` in a subprocess on a frame folder of N frames,
made by looping a DAVIS clip (links to its JPEGs in a temporary folder, deleted afterwards;
the 854x480 frames give 410 kB label maps), with the clip's first mask, and reads the child's
own peak resident set size from ``os.wait4`` (``ru_maxrss``). The feature cache goes to the
temporary folder too. A state that kept every frame's label map would grow by ~0.4 MB per
frame; the target is 200 vs 2,000 frames within 15 % at short side 240.

    python benchmarks/long_video.py                         # 240 and 960, 200 vs 2,000 frames
    python benchmarks/long_video.py --cases 960:200,960:1000 --no-record
    python benchmarks/long_video.py --code /path/to/other/checkout   # the same cases on it
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import append_results, commit, device_name

ROOT = Path(__file__).resolve().parents[1]
DAVIS = ROOT.parent / "shared" / "data" / "davis"
DEFAULT_CASES = "240:200,240:2000,960:200,960:2000"


def looped_clip(clip: Path, frames: int, folder: Path) -> Path:
    """A frame folder of ``frames`` links to ``clip``'s JPEGs, played forward then backward
    (no jump at the loop), named 00000.jpg, 00001.jpg, ..."""
    jpgs = sorted(clip.glob("*.jpg"))
    cycle = jpgs + jpgs[-2:0:-1]
    folder.mkdir(parents=True)
    for t in range(frames):
        (folder / f"{t:05d}.jpg").symlink_to(cycle[t % len(cycle)].resolve())
    return folder


def peak_rss(args: list[str], code: Path) -> tuple[float, float, int]:
    """``(peak RSS in MB, seconds, exit code)`` of ``python -m ditf_track.cli ARGS`` run on the
    package in ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "ditf_track.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert child.stderr is not None
    try:
        err = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
    except BaseException:
        child.kill()
        child.wait()
        raise
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    return usage.ru_maxrss / 1024, time.perf_counter() - start, child.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cases", default=DEFAULT_CASES, help=f"SIDE:FRAMES,... (default {DEFAULT_CASES})"
    )
    parser.add_argument("--clip", type=Path, default=DAVIS / "JPEGImages/480p/dog")
    parser.add_argument("--mask", type=Path, default=DAVIS / "Annotations/480p/dog/00000.png")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    # a kill still removes the temporary folder (and the child)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cases = [tuple(int(v) for v in case.split(":")) for case in args.cases.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ditf-long-video-") as tmp:
        folders: dict[int, Path] = {}
        for side, frames in cases:
            if frames not in folders:
                folders[frames] = looped_clip(args.clip, frames, Path(tmp) / f"clip{frames}")
            out = Path(tmp) / f"out-{side}-{frames}"
            mb, seconds, code = peak_rss(
                [
                    "track",
                    str(folders[frames]),
                    "--mask",
                    f"0:{args.mask}",
                    "--preset",
                    "lab",
                    "--short-side",
                    str(side),
                    "--out",
                    str(out),
                    "--cache-dir",
                    str(Path(tmp) / f"cache-{side}-{frames}"),
                    "--quiet",
                ],
                args.code,
            )
            status = "" if code == 0 else f" (exit {code})"
            rows.append((side, frames, mb, seconds, status))
            print(f"short side {side}, {frames} frames: {mb:.0f} MB, {seconds:.0f} s{status}")
    table = [
        "| short side | frames | peak RSS (MB) | vs the shortest | wall (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for side, frames, mb, seconds, status in rows:
        base = min((r for r in rows if r[0] == side), key=lambda r: r[1])[2]
        table.append(
            f"| {side} | {frames} | {mb:.0f}{status} | {100 * (mb / base - 1):+.1f} % "
            f"| {seconds:.0f} |"
        )
    body = "\n".join(table)
    print(body)
    if not args.no_record:
        code_commit = commit() if args.code == ROOT else f"{args.code} (measured checkout)"
        append_results(
            "Long videos: peak RSS of `track --preset lab` (`benchmarks/long_video.py`)",
            f"`python benchmarks/long_video.py --cases {args.cases}` on {device_name()}; "
            f"clip {args.clip.name} (854x480) looped to N frames, its first mask; one "
            f"subprocess per row, peak RSS from wait4; OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}.\n\n{body}",
            commit_id=code_commit,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
