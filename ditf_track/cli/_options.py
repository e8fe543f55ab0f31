"""The option groups several commands share, and the one builder of each thing they describe.

``args`` → :class:`~ditf_track.config.FeatureConfig` / :class:`~ditf_track.config.Runtime` /
:class:`~ditf_track.config.TrackerConfig` → the extractor, the tracker or the pair matcher. Every
command builds through these, so a new setting is threaded through one place.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..config import SETTING_OVERRIDES, FeatureConfig, PointsMode, Runtime, TrackerConfig
from ..dinov2 import DINOV2_IMAGE_SIZE, DINOV2_LAYER, DINOV2_MODEL, PCA_DIM, DINOv2Extractor
from ..errors import ConfigError
from ..extractor import extractor_from_config
from ..features import CONDITION_MODES, DISCARD_STAGES, FEATURE_MODES, FeatureExtractor
from ..match import Matcher, SoftArgmax
from ..presets import (
    DEFAULT_PRESET,
    DEFAULT_PROFILE,
    PROFILES,
    RESIZE_METHODS,
    UPSAMPLE_FROM,
    Task,
    available_presets,
    load_preset,
    parse_discard_channels,
    resolve_profile,
)
from ..propagate import PointParams, PropagationParams
from ..tracker import Tracker

log = logging.getLogger("ditf_track")

#: What a command's ``handler`` default is: the parsed options → the exit status.
Handler = Callable[[argparse.Namespace], int]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def discard_channels_option(text: str) -> tuple[int, ...] | str:
    """``--discard-channels``: ``auto`` or comma-separated channel indices."""
    if text.strip() == "auto":
        return "auto"
    try:
        channels = parse_discard_channels(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert channels is not None
    return channels


# -- the model: every command that builds a feature extractor ---------------------------------
def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--preset / --model / --family, the device, and every DiTF setting as an override."""
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
    d.add_argument(
        "--profile",
        choices=PROFILES,
        default=DEFAULT_PROFILE,
        help="how features are computed: official = the authors' code (FLUX.1-dev: channels "
        "154, 1446 zeroed before the LayerNorm), paper = the paper's text (channels found by "
        "the rule, zeroed after the AdaLN); for models without authors' code (PixArt-α, SD3, "
        "SD3.5, FLUX.1-schnell, a bare --model) official is paper (default %(default)s)",
    )
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
        help="zero the massive channels after the AdaLN (the paper) or before the LayerNorm "
        "(the authors' code) (default: the profile's)",
    )
    d.add_argument(
        "--discard-channels",
        type=discard_channels_option,
        metavar="LIST|auto",
        help="channels to zero, e.g. 154,1446, or auto: those the massive-activation rule finds "
        "on the first image or frame (default: the profile's; a warning names both sets when "
        "they disagree there)",
    )
    d.add_argument(
        "--discard-ratio",
        type=float,
        help="a channel is massive at |v| >= RATIO x median |v| (default 100, the paper)",
    )
    d.add_argument("--seed", type=int, help="noise seed (default 0)")
    d.add_argument("--ensemble", type=int, help="noise draws averaged before the LayerNorm")
    d.add_argument(
        "--vae-sample",
        choices=["on", "off"],
        help="on: encode with a VAE posterior sample drawn per image, frame and ensemble member "
        "(the official code, default); off: the posterior mean",
    )
    d.add_argument("--batch-size", type=int, help="images per forward pass (default: all)")


def feature_config(args: argparse.Namespace, **resize: Any) -> FeatureConfig:
    """The model options as a :class:`~ditf_track.config.FeatureConfig` (no model loaded);
    ``resize`` sets the input-size rule fields an evaluation protocol fixes."""
    preset = args.preset
    if preset is None and args.model is None:
        preset = DEFAULT_PRESET
    overrides: dict[str, Any] = {name: getattr(args, name, None) for name in SETTING_OVERRIDES}
    if isinstance(overrides.get("vae_sample"), str):
        overrides["vae_sample"] = overrides["vae_sample"] == "on"
    return FeatureConfig(
        preset=preset,
        profile=getattr(args, "profile", DEFAULT_PROFILE),
        model=args.model,
        family=args.family,
        revision=args.revision,
        dtype=args.dtype,
        short_side=getattr(args, "short_side", None),
        **overrides,
        **resize,
    )


def runtime(args: argparse.Namespace) -> Runtime:
    return Runtime(
        device=args.device,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        disk_cache=not getattr(args, "no_disk_cache", False),
        local_files_only=args.local_files_only,
    )


def extractor_from_args(
    args: argparse.Namespace, task: Task, prompts: Sequence[str] = (), *, defer_load: bool = False
) -> FeatureExtractor:
    """The extractor the model options describe (a DiTFExtractor or the lab baseline);
    ``prompts`` (a run's per-image prompts) are encoded in one pass before the transformer;
    ``defer_load``: both happen on first use."""
    return extractor_from_config(
        feature_config(args),
        task,
        runtime(args),
        warn=log.warning,
        prompts=prompts,
        defer_load=defer_load,
    )


# -- the tracker: track and the video evaluations ---------------------------------------------
def add_propagation_options(parser: argparse.ArgumentParser, label_default: str = "area") -> None:
    g = parser.add_argument_group("propagation (default: DINO's and the official DiTF DAVIS set)")
    g.add_argument(
        "--params",
        choices=["dino", "dift"],
        default="dino",
        help="named set: dino = n 7, r 12, k 5, tau 0.1 (default); "
        "dift = n 28, r 15, k 15, tau 0.2",
    )
    g.add_argument("--context", type=int, help="number of last propagated frames used as context")
    g.add_argument("--radius", type=int, help="square search window radius in feature cells")
    g.add_argument(
        "--global-search", action="store_true", help="no window: search the whole frame (FAISS)"
    )
    g.add_argument("--topk", type=int, help="neighbours kept over all context frames")
    g.add_argument("--temperature", type=float, help="softmax temperature of the affinities")
    g.add_argument(
        "--numerics",
        choices=["official", "exact"],
        help="official: the authors' DAVIS code (bfloat16 affinities, every cell tied with the "
        "k-th kept); exact: float32, exactly k cells (default: exact; eval davis: the "
        "profile's, official where the official profile is the authors' code)",
    )
    g.add_argument(
        "--label-mode",
        choices=["area", "nearest"],
        default=label_default,
        help="bring masks to the feature grid by area averaging (soft labels; keeps objects "
        "smaller than a cell) or nearest sampling (DINO's protocol) (default %(default)s)",
    )


def propagation_params(args: argparse.Namespace) -> PropagationParams:
    base = PropagationParams.dift() if args.params == "dift" else PropagationParams.dino()
    return PropagationParams(
        n_context=base.n_context if args.context is None else args.context,
        radius=None
        if args.global_search
        else (base.radius if args.radius is None else args.radius),
        topk=base.topk if args.topk is None else args.topk,
        temperature=base.temperature if args.temperature is None else args.temperature,
        numerics=getattr(args, "numerics", None) or "exact",
    )


def profile_numerics(args: argparse.Namespace) -> str:
    """``--numerics``, else the profile's DAVIS numerics: ``official`` where the requested
    profile resolves to the authors' code for the preset's video task (FLUX.1-dev), else
    ``exact`` (no authors' code, so nothing official to reproduce)."""
    if args.numerics is not None:
        return str(args.numerics)
    features = feature_config(args)
    preset = load_preset(features.preset) if features.preset is not None else None
    used = resolve_profile(preset, "video", features.profile).used
    return "official" if used == "official" else "exact"


def add_point_options(
    parser: argparse.ArgumentParser,
    mode_default: str | None = "query",
    mode_default_help: str = "default query",
    defaults: PointParams | None = None,
) -> None:
    """The point options; ``defaults`` are the command's (the evaluations': ``PointParams()``, the
    TAP-Vid protocol; ``track``: :meth:`PointParams.motion`, the windowed search)."""
    d = defaults or PointParams()
    g = parser.add_argument_group("points (see ditf_track.propagate.points)")
    g.add_argument(
        "--points-mode",
        choices=["query", "heatmap"],
        default=mode_default,
        help="query: match each point's feature in every frame, refined by a soft-argmax "
        "(TAP-Vid protocol); heatmap: propagate a Gaussian map per point with the mask "
        f"propagation settings (JHMDB protocol); {mode_default_help}",
    )
    search = g.add_mutually_exclusive_group()
    search.add_argument(
        "--point-window",
        type=int,
        default=d.radius,
        metavar="CELLS",
        help="query mode: search only within CELLS feature cells of the previous frame's "
        "position (default: "
        + ("the whole frame" if d.radius is None else f"{d.radius}, see --redetect")
        + ")",
    )
    search.add_argument(
        "--global-points",
        action="store_true",
        help="query mode: search every frame whole, with no window nor re-detection (the "
        "TAP-Vid protocol the evaluations use)"
        + ("" if d.radius is None else "; a point may then jump to a look-alike anywhere"),
    )
    g.add_argument(
        "--redetect",
        type=float,
        default=d.redetect,
        metavar="RATIO",
        help="query mode with --point-window: search the whole frame where the window's best "
        "match stands less than RATIO times as high above the frame's mean cosine as the whole "
        f"frame's best (default {d.redetect if d.redetect is not None else 'off'}; 0: off)",
    )
    g.add_argument(
        "--min-similarity",
        type=float,
        default=d.min_similarity,
        help=f"query mode: a point whose best cosine is lower is not visible (default "
        f"{d.min_similarity})",
    )
    g.add_argument(
        "--cycle-threshold",
        type=float,
        default=d.cycle_threshold,
        metavar="CELLS",
        help="query mode: the match, matched back into the query frame, must land within CELLS "
        f"cells of the query for the point to be visible (default {d.cycle_threshold}; a "
        "negative value switches the check off)",
    )
    g.add_argument(
        "--heatmap-sigma",
        type=float,
        default=d.sigma,
        metavar="CELLS",
        help=f"heatmap mode: Gaussian width in feature cells (default {d.sigma}, CRW's)",
    )


def point_params(args: argparse.Namespace) -> PointParams:
    cycle = args.cycle_threshold
    if args.redetect is not None and not 0 <= args.redetect <= 1:
        raise ConfigError(
            f"--redetect {args.redetect:g} must be a ratio in (0, 1], or 0 for no re-detection"
        )
    radius = None if args.global_points else args.point_window
    redetect = None if args.global_points or not args.redetect else args.redetect
    if redetect is not None and radius is None:
        raise ConfigError(
            f"--redetect {args.redetect:g} needs --point-window CELLS: without a window every "
            "frame is searched whole"
        )
    return PointParams(
        radius=radius,
        redetect=redetect,
        min_similarity=args.min_similarity,
        cycle_threshold=None if cycle is not None and cycle < 0 else cycle,
        sigma=args.heatmap_sigma,
    )


def add_tracker_options(
    parser: argparse.ArgumentParser,
    short_side_help: str,
    mode_default: str | None = "query",
    mode_default_help: str = "default query",
    *,
    quiet: bool = False,
    point_defaults: PointParams | None = None,
) -> None:
    """Everything that builds the :class:`~ditf_track.tracker.Tracker` of ``track`` and of the
    point-tracking evaluations: input size, feature cache, propagation, points (``point_defaults``:
    the command's point settings, default ``PointParams()``), model (and ``--quiet`` for
    ``track``, which draws its own progress bars)."""
    parser.add_argument("--short-side", type=positive_int, help=short_side_help)
    parser.add_argument(
        "--no-disk-cache", action="store_true", help="keep features in memory only (no files)"
    )
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_propagation_options(parser)
    add_point_options(parser, mode_default, mode_default_help, point_defaults)
    add_model_options(parser)


def tracker_config(
    args: argparse.Namespace, points_mode: PointsMode | None = None, **resize: Any
) -> TrackerConfig:
    """Every option that builds a tracker as a :class:`~ditf_track.config.TrackerConfig`;
    ``points_mode`` replaces ``--points-mode`` (an evaluation's per-dataset default)."""
    point_options: dict[str, Any] = {}
    if hasattr(args, "points_mode"):  # the commands with point options
        point_options = {
            "points_mode": points_mode or args.points_mode,
            "point_params": point_params(args),
        }
    return TrackerConfig(
        features=feature_config(args, **resize),
        params=propagation_params(args),
        label_mode=args.label_mode,
        runtime=runtime(args),
        **point_options,
    )


def build_tracker(
    config: TrackerConfig, extractor: FeatureExtractor | None = None, *, defer_load: bool = False
) -> Tracker:
    """:meth:`Tracker.from_config`, which says in the log which given settings it has no use for
    (``extractor``: a model already loaded from the same ``config.features``, e.g. by ``batch``;
    ``defer_load``: the model loads on first use, for a Ray driver whose workers extract)."""
    return Tracker.from_config(config, extractor=extractor, warn=log.warning, defer_load=defer_load)


def tracker_from_args(
    args: argparse.Namespace, points_mode: PointsMode | None = None, **resize: Any
) -> Tracker:
    """The tracker the options describe (the model loaded, the feature cache opened)."""
    return build_tracker(tracker_config(args, points_mode, **resize))


# -- the pair matcher: match and the pair evaluations -----------------------------------------
def add_matcher_options(parser: argparse.ArgumentParser, *, points: bool = True) -> None:
    """Image size, target search and DINOv2 fusion of a :class:`~ditf_track.match.Matcher`."""
    g = parser.add_argument_group("matching")
    size = g.add_mutually_exclusive_group()
    size.add_argument(
        "--long-side",
        type=int,
        metavar="N",
        help="model input long side in pixels, aspect kept, sides multiples of 16 (default: "
        "match: the preset's pair size, 960; eval: the profile's, 640 for flux official as the "
        "authors' SPair script, 960x960 square for paper as its appendix)",
    )
    size.add_argument(
        "--square",
        type=int,
        metavar="N",
        help="model input NxN, aspect ignored (the paper's appendix: 960)",
    )
    g.add_argument(
        "--resize",
        choices=RESIZE_METHODS,
        help="resize method: auto (OpenCV area when shrinking, bilinear when enlarging), "
        "OpenCV area/bilinear/bicubic/nearest, or pil-bicubic (PIL's Image.resize, the authors' "
        "SPair script) (default: match: auto; eval: the profile's)",
    )
    g.add_argument(
        "--upsample-from",
        choices=UPSAMPLE_FROM,
        help="what the target map is bilinearly upsampled from before the per-pixel L2: raw = "
        "the unnormalised modulated map (the authors' script and the paper, default), unit = "
        "the L2-normalised cells",
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
        "--dinov2-layer",
        type=int,
        default=DINOV2_LAYER,
        metavar="L",
        help=f"DINOv2 block whose output tokens are used, 0-indexed (default {DINOV2_LAYER}, "
        "the last block of ViT-B; SD-DINO uses 23 for ViT-L)",
    )
    g.add_argument(
        "--dinov2-size",
        type=int,
        default=DINOV2_IMAGE_SIZE,
        metavar="S",
        help=f"DINOv2 input: long side S, zero-padded to SxS (default {DINOV2_IMAGE_SIZE})",
    )
    g.add_argument(
        "--pca-dim",
        type=int,
        metavar="D",
        help=f"with --dinov2, reduce the raw DiT features by a PCA fitted on the pair to D "
        f"dimensions (default: the preset's, {PCA_DIM} for SD3.5 and Flux as the paper, none for "
        "PixArt-α and SD3; 0 = no PCA)",
    )


def matcher_from_args(
    args: argparse.Namespace, prompts: Sequence[str] = (), *, defer_load: bool = False
) -> Matcher:
    """The pair matcher the model and matching options describe (the models loaded; with
    ``defer_load`` the DiT loads on first use, for a Ray driver whose workers match)."""
    refine = None
    if getattr(args, "refine", False):
        refine = SoftArgmax(args.refine_radius, args.refine_temperature)
    extractor = extractor_from_args(args, "correspondence", prompts, defer_load=defer_load)
    dinov2 = None
    if args.dinov2 is not None:
        dinov2 = DINOv2Extractor.from_pretrained(
            args.dinov2,
            layer=args.dinov2_layer,
            image_size=args.dinov2_size,
            device=args.device,
            dtype=args.dtype,
            local_files_only=args.local_files_only or None,
        )
    pca_dim: int | str | None = "auto" if args.pca_dim is None else (args.pca_dim or None)
    return Matcher(
        extractor,
        long_side=args.long_side,
        square=getattr(args, "square", None),
        resize=getattr(args, "resize", None) or "auto",
        upsample=getattr(args, "upsample", False),
        upsample_from=getattr(args, "upsample_from", None) or "raw",
        refine=refine,
        dinov2=dinov2,
        pca_dim=pca_dim,
    )
