"""Propagation speed on cached features: ditf-track's windowed search vs DINO's dense form.

Workload: one DAVIS frame at DiTF's setting (854x480 at short side 960 → 1696x960 input,
stride 16 → a 60x106 grid), 8 context frames (the first + 7 last), r = 12, k = 5, τ = 0.1,
feature widths C = 3 (``lab``), 1152 (PixArt-α) and 3072 (Flux). "ours" is the steady state
of ``propagate_sequence``: search the 8 prepared contexts, average their labels, prepare the
frame for the queue. "dense" is the form DINO's ``eval_video_segmentation.py`` and the official
DiTF script use: hw x hw affinities per context, exp(·/τ), times a dense neighbourhood mask,
top-k over the stacked contexts, normalise, one matmul with the labels.

Also reports the useful FLOP rate, 2·contexts·hw·(2r+1)²·C per frame divided by the time, as
a fraction of a plain 4096³ matmul in the same dtype and run, and a k-NN (global search)
table: torch vs FAISS. Runs float32 on the CPU, and float32 + bfloat16 on CUDA when present.

    python benchmarks/propagate.py            # table + append to RESULTS.md
    python benchmarks/propagate.py --sweep    # strip widths (tuning)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import append_results, device_name

from ditf_track.propagate import (
    DEFAULT_STRIP_WIDTH,
    GlobalSearch,
    PropagationParams,
    WindowSearch,
    aggregate_labels,
    knn_search,
)
from ditf_track.propagate.knn import faiss_available, faiss_gpu_count

GRID = (60, 106)
CONTEXTS = 8
LABELS = 3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_times(
    fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1
) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def dense_mask(grid: tuple[int, int], radius: int, device: torch.device) -> torch.Tensor:
    """DINO's ``restrict_neighborhood`` as a (hw, hw) 0/1 matrix (built vectorised here)."""
    h, w = grid
    yy, xx = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    yy, xx = yy.flatten(), xx.flatten()
    near = ((yy[:, None] - yy[None, :]).abs() <= radius) & (
        (xx[:, None] - xx[None, :]).abs() <= radius
    )
    return near.float()


def dense_step(
    query: torch.Tensor,
    contexts: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    tau: float,
) -> torch.Tensor:
    """The dense propagation step of DINO's script (re-implemented, same tensor shapes)."""
    c, h, w = query.shape
    m = contexts.shape[0]
    q = query.reshape(c, h * w).t()
    src = contexts.reshape(m, c, h * w)
    aff = torch.bmm(q.unsqueeze(0).expand(m, -1, -1), src).float()  # (M, hw_q, hw_src)
    aff = torch.exp(aff / tau) * mask  # mask broadcast over contexts
    aff = aff.transpose(2, 1).reshape(m * h * w, h * w)  # (M·hw_src, hw_q)
    kth = aff.topk(k, dim=0).values.min(dim=0).values
    aff[aff < kth] = 0
    aff = aff / aff.sum(0, keepdim=True)
    segs = labels.float().reshape(m, -1, h * w).transpose(2, 1).reshape(m * h * w, -1).t()
    return (segs @ aff).reshape(-1, h, w)


def plain_matmul(
    device: torch.device, dtype: torch.dtype, n: int = 4096
) -> tuple[Callable[[], object], int]:
    """A plain n x n x n matmul and its FLOP count."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: a @ b), 2 * n**3


def random_features(
    n: int, c: int, device: torch.device, dtype: torch.dtype, grid: tuple[int, int] = GRID
) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(n * 7 + c)
    feats = F.normalize(torch.randn(n, c, *grid, generator=g), dim=1)
    return feats.to(device=device, dtype=dtype)


def bench_one(
    c: int,
    device: torch.device,
    dtype: torch.dtype,
    params: PropagationParams,
    strips: list[int],
    rounds: int,
    dense_frames: int,
    mask: torch.Tensor | None,
    grid: tuple[int, int] = GRID,
    matmul_n: int = 4096,
) -> dict[str, object]:
    """Per-frame times of ours (one list per strip width, measured in interleaved rounds,
    each round also timing one plain ``matmul_n``³ matmul) and of the dense reference
    (``mask``: :func:`dense_mask` of ``grid``; None skips it)."""
    feats = random_features(CONTEXTS + 1, c, device, dtype, grid)
    labels = torch.softmax(torch.randn(CONTEXTS, LABELS, *grid, device=device), dim=1)
    assert params.radius is not None
    query = feats[CONTEXTS]
    steps = {}
    for strip in strips:
        search = WindowSearch(params.radius, params.topk, strip_width=strip)
        prepared = [search.prepare(f) for f in feats[:CONTEXTS]]

        def ours(search: WindowSearch = search, prepared: list = prepared) -> None:
            neighbours = search.search(query, prepared)
            aggregate_labels(neighbours, labels, params.temperature)
            search.prepare(query)  # the frame joins the queue

        ours()  # warm-up
        steps[strip] = ours
    matmul, matmul_flop = plain_matmul(device, dtype, matmul_n)
    matmul()
    ours_times: dict[int, list[float]] = {s: [] for s in strips}
    matmul_times: list[float] = []
    for _ in range(rounds):
        for strip, step in steps.items():
            ours_times[strip] += call_times(step, device, 1, warmup=0)
        matmul_times += call_times(matmul, device, 1, warmup=0)
    row: dict[str, object] = {
        "ours": ours_times,
        "matmul_rate": matmul_flop / min(matmul_times),
    }
    if mask is not None and dense_frames > 0:

        def dense() -> None:
            dense_step(query, feats[:CONTEXTS], labels, mask, params.topk, params.temperature)

        warm = 1 if c < 1000 or device.type == "cuda" else 0
        row["dense"] = call_times(dense, device, dense_frames, warmup=warm)
    h, w = grid
    row["useful_flop"] = 2 * CONTEXTS * h * w * (2 * params.radius + 1) ** 2 * c
    return row


def bench_knn(c: int, device: torch.device, repeats: int) -> dict[str, float]:
    h, w = GRID
    g = torch.Generator(device="cpu").manual_seed(c)
    queries = F.normalize(torch.randn(h * w, c, generator=g), dim=1).to(device)
    database = F.normalize(torch.randn(CONTEXTS * h * w, c, generator=g), dim=1).to(device)
    row: dict[str, float] = {"C": c}
    backends = ["torch"] + (["faiss"] if faiss_available() else [])
    for backend in backends:
        row[backend] = min(
            call_times(
                lambda b=backend: knn_search(queries, database, 5, backend=b), device, repeats
            )
        )
    # The propagation's global search: per-context k-NN + merge (what GlobalSearch does).
    search = GlobalSearch(5)
    prepared = [
        search.prepare(database[i * h * w : (i + 1) * h * w].t().reshape(c, h, w))
        for i in range(CONTEXTS)
    ]
    query = queries.t().reshape(c, h, w)
    row["global_search"] = min(call_times(lambda: search.search(query, prepared), device, repeats))
    return row


def describe(device: torch.device) -> str:
    return f"{device_name(device)}, torch threads {torch.get_num_threads()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", default="3,1152,3072")
    parser.add_argument("--frames", type=int, default=0, help="timed rounds (0: by size)")
    parser.add_argument("--dense-frames", type=int, default=0, help="0: by size")
    parser.add_argument("--strip", type=int, default=DEFAULT_STRIP_WIDTH)
    parser.add_argument("--sweep", default="", help="strip widths to compare, e.g. 4,6,8,12")
    parser.add_argument("--no-dense", action="store_true")
    parser.add_argument("--no-knn", action="store_true")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()

    params = PropagationParams()  # DINO / DiTF: n 7 (+ first = 8 contexts), r 12, k 5, τ 0.1
    channels = [int(c) for c in args.channels.split(",")]
    runs = [(torch.device("cpu"), torch.float32)]
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        runs = [(cuda, torch.float32), (cuda, torch.bfloat16), *runs]
    lines: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    emit(
        f"grid {GRID[0]}x{GRID[1]}, {CONTEXTS} contexts, r={params.radius}, k={params.topk}, "
        f"τ={params.temperature}, labels K={LABELS}"
    )
    if args.sweep:
        widths = [int(s) for s in args.sweep.split(",")]
        for device, dtype in runs:
            emit(
                f"\nstrip-width sweep on {describe(device)}, {dtype}: frames/s, best of "
                "interleaved rounds (median in brackets)"
            )
            emit("| C | " + " | ".join(f"strip {s}" for s in widths) + " |")
            emit("|---|" + "---|" * len(widths))
            for c in channels:
                rounds = args.frames or (3 if c > 1000 and device.type == "cpu" else 8)
                row = bench_one(c, device, dtype, params, widths, rounds, 0, None)
                times = row["ours"]
                assert isinstance(times, dict)
                cells = [
                    f"{1 / min(times[s]):.2f} ({1 / statistics.median(times[s]):.2f})"
                    for s in widths
                ]
                emit(f"| {c} | " + " | ".join(cells) + " |")
    else:
        for device, dtype in runs:
            torch.manual_seed(0)
            emit(
                f"\n{describe(device)}, {dtype}, strip {args.strip}; load average "
                f"{os.getloadavg()[0]:.2f}. Best frame of interleaved rounds (median in "
                "brackets); matmul: best plain 4096³ matmul of the same rounds."
            )
            emit(
                "| C | ours frames/s | dense frames/s | speed-up | useful GFLOP/s | "
                "matmul GFLOP/s | useful / matmul |"
            )
            emit("|---|---|---|---|---|---|---|")
            mask = None
            if not args.no_dense:
                assert params.radius is not None
                mask = dense_mask(GRID, params.radius, device)
            for c in channels:
                big = c > 1000 and device.type == "cpu"
                rounds = args.frames or (3 if big else 8)
                dense_frames = args.dense_frames or (1 if big else 2)
                row = bench_one(c, device, dtype, params, [args.strip], rounds, dense_frames, mask)
                times = row["ours"]
                assert isinstance(times, dict)
                ours, ours_median = min(times[args.strip]), statistics.median(times[args.strip])
                dense_times = row.get("dense")
                rate = float(row["matmul_rate"])  # type: ignore[arg-type]
                useful = float(row["useful_flop"]) / ours  # type: ignore[arg-type]
                if isinstance(dense_times, list):
                    dense, dense_median = min(dense_times), statistics.median(dense_times)
                    dense_cells = f"{1 / dense:.3f} ({1 / dense_median:.3f}) | {dense / ours:.1f}x"
                else:
                    dense_cells = "- | -"
                emit(
                    f"| {c} | {1 / ours:.2f} ({1 / ours_median:.2f}) | {dense_cells} | "
                    f"{useful / 1e9:.1f} | {rate / 1e9:.0f} | {useful / rate:.0%} |"
                )
            del mask
    if not args.no_knn and not args.sweep:
        for device in {d for d, _ in runs}:
            emit(
                f"\nk-NN, {GRID[0] * GRID[1]} queries x {CONTEXTS}x{GRID[0] * GRID[1]} database, "
                f"k=5, float32, {describe(device)} (faiss GPUs: {faiss_gpu_count()}): seconds"
            )
            emit("| C | torch | faiss | GlobalSearch (auto, per context + merge) |")
            emit("|---|---|---|---|")
            for c in channels:
                row = bench_knn(c, device, 1 if c > 1000 and device.type == "cpu" else 3)
                emit(
                    f"| {c} | {row['torch']:.3f} | {row.get('faiss', float('nan')):.3f} | "
                    f"{row['global_search']:.3f} |"
                )
    if not args.no_append:
        append_results(f"propagate.py (torch {torch.__version__})", "\n".join(lines))


if __name__ == "__main__":
    main()
