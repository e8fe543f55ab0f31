"""The cache root and its layout on disk: where every cached file of ditf-track lives.

The root is ``--cache-dir``, else ``$DITF_TRACK_CACHE``, else ``~/.cache/ditf-track``
(:func:`cache_root`, the one place that resolves it), and holds::

    <root>/features/<key>.safetensors   one feature map per frame (FeatureCache)
    <root>/clips/<key>.json             per-clip metadata, e.g. the massive channels
    <root>/text/<digest>.safetensors    prompt embeddings (backbones/text.py)

Writers put a temporary file beside its final name and rename it (``ditf_track._atomic``);
a temporary file left by a killed writer is never loaded, and removed after an hour.
:func:`cache_info` counts these files and :func:`clear_cache` deletes them, and only them, so
a mistyped ``--cache-dir`` cannot wipe unrelated data.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

FEATURES = "features"
CLIPS = "clips"
TEXT = "text"
#: The suffix of feature files and text embeddings; clip metadata files end in ``.json``.
SUFFIX = ".safetensors"

#: Memory budget when none is given: 8 GB holds 204 Flux frames at 60×106 tokens in bf16
#: (3072·60·106·2 B = 39.1 MB each), more than the longest DAVIS 2017 val clip (104 frames).
DEFAULT_DEVICE_BUDGET = 8 * 10**9
#: Disk budget when none is given: 50 GB ≈ 1280 Flux frames at 60×106 bf16 ≈ 12 DAVIS clips.
DEFAULT_DISK_BUDGET = 50 * 10**9
#: Temporary files older than this are leftovers of a killed writer and are removed on open.
STALE_TEMP_SECONDS = 3600.0


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$DITF_TRACK_CACHE``, else ``~/.cache/ditf-track``.

    Feature files live in ``<root>/features``, clip metadata in ``<root>/clips`` and text
    embeddings (:func:`text_cache_dir`) in ``<root>/text``.

    Raises:
        ConfigError: the root or one of those subfolders exists and is not a folder (a
            mistyped ``--cache-dir`` naming a file), checked before anything is loaded.
    """
    given = cache_dir or os.environ.get("DITF_TRACK_CACHE") or Path.home() / ".cache" / "ditf-track"
    root = Path(given).expanduser()
    for path in (root, root / FEATURES, root / CLIPS, root / TEXT):
        if path.exists() and not path.is_dir():
            raise ConfigError(
                f"cache folder {path} is a file, not a folder; pass --cache-dir (or set "
                "DITF_TRACK_CACHE to) a folder, or remove that file"
            )
    return root


def text_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where prompt embeddings are cached: ``<root>/text`` of :func:`cache_root` (checked)."""
    return cache_root(cache_dir) / TEXT


def _is_temp(name: str) -> bool:
    # atomic_path's ".<stem>.<hex>.tmp<suffix>", and the old text cache's "<name>.tmp<pid>".
    return ".tmp" in name


def scan(folder: Path, suffix: str | None) -> list[os.DirEntry[str]]:
    """Entries named ``*<suffix>`` (not temporary) in ``folder``; temporary ones if ``None``."""
    try:
        with os.scandir(folder) as entries:
            return [
                e
                for e in entries
                if e.is_file()
                and (
                    _is_temp(e.name)
                    if suffix is None
                    else e.name.endswith(suffix)
                    and not e.name.startswith(".")
                    and not _is_temp(e.name)
                )
            ]
    except FileNotFoundError:
        return []


def remove_stale_temps(root: Path) -> None:
    """Delete temporary files older than :data:`STALE_TEMP_SECONDS` in features and clips."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for folder in (root / FEATURES, root / CLIPS):
        for e in scan(folder, None):
            with contextlib.suppress(OSError):
                if e.stat().st_mtime < cutoff:
                    os.unlink(e.path)


@dataclass(frozen=True)
class CacheInfo:
    """What a cache folder holds. Byte counts are file sizes; budgets ``None`` when unset.

    ``memory_entries``/``memory_bytes`` describe a live :class:`FeatureCache`'s memory tier
    (zero for a folder read by :func:`cache_info`); ``temp_files`` are leftovers of writes that
    were killed mid-way (never loaded; :func:`clear_cache` removes them).
    """

    directory: Path | None
    feature_files: int
    feature_bytes: int
    clip_files: int
    text_files: int
    text_bytes: int
    temp_files: int
    disk_budget: int | None
    device_budget: int | None
    memory_entries: int = 0
    memory_bytes: int = 0


@dataclass(frozen=True)
class ClearResult:
    """What :func:`clear_cache` deleted."""

    feature_files: int
    feature_bytes: int
    clip_files: int
    text_files: int
    text_bytes: int
    temp_files: int

    @property
    def freed_bytes(self) -> int:
        return self.feature_bytes + self.text_bytes


def cache_info(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    disk_budget: int | None = DEFAULT_DISK_BUDGET,
    device_budget: int | None = DEFAULT_DEVICE_BUDGET,
) -> CacheInfo:
    """Count the files under :func:`cache_root` ``(cache_dir)`` without creating anything.

    The budgets (bytes) are only reported: the defaults, or a live cache's own.
    """
    root = cache_root(cache_dir)
    features = scan(root / FEATURES, SUFFIX)
    texts = scan(root / TEXT, SUFFIX)
    temps = [e for f in (FEATURES, CLIPS, TEXT) for e in scan(root / f, None)]
    return CacheInfo(
        directory=root,
        feature_files=len(features),
        feature_bytes=sum(e.stat().st_size for e in features),
        clip_files=len(scan(root / CLIPS, ".json")),
        text_files=len(texts),
        text_bytes=sum(e.stat().st_size for e in texts),
        temp_files=len(temps),
        disk_budget=disk_budget,
        device_budget=device_budget,
    )


def _delete(entries: Iterable[os.DirEntry[str]]) -> tuple[int, int]:
    count = size = 0
    for e in entries:
        try:
            nbytes = e.stat().st_size
            os.unlink(e.path)
        except FileNotFoundError:
            continue
        count += 1
        size += nbytes
    return count, size


def clear_cache(
    cache_dir: str | os.PathLike[str] | None = None, *, text: bool = False
) -> ClearResult:
    """Delete the cached feature maps and clip metadata (and the text embeddings if ``text``).

    Only the cache's own files are deleted (``*.safetensors``, ``*.json`` and temporary files
    in the ``features``, ``clips`` and ``text`` subfolders), never the folders or anything else,
    so a mistyped ``--cache-dir`` cannot wipe unrelated data.
    """
    root = cache_root(cache_dir)
    folders = [FEATURES, CLIPS, *([TEXT] if text else [])]
    temps = [e for f in folders for e in scan(root / f, None)]
    n_temp, _ = _delete(temps)
    n_feat, b_feat = _delete(scan(root / FEATURES, SUFFIX))
    n_clip, _ = _delete(scan(root / CLIPS, ".json"))
    n_text, b_text = _delete(scan(root / TEXT, SUFFIX)) if text else (0, 0)
    return ClearResult(n_feat, b_feat, n_clip, n_text, b_text, n_temp)
