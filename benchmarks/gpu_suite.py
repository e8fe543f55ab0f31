"""Every GPU figure of the README and RESULTS.md in one command, in at most 4 minutes.

On one CUDA GPU, with random full-size weights (speed and memory do not depend on trained
weights), in this order so that a run cut short keeps the most useful rows:

* ``matmul`` — a plain 8192³ bf16 matmul: the rate the DiT part is compared with;
* ``flux-video``, ``flux-correspondence``, ``pixart-alpha``, ``sd3``, ``sd3.5`` — DiTF
  extraction (benchmarks/extract.py's code) with the preset's t, k and input size: a DAVIS
  480p frame (854x480) at the video short side 960 → 1712x960, or 960x960 for
  ``flux-correspondence`` (Flux's correspondence k = 28). ms/frame and peak GPU memory at
  batch 1 and at the fastest batch that fits (batches doubled until out of memory, no gain or
  the part's time box), and the DiT part alone as a fraction of the matmul's rate, its FLOPs
  counted from the architecture (:func:`architectures.dit_flops` states the formula);
* ``propagate`` — benchmarks/propagate.py's measurement: window search vs DINO's dense form
  at the 60x106 grid, C = 1152 and 3072, float32 and bfloat16;
* ``points`` — benchmarks/points.py's measurement: query-point tracking point-frames/s
  (default global search + cycle check), 256 and 4,096 points, C = 1152 and 3072, both dtypes.

The DAVIS-2017 val projection (30 clips, 1999 frames, Flux video preset) is derived from the
measured rows: frames x (extraction + propagation at C = 3072, bf16) seconds per frame.

Every row is appended to ``--out``/rows.jsonl (and ``table.md`` regenerated) as soon as it is
measured. ``--smoke`` runs the same code paths on the CPU with tiny-width models, a small grid
and few channels in seconds (the test suite runs it); it never touches RESULTS.md.

    python benchmarks/gpu_suite.py --out out/gpu            # CUDA; appends to RESULTS.md
    python benchmarks/gpu_suite.py --only propagate,points  # rerun parts
    python benchmarks/gpu_suite.py --record DIR [DIR ...]   # append fetched runs' table
    python benchmarks/gpu_suite.py --smoke --out /tmp/smoke

benchmarks/GPU.md gives the one command that runs it on a lent GPU machine (gpu_run.sh).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import extract
import points
import propagate
from _results import append_results, commit, device_name, utc_stamp
from architectures import dit_flops, transformer_config

from ditf_track._atomic import atomic_path
from ditf_track.errors import DeviceError
from ditf_track.images import model_input_size
from ditf_track.presets import Task, load_preset
from ditf_track.propagate import PropagationParams

ROOT = Path(__file__).resolve().parents[1]
EXTRACTIONS: dict[str, tuple[str, Task]] = {
    "flux-video": ("flux", "video"),
    "flux-correspondence": ("flux", "correspondence"),
    "pixart-alpha": ("pixart-alpha", "video"),
    "sd3": ("sd3", "video"),
    "sd3.5": ("sd3.5", "video"),
}
PARTS = (
    "matmul",
    "flux-video",
    "propagate",
    "flux-correspondence",
    "pixart-alpha",
    "sd3",
    "sd3.5",
    "points",
)
#: Seconds each part may spend (extraction: on its batch search; builds are extra).
TIME_BOX = {
    "matmul": 5,
    "flux-video": 40,
    "propagate": 25,
    "flux-correspondence": 35,
    "pixart-alpha": 15,
    "sd3": 15,
    "sd3.5": 30,
    "points": 20,
}
DAVIS_FRAME = (480, 854)  # DAVIS 2017 480p, (H, W)
DAVIS_VAL_CLIPS = 30
DAVIS_VAL_FRAMES = 1999
TITLE = "GPU suite (benchmarks/gpu_suite.py)"


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one run: the real ones on CUDA, tiny ones for ``--smoke`` on the CPU."""

    smoke: bool
    device: torch.device
    model_dtype: torch.dtype
    matmul_n: int
    short_side: int | None  # None: the preset's
    square: int | None
    batches: tuple[int, ...]
    min_timed_s: float  # each batch's timed calls last about this long
    grid: tuple[int, int]
    channels: tuple[int, ...]
    prop_rounds: int
    dense_frames: int
    points: tuple[int, ...]
    point_frames: int
    budget_s: float

    @classmethod
    def full(cls, budget_s: float) -> Scale:
        return cls(
            smoke=False,
            device=torch.device("cuda"),
            model_dtype=torch.bfloat16,
            matmul_n=8192,
            short_side=None,
            square=None,
            batches=(1, 2, 4, 8, 16, 32, 64),
            min_timed_s=1.5,
            grid=propagate.GRID,
            channels=(1152, 3072),
            prop_rounds=8,
            dense_frames=2,
            points=(256, 4096),
            point_frames=8,
            budget_s=budget_s,
        )

    @classmethod
    def tiny(cls, budget_s: float) -> Scale:
        return cls(
            smoke=True,
            device=torch.device("cpu"),
            model_dtype=torch.float32,  # bf16 kernels are slow on small CPU tensors
            matmul_n=128,
            short_side=32,
            square=32,
            batches=(1, 2),
            min_timed_s=0.0,
            grid=(6, 10),
            channels=(24, 32),  # the tiny PixArt-α and Flux widths
            prop_rounds=1,
            dense_frames=1,
            points=(4, 16),
            point_frames=1,
            budget_s=budget_s,
        )


class Output:
    """rows.jsonl (appended and synced row by row) and table.md (rewritten after each row)."""

    def __init__(self, folder: Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.rows = read_rows([folder]) if rows is None else rows

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with (self.folder / "rows.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with atomic_path(self.folder / "table.md", "results table") as tmp:
            tmp.write_text(render(self.rows))
        print(_one_line(row), flush=True)


def read_rows(folders: Iterable[Path]) -> list[dict[str, Any]]:
    rows = []
    for folder in folders:
        path = Path(folder) / "rows.jsonl"
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def source_digest() -> str:
    """sha256 (12 hex) of the measured code: ditf_track/ and benchmarks/ sources and configs.

    The device machine has no git history; ``--record`` compares this with the local tree's.
    """
    h = hashlib.sha256()
    patterns = ("ditf_track/**/*.py", "configs/*.yaml", "benchmarks/*.py")
    files = sorted(path for pattern in patterns for path in ROOT.glob(pattern))
    for path in files:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


# -- measuring ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_matmul(scale: Scale, out: Output, run: dict[str, Any]) -> None:
    fn, flop = propagate.plain_matmul(scale.device, torch.bfloat16, scale.matmul_n)
    best = min(propagate.call_times(fn, scale.device, repeats=10, warmup=3))
    out.add({**run, "part": "matmul", "n": scale.matmul_n, "tflops": flop / best / 1e12})


def input_size(preset: str, task: Task, scale: Scale) -> tuple[int, int]:
    """(H, W) the extractor gets: a DAVIS frame at the video short side, or the square side."""
    settings = load_preset(preset).task(task)
    if task == "video":
        side = scale.short_side or settings.short_side
        return model_input_size(*DAVIS_FRAME, short_side=side)
    square = scale.square or settings.image_size
    assert square is not None
    return square, square


def _is_oom(exc: BaseException) -> bool:
    """Out of GPU memory: the allocator's error, the library's one-line DeviceError that wraps
    it, or a CUDA/cuDNN/cuBLAS allocation failure raised as a plain RuntimeError."""
    if isinstance(exc, torch.OutOfMemoryError) or isinstance(exc.__cause__, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return "out of memory" in text or "ALLOC_FAILED" in text


def measure_extraction(part: str, scale: Scale, out: Output, run: dict[str, Any]) -> None:
    """Rows at batch 1 and at the fastest batch that fits, written as they are measured."""
    preset, task = EXTRACTIONS[part]
    start = time.perf_counter()
    extractor = extract.random_extractor(
        preset, task, scale.device, scale.model_dtype, tiny=scale.smoke
    )
    _sync(scale.device)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    settings = extractor.settings
    h, w = input_size(preset, task, scale)
    image_tokens = (h // 16) * (w // 16)
    text_tokens = int(extractor.backbone.condition(settings.prompt).embeds.shape[1])
    family = load_preset(preset).family
    flop = dit_flops(
        family, transformer_config(preset, scale.smoke), settings.k, image_tokens, text_tokens
    )
    matmul = [r["tflops"] for r in out.rows if r.get("part") == "matmul" and r["run"] == run["run"]]
    base = {
        **run,
        "part": part,
        "preset": preset,
        "task": task,
        "t": settings.t,
        "k": settings.k,
        "input": f"{w}x{h}",
        "image_tokens": image_tokens,
        "text_tokens": text_tokens,
        "dtype": str(scale.model_dtype).removeprefix("torch."),
        "params_b": sum(p.numel() for p in extractor.backbone.transformer.parameters()) / 1e9,
        "dit_tflop_per_frame": flop / 1e12,
        "build_s": build_s,
    }

    def measure(batch: int, repeats: int) -> dict[str, Any]:
        images = torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8)
        spf, peak, maps = extract.time_extraction(extractor, images, repeats)
        dit_spf = extract.time_dit(extractor, images, repeats)
        rate = flop / dit_spf / 1e12
        return {
            **base,
            "batch": batch,
            "channels": int(maps.features.shape[1]),
            "ms_per_frame": 1000 * spf,
            "dit_ms_per_frame": 1000 * dit_spf,
            "dit_tflops": rate,
            "dit_of_matmul": rate / matmul[-1] if matmul else None,
            "peak_gpu_gb": peak,
        }

    def repeats_for(spf: float, batch: int) -> int:
        return max(1, min(5, math.ceil(scale.min_timed_s / max(spf * batch, 1e-9))))

    probe = time.perf_counter()
    if scale.min_timed_s > 0:  # a first call sizes the timed repeats
        extractor.extract(torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8))
        _sync(scale.device)
    row1 = measure(1, repeats_for(time.perf_counter() - probe, 1))
    out.add({**row1, "best": False})
    best, oom_at, tried = row1, None, [1]
    for batch in scale.batches[1:]:
        spf = best["ms_per_frame"] / 1000
        repeats = repeats_for(spf, batch)
        # two warm-ups (extraction, DiT) + timed calls, with extraction and DiT each
        cost = 2 * (2 + repeats) * spf * batch
        if time.perf_counter() - start + cost > TIME_BOX[part] and not scale.smoke:
            break
        try:
            row = measure(batch, repeats)
        except (RuntimeError, DeviceError) as exc:
            if not _is_oom(exc):
                raise
            oom_at = batch
            row = None
        if row is None:
            _free(scale.device)
            break
        tried.append(batch)
        gain = row["ms_per_frame"] < 0.97 * best["ms_per_frame"]
        if row["ms_per_frame"] < best["ms_per_frame"]:
            best = row
        if not gain and not scale.smoke:
            break
    out.add({**best, "best": True, "tried": tried, "oom_at": oom_at})


def measure_propagation(scale: Scale, out: Output, run: dict[str, Any]) -> None:
    params = PropagationParams()
    assert params.radius is not None
    mask = propagate.dense_mask(scale.grid, params.radius, scale.device)
    for dtype in (torch.float32, torch.bfloat16):
        for c in scale.channels:
            torch.manual_seed(0)
            row = propagate.bench_one(
                c,
                scale.device,
                dtype,
                params,
                [propagate.DEFAULT_STRIP_WIDTH],
                scale.prop_rounds,
                scale.dense_frames,
                mask,
                grid=scale.grid,
                matmul_n=min(4096, scale.matmul_n),
            )
            times = row["ours"]
            dense = row["dense"]
            assert isinstance(times, dict)
            assert isinstance(dense, list)
            ours = times[propagate.DEFAULT_STRIP_WIDTH]
            useful = float(row["useful_flop"]) / min(ours)  # type: ignore[arg-type]
            out.add(
                {
                    **run,
                    "part": "propagate",
                    "grid": "x".join(map(str, scale.grid)),
                    "C": c,
                    "dtype": str(dtype).removeprefix("torch."),
                    "fps": 1 / min(ours),
                    "fps_median": 1 / statistics.median(ours),
                    "dense_fps": 1 / min(dense),
                    "useful_of_matmul": useful / float(row["matmul_rate"]),  # type: ignore[arg-type]
                }
            )
            _free(scale.device)
    del mask


def measure_points(scale: Scale, out: Output, run: dict[str, Any]) -> None:
    torch.set_grad_enabled(False)
    try:
        for dtype in (torch.float32, torch.bfloat16):
            for c in scale.channels:
                maps = points.random_maps(
                    scale.point_frames + 1, c, scale.device, dtype, scale.grid
                )
                for n in scale.points:
                    for label, spf in points.time_settings(maps, n, False, only=("global",)):
                        out.add(
                            {
                                **run,
                                "part": "points",
                                "setting": label,
                                "dtype": str(dtype).removeprefix("torch."),
                                "C": c,
                                "points": n,
                                "ms_per_frame": 1000 * spf,
                                "point_frames_per_s": n / spf,
                            }
                        )
                del maps
                _free(scale.device)
    finally:
        torch.set_grad_enabled(True)


def run_suite(scale: Scale, parts: list[str], out: Output) -> list[dict[str, Any]]:
    """Measure ``parts`` in the suite's order; each part's rows reach ``out`` as measured."""
    run: dict[str, Any] = {"run": f"{time.time():.3f}"}
    started = time.perf_counter()
    device = scale.device
    out.add(
        {
            **run,
            "part": "run",
            "date": utc_stamp(),
            "device": device_name(device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "smoke": scale.smoke,
            "source": source_digest(),
            "parts": parts,
        }
    )
    if any(p in EXTRACTIONS for p in parts) and "matmul" not in parts:
        parts = ["matmul", *parts]  # the DiT fraction needs this run's rate
    for part in [p for p in PARTS if p in parts]:
        spent = time.perf_counter() - started
        if spent > scale.budget_s:
            out.add({**run, "part": part, "skipped": f"budget {scale.budget_s:.0f} s spent"})
            continue
        part_start = time.perf_counter()
        try:
            if part == "matmul":
                measure_matmul(scale, out, run)
            elif part in EXTRACTIONS:
                measure_extraction(part, scale, out, run)
            elif part == "propagate":
                measure_propagation(scale, out, run)
            elif part == "points":
                measure_points(scale, out, run)
        except Exception as exc:  # one broken part must not cost the others' rows
            traceback.print_exc()
            out.add({**run, "part": part, "error": f"{type(exc).__name__}: {exc}"[:300]})
        _free(device)  # the part's model and tensors are gone with its frame
        print(f"[{part}: {time.perf_counter() - part_start:.1f} s]", flush=True)
    out.add({**run, "part": "done", "seconds": time.perf_counter() - started})
    return out.rows


# -- the table ---------------------------------------------------------------------------------
def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each part's rows from its most recent run (a rerun with --only replaces that part)."""
    last: dict[str, str] = {}
    for r in rows:
        if r["part"] not in ("run", "done"):
            last[r["part"]] = max(last.get(r["part"], ""), r["run"])
    return [r for r in rows if r["part"] not in ("run", "done") and r["run"] == last[r["part"]]]


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


def davis_projection(rows: list[dict[str, Any]]) -> list[list[str]]:
    """DAVIS-2017 val with the Flux video preset from measured rates: per extraction batch,
    frames x (extraction + propagation at the extraction's C in bf16) seconds per frame."""
    extraction = [r for r in rows if r["part"] == "flux-video" and "ms_per_frame" in r]
    body = []
    for r in extraction:
        prop = [
            p
            for p in rows
            if p["part"] == "propagate" and p["C"] == r["channels"] and p["dtype"] == "bfloat16"
        ]
        if not prop:
            continue
        ext_s, prop_s = r["ms_per_frame"] / 1000, 1 / prop[-1]["fps"]
        total = DAVIS_VAL_FRAMES * (ext_s + prop_s)
        body.append(
            [
                f"best: {r['batch']}" if r["best"] else str(r["batch"]),
                _f(DAVIS_VAL_FRAMES * ext_s / 60, 2),
                _f(DAVIS_VAL_FRAMES * prop_s / 60, 2),
                _f(total / 60, 2),
                _f(DAVIS_VAL_FRAMES / total, 2),
            ]
        )
    return body


def sections(rows: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Title → (header, body cells) of each table, from the latest rows of each part."""
    rows = latest(rows)
    ext_header = [
        "model",
        "dtype",
        "t",
        "k",
        "input (W×H)",
        "tokens (image + text)",
        "batch",
        "ms/frame",
        "frames/s",
        "peak GPU (GiB)",
        "DiT ms/frame",
        "DiT TFLOP/frame",
        "DiT TFLOP/s",
        "DiT / bf16 matmul",
        "build (s)",
    ]
    ext_body = []
    for part in EXTRACTIONS:
        for r in rows:
            if r["part"] != part or "ms_per_frame" not in r:
                continue
            batch = str(r["batch"])
            if r["best"]:
                batch = f"best: {batch}" + (f" ({r['oom_at']} OOM)" if r.get("oom_at") else "")
            ratio = r["dit_of_matmul"]
            ext_body.append(
                [
                    part,
                    r["dtype"],
                    str(r["t"]),
                    str(r["k"]),
                    r["input"],
                    f"{r['image_tokens']} + {r['text_tokens']}",
                    batch,
                    _f(r["ms_per_frame"]),
                    _f(1000 / r["ms_per_frame"], 2),
                    _f(r["peak_gpu_gb"], 2),
                    _f(r["dit_ms_per_frame"]),
                    _f(r["dit_tflop_per_frame"], 2),
                    _f(r["dit_tflops"]),
                    "–" if ratio is None else f"{ratio:.0%}",
                    _f(r["build_s"]),
                ]
            )
    prop_body = [
        [
            str(r["C"]),
            r["dtype"],
            f"{_f(r['fps'], 2)} ({_f(r['fps_median'], 2)})",
            _f(r["dense_fps"], 3),
            f"{r['fps'] / r['dense_fps']:.1f}x",
            f"{r['useful_of_matmul']:.0%}",
        ]
        for r in rows
        if r["part"] == "propagate" and "fps" in r
    ]
    point_body = [
        [
            r["dtype"],
            str(r["C"]),
            f"{r['points']:,}",
            _f(r["ms_per_frame"], 2),
            _f(r["point_frames_per_s"], 0),
        ]
        for r in rows
        if r["part"] == "points" and "ms_per_frame" in r
    ]
    return {
        "DiTF extraction (random full-size weights)": (ext_header, ext_body),
        "Propagation (8 contexts, r = 12, k = 5)": (
            [
                "C",
                "dtype",
                "ours frames/s (median)",
                "dense frames/s",
                "speed-up",
                "useful / matmul",
            ],
            prop_body,
        ),
        "Query-point tracking (global search + cycle check)": (
            ["dtype", "C", "points", "ms/frame", "point-frames/s"],
            point_body,
        ),
        f"DAVIS-2017 val projection ({DAVIS_VAL_CLIPS} clips, {DAVIS_VAL_FRAMES} frames, "
        "flux-video)": (
            [
                "extraction batch",
                "extraction (min)",
                "propagation (min)",
                "total (min)",
                "frames/s",
            ],
            davis_projection(rows),
        ),
    }


def render(rows: list[dict[str, Any]]) -> str:
    """The markdown of every table (the same text goes to table.md and RESULTS.md)."""
    runs = {r["run"]: r for r in rows if r["part"] == "run"}
    kept = latest(rows)
    used = sorted({r["run"] for r in kept}) or sorted(runs)[-1:]
    lines = []
    for run_id in used:
        r = runs.get(run_id)
        if r is not None:
            lines.append(
                f"Run {r['date']}: {r['device']}, torch {r['torch']} (CUDA {r['cuda']}), "
                f"source {r['source']}{', smoke (tiny models, CPU)' if r['smoke'] else ''}."
            )
    matmul = [r for r in kept if r["part"] == "matmul"]
    for r in matmul:
        lines.append(f"Plain bf16 matmul {r['n']}³: {r['tflops']:.0f} TFLOP/s.")
    grids = sorted({r["grid"] for r in kept if r["part"] == "propagate" and "grid" in r})
    if grids:
        lines.append(f"Propagation and point grid: {', '.join(grids)} cells.")
    text = " ".join(lines) + "\n"
    for title, (header, body) in sections(rows).items():
        text += f"\n### {title}\n\n{_table(header, body)}\n"
    problems = [r for r in kept if "skipped" in r or "error" in r]
    if problems:
        text += "\n" + "\n".join(
            f"- {r['part']}: {r.get('skipped') or r.get('error')}" for r in problems
        )
        text += "\n"
    return text


def _one_line(row: dict[str, Any]) -> str:
    skip = {"run", "tried"}
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in row.items()
        if k not in skip
    )


# -- command line ------------------------------------------------------------------------------
def record(folders: list[Path]) -> str:
    """Append the fetched runs' table to RESULTS.md with the run's date, the local commit and
    whether the local code is the measured one (same :func:`source_digest`)."""
    rows = read_rows(folders)
    runs = [r for r in rows if r["part"] == "run" and not r["smoke"]]
    if not runs:
        raise SystemExit(f"no measured (non-smoke) run in {', '.join(map(str, folders))}")
    here = source_digest()
    sources = {r["source"] for r in runs}
    tag = commit() if sources == {here} else f"{commit()} (measured source {'/'.join(sources)})"
    text = render(rows)
    append_results(TITLE, text, stamp=runs[0]["date"], commit_id=tag)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu-suite")
    parser.add_argument("--only", default="", help=f"comma-separated parts of: {','.join(PARTS)}")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, seconds (CI)")
    parser.add_argument("--budget", type=float, default=None, help="seconds (default 240)")
    parser.add_argument("--no-append", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--record", nargs="+", type=Path, help="append fetched runs' table")
    args = parser.parse_args(argv)
    if args.record:
        print(record(args.record))
        return
    parts = [p.strip() for p in args.only.split(",") if p.strip()] or list(PARTS)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if args.smoke:
        scale = Scale.tiny(math.inf if args.budget is None else args.budget)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA GPU: the suite measures a GPU (use --smoke for a CPU check)")
        scale = Scale.full(240.0 if args.budget is None else args.budget)
    threads = torch.get_num_threads()
    if scale.smoke:
        torch.set_num_threads(1)  # tiny tensors: threads only wait for each other
    try:
        rows = run_suite(scale, parts, Output(args.out))
    finally:
        torch.set_num_threads(threads)
    print("\n" + render(rows))
    if not (args.smoke or args.no_append):
        append_results(TITLE, render(rows))


if __name__ == "__main__":
    main()
