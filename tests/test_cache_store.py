"""The feature cache's store (ditf_track/cache/store.py): memory and disk LRUs, persistence,
damaged files, atomic writes, clip metadata, threads, budgets and their sizes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cache_helpers import SHAPE, SIZE, VIDEO, feature_files, frame, identity, key, nbytes

from ditf_track.cache import FeatureCache, cache_info, clip_key, format_size, parse_size
from ditf_track.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


# -- sizes -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20GB", 20 * 10**9),
        ("20gb", 20 * 10**9),
        ("20 GB", 20 * 10**9),
        ("1.5GB", 1_500_000_000),
        ("512MiB", 512 * 2**20),
        ("8GiB", 8 * 2**30),
        ("100kB", 100_000),
        ("64", 64),
        ("0", 0),
        (".5 TB", 500 * 10**9),
        (42, 42),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GB", "-1GB", "20 XB", "20 G", "1e9", "twenty", -5, True])
def test_parse_size_rejects(bad: str | int) -> None:
    with pytest.raises(ConfigError):
        parse_size(bad)


def test_format_size() -> None:
    assert format_size(0) == "0 B"
    assert format_size(999) == "999 B"
    assert format_size(3072 * 60 * 106 * 2) == "39.1 MB"
    assert format_size(50 * 10**9) == "50.0 GB"
    assert format_size(parse_size("2.5TB")) == "2.5 TB"


# -- hits and misses ---------------------------------------------------------------------------
def test_memory_only_hit_and_miss() -> None:
    cache = FeatureCache(None)
    assert cache.get(key(0)) is None
    cache.put(key(0), frame(0))
    got = cache.get(key(0))
    assert got is not None
    assert torch.equal(got, frame(0))
    assert cache.get(key(0, t=300)) is None  # a changed setting misses
    s = cache.stats
    assert (s.memory_hits, s.disk_hits, s.misses, s.puts) == (1, 0, 2, 1)
    assert s.hits == 1
    info = cache.info()
    assert info.directory is None
    assert (info.memory_entries, info.memory_bytes) == (1, nbytes(frame(0)))
    assert cache.clear().freed_bytes == 0
    assert cache.get(key(0)) is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("background", [True, False])
def test_second_cache_on_the_same_folder_hits_disk(
    tmp_path: Path, dtype: torch.dtype, background: bool
) -> None:
    with FeatureCache(tmp_path, background_writes=background) as first:
        for i in range(5):
            assert first.get(key(i)) is None
            first.put(key(i), frame(i, dtype))
    assert first.stats.disk_writes == 5
    assert len(feature_files(tmp_path)) == 5

    second = FeatureCache(tmp_path)
    for i in range(5):
        got = second.get(key(i))
        assert got is not None
        assert got.dtype == dtype
        assert torch.equal(got, frame(i, dtype))  # bit-exact
    for i in range(5):  # now in memory
        assert second.get(key(i)) is not None
    s = second.stats
    assert (s.misses, s.disk_hits, s.memory_hits, s.corrupt_files) == (0, 5, 5, 0)


def test_put_copies_batch_views(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, background_writes=False)
    batch = torch.stack([frame(i) for i in range(3)])  # (N, C, h, w)
    keys = [key(i) for i in range(3)]
    for k, features in zip(keys, batch):
        cache.put(k, features)
    got = [cache.get(k) for k in [*keys, key(9)]]
    assert got[3] is None
    for i, t in enumerate(got[:3]):
        assert t is not None
        assert torch.equal(t, frame(i))
        # an entry owns its storage: it does not pin the whole batch
        assert t.untyped_storage().nbytes() == nbytes(t)
    assert cache.info().memory_bytes == 3 * nbytes(frame(0))
    cache.put(key(5), frame(5))
    assert cache.stats.puts == 4


def test_keys_must_be_digests(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    for bad in ["../../etc/passwd", "ABCDEF0123456789", "", "k" * 64]:
        with pytest.raises(ValueError, match="hex digests"):
            cache.get(bad)
        with pytest.raises(ValueError, match="hex digests"):
            cache.put(bad, frame(0))


def test_cache_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        FeatureCache(path)


# -- budgets -----------------------------------------------------------------------------------
def test_memory_lru_evicts_least_recently_used() -> None:
    size = nbytes(frame(0))
    cache = FeatureCache(None, device_budget=3 * size)
    for i in range(3):
        cache.put(key(i), frame(i))
    assert cache.get(key(0)) is not None  # 0 becomes the most recent; 1 is now the oldest
    cache.put(key(3), frame(3))
    assert cache.stats.memory_evictions == 1
    assert cache.get(key(1)) is None
    for i in (0, 2, 3):
        assert cache.get(key(i)) is not None
    assert cache.info().memory_bytes == 3 * size
    cache.put(key(4), frame(4))  # evicts 0, the least recently read of 0, 2, 3
    assert cache.get(key(0)) is None
    assert len(cache) == 3


def test_memory_eviction_keeps_the_file(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, device_budget=nbytes(frame(0)), background_writes=False)
    for i in range(3):
        cache.put(key(i), frame(i))
    assert len(cache) == 1
    assert cache.stats.memory_evictions == 2
    got = cache.get(key(0))
    assert got is not None
    assert torch.equal(got, frame(0))
    assert cache.stats.disk_hits == 1


def test_map_larger_than_memory_budget_goes_to_disk_only(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, device_budget=100, background_writes=False)
    cache.put(key(0), frame(0))
    assert len(cache) == 0
    assert cache.get(key(0)) is not None
    assert cache.stats.disk_hits == 1


def test_disk_lru_deletes_least_recently_used_files(tmp_path: Path) -> None:
    file_size = None
    probe = FeatureCache(tmp_path / "probe", background_writes=False)
    probe.put(key(0), frame(0))
    file_size = feature_files(tmp_path / "probe")[0].stat().st_size

    root = tmp_path / "cache"
    cache = FeatureCache(root, disk_budget=int(4.5 * file_size), background_writes=False)
    old = time.time() - 1000
    for i in range(4):
        cache.put(key(i), frame(i))
        path = cache.path(key(i))
        assert path is not None
        os.utime(path, (old + i, old + i))  # written in the order 0, 1, 2, 3
    # reading 0 and 1 from disk makes them the most recent; 2 is the least recently used
    reader = FeatureCache(root, background_writes=False)
    assert reader.get(key(0)) is not None
    assert reader.get(key(1)) is not None
    cache.put(key(4), frame(4))  # 5 files > 4.5 files: delete down to 95 % of the budget
    remaining = {p.name.removesuffix(".safetensors") for p in feature_files(root)}
    assert remaining == {key(0), key(1), key(3), key(4)}
    assert cache.stats.disk_evictions == 1
    assert sum(p.stat().st_size for p in feature_files(root)) <= 4.5 * file_size
    assert cache_info(root).feature_files == 4


def test_map_larger_than_disk_budget_stays_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = FeatureCache(tmp_path, disk_budget="1kB", background_writes=False)
    with caplog.at_level(logging.WARNING, logger="ditf_track.cache"):
        cache.put(key(0), frame(0))
    assert feature_files(tmp_path) == []
    assert "exceeds the disk budget" in caplog.text
    assert cache.get(key(0)) is not None


def test_default_budgets(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    assert cache.device_budget == 8 * 10**9  # CPU: the fixed default
    assert cache.disk_budget == 50 * 10**9
    assert FeatureCache(None).disk_budget is None
    assert FeatureCache(tmp_path, device_budget="1MiB", disk_budget="2GB").disk_budget == 2 * 10**9


# -- damaged files -----------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) - len(data) // 4  # inside the tensor bytes, after the header
    for i in range(mid, mid + 3):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _append(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"\0" * 16)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _other_key(path: Path) -> None:
    other = path.with_name(f"{key(1)}.safetensors")
    path.write_bytes(other.read_bytes())  # a valid file, of another frame


DAMAGE = {
    "truncated": (_truncate, "unreadable"),
    "bytes flipped in the data": (_flip_middle, "crc32"),
    "garbage": (_garbage, "unreadable"),
    "bytes appended": (_append, "unreadable"),
    "empty": (_empty, "unreadable"),
    "another frame's file": (_other_key, "holds key"),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_file_is_a_miss_and_is_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    damage_fn, reason = DAMAGE[damage]
    with FeatureCache(tmp_path) as writer:
        writer.put(key(0), frame(0))
        writer.put(key(1), frame(1))
    path = writer.path(key(0))
    assert path is not None
    damage_fn(path)

    cache = FeatureCache(tmp_path, background_writes=False)
    with caplog.at_level(logging.WARNING, logger="ditf_track.cache"):
        assert cache.get(key(0)) is None
    assert reason in caplog.text
    assert cache.stats.misses == 1
    assert cache.stats.corrupt_files == 1
    assert not path.exists()  # deleted
    cache.put(key(0), frame(0))  # recomputed and rewritten

    fresh = FeatureCache(tmp_path)
    got = fresh.get(key(0))
    assert got is not None
    assert torch.equal(got, frame(0))
    assert fresh.stats.corrupt_files == 0
    got1 = fresh.get(key(1))  # the undamaged neighbour was never touched
    assert got1 is not None
    assert torch.equal(got1, frame(1))


# -- atomic writes -----------------------------------------------------------------------------
def test_failed_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def half_then_fail(tensors: dict[str, torch.Tensor], filename: str, metadata: Any) -> None:
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ditf_track.cache.store.save_file", half_then_fail)
    cache = FeatureCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ditf_track.cache"):
        cache.put(key(0), frame(0))
        cache.put(key(1), frame(1))
        cache.flush()
    assert list((tmp_path / "features").iterdir()) == []  # neither a final nor a temp file
    assert cache.stats.write_errors == 2
    assert caplog.text.count("could not write") == 1  # logged once, then counted
    got = cache.get(key(0))  # the memory tier still serves it
    assert got is not None
    assert torch.equal(got, frame(0))


def test_interrupted_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(tensors: dict[str, torch.Tensor], filename: str, metadata: Any) -> None:
        Path(filename).write_bytes(b"\0" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr("ditf_track.cache.store.save_file", interrupted)
    cache = FeatureCache(tmp_path, background_writes=False)
    with pytest.raises(KeyboardInterrupt):
        cache.put(key(0), frame(0))
    assert list((tmp_path / "features").iterdir()) == []
    assert FeatureCache(tmp_path).get(key(0)) is None


def test_queued_writes_land_at_interpreter_exit(tmp_path: Path) -> None:
    script = (
        "import torch\n"
        "from ditf_track.cache import FeatureCache\n"
        f"cache = FeatureCache({str(tmp_path)!r})\n"
        "for i in range(6):\n"
        f"    cache.put(f'{{i:064x}}', torch.full({SHAPE}, float(i)))\n"
        "# no flush, no close: exit must still drain the write queue\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    reader = FeatureCache(tmp_path)
    for i in range(6):
        got = reader.get(f"{i:064x}")
        assert got is not None
        assert torch.equal(got, torch.full(SHAPE, float(i)))


# -- clip metadata -----------------------------------------------------------------------------
def test_clip_meta_round_trip(tmp_path: Path) -> None:
    ck = clip_key(identity(), VIDEO, SIZE)
    cache = FeatureCache(tmp_path)
    assert cache.get_clip_meta(ck) is None
    meta = {"massive_channels": [154, 1446], "first_frames": (0, 1), "ratio": 100.0}
    cache.put_clip_meta(ck, meta)
    got = cache.get_clip_meta(ck)
    assert got == {"massive_channels": [154, 1446], "first_frames": [0, 1], "ratio": 100.0}
    assert got is not None
    got["massive_channels"].append(7)  # a copy: the cache is unchanged
    assert cache.get_clip_meta(ck) == {
        "massive_channels": [154, 1446],
        "first_frames": [0, 1],
        "ratio": 100.0,
    }
    assert FeatureCache(tmp_path).get_clip_meta(ck) == cache.get_clip_meta(ck)  # a later run
    assert FeatureCache(tmp_path).get_clip_meta(clip_key(identity(k=3), VIDEO, SIZE)) is None

    memory_only = FeatureCache(None)
    memory_only.put_clip_meta(ck, {"massive_channels": [1]})
    assert memory_only.get_clip_meta(ck) == {"massive_channels": [1]}


@pytest.mark.parametrize("content", ["{not json", '{"format": "other", "key": "x", "meta": {}}'])
def test_damaged_clip_meta_is_a_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    ck = clip_key(identity(), VIDEO, SIZE)
    FeatureCache(tmp_path).put_clip_meta(ck, {"massive_channels": [3]})
    path = tmp_path / "clips" / f"{ck}.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="ditf_track.cache"):
        assert FeatureCache(tmp_path).get_clip_meta(ck) is None
    assert "clip metadata" in caplog.text
    assert not path.exists()


# -- threads -----------------------------------------------------------------------------------
def test_threads_put_and_get_concurrently(tmp_path: Path) -> None:
    keys = [key(i) for i in range(12)]
    # room for 4 maps in memory, so threads evict each other's entries and read files back
    cache = FeatureCache(tmp_path, device_budget=4 * nbytes(frame(0)), max_pending_writes=2)
    errors: list[str] = []
    gets = [0] * 4

    def work(worker: int) -> None:
        rng = np.random.default_rng(worker)
        for _ in range(60):
            i = int(rng.integers(0, 12))
            if rng.random() < 0.4:
                cache.put(keys[i], frame(i))
            else:
                got = cache.get(keys[i])
                gets[worker] += 1
                if got is not None and not torch.equal(got, frame(i)):
                    errors.append(f"key {i} returned another frame's map")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.flush()
    assert errors == []
    s = cache.stats
    assert s.hits + s.misses == sum(gets)
    assert s.corrupt_files == 0
    assert s.write_errors == 0
    assert s.disk_writes == s.puts
    assert cache.info().memory_bytes <= 4 * nbytes(frame(0))
    written = {p.name.removesuffix(".safetensors") for p in feature_files(tmp_path)}
    reader = FeatureCache(tmp_path)
    for i, k in enumerate(keys):
        if k in written:
            got = reader.get(k)
            assert got is not None
            assert torch.equal(got, frame(i))


# -- clear -------------------------------------------------------------------------------------
def test_feature_cache_clear_waits_for_queued_writes(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    for i in range(4):
        cache.put(key(i), frame(i))
    done = cache.clear()
    assert done.feature_files == 4
    assert feature_files(tmp_path) == []
    assert cache.get(key(0)) is None
    assert cache.info().memory_entries == 0


@pytest.mark.gpu
def test_cuda_memory_tier_round_trip(tmp_path: Path) -> None:
    device = torch.device("cuda")
    size = nbytes(frame(0))
    with FeatureCache(tmp_path, device="cuda", device_budget=2 * size) as cache:
        assert cache.device_budget == 2 * size
        for i in range(3):
            cache.put(key(i), frame(i).to(device))  # a CUDA map, spilled through host memory
        got = cache.get(key(2))
        assert got is not None
        assert got.device.type == "cuda"
        assert torch.equal(got.cpu(), frame(2))
    assert FeatureCache(None, device="cuda").device_budget <= 8 * 10**9
    reader = FeatureCache(tmp_path, device="cuda")
    got = reader.get(key(0))  # evicted from GPU memory, read back from its file onto the GPU
    assert got is not None
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), frame(0))
