"""Point-tracking throughput on cached features: points × frames per second.

Workload: random unit feature maps on DiTF's DAVIS grid (854x480 at short side 960 → 60x106
cells) with C = 1152 (PixArt-α) and C = 3072 (Flux), 256 and 4,096 query points on the query
frame, tracked through ``FRAMES`` further frames by
:func:`ditf_track.propagate.track_query_points` (one sequence, steady state after one warm-up
frame). Settings:

* ``global`` — the default: each frame searched whole (chunked torch matmul + argmax), 3x3
  soft-argmax, and the cycle check (a second search, back into the query frame);
* ``global, no cycle`` — the same without the visibility check (half the matmuls);
* ``window r=8`` — the search restricted to 8 cells around the previous position (the matmul
  is still dense; the window is a mask);
* ``faiss`` — the whole-frame search by FAISS's exact inner-product index (faiss-gpu on CUDA
  when installed; on the CPU faiss-cpu), then the soft-argmax on the 3x3 cosines;
* ``heatmap`` (256 points) — :func:`~ditf_track.propagate.track_heatmaps`: 257 label channels
  through the DINO propagation (8 contexts, r = 12, k = 5).

Features are float32 on the CPU; on CUDA both float32 and bfloat16 (as the cache holds them).
Random features make every search as expensive as real ones (the cost does not depend on the
values). Prints a table and appends it to benchmarks/RESULTS.md.

    PYTHONPATH=. python benchmarks/points.py [--frames 4] [--no-append]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import append_results, device_name

from ditf_track.propagate import PointParams, PropagationParams, track_heatmaps, track_query_points
from ditf_track.propagate.knn import faiss_available, faiss_gpu_count

GRID = (60, 106)
CHANNELS = (1152, 3072)
POINTS = (256, 4096)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_maps(
    n: int, c: int, device: torch.device, dtype: torch.dtype, grid: tuple[int, int] = GRID
) -> list[torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(c + n)
    maps = torch.randn((n, c, *grid), generator=gen)
    maps = F.normalize(maps, dim=1).to(device=device, dtype=dtype)
    return list(maps)


def query_points(n: int, grid: tuple[int, int] = GRID) -> np.ndarray:
    """``(n, 2)`` continuous grid ``(y, x)`` spread uniformly over the grid."""
    rng = np.random.default_rng(n)
    return rng.uniform(0, 1, (n, 2)) * (np.array(grid) - 1)


def seconds_per_frame(
    run: Callable[[list[torch.Tensor]], object], frames: list[torch.Tensor], device: torch.device
) -> float:
    """Steady-state seconds per tracked frame: one warm-up frame, then ``frames`` timed."""
    run(frames[:1])
    sync(device)
    start = time.perf_counter()
    run(frames)
    sync(device)
    return (time.perf_counter() - start) / len(frames)


def settings(
    query: torch.Tensor, grid: np.ndarray, faiss_ok: bool
) -> list[tuple[str, Callable[[list[torch.Tensor]], object]]]:
    """(label, run over a list of frames) for every setting timed at these points."""
    out: list[tuple[str, Callable[[list[torch.Tensor]], object]]] = []
    options = [
        ("global", PointParams()),
        ("global, no cycle", PointParams(cycle_threshold=None)),
        ("window r=8", PointParams(radius=8)),
    ]
    if faiss_ok:
        options.append(("faiss", PointParams(knn_backend="faiss")))
    for label, params in options:
        out.append((label, partial(_track, query, grid, params)))
    if len(grid) <= 256:
        out.append(("heatmap", partial(_heatmaps, query, grid)))
    return out


def time_settings(
    maps: list[torch.Tensor], n: int, faiss_ok: bool, only: tuple[str, ...] | None = None
) -> list[tuple[str, float]]:
    """(setting, seconds per frame) for ``n`` query points on ``maps[0]`` tracked through
    ``maps[1:]``; ``only`` keeps the settings of those labels."""
    device = maps[0].device
    points = query_points(n, (int(maps[0].shape[-2]), int(maps[0].shape[-1])))
    return [
        (label, seconds_per_frame(run, maps[1:], device))
        for label, run in settings(maps[0], points, faiss_ok)
        if only is None or label in only
    ]


def _track(
    query: torch.Tensor, grid: np.ndarray, params: PointParams, frames: list[torch.Tensor]
) -> object:
    return list(track_query_points(query, grid, frames, params))


def _heatmaps(query: torch.Tensor, grid: np.ndarray, frames: list[torch.Tensor]) -> object:
    return list(track_heatmaps(query, grid, frames, PropagationParams.dino()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3, help="frames timed per setting")
    parser.add_argument("--no-append", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    load_before = os.getloadavg()[0]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        dtypes = [torch.float32] if device.type == "cpu" else [torch.float32, torch.bfloat16]
        faiss_ok = faiss_available() and (device.type == "cpu" or faiss_gpu_count() > 0)
        for dtype in dtypes:
            for c in CHANNELS:
                maps = random_maps(args.frames + 1, c, device, dtype)
                for n in POINTS:
                    for label, spf in time_settings(maps, n, faiss_ok):
                        kind = str(dtype).replace("torch.", "")
                        rows.append((device.type, kind, c, n, label, spf, n / spf))
                        print(
                            f"{device.type:4s} {kind:8s} C={c:4d} N={n:4d} {label:17s} "
                            f"{1000 * spf:9.1f} ms/frame {n / spf:12,.0f} point-frames/s",
                            flush=True,
                        )
                del maps
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    names = ", ".join(f"{d.type}: {device_name(str(d))}" for d in devices)
    header = (
        "| device | dtype | C | points | setting | ms / frame | point-frames / s |\n"
        "|---|---|---:|---:|---|---:|---:|\n"
    )
    body = "".join(
        f"| {d} | {t} | {c} | {n:,} | {label} | {1000 * spf:.1f} | {rate:,.0f} |\n"
        for d, t, c, n, label, spf, rate in rows
    )
    text = (
        f"Query-point tracking on cached random unit features at {GRID[0]}x{GRID[1]} cells, "
        f"{args.frames} frames timed after one warm-up, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {names}. `global` is the default (whole-frame "
        "search, 3x3 soft-argmax, cycle check). 1-minute load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after (the machine is shared: "
        "the CPU rows vary with it).\n\n" + header + body
    )
    print()
    print(header + body)
    if not args.no_append:
        append_results("Point tracking throughput (benchmarks/points.py)", text)


if __name__ == "__main__":
    main()
