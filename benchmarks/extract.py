"""DiTF extraction speed and memory per preset, on full-size architectures with random weights.

For each preset: blocks 0..k of the real transformer (random weights, bf16 on CUDA), its VAE
encoder, a random text condition of the real shape; one 960×960 image per forward. Reports
ms/frame (after warm-up), peak GPU memory (``torch.cuda.max_memory_allocated``) and the peak
host RAM of the process (``ru_maxrss``), each preset in its own process so peaks don't mix.
Target (issue 3): Flux at k=28 fits a 24 GB GPU with a 960 input.

    python benchmarks/extract.py                      # all presets on CUDA
    python benchmarks/extract.py --device cpu --presets pixart-alpha --repeats 1
    python benchmarks/extract.py --device cpu --dtype bfloat16 --presets flux --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import append_results, device_name

from ditf_track.devices import resolve_device, resolve_dtype
from ditf_track.extractor import DiTFExtractor
from ditf_track.features import DiTFSettings, FeatureMaps
from ditf_track.presets import Task, load_preset

PRESETS = ("pixart-alpha", "sd3", "sd3.5", "flux")


def random_extractor(
    preset: str, task: Task, device: torch.device, dtype: torch.dtype, tiny: bool = False
) -> DiTFExtractor:
    """``preset``'s ``task`` settings on blocks 0..k of its real architecture, random weights
    (``tiny``: narrow widths for smoke runs)."""
    from architectures import build_random_backbone

    spec = load_preset(preset)
    settings = spec.task(task)
    backbone = build_random_backbone(preset, settings.k, device, dtype, tiny)
    ditf = DiTFSettings(t=settings.t, k=settings.k, prompt=settings.prompt, guidance=spec.guidance)
    return DiTFExtractor(backbone, ditf, preset=preset)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_extraction(
    extractor: DiTFExtractor, images: torch.Tensor, repeats: int
) -> tuple[float, float | None, FeatureMaps]:
    """Seconds per frame of ``extractor.extract(images)`` ``(N, H, W, 3) uint8`` after one
    warm-up call (kernels, allocator), the peak GPU memory of the timed calls in GiB (None off
    CUDA; weights included) and the last maps."""
    device = extractor.device
    extractor.extract(images)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        maps = extractor.extract(images)
    sync(device)
    elapsed = (time.perf_counter() - start) / (repeats * len(images))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return elapsed, peak, maps


@torch.inference_mode()
def time_dit(extractor: DiTFExtractor, images: torch.Tensor, repeats: int) -> float:
    """Seconds per frame of the DiT part alone (blocks 0..k on noised latents, the capture
    hooks included), after one warm-up call: what :func:`dit_flops` counts."""
    b, s = extractor.backbone, extractor.settings
    pixels = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents = b.encode_images(pixels).to(b.dtype)
    noisy = b.noise_latents(latents, s.t, torch.randn_like(latents))
    cond = b.condition(s.prompt)

    def dit() -> None:
        b.capture(noisy, s.t, cond, s.k, s.condition, s.guidance)

    dit()
    sync(b.device)
    start = time.perf_counter()
    for _ in range(repeats):
        dit()
    sync(b.device)
    return (time.perf_counter() - start) / (repeats * len(images))


def run_one(
    preset: str, device_arg: str, dtype_arg: str, size: int, batch: int, repeats: int
) -> dict[str, Any]:
    device = resolve_device(device_arg)
    dtype = resolve_dtype(dtype_arg, device)
    extractor = random_extractor(preset, "correspondence", device, dtype)
    settings = extractor.settings
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    params = sum(p.numel() for p in extractor.backbone.transformer.parameters())
    elapsed, peak_gpu, maps = time_extraction(extractor, images, repeats)
    return {
        "preset": preset,
        "t": settings.t,
        "k": settings.k,
        "dtype": str(dtype).removeprefix("torch."),
        "params_b": params / 1e9,
        "ms_per_frame": elapsed * 1000,
        "peak_gpu_gb": peak_gpu,
        "peak_host_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "grid": "x".join(map(str, maps.grid_size)),
        "channels": int(maps.features.shape[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float32"
    )
    parser.add_argument("--size", type=int, default=960, help="square input side in pixels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    if args.one:
        print(
            json.dumps(
                run_one(args.one, args.device, args.dtype, args.size, args.batch, args.repeats)
            )
        )
        return
    rows = []
    for preset in args.presets.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            preset,
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--size",
            str(args.size),
            "--batch",
            str(args.batch),
            "--repeats",
            str(args.repeats),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            why = " (killed: out of memory?)" if out.returncode == -9 else ""
            print(f"{preset}: exit {out.returncode}{why}\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    header = (
        "| preset | t | k | dtype | params in blocks 0..k (B) | grid | C | ms/frame "
        "| peak GPU (GB) | peak host RAM (GB) |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        gpu_gb = "–" if r["peak_gpu_gb"] is None else f"{r['peak_gpu_gb']:.2f}"
        lines.append(
            f"| {r['preset']} | {r['t']} | {r['k']} | {r['dtype']} | {r['params_b']:.2f} | "
            f"{r['grid']} | {r['channels']} | {r['ms_per_frame']:.1f} | {gpu_gb} | "
            f"{r['peak_host_gb']:.2f} |"
        )
    flux = [r for r in rows if r["preset"] == "flux"]
    if flux and flux[0]["peak_gpu_gb"] is not None:
        fits = "yes" if flux[0]["peak_gpu_gb"] < 24 else "NO"
        lines.append(f"\nFlux k=28 at {args.size}x{args.size} fits a 24 GB GPU: {fits}")
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        append_results(
            f"DiTF extraction, {args.size}x{args.size}, batch {args.batch}, random weights",
            f"device: {device_name(resolve_device(args.device))}\n\n{table}",
        )


if __name__ == "__main__":
    main()
