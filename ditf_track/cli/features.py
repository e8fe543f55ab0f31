"""``ditf-track extract`` (feature maps to safetensors) and ``ditf-track inspect`` (one image's
channel statistics and the paper's figures)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import cast

import numpy as np
from tqdm import tqdm

from ..config import DEFAULT_TRACKER_BATCH
from ..errors import ConfigError, OutputError
from ..export import extract_to_safetensors, input_size_for, open_input
from ..extractor import DiTFExtractor
from ..images import model_input_size, read_image, resize_image
from ..inspect import INSPECT_FILES, inspect_features
from ..outputs import RunDir, check_writable_file, refuse_input_overlap
from ..presets import SizeField, Task, load_preset, preset_size
from ..tracker import ClipFeatures
from ..video import VideoSource
from ._options import add_model_options, extractor_from_args, feature_config, positive_int


def _preset_size(args: argparse.Namespace, task: Task, size: SizeField) -> int:
    """A size setting of the chosen preset's task (the default preset without --model)."""
    return preset_size(feature_config(args).preset, task, size)


# -- extract ----------------------------------------------------------------------------------
def add_extract(sub: argparse._SubParsersAction) -> None:
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
    size.add_argument(
        "--short-side", type=positive_int, help="resize the short side to N (videos: 960)"
    )
    size.add_argument("--long-side", type=int, help="resize the long side to N")
    p.add_argument("--start", type=int, default=0, help="first frame of a video (default 0)")
    p.add_argument("--end", type=int, help="stop before this frame (default: the last)")
    p.add_argument("--stride", type=int, default=1, help="take every N-th frame (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_model_options(p)
    p.set_defaults(handler=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    refuse_input_overlap(args.out, [("input", args.input)])
    if args.out.exists() and not args.out.is_dir() and not args.overwrite:
        raise OutputError(f"{args.out} exists; choose another --out or pass --overwrite")
    source = open_input(args.input, start=args.start, end=args.end, stride=args.stride)
    check_writable_file(args.out, "--out")
    is_image = isinstance(source, np.ndarray)
    task: Task = "correspondence" if is_image else "video"
    extractor = extractor_from_args(args, task)
    square, short, long = args.size, args.short_side, args.long_side
    if square is None and short is None and long is None:
        if is_image:
            square = _preset_size(args, task, "image_size")
        else:
            short = _preset_size(args, task, "short_side")
    size = input_size_for(
        source, square=square, short_side=short, long_side=long, multiple=extractor.stride
    )
    total = 1 if is_image else len(source)
    # A video's massive channels: frame 0 of the selection, the rule `track` follows too.
    channels = None
    if isinstance(source, VideoSource):
        channels = ClipFeatures(extractor, source, size).massive_channels
    with tqdm(total=total, desc="extract features", unit="frame", disable=None) as bar:
        path = extract_to_safetensors(
            extractor,
            source,
            args.out,
            size=size,
            batch_size=args.batch_size or DEFAULT_TRACKER_BATCH,
            progress=lambda event: bar.update(event.done - bar.n),
            massive_channels=channels,
        )
    print(f"{path}: {total} frame(s) at {size[1]}x{size[0]}")
    return 0


# -- inspect ----------------------------------------------------------------------------------
def add_inspect(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier ditf-track run in --out (deletes only the files it wrote)",
    )
    add_model_options(p)
    p.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    image = read_image(args.image)
    if args.preset is not None and load_preset(args.preset).weight_free:  # before --out opens
        raise ConfigError("inspect needs a DiT (the lab preset has no block features)")
    run_dir = RunDir(
        args.out,
        "inspect",
        inputs=[("image", args.image)],
        patterns=INSPECT_FILES,
        overwrite=args.overwrite,
    ).open()
    try:
        extractor = cast(DiTFExtractor, extractor_from_args(args, "correspondence"))
        side = args.size or _preset_size(args, "correspondence", "image_size")
        size = model_input_size(*image.shape[:2], square=side, multiple=extractor.stride)
        report = inspect_features(extractor, resize_image(image, size), run_dir.work)
        run_dir.publish(
            {
                "image": str(args.image),
                "input_size": list(size),
                "massive_channels": list(report.massive_channels),
                "extractor": extractor.identity(),
            }
        )
    finally:
        run_dir.close()
    channels = ", ".join(map(str, report.massive_channels)) or "none"
    print(f"massive channels (>= {report.stats_z.ratio:g}x median |z|): {channels}")
    for f in report.files:
        print(args.out / f.name)
    return 0
