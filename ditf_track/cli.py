"""The ``ditf-track`` command line. The only module that prints.

``ditf-track VIDEO --mask FIRST.png`` is shorthand for ``ditf-track track VIDEO ...``: a first
argument that is not a subcommand means ``track``. Every :class:`~ditf_track.errors.DitfError`
becomes one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import DitfError

log = logging.getLogger("ditf_track")

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ditf-track",
        description=(
            "Diffusion Transformer features (DiTF) for mask and keypoint propagation in video, "
            "image-pair matching and the standard evaluators. "
            "`ditf-track VIDEO --mask FIRST.png` is short for `ditf-track track VIDEO ...`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ditf-track {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail (to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


# -- options shared by every command that builds a feature extractor --------------------------
def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """--preset / --model / --family, the device, and every DiTF setting as an override."""
    from .features import CONDITION_MODES, DISCARD_STAGES, FEATURE_MODES
    from .presets import DEFAULT_PRESET, available_presets

    g = parser.add_argument_group("model")
    g.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=f"model and settings preset: {', '.join(available_presets())} (default "
        f"{DEFAULT_PRESET}, ungated; 'lab' is a weight-free colour baseline, not DiTF)",
    )
    g.add_argument(
        "--model",
        metavar="PATH_OR_ID",
        help="a hub id or a local folder in the hub's layout (transformer/, vae/, "
        "text_encoder*/, tokenizer*/, scheduler/); with --preset, replaces its model",
    )
    g.add_argument(
        "--family",
        choices=["pixart", "sd3", "flux"],
        help="the DiT family of --model when no --preset is given (SD3.5 is sd3)",
    )
    g.add_argument("--revision", help="hub revision (branch, tag or commit) of the model")
    g.add_argument(
        "--local-files-only",
        action="store_true",
        help="never touch the network: use the local Hugging Face cache (as HF_HUB_OFFLINE=1)",
    )
    g.add_argument(
        "--device",
        default="auto",
        help="auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps (default auto)",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto = bf16 on CUDA sm80+, fp16 on older CUDA and MPS, fp32 on CPU",
    )
    g.add_argument(
        "--cache-dir",
        help="cache root for text embeddings and features (default $DITF_TRACK_CACHE or "
        "~/.cache/ditf-track)",
    )
    d = parser.add_argument_group("DiTF settings (default: the preset's)")
    d.add_argument("--t", type=int, help="diffusion timestep in 0..999")
    d.add_argument("--k", type=int, help="block index (Flux: 0-18 double, 19-56 single)")
    d.add_argument("--prompt", help="text condition (default: the preset's; '' = empty prompt)")
    d.add_argument("--guidance", type=float, help="Flux-dev guidance value (default 3.5)")
    d.add_argument(
        "--feature-mode",
        choices=FEATURE_MODES,
        help="original = block feature without AdaLN; adaln; adaln+discard (DiTF, default)",
    )
    d.add_argument(
        "--condition",
        choices=CONDITION_MODES,
        help="what conditions the AdaLN modulation: timestep and text (default), t or c alone",
    )
    d.add_argument(
        "--discard-stage",
        choices=DISCARD_STAGES,
        help="zero the massive channels after the AdaLN (the paper, default) or before the "
        "LayerNorm (the official code)",
    )
    d.add_argument(
        "--discard-ratio",
        type=float,
        help="a channel is massive at |v| >= RATIO x median |v| (default 100, the paper)",
    )
    d.add_argument("--seed", type=int, help="noise seed (default 0)")
    d.add_argument("--ensemble", type=int, help="noise draws averaged before the LayerNorm")
    d.add_argument("--batch-size", type=int, help="images per forward pass (default: all)")


def _extractor_from_args(args: argparse.Namespace, task: str) -> Any:
    """Build the extractor the model options describe (a DiTFExtractor or the lab baseline)."""
    from .extractor import build_extractor
    from .presets import DEFAULT_PRESET

    preset = args.preset
    if preset is None and args.model is None:
        preset = DEFAULT_PRESET
    overrides = {
        name: getattr(args, name)
        for name in (
            "t",
            "k",
            "prompt",
            "guidance",
            "feature_mode",
            "condition",
            "discard_stage",
            "discard_ratio",
            "seed",
            "ensemble",
        )
        if getattr(args, name, None) is not None
    }
    kwargs: dict[str, Any] = dict(overrides)
    if preset != "lab":
        kwargs.update(
            revision=args.revision,
            local_files_only=args.local_files_only or None,
            cache_dir=args.cache_dir,
            batch_size=args.batch_size,
        )
    elif args.model is not None or overrides:
        log.warning("the lab preset has no model or DiTF settings; ignoring them")
        kwargs = {}
    return build_extractor(
        preset,
        task,  # type: ignore[arg-type]
        model=args.model,
        family=args.family,
        device=args.device,
        dtype=args.dtype,
        **kwargs,
    )


def _fresh_output_dir(path: Path, overwrite: bool) -> Path:
    """A temporary sibling of ``path`` to write into; renamed over ``path`` by ``_publish``."""
    from .errors import OutputError

    if path.exists() and any(path.iterdir()) and not overwrite:
        raise OutputError(
            f"output folder {path} exists and is not empty; choose another --out or pass "
            "--overwrite"
        )
    tmp = path.with_name(f".{path.name}.incomplete")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


# -- extract ----------------------------------------------------------------------------------
def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="DiTF features of an image, a video or a frame folder to a safetensors file",
        description="Write the DiTF feature maps of INPUT to --out: one tensor 'features' "
        "(T, C, h, w) on the token grid, L2-normalised per cell, with the frame names, sizes, "
        "massive channels and settings in the file's metadata ('ditf_track', JSON). Images use "
        "the preset's correspondence settings (960x960 by default), videos and frame folders "
        "its video settings (short side 960).",
    )
    p.add_argument("input", type=Path, help="an image, a video (mp4/avi/mov/mkv) or a frame folder")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, help="square model input side (images default 960)")
    size.add_argument("--short-side", type=int, help="resize the short side to N (videos: 960)")
    size.add_argument("--long-side", type=int, help="resize the long side to N")
    p.add_argument("--start", type=int, default=0, help="first frame of a video (default 0)")
    p.add_argument("--end", type=int, help="stop before this frame (default: the last)")
    p.add_argument("--stride", type=int, default=1, help="take every N-th frame (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_model_options(p)
    p.set_defaults(handler=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .errors import OutputError
    from .export import extract_to_safetensors, input_size_for, open_input

    if args.out.exists() and not args.overwrite:
        raise OutputError(f"{args.out} exists; choose another --out or pass --overwrite")
    source = open_input(args.input, start=args.start, end=args.end, stride=args.stride)
    is_image = isinstance(source, np.ndarray)
    task = "correspondence" if is_image else "video"
    extractor = _extractor_from_args(args, task)
    square, short, long = args.size, args.short_side, args.long_side
    if square is None and short is None and long is None:
        if is_image:
            square = _preset_value(args, "image_size", 960, task)
        else:
            short = _preset_value(args, "short_side", 960, task)
    size = input_size_for(
        source, square=square, short_side=short, long_side=long, multiple=extractor.stride
    )
    total = 1 if is_image else len(source)
    with tqdm(total=total, desc="extract features", unit="frame", disable=None) as bar:
        path = extract_to_safetensors(
            extractor,
            source,
            args.out,
            size=size,
            batch_size=args.batch_size or 4,
            progress=lambda done, _total: bar.update(done - bar.n),
        )
    print(f"{path}: {total} frame(s) at {size[1]}x{size[0]}")
    return 0


# -- inspect ----------------------------------------------------------------------------------
def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="per-channel statistics, massive channels and figures for one image",
        description="Read one image's block-k feature and write stats.csv (per channel, before "
        "and after AdaLN), massive_channels.json, and figures like the paper's Figs. 2-5: "
        "activations.png (magnitude per channel), gate.png (AdaLN gate vs the massive "
        "channels) and pca.png (PCA-RGB maps before/after AdaLN and after the discard).",
    )
    p.add_argument("image", type=Path, help="an image file (jpg, png, ...)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--size",
        type=int,
        help="square model input side in pixels (default: the preset's, 960)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    _add_model_options(p)
    p.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .extractor import DiTFExtractor
    from .images import model_input_size, read_image, resize_image
    from .inspect import inspect_features

    image = read_image(args.image)
    extractor = _extractor_from_args(args, "correspondence")
    if not isinstance(extractor, DiTFExtractor):
        raise ConfigError("inspect needs a DiT (the lab preset has no block features)")
    side = args.size or _preset_value(args, "image_size", 960, "correspondence")
    size = model_input_size(*image.shape[:2], square=side, multiple=extractor.stride)
    tmp = _fresh_output_dir(args.out, args.overwrite)
    report = inspect_features(extractor, resize_image(image, size), tmp)
    _publish(tmp, args.out)
    channels = ", ".join(map(str, report.massive_channels)) or "none"
    print(f"massive channels (>= {report.stats_z.ratio:g}x median |z|): {channels}")
    for f in report.files:
        print(args.out / f.name)
    return 0


def _preset_value(args: argparse.Namespace, field: str, default: int, task: str) -> int:
    """A size setting of the chosen preset's task (the default preset without --model)."""
    from .presets import DEFAULT_PRESET, load_preset

    if args.preset is None and args.model is not None:
        return default
    settings = load_preset(args.preset or DEFAULT_PRESET).task(task)  # type: ignore[arg-type]
    value = getattr(settings, field)
    return int(value) if value is not None else default


# -- options shared by the pair commands (match, eval spair/pf-pascal/ap-10k/hpatches) ---------
def _add_matcher_options(parser: argparse.ArgumentParser, *, points: bool = True) -> None:
    """Image size, target search and DINOv2 fusion of a :class:`~ditf_track.match.Matcher`."""
    from .dinov2 import DINOV2_MODEL, PCA_DIM

    g = parser.add_argument_group("matching")
    g.add_argument(
        "--long-side",
        type=int,
        metavar="N",
        help="model input long side in pixels, aspect kept, sides multiples of 16 (default: "
        "the preset's pair size, 960 as in the paper; the official SPair script uses 640)",
    )
    if points:
        g.add_argument(
            "--no-upsample",
            dest="upsample",
            action="store_false",
            help="search the target's feature cells instead of every pixel of the target map "
            "upsampled to the image size (the official SPair protocol, default)",
        )
        g.add_argument(
            "--refine",
            action="store_true",
            help="soft-argmax refinement of grid matches (needs --no-upsample for points)",
        )
        g.add_argument(
            "--refine-radius",
            type=int,
            default=7,
            metavar="CELLS",
            help="soft-argmax window radius in cells (default 7, GeoAware-SC)",
        )
        g.add_argument(
            "--refine-temperature",
            type=float,
            default=0.02,
            metavar="T",
            help="soft-argmax temperature on the cosine (default 0.02, GeoAware-SC/SFNet)",
        )
    g.add_argument(
        "--dinov2",
        nargs="?",
        const=DINOV2_MODEL,
        default=None,
        metavar="PATH_OR_ID",
        help=f"concatenate DINOv2 features (default model {DINOV2_MODEL}: ViT-B/14, block 11 "
        "tokens, 840x840 input)",
    )
    g.add_argument(
        "--pca-dim",
        type=int,
        default=PCA_DIM,
        metavar="D",
        help=f"with --dinov2, reduce wider DiT features by a PCA fitted on the pair to D "
        f"dimensions (default {PCA_DIM}, the paper; 0 = no PCA)",
    )


def _matcher_from_args(args: argparse.Namespace) -> Any:
    from .dinov2 import DINOv2Extractor
    from .match import Matcher, SoftArgmax

    refine = None
    if getattr(args, "refine", False):
        refine = SoftArgmax(args.refine_radius, args.refine_temperature)
    extractor = _extractor_from_args(args, "correspondence")
    dinov2 = None
    if args.dinov2 is not None:
        dinov2 = DINOv2Extractor.from_pretrained(
            args.dinov2,
            device=args.device,
            dtype=args.dtype,
            local_files_only=args.local_files_only or None,
        )
    return Matcher(
        extractor,
        long_side=args.long_side,
        upsample=getattr(args, "upsample", False),
        refine=refine,
        dinov2=dinov2,
        pca_dim=args.pca_dim or None,
    )


# -- match ------------------------------------------------------------------------------------
def _add_match(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "match",
        help="match points (or a dense grid) of image A into image B",
        description="Match two images with DiTF features. --points matches each point of A to "
        "its most similar location in B; --dense N (or neither) keeps the mutual nearest "
        "neighbours between N grid points of A (every feature cell without N) and every cell "
        "of B. Writes matches.csv (xa,ya,xb,yb,score in pixels), matches.png (the images side "
        "by side with a line per match) and config.json.",
    )
    p.add_argument("image_a", type=Path, metavar="IMAGE_A", help="source image")
    p.add_argument("image_b", type=Path, metavar="IMAGE_B", help="target image")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--points",
        type=Path,
        metavar="POINTS.csv",
        help="CSV with header x,y[,id]: pixel coordinates in image A",
    )
    which.add_argument(
        "--dense",
        type=int,
        metavar="N",
        help="about N points on a regular grid over A (default: every feature cell of A)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    _add_model_options(p)
    _add_matcher_options(p)
    p.set_defaults(handler=_run_match)


def _run_match(args: argparse.Namespace) -> int:
    import numpy as np

    from .errors import ConfigError
    from .images import read_image
    from .match import check_points, draw_matches, read_points_csv, write_matches_csv
    from .outputs import environment_versions, write_json

    image_a, image_b = read_image(args.image_a), read_image(args.image_b)
    ids = None
    if args.points is not None:
        points, ids = read_points_csv(args.points)
        check_points(points, image_a.shape[:2], f"image A ({args.image_a})")
    if args.dense is not None and args.dense < 1:
        raise ConfigError(f"--dense {args.dense} must be at least 1 point")
    if args.points is not None and args.refine and args.upsample:
        raise ConfigError("--refine refines grid matches; add --no-upsample to match --points")
    matcher = _matcher_from_args(args)
    pair = matcher.features_for_pair(image_a, image_b)
    if args.points is not None:
        points_b, scores = matcher.match_points_in(pair, points)
        matches = np.concatenate([points, points_b], axis=1)
        mode = "points"
    else:
        matches, scores = matcher.match_dense_in(pair, args.dense)
        mode = "dense"
    tmp = _fresh_output_dir(args.out, args.overwrite)
    write_matches_csv(tmp / "matches.csv", matches, scores, ids)
    draw_matches(tmp / "matches.png", image_a, image_b, matches)
    identity = matcher.identity()
    write_json(
        tmp / "config.json",
        {
            "command": "match",
            "image_a": str(args.image_a),
            "image_b": str(args.image_b),
            "image_hw": [list(image_a.shape[:2]), list(image_b.shape[:2])],
            "mode": mode,
            "points": str(args.points) if args.points is not None else None,
            "dense": args.dense,
            "num_matches": len(matches),
            "matcher": identity,
            "model_revision": identity["extractor"].get("revision"),
            **pair.meta,
            "versions": environment_versions(),
        },
    )
    _publish(tmp, args.out)
    kept = f"{len(matches)} matches" if mode == "dense" else f"{len(matches)} points matched"
    print(f"{kept}; mean score {float(np.mean(scores)) if len(scores) else float('nan'):.3f}")
    for name in ("matches.csv", "matches.png", "config.json"):
        print(args.out / name)
    return 0


# -- eval -------------------------------------------------------------------------------------
def _add_eval(sub: argparse._SubParsersAction) -> None:
    """``ditf-track eval <benchmark>``: one sub-subcommand per evaluator (``_add_eval_*``)."""
    parser = sub.add_parser(
        "eval",
        help="score results on a standard benchmark",
        description="Score results on a standard benchmark with its official protocol.",
    )
    eval_sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for add in _EVAL_BENCHMARKS:
        add(eval_sub)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--out", type=Path, required=True, help="output folder of the run")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in a non-empty --out (finished pairs are not recomputed)",
    )
    g.add_argument("--overwrite", action="store_true", help="start again in a non-empty --out")
    g.add_argument("--limit", type=int, metavar="N", help="only the first N pairs (a quick check)")


def _add_pck_benchmark(
    eval_sub: argparse._SubParsersAction, name: str, title: str, data_help: str
) -> argparse.ArgumentParser:
    p = eval_sub.add_parser(
        name,
        help=f"{title}: PCK of DiTF nearest-neighbour matches",
        description=f"{title} semantic correspondence: match each source keypoint into the "
        "target image and report PCK per point and per image, per category and overall. "
        "Writes config.json, pairs.jsonl (resume state), metrics.json and per_category.csv.",
    )
    p.add_argument("--data", type=Path, required=True, metavar="ROOT", help=data_help)
    _add_run_options(p)
    _add_model_options(p)
    _add_matcher_options(p)
    p.set_defaults(handler=_run_eval_pck, benchmark_key=name)
    return p


def _add_eval_spair(eval_sub: argparse._SubParsersAction) -> None:
    from .eval.correspondence import SPAIR_SPLITS

    p = _add_pck_benchmark(
        eval_sub, "spair", "SPair-71k", "the SPair-71k folder (PairAnnotation/, JPEGImages/)"
    )
    p.add_argument("--split", default="test", choices=SPAIR_SPLITS, help="default test")
    p.add_argument("--categories", type=_names, metavar="A,B", help="only these categories")


def _add_eval_pfpascal(eval_sub: argparse._SubParsersAction) -> None:
    p = _add_pck_benchmark(
        eval_sub,
        "pf-pascal",
        "PF-PASCAL",
        "the PF-dataset-PASCAL folder (with test_pairs_pf_pascal.csv and JPEGImages/)",
    )
    p.add_argument("--split", default="test", help="pair list <split>_pairs_pf_pascal.csv")
    p.add_argument("--categories", type=_names, metavar="A,B", help="only these categories")


def _add_eval_ap10k(eval_sub: argparse._SubParsersAction) -> None:
    from .eval.correspondence import AP10K_SUBSETS

    p = _add_pck_benchmark(
        eval_sub,
        "ap-10k",
        "AP-10K",
        "the ap-10k folder (ImageAnnotation/, JPEGImages/, PairAnnotation/ from GeoAware-SC)",
    )
    p.add_argument(
        "--subset", default="intra-species", choices=AP10K_SUBSETS, help="default intra-species"
    )
    p.add_argument("--split", default="test", help="default test")


def _add_eval_hpatches(eval_sub: argparse._SubParsersAction) -> None:
    from .eval.hpatches import MAX_KEYPOINTS
    from .eval.runners import DETECTORS

    p = eval_sub.add_parser(
        "hpatches",
        help="HPatches homography accuracy (corner error at 1/3/5 px)",
        description="HPatches: keypoints from an OpenCV detector, DiTF descriptors at them, "
        "mutual nearest neighbours, cv2.findHomography (LMEDS) and the mean corner error; "
        "accuracy at 1, 3 and 5 px for all, illumination and viewpoint sequences. Writes "
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
    _add_model_options(p)
    _add_matcher_options(p, points=False)
    p.set_defaults(handler=_run_eval_hpatches)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no names in {text!r}; use e.g. cat,dog")
    return names


def _limited(items: list[Any], limit: int | None) -> list[Any]:
    if limit is None:
        return items
    if limit < 1:
        from .errors import ConfigError

        raise ConfigError(f"--limit {limit} must be at least 1")
    return items[:limit]


def _run_eval_pck(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .eval import correspondence as corr
    from .eval.runners import PCKEvaluation

    name = args.benchmark_key
    options: dict[str, Any] = {"data": str(args.data.resolve()), "split": args.split}
    if name == "spair":
        pairs = corr.load_spair_pairs(args.data, args.split, args.categories)
        options["categories"] = args.categories
    elif name == "pf-pascal":
        pairs = corr.load_pf_pascal_pairs(args.data, args.split, categories=args.categories)
        options["categories"] = args.categories
    else:
        pairs = corr.load_ap10k_pairs(args.data, args.subset, args.split)
        options["subset"] = args.subset
    pairs = _limited(pairs, args.limit)
    run = PCKEvaluation(
        name,
        pairs,
        _matcher_from_args(args),
        args.out,
        options=options,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    if run.num_resumable:
        print(f"resuming: {run.num_resumable} of {len(run)} pairs already done")
    with tqdm(run, total=len(run), desc=name, unit="pair") as bar:
        for outcome in bar:
            bar.set_postfix_str(f"{outcome.category} PCK@0.10 {outcome.pck.get('pck@0.10', 0):.2f}")
    metrics = run.finish()
    alphas = metrics["alphas"]
    print(f"{name}: {metrics['num_pairs']} pairs, {metrics['num_points']} points")
    for kind in ("pck_per_point", "pck_per_image"):
        values = "  ".join(
            f"@{a:.2f} {100 * (metrics[f'{kind}@{a:.2f}'] or 0):.1f}" for a in alphas
        )
        print(f"{kind:15s} {values}")
    print(run.out / "metrics.json")
    return 0


def _run_eval_hpatches(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .eval.hpatches import load_hpatches
    from .eval.runners import HPatchesEvaluation

    sequences = _limited(
        load_hpatches(args.data, exclude_high_res=args.exclude_high_res), args.limit
    )
    run = HPatchesEvaluation(
        sequences,
        _matcher_from_args(args),
        args.out,
        detector=args.detector,
        max_keypoints=args.max_keypoints,
        method=args.method,
        options={"data": str(args.data.resolve()), "exclude_high_res": args.exclude_high_res},
        resume=args.resume,
        overwrite=args.overwrite,
    )
    with tqdm(run, total=len(run), desc="hpatches", unit="pair") as bar:
        for outcome in bar:
            bar.set_postfix_str(
                f"{outcome.sequence}/{outcome.target} err {outcome.corner_error:.1f}"
            )
    metrics = run.finish()
    for group in ("all", "illumination", "viewpoint"):
        acc = "  ".join(
            f"@{e}px {100 * (metrics[group][e] or 0):.1f}" for e in metrics["thresholds_px"]
        )
        print(f"{group:13s} {acc}  ({metrics['num_pairs'][group]} pairs)")
    print(run.out / "metrics.json")
    return 0


_EVAL_BENCHMARKS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_eval_spair,
    _add_eval_pfpascal,
    _add_eval_ap10k,
    _add_eval_hpatches,
]

_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_extract,
    _add_inspect,
    _add_match,
    _add_eval,
]


def _command_names() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _default_to_track(argv: list[str]) -> list[str]:
    """Insert ``track`` when the first positional argument is not a subcommand."""
    names = _command_names()
    if "track" not in names:
        return argv
    for i, arg in enumerate(argv):
        if arg in ("-h", "--help", "--version"):
            return argv
        if arg in ("-v", "--verbose"):
            continue
        if arg in names:
            return argv
        return [*argv[:i], "track", *argv[i:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(_default_to_track(args_list))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="ditf-track: %(levelname)s: %(message)s",
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except DitfError as exc:
        print(f"ditf-track: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "ditf-track: interrupted; nothing incomplete was left looking complete "
            "(run again with --resume to continue where supported)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
