"""``ditf-track match``: points (or a dense grid) of image A matched into image B."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..images import read_image
from ..match import check_points, read_match_points, write_matches_csv
from ..outputs import RunDir, environment_versions
from ..viz.matches import draw_matches
from ._options import add_matcher_options, add_model_options, matcher_from_args


def add_match(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "match",
        help="match points (or a dense grid) of image A into image B",
        description="Match two images with DiTF features. --points matches each point of A to "
        "its most similar location in B; --dense N (or neither) keeps the mutual nearest "
        "neighbours between N grid points of A (every feature cell without N) and every cell "
        "of B. Writes matches.csv (xa,ya,xb,yb,score in pixels), matches.png (the images side "
        "by side with a line per match) and config.json. The input keeps its aspect with the "
        "preset's pair long side (960) and one noise draw; --profile sets only how features are "
        "computed (discard, noise): the evaluators' protocols (the authors' long side 640, PIL "
        "bicubic, 8 draws; the paper's 960x960) apply here only through --long-side, --square, "
        "--resize and --ensemble.",
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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier ditf-track run in --out (deletes only the files it wrote)",
    )
    add_model_options(p)
    add_matcher_options(p)
    p.set_defaults(handler=run_match)


def run_match(args: argparse.Namespace) -> int:
    image_a, image_b = read_image(args.image_a), read_image(args.image_b)
    points = ids = None
    if args.points is not None:
        points, ids = read_match_points(args.points)
        check_points(points, image_a.shape[:2], f"image A ({args.image_a})")
    if args.dense is not None and args.dense < 1:
        raise ConfigError(f"--dense {args.dense} must be at least 1 point")
    if args.points is not None and args.refine and args.upsample:
        raise ConfigError("--refine refines grid matches; add --no-upsample to match --points")
    inputs = [("image A", args.image_a), ("image B", args.image_b), ("points file", args.points)]
    run_dir = RunDir(
        args.out,
        "match",
        inputs=inputs,
        patterns=("matches.csv", "matches.png"),
        overwrite=args.overwrite,
    ).open()
    try:
        _match_into(args, run_dir, image_a, image_b, points, ids)
    finally:
        run_dir.close()
    return 0


def _match_into(
    args: argparse.Namespace,
    run_dir: RunDir,
    image_a: np.ndarray,
    image_b: np.ndarray,
    points: np.ndarray | None,
    ids: np.ndarray | None,
) -> None:
    """The model-dependent part of ``match``, once ``--out`` is open and locked."""
    matcher = matcher_from_args(args)
    pair = matcher.features_for_pair(image_a, image_b)
    if points is not None:
        points_b, scores = matcher.match_points_in(pair, points)
        matches = np.concatenate([points, points_b], axis=1)
        mode = "points"
    else:
        matches, scores = matcher.match_dense_in(pair, args.dense)
        mode = "dense"
    write_matches_csv(run_dir.work / "matches.csv", matches, scores, ids)
    draw_matches(run_dir.work / "matches.png", image_a, image_b, matches)
    identity = matcher.identity()
    run_dir.publish(
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
    kept = f"{len(matches)} matches" if mode == "dense" else f"{len(matches)} points matched"
    print(f"{kept}; mean score {float(np.mean(scores)) if len(scores) else float('nan'):.3f}")
    for name in ("matches.csv", "matches.png", "config.json"):
        print(args.out / name)
