"""Independent, deterministic noise for every image, video frame and ensemble member.

The official DiTF code draws fresh noise (and a fresh VAE posterior sample) for every image,
frame and ensemble member, unseeded. Reusing one seeded noise map for every item of the same
latent size instead adds a component shared at identical positions by a pair's source and target
and by all frames of a clip, which biases matching toward "same position". So each item draws
from its own generator, seeded from the run's seed, a **stable id** of the item and the ensemble
member: runs stay reproducible and cacheable, and an item's noise never depends on which other
items share its batch or selection.

Stable ids (:data:`NOISE_RULE` names this rule in every extractor's ``identity()``):

* a video frame: its index in the file or frame folder (:func:`frame_noise_id`), not its
  position in a selection, so ``--start 0`` and ``--start 10`` give frame 12 the same noise;
* an image: the hash of its pixels as given to the extractor (:func:`image_noise_id`), so a
  pair's source and target differ and the same image twice gets the same noise.

Noise is drawn on the CPU (``torch.Generator("cpu")``, float32) and then moved to the model's
device, so the same item gets bit-identical noise on CPU, CUDA and MPS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from .errors import InputError

#: Names the rule below in ``identity()`` (and so in every cache key): change it with the rule.
NOISE_RULE = "per-item:blake2b(seed,id,member,stream):cpu-float32:v1"
#: The independent streams of one item and member: the VAE posterior sample and the latent noise.
NoiseStream = Literal["vae", "latent"]


def frame_noise_id(file_index: int) -> str:
    """The stable id of a video frame: its index in the file or folder (never a position)."""
    if isinstance(file_index, bool) or int(file_index) != file_index or file_index < 0:
        raise ValueError(f"a frame index must be an integer >= 0, got {file_index!r}")
    return f"frame:{int(file_index)}"


def image_noise_id(image: np.ndarray | torch.Tensor) -> str:
    """The stable id of an image ``(H, W, 3) uint8``: a hash of its shape and pixels."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    h = hashlib.blake2b(f"{arr.shape} {arr.dtype}\0".encode(), digest_size=16)
    h.update(np.ascontiguousarray(arr).tobytes())
    return f"image:{h.hexdigest()}"


def default_noise_ids(images: np.ndarray | torch.Tensor) -> list[str]:
    """One :func:`image_noise_id` per image of a ``(N, H, W, 3)`` batch (or one image)."""
    if images.ndim == 3:
        return [image_noise_id(images)]
    return [image_noise_id(images[i]) for i in range(len(images))]


def check_noise_ids(noise_ids: Sequence[str], count: int) -> list[str]:
    """``noise_ids`` as a list of strings, one per image of a batch of ``count``."""
    if isinstance(noise_ids, str):
        raise InputError("noise_ids must be a sequence of ids, one per image, not one string")
    ids = [str(i) for i in noise_ids]
    if len(ids) != count:
        raise InputError(f"{len(ids)} noise ids for {count} images; give one id per image")
    return ids


def item_seed(seed: int, noise_id: str, member: int, stream: NoiseStream) -> int:
    """A 64-bit generator seed from the run's seed, the item's id, the member and the stream."""
    text = f"{int(seed)}\0{noise_id}\0{int(member)}\0{stream}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def item_noise(
    shape: Sequence[int],
    seed: int,
    noise_ids: Sequence[str],
    member: int,
    stream: NoiseStream,
) -> torch.Tensor:
    """Standard normal noise ``(N, *shape)`` float32 on the CPU: item i from its own generator."""
    out = torch.empty((len(noise_ids), *shape), dtype=torch.float32)
    for i, noise_id in enumerate(noise_ids):
        generator = torch.Generator("cpu").manual_seed(item_seed(seed, noise_id, member, stream))
        out[i] = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return out


__all__ = [
    "NOISE_RULE",
    "NoiseStream",
    "check_noise_ids",
    "default_noise_ids",
    "frame_noise_id",
    "image_noise_id",
    "item_noise",
    "item_seed",
]
