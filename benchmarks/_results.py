"""Appending a benchmark's table to benchmarks/RESULTS.md with date, device and commit."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section below is appended by a script in `benchmarks/`.\n"


def commit() -> str:
    """The short commit of the working tree, with ``+dirty`` when it has local changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            # RESULTS.md itself does not make the measured code dirty.
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!*RESULTS.md"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{sha}{'+dirty' if dirty else ''}" or "unknown"


def device_name(device: object = "cpu") -> str:
    """``NVIDIA H100 80GB HBM3`` or the CPU model with the cores this process may use.

    ``device`` is a ``torch.device`` or its name (``"cpu"``, ``"cuda:0"``).
    """
    device = str(device)
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores"


def utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def append_results(
    title: str, body: str, *, stamp: str | None = None, commit_id: str | None = None
) -> None:
    """Append ``## title`` with the date, commit and ``body`` (a table) to RESULTS.md.

    ``stamp`` and ``commit_id`` default to now and this tree's commit; a run measured on
    another machine (benchmarks/gpu_suite.py --record) gives its own date.
    """
    if not RESULTS.exists():
        RESULTS.write_text(HEADER)
    stamp = stamp or utc_stamp()
    with RESULTS.open("a") as f:
        f.write(f"\n## {title}\n\n{stamp} · commit {commit_id or commit()}\n\n{body.strip()}\n")
