"""Throughput of ``ditf-track batch --ray`` with 1 and with 2 CPU workers on the same clips.

One local Ray cluster (``num_cpus`` = the most workers asked for) runs ``batch`` once per worker
count, each worker holding one ``lab`` extractor with one torch thread (``--cpus-per-worker 1``),
on the first ``--end`` frames of shared DAVIS clips at ``--short-side``; every run writes to a
fresh temporary folder with the feature cache off, so each computes everything. The time is
the whole job as a user sees it, workers' start and model load included (they are part of
every job). Efficiency is T₁ / (N·T_N): 1.0 is perfect scaling. The 1-minute load average is
recorded before and after each run: other work on the machine makes the numbers worse, never
better.

    python benchmarks/scale.py                 # 5 clips x 40 frames at 240, appends RESULTS.md
    python benchmarks/scale.py --quick         # 2 clips x 6 frames at 64, prints only

GPU scaling is not measured here (the lent GPU machines have one GPU).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import append_results, commit, device_name

ROOT = Path(__file__).resolve().parents[1]
DAVIS = ROOT.parent / "shared" / "data" / "davis"
CLIPS = "dog,car-shadow,blackswan,bmx-trees,motocross-jump"


def write_jobs(folder: Path, clips: list[str], davis: Path) -> Path:
    lines = ["video,mask,points,out"]
    for name in clips:
        frames = davis / "JPEGImages/480p" / name
        mask = davis / "Annotations/480p" / name / "00000.png"
        lines.append(f"{frames},{mask},,out/{name}")
    jobs = folder / "jobs.csv"
    jobs.write_text("\n".join(lines) + "\n")
    return jobs


def run_batch(jobs: Path, workers: int, end: int, side: int) -> float:
    """Seconds of one ``batch --ray`` run with ``workers`` workers (in this process)."""
    from ditf_track import cli

    args = ["batch", str(jobs), "--ray", "local", "--workers", str(workers)]
    args += ["--cpus-per-worker", "1", "--preset", "lab", "--short-side", str(side)]
    args += ["--end", str(end), "--no-disk-cache", "--quiet"]
    start = time.perf_counter()
    code = cli.main(args)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"batch with {workers} worker(s) failed (exit {code})")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", default=CLIPS, help=f"DAVIS sequences (default {CLIPS})")
    parser.add_argument("--end", type=int, default=40, help="frames per clip (default 40)")
    parser.add_argument("--short-side", type=int, default=240, help="default 240")
    parser.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    parser.add_argument("--davis", type=Path, default=DAVIS)
    parser.add_argument(
        "--quick", action="store_true", help="2 clips x 6 frames at 64 (a check; no record)"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    clips = args.clips.split(",")
    if args.quick:
        clips, args.end, args.short_side, args.no_record = clips[:2], 6, 64, True
    counts = [int(n) for n in args.workers.split(",")]
    import ray

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
        ray.init(num_cpus=max(counts), include_dashboard=False, logging_level=logging.ERROR)
    frames = len(clips) * args.end
    rows = []
    try:
        for n in counts:
            with tempfile.TemporaryDirectory(prefix="ditf-scale-") as tmp:
                jobs = write_jobs(Path(tmp), clips, args.davis)
                load_before = os.getloadavg()[0]
                seconds = run_batch(jobs, n, args.end, args.short_side)
                load_after = os.getloadavg()[0]
            rows.append((n, seconds, load_before, load_after))
            print(f"{n} worker(s): {seconds:.1f} s, {frames / seconds:.2f} frames/s")
    finally:
        ray.shutdown()
    t1 = next((s for n, s, *_ in rows if n == 1), None)
    table = [
        "| workers | wall (s) | frames/s | efficiency T₁/(N·T_N) | load avg before → after |",
        "|---:|---:|---:|---:|---|",
    ]
    for n, seconds, before, after in rows:
        eff = f"{t1 / (n * seconds):.2f}" if t1 is not None else "–"
        table.append(
            f"| {n} | {seconds:.1f} | {frames / seconds:.2f} | {eff} | {before:.2f} → {after:.2f} |"
        )
    body = "\n".join(table)
    print(body)
    if not args.no_record:
        append_results(
            "Scaling: `batch --ray` with 1 and 2 CPU workers (`benchmarks/scale.py`)",
            f"`python benchmarks/scale.py --clips {','.join(clips)} --end {args.end} "
            f"--short-side {args.short_side}` on {device_name()} ({os.cpu_count()} cores); "
            f"{len(clips)} DAVIS clips x {args.end} frames ({frames} frames), lab preset, one "
            "torch thread per worker, feature cache off; wall time of the whole job (workers' "
            f"start and model load included).\n\n{body}",
            commit_id=commit(),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
