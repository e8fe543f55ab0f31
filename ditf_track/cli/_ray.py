"""The Ray options and worker settings shared by ``batch``, ``track --ray`` and ``eval … --ray``.

One place for the option group, its checks, how much memory a worker asks for, and how a
worker builds its model, so the commands that hand work to Ray workers agree on them.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from ..batch import WorkerPool
from ..config import TrackerConfig
from ..errors import ConfigError
from ..extractor import extractor_from_config
from ..features import FeatureExtractor
from ..presets import load_preset
from ._options import positive_int

log = logging.getLogger("ditf_track")

#: Fault injection for tests: a Ray worker exits (as if killed) after this many propagated
#: frames of a clip's first attempt. Read by the driver and handed to the workers.
EXIT_AFTER_FRAMES_ENV = "DITF_TRACK_TEST_WORKER_EXIT_AFTER_FRAMES"
#: Memory a CPU worker needs besides its model's weights (the process, a clip's frames).
_WORKER_OVERHEAD_GB = 1.0


def add_ray_options(parser: argparse.ArgumentParser, workers: str, items: str) -> None:
    """``--ray`` and the worker settings (``workers``: the option naming the worker count)."""
    ray = parser.add_argument_group("Ray (pip install 'ditf-track[ray]')")
    ray.add_argument(
        "--ray",
        metavar="auto|local|ADDRESS",
        help=f"spread the {items} over Ray workers: local starts a cluster on this machine, "
        "auto joins the running one (`ray start --head`), ADDRESS joins that one",
    )
    ray.add_argument(
        workers,
        dest="ray_workers",
        type=positive_int,
        default=2,
        help="Ray workers (default 2), one loaded model each",
    )
    ray.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        help="GPUs each worker holds (default 0: CPU workers)",
    )
    ray.add_argument(
        "--cpus-per-worker",
        type=positive_int,
        default=1,
        help="CPU cores (and torch threads) per worker (default 1)",
    )
    ray.add_argument(
        "--worker-memory",
        type=float,
        metavar="GB",
        help="memory one CPU worker needs (default: the preset's model size + 1 GB); more "
        "workers than the nodes' memory holds (each on one node) are refused",
    )
    ray.add_argument(
        "--max-retries",
        type=int,
        default=2,
        help=f"times one of the {items} is sent again after its worker died (default 2); "
        "errors in the input are never retried",
    )


def check_ray_options(args: argparse.Namespace) -> None:
    if args.max_retries < 0:
        raise ConfigError(f"--max-retries {args.max_retries} must be 0 or more")
    if args.gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker {args.gpus_per_worker:g} must be 0 or more")


def load_extractor(config: TrackerConfig, threads: int | None = None) -> FeatureExtractor:
    """The one extractor of a batch process or Ray worker (``threads``: torch's, pinned)."""
    if threads is not None:
        torch.set_num_threads(threads)
    return extractor_from_config(config.features, "video", config.runtime, warn=log.warning)


def worker_exit_after() -> int | None:
    value = os.environ.get(EXIT_AFTER_FRAMES_ENV)
    return int(value) if value else None


def worker_memory(args: argparse.Namespace, config: TrackerConfig) -> int:
    """Bytes one worker asks Ray for: --worker-memory, else the preset's model + overhead."""
    return preset_worker_memory(args, config.features.preset)


def preset_worker_memory(args: argparse.Namespace, preset: str | None) -> int:
    """:func:`worker_memory` for a worker that loads ``preset`` (the pair matcher's)."""
    gb = args.worker_memory
    if gb is None:
        model_gb = load_preset(preset).resources.gpu_gb if preset is not None else 0.0
        gb = (0.0 if args.gpus_per_worker else model_gb) + _WORKER_OVERHEAD_GB
    return int(gb * (1 << 30))


def worker_pool(args: argparse.Namespace, memory_per_worker: int) -> WorkerPool:
    """The Ray actors the options ask for (``memory_per_worker``: :func:`worker_memory`)."""
    return WorkerPool(
        workers=args.ray_workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        memory_per_worker=memory_per_worker,
        max_retries=args.max_retries,
    )
