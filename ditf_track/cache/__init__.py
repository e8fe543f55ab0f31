"""Per-frame feature cache: keys, the memory and disk tiers, and the folder they live in.

* :mod:`.keys` — :func:`feature_key` / :func:`clip_key`: the sha256 of everything that changes
  a feature map (the extractor's ``identity()``, its noise rule included, the video file's
  hash, the model input size, the frame's index in the file).
* :mod:`.store` — :class:`FeatureCache`: an LRU on the device over checksummed safetensors
  files, written through by a background thread.
* :mod:`.folder` — :func:`cache_root` (``--cache-dir``, ``$DITF_TRACK_CACHE`` or
  ``~/.cache/ditf-track``) and its layout (``features/``, ``clips/``, ``text/``),
  :func:`cache_info`, :func:`clear_cache`.

Use (what :class:`~ditf_track.tracker.ClipFeatures` does, in short)::

    cache = FeatureCache(cache_root(cache_dir), device=device, disk_budget="50GB")
    ident, video = extractor.identity(), source.file_hash()          # the file, not the selection
    meta = cache.get_clip_meta(clip_key(ident, video, (H, W)))       # massive channels, if any
    keys = [feature_key(ident, video, int(i), (H, W)) for i in source.frame_indices]
    maps = [cache.get(k) for k in keys]                              # (C, h, w) each, or None
    todo = [t for t, m in enumerate(maps) if m is None]              # extract these in batches
    for t, m in zip(todo, extracted.features):                       # (N, C, h, w) → N entries
        cache.put(keys[t], m)
"""

from .folder import (
    DEFAULT_DEVICE_BUDGET,
    DEFAULT_DISK_BUDGET,
    CacheInfo,
    ClearResult,
    cache_info,
    cache_root,
    clear_cache,
    text_cache_dir,
)
from .keys import CACHE_FORMAT, canonical_json, clip_key, feature_key
from .store import (
    DEFAULT_DEVICE_FRACTION,
    DEFAULT_MAX_PENDING_WRITES,
    CacheStats,
    FeatureCache,
    checksum_problem,
    default_device_budget,
    format_size,
    parse_size,
    tensor_checksum,
)

__all__ = [
    "CACHE_FORMAT",
    "DEFAULT_DEVICE_BUDGET",
    "DEFAULT_DEVICE_FRACTION",
    "DEFAULT_DISK_BUDGET",
    "DEFAULT_MAX_PENDING_WRITES",
    "CacheInfo",
    "CacheStats",
    "ClearResult",
    "FeatureCache",
    "cache_info",
    "cache_root",
    "canonical_json",
    "checksum_problem",
    "clear_cache",
    "clip_key",
    "default_device_budget",
    "feature_key",
    "format_size",
    "parse_size",
    "tensor_checksum",
    "text_cache_dir",
]
