"""The feature cache: an LRU on the device that spills to checksummed safetensors files.

Why: a DiTF feature map costs a forward pass through blocks 0..k of a multi-billion-parameter
DiT, and propagation reads each frame's map many times (as a target, then as a reference for
the next frames). The napari plugin re-runs propagation after every correction and a second
run on the same video must extract nothing. So every map goes through this cache:

* **Memory tier** — an LRU on the tracker's device (the GPU when it runs on CUDA) with a byte
  budget; least-recently-used maps are dropped when a new one would exceed it.
* **Disk tier** — one safetensors file per frame under ``<root>/features/`` (:mod:`.folder`),
  with its own byte budget; least-recently-used files (by mtime, touched on every read) are
  deleted beyond it. ``cache_dir=None`` keeps the memory tier only.

Write policy: **write-through on put**, performed by one background thread. Every put reaches
disk without relying on an eviction or a final flush, so a crash or Ctrl-C loses at most the
few writes still queued (``max_pending_writes``), and the extractor does not wait for the
60-100 ms that checksumming and writing a Flux frame cost on a 2-core CPU
(``benchmarks/cache.py``). The queue is drained by :meth:`FeatureCache.flush` /
:meth:`~FeatureCache.close`, and at interpreter exit (the executor's worker threads are joined
then). Write-on-eviction would save writes only for clips that fit in memory, and would lose
the whole clip on a crash.

Files are written under a temporary name in the same folder and moved into place with
``os.replace``, so a reader sees either no file or a complete one. Each file's safetensors
metadata holds the cache key, the shape, the dtype and a checksum of the tensor bytes; a file
whose header does not parse, whose size does not match its header, or whose bytes, shape,
dtype or key do not match is logged, deleted and treated as a miss, so the frame is recomputed.
Files are not fsync'ed: a process crash cannot leave a partial file (the rename is atomic), and
what a power loss may leave (an empty or stale file) fails that verification like any damage.

Per clip, a small JSON document (:meth:`FeatureCache.put_clip_meta`) holds what must stay fixed
for every frame and every later run, e.g. the massive channels found on frame 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .._atomic import atomic_path
from ..devices import dtype_name, resolve_device
from ..errors import ConfigError, OutputError
from .folder import (
    CLIPS,
    DEFAULT_DEVICE_BUDGET,
    DEFAULT_DISK_BUDGET,
    FEATURES,
    SUFFIX,
    CacheInfo,
    ClearResult,
    cache_info,
    clear_cache,
    remove_stale_temps,
    scan,
)
from .keys import CACHE_FORMAT, canonical_json, check_key

log = logging.getLogger(__name__)

_FILE_FORMAT = f"ditf-track-features/{CACHE_FORMAT}"
_CLIP_FORMAT = f"ditf-track-clip/{CACHE_FORMAT}"
_TENSOR_NAME = "features"
#: On CUDA the default memory budget is also capped at this share of the memory free when the
#: cache is made (make it after loading the model): the DiT's activations and the k-NN need
#: the rest.
DEFAULT_DEVICE_FRACTION = 0.25
#: Writes queued at most before ``put`` waits: 8 Flux frames = 313 MB of host memory.
DEFAULT_MAX_PENDING_WRITES = 8
#: When the disk budget is exceeded, files are deleted down to this share of it, so the next
#: few writes do not each rescan the folder.
_DISK_LOW_WATER = 0.95


# -- sizes -------------------------------------------------------------------------------------
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    **{u: 10 ** (3 * (n + 1)) for n, u in enumerate(("kb", "mb", "gb", "tb"))},
    **{u: 2 ** (10 * (n + 1)) for n, u in enumerate(("kib", "mib", "gib", "tib"))},
}
_SIZE_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*")


def parse_size(value: str | int) -> int:
    """Bytes of a budget: ``42``, ``"20GB"`` → 20·10⁹, ``"512MiB"`` → 512·2²⁰.

    SI units (``kB`` … ``TB``) are powers of 1000, IEC units (``KiB`` … ``TiB``) powers of
    1024; case does not matter.
    """
    if isinstance(value, bool):
        raise ConfigError(f"size {value!r} is not a size; give bytes or e.g. 20GB")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"size {value} is negative; give a size >= 0 (e.g. 20GB)")
        return value
    match = _SIZE_PATTERN.fullmatch(str(value).lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ConfigError(
            f"cannot read the size {value!r}; write a number and a unit, e.g. 20GB, 512MiB or 0"
        )
    return round(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def format_size(nbytes: int) -> str:
    """``39075840`` → ``"39.1 MB"`` (SI units, as :func:`parse_size` reads them)."""
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


# -- checksums (feature files and the text cache) ---------------------------------------------
#: The checksum of the tensor bytes a file carries: crc32 detects every burst error up to 32
#: bits and random corruption with probability 1 - 2⁻³², which is what a cache (not an
#: adversary) needs, at 2× the speed of sha1 and 4× that of blake2b on a 39 MB Flux frame
#: (benchmarks/RESULTS.md, "Feature cache", before those rows were dropped); zlib releases
#: the GIL, so the writer thread does not stall the tracker.
CHECKSUM = "crc32"


def _crc32(data: memoryview) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor (any dtype, bf16 included), without a copy."""
    return t.reshape(-1).view(torch.uint8).numpy().data


def tensor_checksum(t: torch.Tensor) -> str:
    """``"crc32:value"`` of a CPU tensor's bytes, as recorded in a cache file's metadata."""
    return f"{CHECKSUM}:{_crc32(_tensor_bytes(t.contiguous()))}"


def checksum_problem(t: torch.Tensor, recorded: str) -> str | None:
    """Why ``t`` does not match a recorded ``"algo:value"`` checksum, or ``None`` when it does."""
    algo, _, expected = recorded.partition(":")
    if algo != CHECKSUM:
        return f"unknown checksum {algo!r}"
    actual = _crc32(_tensor_bytes(t.contiguous()))
    if actual != expected:
        return f"{algo} {actual} differs from the recorded {expected}"
    return None


# -- the cache ---------------------------------------------------------------------------------
@dataclass
class CacheStats:
    """Counters since the cache was made.

    A get is exactly one of a memory hit (including a map still queued for writing), a disk
    hit or a miss. ``corrupt_files`` counts files found damaged (then deleted and missed).
    """

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    puts: int = 0
    memory_evictions: int = 0
    disk_evictions: int = 0
    disk_writes: int = 0
    corrupt_files: int = 0
    write_errors: int = 0

    @property
    def hits(self) -> int:
        return self.memory_hits + self.disk_hits


def default_device_budget(device: torch.device) -> int:
    """:data:`DEFAULT_DEVICE_BUDGET`, on CUDA at most :data:`DEFAULT_DEVICE_FRACTION` of free."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return min(DEFAULT_DEVICE_BUDGET, int(free * DEFAULT_DEVICE_FRACTION))
    return DEFAULT_DEVICE_BUDGET


class FeatureCache:
    """Feature maps by key: an LRU on ``device`` over an optional folder of safetensors files.

    ``cache_dir`` is the cache root (:func:`cache_root` gives the default; ``None`` keeps maps
    in memory only). Budgets are bytes or human sizes (``"20GB"``); the device budget defaults
    to :func:`default_device_budget`, the disk budget to :data:`DEFAULT_DISK_BUDGET` and covers
    the feature files only. ``background_writes=False`` writes in the caller's thread.

    Maps are any tensor, typically one frame ``(C, h, w)`` in the model dtype. :meth:`get`
    returns the cached tensor itself on ``device``: treat it as read-only. :meth:`put` keeps
    the given tensor when it is already a contiguous, self-owned tensor on ``device`` (no copy)
    — do not modify it afterwards; a view into a batch is copied so that the entry does not pin
    the whole batch. All methods are thread-safe (one lock; disk reads and writes run outside
    it), for the napari plugin whose worker thread tracks while the UI thread reads.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None,
        *,
        device: str | torch.device = "cpu",
        device_budget: int | str | None = None,
        disk_budget: int | str | None = None,
        background_writes: bool = True,
        max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
    ) -> None:
        if max_pending_writes < 1:
            raise ConfigError(f"max_pending_writes={max_pending_writes} must be at least 1")
        self.device = resolve_device(device)
        self.root = None if cache_dir is None else Path(cache_dir).expanduser()
        if self.root is not None and self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"cache directory {self.root} is a file; pass a folder")
        self.device_budget = (
            default_device_budget(self.device)
            if device_budget is None
            else parse_size(device_budget)
        )
        self.disk_budget = (
            None
            if self.root is None
            else DEFAULT_DISK_BUDGET
            if disk_budget is None
            else parse_size(disk_budget)
        )
        self._lock = threading.RLock()
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._memory_bytes = 0
        # key → (write token, host tensor) for puts whose file is not written yet.
        self._pending: dict[str, tuple[int, torch.Tensor]] = {}
        self._next_token = 0
        self._futures: set[Future[None]] = set()
        self._clip_meta: dict[str, str] = {}
        self._stats = CacheStats()
        self._warned: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(max_pending_writes)
        self._background = background_writes and self.root is not None
        self._disk_bytes = 0
        if self.root is not None:
            entries = scan(self.features_dir, SUFFIX)
            self._disk_bytes = sum(e.stat().st_size for e in entries)
            remove_stale_temps(self.root)

    # -- locations ---------------------------------------------------------------------------
    @property
    def features_dir(self) -> Path:
        if self.root is None:
            raise ValueError("a memory-only cache has no folder")
        return self.root / FEATURES

    @property
    def clips_dir(self) -> Path:
        if self.root is None:
            raise ValueError("a memory-only cache has no folder")
        return self.root / CLIPS

    def path(self, key: str) -> Path | None:
        """The file of ``key`` (``None`` for a memory-only cache); it may not exist."""
        check_key(key)
        return None if self.root is None else self.features_dir / f"{key}{SUFFIX}"

    # -- counters ----------------------------------------------------------------------------
    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._lock:
            return dataclasses.replace(self._stats)

    # -- feature maps ------------------------------------------------------------------------
    def get(self, key: str) -> torch.Tensor | None:
        """The map of ``key`` on ``device``, or ``None`` (a miss: extract it and :meth:`put`).

        Memory first, then a map still queued for writing, then the file (verified; a damaged
        file is deleted with a warning and missed). A disk hit enters the memory tier.
        """
        check_key(key)
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                self._stats.memory_hits += 1
                return hit
            pending = self._pending.get(key)
            if pending is not None:
                self._stats.memory_hits += 1
        if pending is not None:
            tensor = pending[1].to(self.device)
            with self._lock:
                self._remember(key, tensor)
            return tensor
        path = self.path(key)
        # CPU: copy the file's bytes out of the mapping; CUDA: the upload below is that copy.
        loaded = None if path is None else self._read(path, key, copy=self.device.type == "cpu")
        with self._lock:
            if loaded is None:
                self._stats.misses += 1
                return None
            self._stats.disk_hits += 1
        tensor = loaded.to(self.device)
        with self._lock:
            self._remember(key, tensor)
        return tensor

    def contains(self, key: str) -> bool:
        """Whether ``key`` is in memory, queued, or has a file — without reading or verifying it.

        For planning (how many frames to extract); :meth:`get` may still miss a damaged file.
        """
        check_key(key)
        with self._lock:
            if key in self._memory or key in self._pending:
                return True
        path = self.path(key)
        return path is not None and path.is_file()

    def put(self, key: str, features: torch.Tensor) -> None:
        """Keep ``features`` under ``key`` in memory and queue its file (write-through).

        Waits only when ``max_pending_writes`` files are already queued. A map larger than the
        device budget goes to disk only; one larger than the disk budget to memory only.
        """
        check_key(key)
        tensor = features.detach()
        if not tensor.is_contiguous() or (
            tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size()
        ):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        on_device = tensor.to(self.device)
        host = None
        if self.root is not None:
            host = tensor if tensor.device.type == "cpu" else tensor.to("cpu")
        with self._lock:
            self._stats.puts += 1
            self._remember(key, on_device)
            if host is None:
                return
            self._next_token += 1
            token = self._next_token
            self._pending[key] = (token, host)
        if not self._background:
            self._write(key, token, host)
            return
        try:
            self._slots.acquire()
            try:
                future = self._writer().submit(self._write, key, token, host)
            except BaseException:
                self._slots.release()
                raise
        except BaseException:  # e.g. Ctrl-C while waiting for a slot: nothing stays queued
            with self._lock:
                self._drop_pending(key, token)
            raise
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._write_done)

    def flush(self) -> None:
        """Wait until every queued file is written (or has failed, with a warning)."""
        while True:
            with self._lock:
                futures = {f for f in self._futures if not f.done()}
            if not futures:
                return
            wait_futures(futures)

    def close(self) -> None:
        """Flush and stop the writer thread; the cache stays usable (writes restart it)."""
        self.flush()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- per-clip metadata -------------------------------------------------------------------
    def get_clip_meta(self, key: str) -> dict[str, Any] | None:
        """The JSON document stored for a clip (:func:`clip_key`), or ``None``; a fresh copy."""
        check_key(key)
        with self._lock:
            text = self._clip_meta.get(key)
        if text is None and self.root is not None:
            text = self._read_clip_meta(self.clips_dir / f"{key}.json", key)
            if text is not None:
                with self._lock:
                    self._clip_meta[key] = text
        return None if text is None else dict(json.loads(text))

    def put_clip_meta(self, key: str, meta: Mapping[str, Any]) -> None:
        """Store a small JSON-serialisable document for a clip, e.g. ``{"massive_channels": …}``.

        Written to disk at once (atomically): later runs must reuse the same values.
        """
        check_key(key)
        text = canonical_json(dict(meta))
        with self._lock:
            self._clip_meta[key] = text
        if self.root is None:
            return
        document = canonical_json({"format": _CLIP_FORMAT, "key": key, "meta": json.loads(text)})

        try:
            with atomic_path(self.clips_dir / f"{key}.json", "clip metadata") as tmp:
                tmp.write_text(document, encoding="utf-8")
        except OutputError as exc:
            self._count_write_error(f"clip metadata {key[:12]}", exc)

    # -- folder ------------------------------------------------------------------------------
    def info(self) -> CacheInfo:
        """Files on disk (after a flush) and the memory tier's use."""
        self.flush()
        with self._lock:
            entries, nbytes = len(self._memory), self._memory_bytes
        if self.root is None:
            return CacheInfo(None, 0, 0, 0, 0, 0, 0, None, self.device_budget, entries, nbytes)
        on_disk = cache_info(
            self.root, disk_budget=self.disk_budget, device_budget=self.device_budget
        )
        return dataclasses.replace(on_disk, memory_entries=entries, memory_bytes=nbytes)

    def clear(self, text: bool = False) -> ClearResult:
        """Forget all maps and clip documents (memory and disk); text embeddings if ``text``."""
        self.flush()
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0
            self._clip_meta.clear()
            self._disk_bytes = 0
            if self.root is None:
                return ClearResult(0, 0, 0, 0, 0, 0)
            return clear_cache(self.root, text=text)

    # -- internals ---------------------------------------------------------------------------
    def _remember(self, key: str, tensor: torch.Tensor) -> None:
        """Insert into the memory LRU (lock held) and evict down to the device budget."""
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_bytes -= _nbytes(old)
        nbytes = _nbytes(tensor)
        if nbytes > self.device_budget:
            if self.root is None:
                self._warn_once(
                    "too-big-memory",
                    "a %s feature map exceeds the memory budget of %s and there is no cache "
                    "folder; it will be recomputed on every use",
                    format_size(nbytes),
                    format_size(self.device_budget),
                )
            return
        self._memory[key] = tensor
        self._memory_bytes += nbytes
        while self._memory_bytes > self.device_budget:
            _, evicted = self._memory.popitem(last=False)
            self._memory_bytes -= _nbytes(evicted)
            self._stats.memory_evictions += 1

    def _writer(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="ditf-cache-writer")
            return self._executor

    def _write_done(self, future: Future[None]) -> None:
        self._slots.release()
        with self._lock:
            self._futures.discard(future)

    def _drop_pending(self, key: str, token: int) -> None:
        entry = self._pending.get(key)
        if entry is not None and entry[0] == token:
            del self._pending[key]

    def _write(self, key: str, token: int, host: torch.Tensor) -> None:
        """Write one file (checksum, metadata, atomic rename), then keep the folder in budget."""
        try:
            assert self.root is not None
            assert self.disk_budget is not None
            nbytes = _nbytes(host)
            if nbytes > self.disk_budget:
                self._warn_once(
                    "too-big-disk",
                    "a %s feature map exceeds the disk budget of %s; it is kept in memory only",
                    format_size(nbytes),
                    format_size(self.disk_budget),
                )
                return
            path = self.features_dir / f"{key}{SUFFIX}"
            metadata = {
                "format": _FILE_FORMAT,
                "key": key,
                "shape": json.dumps(list(host.shape)),
                "dtype": dtype_name(host.dtype),
                "checksum": tensor_checksum(host),
            }
            try:
                replaced = path.stat().st_size
            except FileNotFoundError:
                replaced = 0

            with atomic_path(path, "feature map") as tmp:
                save_file({_TENSOR_NAME: host}, str(tmp), metadata=metadata)
            size = path.stat().st_size
            with self._lock:
                self._stats.disk_writes += 1
                self._disk_bytes += size - replaced
                if self._disk_bytes > self.disk_budget:
                    self._enforce_disk_budget(protect=path.name)
        except Exception as exc:  # a cache that cannot write must not stop the tracking
            self._count_write_error(f"feature map {key[:12]}", exc)
        finally:
            with self._lock:
                self._drop_pending(key, token)

    def _enforce_disk_budget(self, protect: str) -> None:
        """Delete least-recently-used feature files (oldest mtime) down to 95 % of the budget.

        Rescans the folder (lock held), so files written by other processes count too.
        """
        assert self.disk_budget is not None
        entries = []
        for e in scan(self.features_dir, SUFFIX):
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, e))
        entries.sort(key=lambda item: item[0])
        total = sum(size for _, size, _ in entries)
        target = int(self.disk_budget * _DISK_LOW_WATER)
        for _, size, entry in entries:
            if total <= target:
                break
            if entry.name == protect:
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
            except OSError:  # e.g. open elsewhere on Windows; try the next one
                continue
            total -= size
            self._stats.disk_evictions += 1
        self._disk_bytes = total

    def _read(self, path: Path, key: str, copy: bool = True) -> torch.Tensor | None:
        """Load and verify one file; ``None`` when absent or damaged (then deleted).

        ``copy=False`` may return a tensor backed by a read-only mapping of the file; that is
        safe because cache files are only ever replaced by rename, never changed in place.
        """
        try:
            before = os.stat(path)
        except FileNotFoundError:
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensor = f.get_tensor(_TENSOR_NAME)
                if copy:
                    tensor = tensor.clone()
        except FileNotFoundError:
            return None
        except Exception as exc:
            self._discard_corrupt(path, before, f"unreadable ({exc})")
            return None
        problem = _verify(tensor, metadata, key)
        if problem is not None:
            self._discard_corrupt(path, before, problem)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # the disk tier's LRU order is the files' mtime
        return tensor

    def _discard_corrupt(self, path: Path, seen: os.stat_result, reason: str) -> None:
        log.warning(
            "feature cache file %s is damaged: %s; deleted, it will be recomputed", path, reason
        )
        with self._lock:
            self._stats.corrupt_files += 1
            try:
                now = os.stat(path)
            except FileNotFoundError:
                return
            # Only delete what was read, not a good file another writer has just put there.
            if (now.st_ino, now.st_size, now.st_mtime_ns) == (
                seen.st_ino,
                seen.st_size,
                seen.st_mtime_ns,
            ):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    self._disk_bytes -= now.st_size

    def _read_clip_meta(self, path: Path, key: str) -> str | None:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("clip metadata %s is damaged (%s); deleted", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        if (
            not isinstance(document, dict)
            or document.get("format") != _CLIP_FORMAT
            or document.get("key") != key
            or not isinstance(document.get("meta"), dict)
        ):
            log.warning("clip metadata %s does not belong to this key or format; deleted", path)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return canonical_json(document["meta"])

    def _count_write_error(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self._stats.write_errors += 1
        self._warn_once(
            "write-error",
            "could not write %s to the cache folder %s (%s); continuing without it "
            "(further write errors are counted, not logged)",
            what,
            self.root,
            exc,
        )

    def _warn_once(self, tag: str, message: str, *args: object) -> None:
        with self._lock:
            if tag in self._warned:
                return
            self._warned.add(tag)
        log.warning(message, *args)

    def __len__(self) -> int:
        """Entries in the memory tier."""
        with self._lock:
            return len(self._memory)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _verify(tensor: torch.Tensor, metadata: Mapping[str, str], key: str) -> str | None:
    """Why a loaded file does not hold ``key``'s map intact, or ``None`` when it does."""
    if metadata.get("format") != _FILE_FORMAT:
        return f"format {metadata.get('format')!r} is not {_FILE_FORMAT!r}"
    if metadata.get("key") != key:
        return f"it holds key {metadata.get('key')!r}"
    if metadata.get("dtype") != dtype_name(tensor.dtype):
        return f"dtype {dtype_name(tensor.dtype)} differs from the recorded {metadata.get('dtype')}"
    try:
        shape = json.loads(metadata.get("shape", ""))
    except ValueError:
        return "its recorded shape does not parse"
    if shape != list(tensor.shape):
        return f"shape {list(tensor.shape)} differs from the recorded {shape}"
    return checksum_problem(tensor, metadata.get("checksum", ""))
