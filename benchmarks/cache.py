"""Feature-cache costs for one Flux frame: put, memory hit, disk hit, checksum.

One frame of Flux features at 60×106 tokens (a 960×1696 input) in bf16 is 3072·60·106·2 B =
39.1 MB. Reports the median of ``--repeats`` runs after a warm-up, in ms: the crc32 checksum
the cache records for a file (``tensor_checksum``), a put without a folder, a put that writes
its file in the caller's thread (checksum + safetensors + rename) and one that queues it for
the writer thread (what the tracker waits for), a memory hit, and a disk hit (read + crc32
verification + copy) with the file in the page cache and with the file dropped from it
(``posix_fadvise(DONTNEED)``, which a virtual disk may still serve from the host's cache).
The tracker benchmark compares a hit with a miss (an extraction).

    python benchmarks/cache.py                 # CPU, folder in the system temp dir
    python benchmarks/cache.py --device cuda --dir /scratch --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import append_results, device_name

from ditf_track.cache import FeatureCache, format_size, tensor_checksum
from ditf_track.lab import LabExtractor

SHAPE = (3072, 60, 106)  # Flux hidden size × the token grid of a 960×1696 input


def median_ms(fn: Callable[[int], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median time of ``fn(i)`` for i in 0..repeats-1 after one warm-up call ``fn(-1)``."""
    fn(-1)
    sync()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="where the memory tier lives (cpu, cuda)")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the cache files")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (median)")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    generator = torch.Generator().manual_seed(0)
    frame = torch.randn(SHAPE, generator=generator).to(torch.bfloat16).to(device)
    host = frame.cpu()
    n = args.repeats
    load = os.getloadavg()[0]
    rows: list[tuple[str, float]] = []

    rows.append(
        (
            "checksum crc32 of the tensor bytes (tensor_checksum)",
            median_ms(lambda _i: tensor_checksum(host), n, sync),
        )
    )

    def key(i: int) -> str:
        return f"{i + 1:064x}"

    memory = FeatureCache(None, device=device)
    rows.append(("put, memory only", median_ms(lambda i: memory.put(key(i), frame), n, sync)))
    rows.append(("memory hit", median_ms(lambda i: memory.get(key(max(i, 0))), n, sync)))
    rows.append(("miss (memory only)", median_ms(lambda i: memory.get(key(10_000)), n, sync)))

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        sync_cache = FeatureCache(root / "sync", device=device, background_writes=False)
        rows.append(
            (
                "put + write in the caller (crc32 + safetensors + rename)",
                median_ms(lambda i: sync_cache.put(key(i), frame), n, sync),
            )
        )
        # The writer queue holds 8 maps by default: more puts than repeats+1 would wait.
        background = FeatureCache(root / "bg", device=device, max_pending_writes=n + 1)
        rows.append(
            (
                "put, file queued for the writer thread",
                median_ms(lambda i: background.put(key(i), frame), n, sync),
            )
        )
        start = time.perf_counter()
        background.flush()
        rows.append(
            ("  then flush (the remaining queued writes)", (time.perf_counter() - start) * 1000)
        )

        def disk_hit(i: int) -> None:
            fresh = FeatureCache(root / "sync", device=device)  # empty memory tier
            got = fresh.get(key(max(i, 0)))
            assert got is not None

        rows.append(
            ("disk hit, file in the page cache (read + verify)", median_ms(disk_hit, n, sync))
        )

        def cold_hit(i: int) -> None:
            path = sync_cache.path(key(max(i, 0)))
            assert path is not None
            drop_from_page_cache(path)
            disk_hit(i)

        rows.append(("disk hit, file dropped from the page cache", median_ms(cold_hit, n, sync)))
        file_size = (root / "sync" / "features" / f"{key(0)}.safetensors").stat().st_size

    # A miss costs an extraction: the lab baseline here, and Flux's blocks 0..24 (the video
    # preset, random weights) at the same 960x1696 input when a GPU is available.
    image = torch.randint(0, 256, (1, 960, 1696, 3), dtype=torch.uint8).numpy()
    miss_cache = FeatureCache(None, device=device)
    lab = LabExtractor()
    rows.append(
        (
            "miss: lab extraction of a 960x1696 frame + put",
            median_ms(lambda i: miss_cache.put(key(i), lab.extract(image).features[0]), n, sync),
        )
    )
    if device.type == "cuda":
        from architectures import build_random_backbone

        from ditf_track.extractor import DiTFExtractor
        from ditf_track.features import DiTFSettings

        backbone = build_random_backbone("flux", 24, device, torch.bfloat16)
        flux = DiTFExtractor(backbone, DiTFSettings(t=90, k=24))
        flux.extract(image)  # warm-up
        rows.append(
            (
                "miss: Flux k=24 extraction (random weights) of a 960x1696 frame + put",
                median_ms(
                    lambda i: miss_cache.put(key(i), flux.extract(image).features[0]), n, sync
                ),
            )
        )

    title = f"Feature cache, one Flux frame {'×'.join(map(str, SHAPE))} bf16"
    width = max(len(r[0]) for r in rows)
    lines = [
        f"`python benchmarks/cache.py --device {args.device} --repeats {n}` on "
        f"{device_name(args.device)}; tensor {format_size(host.numel() * 2)}, file "
        f"{format_size(file_size)}; median of {n}; load average {load:.1f} at the start "
        "(machine shared with other jobs).",
        "",
        f"| {'measurement':<{width}} |       ms |",
        f"|{'-' * (width + 2)}|---------:|",
        *(f"| {name:<{width}} | {ms:8.3f} |" for name, ms in rows),
    ]
    body = "\n".join(lines)
    print(f"{title}\n\n{body}")
    if not args.no_record:
        append_results(title, body)


if __name__ == "__main__":
    main()
