"""Cost of the pair-matching steps at real sizes, with random unit features (no weights needed).

A Flux-sized pair: 3072 channels, SPair-like 500x375 images at long side 960 (a 60x45 grid).
Measures the target search over grid cells and over every target pixel (the official SPair
protocol, computed from the grid without materialising the upsampled map), the all-cells
mutual nearest neighbours, and the joint PCA to 1280 dimensions that precedes the DINOv2
fusion. Prints a table and appends it to benchmarks/RESULTS.md.

    python benchmarks/match_search.py [--device cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import append_results, device_name

from ditf_track.dinov2 import JointPCA
from ditf_track.match import (
    ImageFeatures,
    SoftArgmax,
    mutual_nearest_neighbours,
    nearest_in_target,
)


def best_of(fn: Callable[[], object], repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--channels", type=int, default=3072)
    parser.add_argument("--queries", type=int, default=20)
    args = parser.parse_args()
    dev, c = args.device, args.channels
    torch.manual_seed(0)
    grid, image_hw, input_hw = (45, 60), (375, 500), (720, 960)

    def unit(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, device=dev), dim=0)

    target = ImageFeatures(unit(c, *grid), image_hw, input_hw, 16)
    source = ImageFeatures(unit(c, *grid), image_hw, input_hw, 16)
    queries = F.normalize(torch.randn(args.queries, c, device=dev), dim=1)

    rows: list[tuple[str, str, str]] = []

    def add(name: str, seconds: float) -> None:
        rows.append((name, f"{seconds * 1000:.0f}", "ms"))

    add(
        f"{args.queries} points, grid search (60x45 cells)",
        best_of(lambda: nearest_in_target(queries, target, upsample=False), args.repeats, dev),
    )
    add(
        f"{args.queries} points, grid search + soft-argmax (r=7, T=0.02)",
        best_of(
            lambda: nearest_in_target(queries, target, upsample=False, refine=SoftArgmax()),
            args.repeats,
            dev,
        ),
    )
    add(
        f"{args.queries} points, every target pixel (500x375, official protocol)",
        best_of(lambda: nearest_in_target(queries, target, upsample=True), args.repeats, dev),
    )
    add(
        "mutual nearest neighbours, all 2700 x 2700 cells",
        best_of(lambda: mutual_nearest_neighbours(source.flat(), target.flat()), args.repeats, dev),
    )
    add(
        f"joint PCA {c} -> 1280 on both maps (5400 vectors, exact, float64)",
        best_of(lambda: JointPCA.fit([source.features, target.features], 1280), 1, dev),
    )
    full_gb = c * image_hw[0] * image_hw[1] * 2 / 1e9
    rows.append(
        ("one map upsampled to 500x375 at once, fp16 (official script)", f"{full_gb:.2f}", "GB")
    )
    # the pixel search keeps N upsampled similarity maps (and their products) and ~12 (H, W)
    # maps of weights, cell dot products and norms
    here_gb = (2 * args.queries + 12) * image_hw[0] * image_hw[1] * 4 / 1e9
    rows.append(
        (f"working memory of the pixel search here, {args.queries} points", f"{here_gb:.2f}", "GB")
    )

    width = max(len(r[0]) for r in rows)
    lines = [
        f"| {'measurement':<{width}} | value | unit |",
        f"|{'-' * (width + 2)}|------:|------|",
    ]
    lines += [f"| {n:<{width}} | {v} | {u} |" for n, v, u in rows]
    table = "\n".join(lines)
    print(table)
    body = (
        f"`python benchmarks/match_search.py --device {dev}` on {device_name(dev)}; "
        f"{c} channels, random unit features, best of {args.repeats} "
        "(machine shared with other jobs: lower bounds on speed).\n\n" + table
    )
    append_results("Pair matching: search, MNN, joint PCA", body)


if __name__ == "__main__":
    main()
