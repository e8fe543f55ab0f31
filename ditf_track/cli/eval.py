"""``ditf-track eval <benchmark>``: one sub-subcommand per evaluator, each on its official protocol.

Pairs (SPair-71k, PF-PASCAL, AP-10K, HPatches) are scored with the pair matcher, videos (DAVIS,
TAP-Vid, BADJA/JHMDB keypoints) with the tracker; every run but ``davis --pred`` writes a
resumable run folder (:mod:`ditf_track.eval.runs`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from tqdm import tqdm

from ..batch import (
    PoolStats,
    RayPool,
    WorkerPool,
    check_cluster_fits,
    connect,
    import_ray,
)
from ..config import PointsMode, TrackerConfig
from ..errors import ConfigError, DitfError, InputError
from ..eval import correspondence as corr
from ..eval._run import Record, ResumableRun
from ..eval.correspondence import AP10K_SUBSETS, SPAIR_SPLITS, CorrespondencePair
from ..eval.davis_folders import evaluate_davis, write_davis_csvs, write_davis_json
from ..eval.hpatches import MAX_KEYPOINTS, load_hpatches
from ..eval.runs.davis import DavisRun, davis_sequences, open_davis_dir
from ..eval.runs.pairs import DETECTORS, HPatchesEvaluation, PCKEvaluation, open_eval_dir
from ..outputs import RunDir, check_writable_file, listing_digest, refuse_input_overlap
from ..presets import DEFAULT_PRESET, ResolvedPairProtocol, load_preset, resolve_pair_protocol
from ..progress import ProgressEvent
from ..prompts import PromptRule
from ._options import (
    Handler,
    add_matcher_options,
    add_model_options,
    add_propagation_options,
    add_tracker_options,
    build_tracker,
    matcher_from_args,
    positive_int,
    profile_numerics,
    tracker_config,
)
from ._ray import (
    add_ray_options,
    check_ray_options,
    preset_worker_memory,
    worker_exit_after,
    worker_pool,
)
from .batch import propagate_davis_on_ray

if TYPE_CHECKING:
    from ..eval.runs.points import KeypointDataset

log = logging.getLogger("ditf_track")
T = TypeVar("T")


def add_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="score results on a standard benchmark",
        description="Score results on a standard benchmark with its official protocol.",
    )
    eval_sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    _add_davis(eval_sub)
    for benchmark in _PCK_BENCHMARKS:
        _add_pck(eval_sub, benchmark)
    _add_hpatches(eval_sub)
    _add_tapvid(eval_sub)
    _add_keypoints(eval_sub)


# -- what the run-folder evaluations share ----------------------------------------------------
def _add_run_options(parser: argparse.ArgumentParser, items: str = "pairs") -> None:
    """--out/--resume/--overwrite/--limit; ``items`` names what the run's log records."""
    g = parser.add_argument_group("run")
    g.add_argument("--out", type=Path, required=True, help="output folder of the run")
    g.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in a non-empty --out (finished {items} are not recomputed)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in --out (deletes only the files an earlier run there wrote)",
    )
    g.add_argument(
        "--limit", type=int, metavar="N", help=f"only the first N {items} (a quick check)"
    )


def _ray_session(handler: Handler) -> Handler:
    """``handler`` with ``--ray``: the Ray extra checked first (one line naming it), and a
    cluster the handler started (``--ray local``) stopped at its end, whatever happened."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        if not args.ray:
            return handler(args)
        ray = import_ray()  # before anything else: one line naming the extra
        check_ray_options(args)
        was_up = ray.is_initialized()
        try:
            return handler(args)
        finally:
            if not was_up and ray.is_initialized():
                ray.shutdown()

    return run


def _join_ray(args: argparse.Namespace) -> None:
    """With --ray: join (or start) the cluster and refuse, in one line, workers that no node
    can place — before the run folder is opened or a model resolved."""
    if not args.ray:
        return
    ray = import_ray()
    connect(ray, args.ray)
    check_cluster_fits(ray, _eval_workers(args), "--ray-workers")


def _open_eval_dir(
    args: argparse.Namespace,
    benchmark: str,
    owned: Sequence[str],
    inputs: Sequence[tuple[str, Path | None]],
) -> RunDir:
    """An evaluation's --out, checked and locked before any model is resolved (with --ray,
    after the cluster is joined and the workers' placement checked: a refusal leaves no
    folder)."""
    _join_ray(args)
    return open_eval_dir(
        args.out, benchmark, owned, inputs=inputs, resume=args.resume, overwrite=args.overwrite
    )


def _limited(items: list[T], limit: int | None) -> list[T]:
    if limit is None:
        return items
    if limit < 1:
        raise ConfigError(f"--limit {limit} must be at least 1")
    return items[:limit]


def _drive(
    run: Iterable[T], desc: str, unit: str, describe: Callable[[T], str], total: int | None
) -> None:
    """Iterate an evaluation to its end under a progress bar showing each outcome."""
    with tqdm(run, total=total, desc=desc, unit=unit, disable=None) as bar:
        for outcome in bar:
            bar.set_postfix_str(describe(outcome))


# -- items sharded over Ray workers (pair and point runners) -------------------------------------
def _load_worker_run(
    run: ResumableRun[Any, Any], build: Callable[[], Any], threads: int
) -> dict[str, Any]:
    """On a Ray worker: the runner's worker copy with its own model (``build``: the library's
    builder with the driver's settings, :func:`matcher_from_args` or :func:`build_tracker`)."""
    torch.set_num_threads(threads)
    return {"run": run.with_model(build()), "done": 0}


def _compute_on_worker(state: dict[str, Any], payload: Any, attempt: int) -> Record:
    """On a Ray worker: one item's record. The test hook (``EXIT_AFTER_FRAMES_ENV``, counted in
    items here) exits a worker that has computed that many items, on an item's first attempt."""
    item, exit_after = payload
    if exit_after is not None and attempt == 0 and state["done"] >= exit_after:
        os._exit(3)  # as if the worker were killed
    record: Record = state["run"].compute(item)
    state["done"] += 1
    return record


class _RayItems:
    """The items of ``run`` computed on ``--ray-workers`` Ray actors, each holding a worker copy
    of ``run`` with the model ``build`` makes (an :class:`~ditf_track.eval._run.ItemEngine`); a
    worker that dies is replaced and its item sent again (``--max-retries``). The cluster is
    joined before the run folder opens (:func:`_join_ray`); the workers start with the first
    item, so a re-run with nothing left to compute loads no model."""

    def __init__(
        self,
        args: argparse.Namespace,
        run: ResumableRun[Any, Any],
        build: Callable[[], Any],
        what: str,
    ) -> None:
        self._args, self._run, self._what = args, run, what
        self._setup = functools.partial(
            _load_worker_run, run.worker_copy(), build, args.cpus_per_worker
        )
        self._exit_after = worker_exit_after()
        self._pool: RayPool | None = None
        self._keys: dict[int, str] = {}
        self._stats = PoolStats()
        self._computed = 0

    def _workers(self) -> RayPool:
        if self._pool is None:
            self._pool = RayPool(
                import_ray(),
                self._setup,
                _compute_on_worker,
                _eval_workers(self._args),
                stats=self._stats,
            )
        return self._pool

    def has_room(self) -> bool:
        return self._workers().has_room()

    def submit(self, position: int, item: Any) -> None:
        self._keys[position] = self._run._key(item)
        self._workers().submit(position, (item, self._exit_after))

    def next_result(self) -> tuple[int, Record]:
        position, ok, value = self._workers().next_result()
        if not ok:
            raise DitfError(
                f"{self._what} {self._keys[position]} failed on a Ray worker: {value} "
                "(the items before it are recorded: run again with --resume)"
            )
        del self._keys[position]
        self._computed += 1
        return position, value

    def close(self) -> None:
        if self._pool is None:
            return
        self._pool.close()
        print(
            f"Ray: {self._computed} {self._what}(s) computed; "
            f"{self._stats.started} worker(s), {self._stats.died} replaced"
        )


def _sharded(
    args: argparse.Namespace,
    run: ResumableRun[Any, T],
    build: Callable[[], Any],
    what: str,
) -> Iterable[T]:
    """``run`` iterated in process, or with its items computed on Ray workers (``--ray``),
    each worker's model made by ``build``, at most twice as many items read ahead as there are
    workers."""
    if not args.ray:
        return run
    engine = _RayItems(args, run, build, what)
    return run.iterate_with(engine, window=2 * args.ray_workers)


def _eval_workers(args: argparse.Namespace) -> WorkerPool:
    """The Ray workers of an evaluation, each asking for the memory of the preset its model
    comes from (the default one when no --model is given, as the builders resolve it)."""
    preset = args.preset or (DEFAULT_PRESET if args.model is None else None)
    return worker_pool(args, preset_worker_memory(args, preset))


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no names in {text!r}; use e.g. cat,dog")
    return names


# -- PCK of semantic correspondence: spair, pf-pascal, ap-10k ---------------------------------
@dataclass(frozen=True)
class _PCKBenchmark:
    """One PCK benchmark's sub-subcommand: its data folder and how its pairs are chosen."""

    name: str
    title: str
    data_help: str
    split_help: str = "default test"
    split_choices: tuple[str, ...] | None = None
    categories: bool = True  # --categories A,B (SPair, PF-PASCAL); AP-10K has --subset instead


_PCK_BENCHMARKS = (
    _PCKBenchmark(
        "spair",
        "SPair-71k",
        "the SPair-71k folder (PairAnnotation/, JPEGImages/)",
        split_choices=SPAIR_SPLITS,
    ),
    _PCKBenchmark(
        "pf-pascal",
        "PF-PASCAL",
        "the PF-dataset-PASCAL folder (with test_pairs_pf_pascal.csv and JPEGImages/)",
        split_help="pair list <split>_pairs_pf_pascal.csv",
    ),
    _PCKBenchmark(
        "ap-10k",
        "AP-10K",
        "the ap-10k folder (ImageAnnotation/, JPEGImages/, PairAnnotation/ from GeoAware-SC)",
        categories=False,
    ),
)


_PROTOCOL_HELP = (
    "Input size, resize, ensemble and upsampling follow --profile's pair protocol (FLUX.1-dev "
    "official: the authors' SPair script, long side 640, PIL bicubic, 8 draws, the unnormalised "
    "map upsampled; paper: 960x960; assumed where the source states them for another "
    "benchmark); --long-side, --square, --resize, --ensemble and --upsample-from replace them. "
    "config.json and metrics.json record every setting."
)


def _add_pck(eval_sub: argparse._SubParsersAction, benchmark: _PCKBenchmark) -> None:
    p = eval_sub.add_parser(
        benchmark.name,
        help=f"{benchmark.title}: PCK of DiTF nearest-neighbour matches",
        description=f"{benchmark.title} semantic correspondence: match each source keypoint into "
        "the target image and report PCK per point and per image, per category and overall. "
        f"{_PROTOCOL_HELP} "
        "Writes config.json, pairs.jsonl (resume state), metrics.json and per_category.csv.",
    )
    p.add_argument("--data", type=Path, required=True, metavar="ROOT", help=benchmark.data_help)
    _add_run_options(p)
    add_model_options(p)
    add_matcher_options(p)
    if not benchmark.categories:
        p.add_argument(
            "--subset", default="intra-species", choices=AP10K_SUBSETS, help="default intra-species"
        )
    p.add_argument(
        "--split", default="test", choices=benchmark.split_choices, help=benchmark.split_help
    )
    if benchmark.categories:
        p.add_argument("--categories", type=_names, metavar="A,B", help="only these categories")
    g = p.add_argument_group("per-image prompts (default: the preset's prompt, or --prompt)")
    g.add_argument(
        "--prompt-template",
        metavar="TEXT",
        help="each image's prompt from its category, e.g. 'a photo of a {category}'",
    )
    g.add_argument(
        "--captions",
        type=Path,
        metavar="FILE.json",
        help="each image's own caption: a JSON object mapping category + image file name (e.g. "
        "car2008_007466.jpg) to the caption, the layout of the authors' "
        "spair_detailed_captions.json; every image of the pairs to run needs one (wins over "
        "--prompt-template)",
    )
    add_ray_options(p, "--ray-workers", "pairs")
    p.set_defaults(handler=_run_pck, benchmark_key=benchmark.name)


def _prompt_rule(args: argparse.Namespace) -> PromptRule:
    """--prompt-template / --captions, checked before anything is read or loaded."""
    rule = PromptRule.from_options(args.prompt_template, args.captions)
    if args.captions is not None and args.prompt_template is not None:
        log.warning("--prompt-template is not used: --captions gives every image its prompt")
    return rule


def _pck_pairs(args: argparse.Namespace) -> tuple[list[CorrespondencePair], dict[str, Any]]:
    """The benchmark's pairs and the options its config.json records."""
    name = args.benchmark_key
    options: dict[str, Any] = {"data": str(args.data.resolve()), "split": args.split}
    options["data_digest"] = listing_digest(args.data)
    if name == "spair":
        pairs = corr.load_spair_pairs(args.data, args.split, args.categories)
        options["categories"] = args.categories
    elif name == "pf-pascal":
        pairs = corr.load_pf_pascal_pairs(args.data, args.split, categories=args.categories)
        options["categories"] = args.categories
    else:
        pairs = corr.load_ap10k_pairs(args.data, args.subset, args.split)
        options["subset"] = args.subset
    return _limited(pairs, args.limit), options


def _pair_protocol(args: argparse.Namespace, benchmark: str) -> ResolvedPairProtocol:
    """The profile's pair protocol for ``benchmark`` with the flags given in its place; written
    back into ``args`` so that :func:`matcher_from_args` builds the matcher it describes."""
    name = args.preset
    if name is None and args.model is None:
        name = DEFAULT_PRESET
    preset = load_preset(name) if name is not None else None
    resolved = resolve_pair_protocol(preset, benchmark, args.profile).replace(
        long_side=args.long_side,
        square=args.square,
        resize=args.resize,
        ensemble=args.ensemble,
        upsample_from=args.upsample_from,
    )
    args.long_side, args.square = resolved.long_side, resolved.square
    args.resize, args.upsample_from = resolved.resize, resolved.upsample_from
    if preset is None or not preset.weight_free:  # the lab baseline draws no noise
        args.ensemble = resolved.ensemble
    return resolved


@_ray_session
def _run_pck(args: argparse.Namespace) -> int:
    name = args.benchmark_key
    protocol = _pair_protocol(args, name)
    if args.captions is None and args.prompt_template is None:
        args.prompt_template = protocol.prompt_template
    rule = _prompt_rule(args)
    pairs, options = _pck_pairs(args)
    prompts = rule.check_pairs(pairs)
    inputs = [("data", args.data), ("captions file", args.captions)]
    run_dir = _open_eval_dir(args, name, PCKEvaluation.owned, inputs)
    try:
        matcher = matcher_from_args(args, prompts, defer_load=bool(args.ray))
        if prompts and matcher.extractor.identity().get("extractor") != "ditf":
            log.warning("the prompts are unused: this extractor takes no text condition")
        run = PCKEvaluation(
            name,
            pairs,
            matcher,
            run_dir,
            options=options,
            protocol=protocol.to_dict(),
            resume=args.resume,
            overwrite=args.overwrite,
            prompts=rule,
        )
        if run.num_resumable:
            print(f"resuming: {run.num_resumable} of {len(run)} pairs already done")
        _drive(
            _sharded(
                args,
                run,
                functools.partial(matcher_from_args, args, prompts),
                "pair",
            ),
            name,
            "pair",
            lambda o: f"{o.category} PCK@0.10 {o.pck.get('pck@0.10', 0):.2f}",
            len(run),
        )
        metrics = run.finish()
    finally:
        run_dir.close()
    alphas = metrics["alphas"]
    print(f"{name}: {metrics['num_pairs']} pairs, {metrics['num_points']} points")
    for kind in ("pck_per_point", "pck_per_image"):
        values = "  ".join(
            f"@{a:.2f} {100 * (metrics[f'{kind}@{a:.2f}'] or 0):.1f}" for a in alphas
        )
        print(f"{kind:15s} {values}")
    print(run.out / "metrics.json")
    return 0


# -- hpatches -----------------------------------------------------------------------------------
def _add_hpatches(eval_sub: argparse._SubParsersAction) -> None:
    p = eval_sub.add_parser(
        "hpatches",
        help="HPatches homography accuracy (corner error at 1/3/5 px)",
        description="HPatches: keypoints from an OpenCV detector, DiTF descriptors at them, "
        "mutual nearest neighbours, cv2.findHomography (LMEDS) and the mean corner error; "
        "accuracy at 1, 3 and 5 px for all, illumination and viewpoint sequences. "
        f"{_PROTOCOL_HELP} Writes "
        "config.json, pairs.jsonl, metrics.json, per_category.csv and per_pair.csv.",
    )
    p.add_argument(
        "--data", type=Path, required=True, metavar="ROOT", help="hpatches-sequences-release"
    )
    p.add_argument(
        "--detector",
        default="sift",
        choices=DETECTORS,
        help="OpenCV keypoint detector (default sift; the paper's SuperPoint needs weights "
        "that are not bundled)",
    )
    p.add_argument(
        "--max-keypoints",
        type=int,
        default=MAX_KEYPOINTS,
        metavar="N",
        help=f"strongest keypoints per image (default {MAX_KEYPOINTS})",
    )
    p.add_argument(
        "--method", default="LMEDS", choices=("LMEDS", "RANSAC"), help="cv2.findHomography"
    )
    p.add_argument(
        "--exclude-high-res",
        action="store_true",
        help="leave out the 8 sequences above 1600x1200 (the 108-sequence set of D2-Net)",
    )
    _add_run_options(p)
    add_model_options(p)
    add_matcher_options(p, points=False)
    add_ray_options(p, "--ray-workers", "pairs")
    p.set_defaults(handler=_run_hpatches)


@_ray_session
def _run_hpatches(args: argparse.Namespace) -> int:
    sequences = _limited(
        load_hpatches(args.data, exclude_high_res=args.exclude_high_res), args.limit
    )
    protocol = _pair_protocol(args, "hpatches")
    run_dir = _open_eval_dir(args, "hpatches", HPatchesEvaluation.owned, [("data", args.data)])
    try:
        run = HPatchesEvaluation(
            sequences,
            matcher_from_args(args, defer_load=bool(args.ray)),
            run_dir,
            detector=args.detector,
            max_keypoints=args.max_keypoints,
            method=args.method,
            options={
                "data": str(args.data.resolve()),
                "exclude_high_res": args.exclude_high_res,
                "data_digest": listing_digest(args.data),
            },
            protocol=protocol.to_dict(),
            resume=args.resume,
            overwrite=args.overwrite,
        )
        _drive(
            _sharded(args, run, functools.partial(matcher_from_args, args), "pair"),
            "hpatches",
            "pair",
            lambda o: f"{o.sequence}/{o.target} err {o.corner_error:.1f}",
            len(run),
        )
        metrics = run.finish()
    finally:
        run_dir.close()
    for group in ("all", "illumination", "viewpoint"):
        acc = "  ".join(
            f"@{e}px {100 * (metrics[group][e] or 0):.1f}" for e in metrics["thresholds_px"]
        )
        print(f"{group:13s} {acc}  ({metrics['num_pairs'][group]} pairs)")
    print(run.out / "metrics.json")
    return 0


# -- davis: score a folder of masks, or propagate a split and score it ------------------------
def _add_davis(eval_sub: argparse._SubParsersAction) -> None:
    parser = eval_sub.add_parser(
        "davis",
        help="DAVIS video object segmentation: J&F (region J, boundary F)",
        description=(
            "DAVIS semi-supervised J&F with the official davis2017-evaluation conventions: the "
            "first and last frame are not scored, objects are the ids of the first ground-truth "
            "frame, ground-truth 255 counts as background, boundary tolerance 0.008 of the "
            "diagonal. Prints the official global and per-sequence tables."
        ),
    )
    # Where the masks to score come from: exactly one source per run.
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--pred",
        metavar="PRED_ROOT",
        type=Path,
        help="folder of predicted masks, <sequence>/<frame>.png (palette or grayscale ids), "
        "named like the ground-truth frames",
    )
    source.add_argument(
        "--data",
        metavar="DAVIS_ROOT",
        type=Path,
        help="a DAVIS-2017 root (JPEGImages/480p, Annotations/480p, ImageSets/2017): propagate "
        "every sequence of --split from its first annotation with --preset's video settings "
        "(the official DiTF DAVIS protocol), write the masks to --out and score them",
    )
    parser.add_argument(
        "--gt",
        metavar="GT_ROOT",
        type=Path,
        help="ground-truth folder, <sequence>/<frame>.png (e.g. DAVIS/Annotations/480p); "
        "required with --pred",
    )
    parser.add_argument(
        "--sequences",
        metavar="A,B|LIST.txt",
        type=_sequence_list,
        help="sequences to score, in this order: comma-separated names, or a text file with one "
        "name per line such as DAVIS/ImageSets/2017/val.txt (default: every sequence folder of "
        "the ground truth)",
    )
    parser.add_argument(
        "--mode",
        choices=("multi", "binary"),
        help="multi: DAVIS-2017 palette ids, scored per object; binary: DAVIS-2016 {0,255} "
        "masks, one object (ground truth > 0 against prediction > 0). Default: binary when every "
        "first ground-truth frame holds only 0 and 255, else multi",
    )
    parser.add_argument(
        "--json", metavar="OUT.json", type=Path, help="also write the metrics as JSON here"
    )
    parser.add_argument(
        "--csv",
        metavar="DIR",
        type=Path,
        help="also write the official global_results-<set>.csv and "
        "per-sequence_results-<set>.csv into this folder",
    )
    parser.add_argument(
        "--set",
        dest="subset",
        metavar="SET",
        default="val",
        help="subset name used in the CSV file names and table titles (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        metavar="N",
        type=positive_int,
        help="processes to score with (default: the number of usable CPU cores; 1 = no pool)",
    )
    run = parser.add_argument_group("with --data")
    run.add_argument(
        "--split",
        default="val",
        help="val, train, or a text file with one sequence name per line (default val)",
    )
    run.add_argument("--out", type=Path, help="output folder for the masks and metrics")
    run.add_argument(
        "--resume", action="store_true", help="skip the sequences already written completely"
    )
    run.add_argument("--overwrite", action="store_true", help="start the run in --out again")
    run.add_argument(
        "--short-side",
        type=positive_int,
        help="model input short side (default: the preset's, 960)",
    )
    run.add_argument(
        "--no-disk-cache", action="store_true", help="keep features in memory only (no files)"
    )
    add_ray_options(parser, "--ray-workers", "sequences")
    add_propagation_options(parser, label_default="nearest")
    add_model_options(parser)
    parser.set_defaults(handler=_run_davis)


def _sequence_list(text: str) -> list[str]:
    """Names from ``a,b,c`` or from a file with one name per line (DAVIS ImageSets style)."""
    path = Path(text)
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read sequence list {path}: {exc}") from None
    else:
        names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no sequence names in {text!r}; use e.g. blackswan,dog")
    return names


def _format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Right-aligned columns like pandas' to_string(index=False); floats with 3 decimals."""
    cells = [list(columns)] + [
        [v if isinstance(v, str) else f"{v:.3f}" for v in row] for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        " ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells
    )


def _run_davis(args: argparse.Namespace) -> int:
    if args.data is not None:
        return _run_davis_propagation(args)
    if args.gt is None:
        raise ConfigError("--pred needs --gt GT_ROOT (the folder of <sequence>/<frame>.png)")
    inputs = [("ground truth", args.gt), ("predictions", args.pred)]
    if args.json is not None:
        refuse_input_overlap(args.json, inputs, "--json")
        check_writable_file(args.json, "--json")
    if args.csv is not None:
        table = args.csv / f"global_results-{args.subset}.csv"
        refuse_input_overlap(table, inputs, "--csv")
        check_writable_file(table, "--csv")

    def progress(event: ProgressEvent) -> None:
        log.info("[%d/%d] %s", event.done, event.total, event.item)

    result = evaluate_davis(
        args.pred,
        args.gt,
        sequences=args.sequences,
        mode=args.mode,
        workers=args.workers,
        progress=progress,
    )
    global_columns, global_rows = result.global_table()
    rule = "-" * 27
    print(f"{rule} Global results for {args.subset} {rule}")
    print(_format_table(global_columns, global_rows))
    seq_columns, seq_rows = result.per_sequence_table()
    print(f"\n---------- Per sequence results for {args.subset} ----------")
    print(_format_table(seq_columns, seq_rows))
    if args.json is not None:
        print(f"\nmetrics written to {write_davis_json(result, args.json)}")
    if args.csv is not None:
        paths = write_davis_csvs(result, args.csv, args.subset)
        print(f"CSVs written to {paths[0]} and {paths[1]}")
    return 0


@_ray_session
def _run_davis_propagation(args: argparse.Namespace) -> int:
    """``eval davis --data``: propagate a split with the official protocol, then score it."""
    if args.out is None:
        raise ConfigError("--data needs --out DIR for the masks and metrics")
    if args.preset is None and args.model is None:
        raise ConfigError(
            "eval davis --data needs --preset NAME (e.g. flux, the paper's DAVIS model, or lab, "
            "the colour baseline): a benchmark run never picks a model silently"
        )
    davis_sequences(args.data, args.split)
    args.numerics = profile_numerics(args)
    # The official DiTF DAVIS script: long side floored to a multiple of 32, OpenCV bilinear.
    config = tracker_config(args, long_multiple=32, rounding="floor", interpolation="bilinear")
    _join_ray(args)
    run_dir = open_davis_dir(args.out, args.split, args.data, args.resume, args.overwrite)
    try:
        return _propagate_davis(args, config, run_dir)
    finally:
        run_dir.close()


def _propagate_davis(args: argparse.Namespace, config: TrackerConfig, run_dir: RunDir) -> int:
    """The model-dependent part of ``eval davis --data``, once ``--out`` is open and locked."""
    tracker = build_tracker(config, defer_load=bool(args.ray))
    run = DavisRun(
        args.data,
        tracker,
        run_dir,
        split=args.split,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    if args.ray:
        propagate_davis_on_ray(args, config, run)
    frames_bar = tqdm(desc="frames", unit="frame", position=1, disable=None, leave=False)

    def on_progress(event: ProgressEvent) -> None:
        if event.phase == "propagate":
            if event.done == 0:
                frames_bar.reset(total=event.total)
            frames_bar.update(event.done - frames_bar.n)

    try:
        with tqdm(total=len(run), desc="sequences", unit="seq", disable=None) as bar:
            for outcome in run.iterate(progress=on_progress):
                bar.set_postfix_str(outcome.name + (" (done before)" if outcome.resumed else ""))
                bar.update(1)
    finally:
        frames_bar.close()
        tracker.cache.close()
    result = run.finish(workers=args.workers)
    columns, rows = result.global_table()
    print(_format_table(columns, rows))
    seq_columns, seq_rows = result.per_sequence_table()
    print(_format_table(seq_columns, seq_rows))
    print(f"masks, metrics.json and CSVs written to {args.out}")
    return 0


# -- point tracking: tapvid and keypoints (BADJA, JHMDB) --------------------------------------
def _add_tracking_run_options(
    p: argparse.ArgumentParser,
    handler: Handler,
    mode_default: str | None = "query",
    mode_default_help: str = "default query",
) -> None:
    """What the point-tracking evaluations share after their data options: the run folder and
    everything that builds the tracker."""
    _add_run_options(p, "videos")
    add_tracker_options(
        p,
        "model input short side in pixels (default: the preset's video setting, 960)",
        mode_default,
        mode_default_help,
    )
    p.set_defaults(handler=handler)


def _add_tapvid(eval_sub: argparse._SubParsersAction) -> None:
    p = eval_sub.add_parser(
        "tapvid",
        help="TAP-Vid point tracking: AJ, delta_avg, OA (DAVIS pickle or Kinetics shards)",
        description="TAP-Vid with the reference protocol (google-deepmind/tapnet): queries "
        "sampled 'first' or 'strided', tracks scored at 256x256 (average Jaccard, "
        "average_pts_within_thresh, occlusion accuracy), per video and the mean over videos. "
        "Features come from the stored frames at the tracker's short side, not from 256x256. "
        "Writes config.json, videos.jsonl (resume state), tracks/<video>.npz, metrics.json and "
        "per_video.csv.",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="PKL_OR_DIR",
        help="tapvid_davis.pkl, or the folder of TAP-Vid-Kinetics shards *_of_0010.pkl",
    )
    p.add_argument(
        "--query-mode", choices=["first", "strided"], default="first", help="default first"
    )
    _add_tracking_run_options(p, _run_tapvid)
    add_ray_options(p, "--ray-workers", "videos")


def _add_keypoints(eval_sub: argparse._SubParsersAction) -> None:
    p = eval_sub.add_parser(
        "keypoints",
        help="keypoint tracking PCK: BADJA (PIPs protocol) or JHMDB (CRW protocol)",
        description="Track annotated keypoints and score PCK. BADJA: --data a "
        "joint_annotations/<seq>.json with --frames/--masks the sequence's DAVIS JPEGImages and "
        "Annotations folders (or a folder of json files with --frames/--masks holding one "
        "<seq>/ folder each); PCK@0.2 of sqrt(mask area), mean over videos. JHMDB: --data the "
        "root with joint_positions/ and Rename_Images/; PCK@0.1/0.2 of 0.6 x the joint box "
        "diagonal, pooled per joint. Writes config.json, videos.jsonl, tracks/, metrics.json "
        "and per_video.csv.",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="JSON_OR_ROOT",
        help="BADJA <seq>.json or joint_annotations/ folder, or the JHMDB root",
    )
    p.add_argument("--frames", type=Path, help="BADJA: DAVIS frames (sequence folder or root)")
    p.add_argument("--masks", type=Path, help="BADJA: DAVIS GT masks (sequence folder or root)")
    p.add_argument(
        "--videos",
        type=Path,
        metavar="LIST.txt",
        help="JHMDB: only these videos (<class>/<video> per line, or CRW's split-list lines)",
    )
    # BADJA is scored by query-point trackers (PIPs), JHMDB by heat-map propagation (CRW).
    _add_tracking_run_options(
        p, _run_keypoints, None, "default: query for BADJA (as PIPs), heatmap for JHMDB (as CRW)"
    )
    add_ray_options(p, "--ray-workers", "videos")


@_ray_session
def _run_tapvid(args: argparse.Namespace) -> int:
    # scipy.io (0.3 s, JHMDB's .mat files) stays out of `ditf-track --help`.
    from ..eval.runs.points import TapVidEvaluation

    if not args.data.exists():
        raise InputError(f"TAP-Vid path {args.data} does not exist; pass tapvid_davis.pkl")
    _limited([], args.limit)
    config = tracker_config(args, args.points_mode)  # checked before --out is opened
    run_dir = _open_eval_dir(args, "tapvid", TapVidEvaluation.owned, [("data", args.data)])
    try:
        tracker = build_tracker(config, defer_load=bool(args.ray))
        run = TapVidEvaluation(
            args.data,
            tracker,
            run_dir,
            query_mode=args.query_mode,
            limit=args.limit,
            options={"data": str(args.data.resolve())},
            resume=args.resume,
            overwrite=args.overwrite,
        )
        try:
            _drive(
                _sharded(
                    args,
                    run,
                    functools.partial(build_tracker, config),
                    "video",
                ),
                "tapvid",
                "video",
                lambda o: f"{o.video} AJ {o.metrics['average_jaccard']:.3f}",
                None,
            )
        finally:
            tracker.cache.close()
        metrics = run.finish()
    finally:
        run_dir.close()
    print(
        f"TAP-Vid ({args.query_mode}): {metrics['num_videos']} videos, "
        f"{metrics['num_points']} queries"
    )
    for key, label in (
        ("average_jaccard", "AJ"),
        ("average_pts_within_thresh", "delta_avg"),
        ("occlusion_accuracy", "OA"),
    ):
        print(f"{label:10s} {_percent(metrics[key])}")
    print(run.out / "metrics.json")
    return 0


@_ray_session
def _run_keypoints(args: argparse.Namespace) -> int:
    # scipy.io (0.3 s, JHMDB's .mat files) stays out of `ditf-track --help`.
    from ..eval.runs.points import KeypointEvaluation, badja_videos, jhmdb_videos

    data: Path = args.data
    videos: list[Any]
    dataset: KeypointDataset
    if data.is_dir() and (data / "joint_positions").is_dir():
        dataset = "jhmdb"
        videos = jhmdb_videos(data, args.videos)
    elif data.suffix == ".json" or (data.is_dir() and any(data.glob("*.json"))):
        dataset = "badja"
        if args.frames is None or args.masks is None:
            raise ConfigError(
                "BADJA needs --frames and --masks: the DAVIS JPEGImages and Annotations folders "
                "of the sequence (e.g. JPEGImages/480p/dog, Annotations/480p/dog)"
            )
        videos = badja_videos(data, args.frames, args.masks)
    else:
        raise InputError(
            f"--data {data} is neither a BADJA <seq>.json (or folder of them) nor a JHMDB root "
            "with joint_positions/; check the path"
        )
    videos = _limited(videos, args.limit)
    mode: PointsMode = args.points_mode or ("query" if dataset == "badja" else "heatmap")
    inputs = [("data", data), ("frames", args.frames), ("masks", args.masks)]
    inputs.append(("video list", args.videos))
    config = tracker_config(args, mode)  # checked before --out is opened
    run_dir = _open_eval_dir(args, "keypoints", KeypointEvaluation.owned, inputs)
    try:
        tracker = build_tracker(config, defer_load=bool(args.ray))
        options = {
            "data": str(data.resolve()),
            "frames": str(args.frames.resolve()) if args.frames else None,
            "masks": str(args.masks.resolve()) if args.masks else None,
            "videos": [v.name for v in videos],
        }
        run = KeypointEvaluation(
            dataset,
            videos,
            tracker,
            run_dir,
            options=options,
            resume=args.resume,
            overwrite=args.overwrite,
        )
        if run.num_resumable:
            print(f"resuming: {run.num_resumable} of {len(run)} videos already done")
        try:
            _drive(
                _sharded(
                    args,
                    run,
                    functools.partial(build_tracker, config),
                    "video",
                ),
                dataset,
                "video",
                lambda o: (
                    f"{o.video} " + "  ".join(f"{k} {100 * v:.1f}" for k, v in o.metrics.items())
                ),
                len(run),
            )
        finally:
            tracker.cache.close()
        metrics = run.finish()
    finally:
        run_dir.close()
    print(
        f"{dataset} ({mode} points): {metrics['num_videos']} videos, "
        f"{metrics['num_points']} queried keypoints"
    )
    for key, value in metrics.items():
        if key.startswith("PCK@"):
            print(f"{key:8s} {_percent(value)}")
    print(run.out / "metrics.json")
    return 0
