"""DAVIS J&F: ditf-track's evaluator against the official tool and vos-benchmark, time and numbers.

Cases (both from the real data in ../shared/data/davis, read in place):

* ``binary``: the OSVOS predictions of the five shared clips against their DAVIS-2016 ground
  truth (``ditf-track eval davis`` in binary mode). The official tool only reads palette ids, so it
  is given the same masks written as ids {0, 1} (ground truth > 0, prediction > 0).
* ``multi``: the two-object palette case of ``ditf_track/testing/davis.py`` (void ring, absent
  object, late unscored id, a prediction with fewer objects), scored per object by all tools as is.

The official tool (davisvideochallenge/davis2017-evaluation) runs from a temporary checkout outside
the repository (``--official``, default /tmp/davis2017-evaluation, cloned from ``--official-git``
when missing) with a runtime shim for numpy aliases it may use; nothing of it is copied here.
``vos-benchmark`` (PyPI) must be installed for its rows. Prints a table and appends it to
benchmarks/RESULTS.md; ``--record`` also prints the official per-object numbers as Python literals
for the tests.

    PYTHONPATH=. python benchmarks/eval_davis.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from _results import append_results, device_name  # noqa: E402

from ditf_track.eval.davis_folders import evaluate_davis, write_davis_csvs  # noqa: E402
from ditf_track.testing.davis import (  # noqa: E402
    MULTI_SEQUENCES,
    save_palette_png,
    write_multi_object_case,
)

STAT_KEYS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
Objects = dict[str, dict[str, float]]


def _binary_official_layout(davis: Path, root: Path, sequences: list[str]) -> tuple[Path, Path]:
    """The binary case as the official tool reads it: ids {0, 1} for both GT and prediction."""
    gt_root = root / "DAVIS" / "Annotations" / "480p"
    pred_root = root / "results"
    for seq in sequences:
        for png in sorted((davis / "Annotations" / "480p" / seq).glob("*.png")):
            gt = (np.asarray(Image.open(png)) > 0).astype(np.uint8)
            save_palette_png(gt, gt_root / seq / png.name)
            pred_png = davis / "Predictions" / "osvos" / "480p" / seq / png.name
            pred = (np.asarray(Image.open(pred_png)) > 0).astype(np.uint8)
            save_palette_png(pred, pred_root / seq / png.name)
    return pred_root, gt_root


def _official_root(davis: Path, gt_root: Path, sequences: list[str]) -> Path:
    """A DAVIS folder for the official loader: Annotations, JPEGImages (links), ImageSets."""
    root = gt_root.parents[1] if gt_root.parent.name == "Annotations" else gt_root.parent / "DAVIS"
    annotations = root / "Annotations" / "480p"
    if annotations.resolve() != gt_root.resolve():
        annotations.parent.mkdir(parents=True, exist_ok=True)
        annotations.symlink_to(gt_root.resolve(), target_is_directory=True)
    images = root / "JPEGImages" / "480p"
    images.mkdir(parents=True, exist_ok=True)
    for seq in sequences:
        n_masks = len(list((gt_root / seq).glob("*.png")))
        (images / seq).mkdir(exist_ok=True)
        jpgs = sorted((davis / "JPEGImages" / "480p" / seq).glob("*.jpg"))[:n_masks]
        for jpg in jpgs:
            (images / seq / jpg.name).symlink_to(jpg.resolve())
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "val.txt").write_text("".join(f"{s}\n" for s in sequences))
    return root


def _load_official(checkout: Path, git_dir: Path | None) -> tuple[Any, str]:
    if not (checkout / "davis2017" / "evaluation.py").is_file():
        if git_dir is None:
            raise SystemExit(f"no official checkout at {checkout}; pass --official-git GIT_DIR")
        subprocess.run(["git", "clone", "-q", str(git_dir), str(checkout)], check=True)
    commit = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    # Runtime shim: aliases removed from numpy >= 1.24 that older official commits use.
    for alias, value in (("bool", bool), ("int", int), ("float", float)):
        if not hasattr(np, alias):
            setattr(np, alias, value)
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.path.insert(0, str(checkout))
    from davis2017.evaluation import DAVISEvaluation

    return DAVISEvaluation, commit


def _run_official(evaluation_cls: Any, davis_root: Path, pred_root: Path) -> Objects:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = evaluation_cls(davis_root=str(davis_root), task="semi-supervised", gt_set="val")
        res = evaluator.evaluate(str(pred_root))
    names = list(res["J"]["M_per_object"])
    out: Objects = {}
    for i, name in enumerate(names):
        out[name] = {
            f"{m}-{s}": float(res[m][k][i])
            for m in ("J", "F")
            for k, s in (("M", "Mean"), ("R", "Recall"), ("D", "Decay"))
        }
    return out


def _official_csvs(checkout: Path, davis_root: Path, pred_root: Path) -> tuple[str, str]:
    """The two CSVs written by the official evaluation_method.py (run with the same shim)."""
    shim = (
        "import numpy as np, runpy, sys\n"
        "for a, v in (('bool', bool), ('int', int), ('float', float)):\n"
        "    hasattr(np, a) or setattr(np, a, v)\n"
        f"sys.path.insert(0, {str(checkout)!r})\n"
        f"runpy.run_path({str(checkout / 'evaluation_method.py')!r}, run_name='__main__')\n"
    )
    cmd = [sys.executable, "-c", shim, "--task", "semi-supervised", "--set", "val"]
    cmd += ["--davis_path", str(davis_root), "--results_path", str(pred_root)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    texts = []
    for name in ("global_results-val.csv", "per-sequence_results-val.csv"):
        texts.append((pred_root / name).read_text())
        (pred_root / name).unlink()
    return texts[0], texts[1]


def _our_csvs(pred_root: Path, gt_root: Path, out: Path) -> tuple[str, str]:
    paths = write_davis_csvs(evaluate_davis(pred_root, gt_root), out)
    return paths[0].read_text(), paths[1].read_text()


def _run_ours(pred_root: Path, gt_root: Path, workers: int | None) -> Objects:
    result = evaluate_davis(pred_root, gt_root, workers=workers)
    return dict(result.object_statistics())


def _run_vos_benchmark(pred_root: Path, gt_root: Path) -> Objects:
    from vos_benchmark.benchmark import benchmark

    with contextlib.redirect_stdout(io.StringIO()):
        _, _, _, per_video = benchmark([str(gt_root)], [str(pred_root)], verbose=False)
    out: Objects = {}
    for video, (iou, boundary_f) in sorted(per_video[0].items()):
        for obj in sorted(iou):
            out[f"{video}_{obj}"] = {"J-Mean": iou[obj] / 100, "F-Mean": boundary_f[obj] / 100}
    return out


def _cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the worker pools)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn: Callable[[], Objects]) -> tuple[float, float, Objects]:
    """(wall seconds, CPU seconds, result) of one run."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    while multiprocessing.active_children():  # reap pool workers so their CPU time counts
        time.sleep(0.01)
    return wall, _cpu_seconds() - cpu, out


def _max_diff(ours: Objects, ref: Objects) -> str:
    """Largest |difference| over the objects and keys both report; objects only one reports."""
    common = [o for o in ref if o in ours]
    diffs = [abs(ours[o][k] - ref[o][k]) for o in common for k in ref[o] if k in ours[o]]
    text = f"{max(diffs):.1e}" if diffs else "n/a"
    extra = sorted(set(ours) - set(ref))
    missing = sorted(set(ref) - set(ours))
    if extra:
        text += f" (also scores {', '.join(extra)})"
    if missing:
        text += f" (misses {', '.join(missing)})"
    return text


def _global(objects: Objects) -> float:
    j = float(np.mean([s["J-Mean"] for s in objects.values()]))
    f = float(np.mean([s["F-Mean"] for s in objects.values()]))
    return (j + f) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis", type=Path, default=REPO.parent / "shared" / "data" / "davis")
    parser.add_argument("--official", type=Path, default=Path("/tmp/davis2017-evaluation"))
    parser.add_argument(
        "--official-git",
        type=Path,
        default=Path("/work/.mirror/davisvideochallenge+davis2017-evaluation/repo"),
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the best is kept")
    parser.add_argument("--record", action="store_true", help="print the official numbers")
    parser.add_argument("--no-append", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()

    davis: Path = args.davis
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    evaluation_cls, official_commit = _load_official(args.official, args.official_git)
    try:
        import vos_benchmark  # noqa: F401

        have_vos = True
    except ImportError:
        have_vos = False
    binary_sequences = sorted(p.name for p in (davis / "Annotations" / "480p").iterdir())
    n_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

    rows: list[tuple[str, str, float, float, str, str, str]] = []
    recorded: dict[str, Objects] = {}
    csv_notes: list[str] = []
    official_csv_texts: dict[str, tuple[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="ditf-davis-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cases = {}
        off_pred, off_gt = _binary_official_layout(davis, tmp / "binary", binary_sequences)
        cases["binary"] = (
            davis / "Predictions" / "osvos" / "480p",
            davis / "Annotations" / "480p",
            off_pred,
            _official_root(davis, off_gt, binary_sequences),
            off_gt,
        )
        multi_pred, multi_gt = write_multi_object_case(davis, tmp / "multi")
        cases["multi"] = (
            multi_pred,
            multi_gt,
            multi_pred,
            _official_root(davis, multi_gt, sorted(MULTI_SEQUENCES)),
            multi_gt,
        )
        for case, (pred, gt, off_pred, off_root, off_gt) in cases.items():
            tools: dict[str, Callable[[], Objects]] = {
                "official davis2017-evaluation": partial(
                    _run_official, evaluation_cls, off_root, off_pred
                )
            }
            for workers in (1, n_workers) if n_workers > 1 else (1,):
                name = f"ditf-track ({workers} worker{'s' if workers > 1 else ''})"
                tools[name] = partial(_run_ours, pred, gt, workers)
            if have_vos:
                vos_pred = tmp / f"vos-{case}"
                shutil.copytree(off_pred, vos_pred)  # it writes results.csv into the folder
                tools[f"vos-benchmark 0.1.0 ({n_workers} proc)"] = partial(
                    _run_vos_benchmark, vos_pred, off_gt
                )
            # Runs interleave across tools, so a burst of load on the shared cores hits all alike.
            best: dict[str, tuple[float, float, Objects]] = {}
            for _ in range(args.repeat):
                for name, fn in tools.items():
                    wall, cpu, out = _timed(fn)
                    prev = best.get(name)
                    best[name] = (
                        min(wall, prev[0]) if prev else wall,
                        min(cpu, prev[1]) if prev else cpu,
                        out,
                    )
            official = best["official davis2017-evaluation"][2]
            recorded[case] = official
            t_off, cpu_off = best["official davis2017-evaluation"][:2]
            n_frames = sum(len(list((gt / s).glob("*.png"))) - 2 for s in os.listdir(gt))
            label = f"{case} ({len(official)} obj, {n_frames} frames)"
            for name, (wall, cpu, out) in best.items():
                diff = "0" if out is official else _max_diff(out, official)
                speed = f"{t_off / wall:.1f}× / {cpu_off / cpu:.1f}×"
                rows.append((label, name, wall, cpu, speed, diff, f"{_global(out):.4f}"))
            off_csvs = _official_csvs(args.official, off_root, off_pred)
            official_csv_texts[case] = off_csvs
            same = _our_csvs(pred, gt, tmp / f"csv-{case}") == off_csvs
            csv_notes.append(f"{case}: {'identical' if same else 'DIFFERENT'}")

    header = (
        "case",
        "tool",
        "wall s",
        "CPU s",
        "speed-up wall / CPU",
        "max |Δ| vs official",
        "J&F-Mean",
    )
    table = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for case, tool, wall, cpu, speed, diff, jf in rows:
        table.append(f"| {case} | {tool} | {wall:.3f} | {cpu:.3f} | {speed} | {diff} | {jf} |")
    text = "\n".join(table)
    text += "\n\nCSV files vs the official evaluation_method.py, byte for byte: "
    text += "; ".join(csv_notes)
    print(text)
    if args.record:
        for case, objects in recorded.items():
            print(f"\n# official numbers, {case} case (davis2017-evaluation {official_commit})")
            print("{")
            for name, stats in objects.items():
                vals = ", ".join(f'"{k}": {stats[k]!r}' for k in STAT_KEYS)
                print(f'    "{name}": {{{vals}}},')
            print("}")
            for csv_text in official_csv_texts[case]:
                print(repr(csv_text))

    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if not args.no_append:
        append_results(
            "DAVIS J&F evaluator (`benchmarks/eval_davis.py`)",
            f"- device: {device_name()}\n"
            f"- 1-min load average at start / end: {load_start:.2f} / {load_end:.2f} "
            "(other processes share these cores)\n"
            f"- official: davis2017-evaluation {official_commit[:12]}; seconds are the best of "
            f"{args.repeat} interleaved runs of the whole evaluation (PNG reading included); "
            f"CPU s counts the worker processes too\n\n{text}\n",
        )


if __name__ == "__main__":
    main()
