"""Cache keys: the sha256 of a canonical JSON of everything that changes a feature map.

A key (:func:`feature_key`, :func:`clip_key`) digests the extractor's ``identity()`` (preset,
model id and revision, dtype, stride, t, k, prompt, guidance, condition mode, feature mode,
discard rule and stage, seed, the noise rule, VAE sampling, ensemble, upsample, text sequence
length), the video file's hash, the model input size ``(H, W)`` and, for a frame, its index in
the file or folder — never its position in a selection, so every selection of a file shares the
features of the frames it has in common. Keys become file names, so
only lowercase hex digests are accepted (:func:`check_key`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..devices import dtype_name

#: Bumped whenever the feature computation changes without a change of ``identity()``, so
#: stale maps from an older ditf-track miss instead of being served.
CACHE_FORMAT = 1
_KEY_PATTERN = re.compile(r"[0-9a-f]{16,128}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.dtype):
        return dtype_name(obj)
    if isinstance(obj, (os.PathLike, torch.device)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot put a {type(obj).__name__} into a cache key: {obj!r}")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces; tuples become lists. Equal settings → equal text.

    Note that ``1`` and ``1.0`` differ: a setting that changes type misses (and is recomputed).
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_jsonable
    )


def _digest(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def clip_key(
    identity: Mapping[str, Any], video_hash: str, input_size: tuple[int, int] | Sequence[int]
) -> str:
    """Key of one clip under one extractor: sha256 of its ``identity()``, video hash, input size.

    ``input_size`` is the model input ``(H, W)`` in pixels. Holds per-clip metadata such as the
    massive channels found on the first frames.
    """
    return _clip_digest("clip", identity, video_hash, input_size)


def feature_key(
    identity: Mapping[str, Any],
    video_hash: str,
    frame_index: int,
    input_size: tuple[int, int] | Sequence[int],
) -> str:
    """Key of one frame's feature map: :func:`clip_key`'s parts plus the frame index.

    ``identity`` is the extractor's ``identity()`` (everything that changes the features);
    ``video_hash`` the video's ``VideoSource.file_hash()``;
    ``frame_index`` the 0-based index in the file or folder (``VideoSource.frame_indices[t]``);
    ``input_size`` the model input ``(H, W)``.
    A changed setting gives a different key (a miss); identical settings the same key.
    """
    if isinstance(frame_index, bool) or int(frame_index) != frame_index or frame_index < 0:
        raise ValueError(f"frame index must be an integer >= 0, got {frame_index!r}")
    return _clip_digest("frame", identity, video_hash, input_size, frame=int(frame_index))


def _clip_digest(
    kind: str,
    identity: Mapping[str, Any],
    video_hash: str,
    input_size: tuple[int, int] | Sequence[int],
    **extra: int,
) -> str:
    h, w = (int(s) for s in input_size)
    parts = {
        "cache_format": CACHE_FORMAT,
        "kind": kind,
        "identity": dict(identity),
        "video": str(video_hash),
        "input_size": [h, w],
    }
    return _digest({**parts, **extra})


def check_key(key: str) -> None:
    """Refuse anything but a lowercase hex digest (as :func:`feature_key` makes): keys become
    file names, so ``"../x"`` must never reach the folder."""
    if not isinstance(key, str) or _KEY_PATTERN.fullmatch(key) is None:
        raise ValueError(f"cache keys are hex digests from feature_key()/clip_key(), got {key!r}")
