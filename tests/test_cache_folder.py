"""The cache folder (ditf_track/cache/folder.py): its root, layout, temporary files, and what
`cache info` / `cache clear` count and delete (never anything else)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from cache_helpers import frame, key, nbytes, populate

from ditf_track.cache import (
    FeatureCache,
    cache_info,
    cache_root,
    clear_cache,
    text_cache_dir,
)
from ditf_track.errors import ConfigError


# -- the root ----------------------------------------------------------------------------------
def test_cache_root_is_the_given_folder_else_the_variable_else_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DITF_TRACK_CACHE", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "ditf-track"
    monkeypatch.setenv("DITF_TRACK_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "given") == tmp_path / "given"
    assert cache_root("~/c") == tmp_path / "home" / "c"
    # the text embeddings live under the same root as the features, wherever it is
    assert text_cache_dir() == tmp_path / "env" / "text"
    assert text_cache_dir("~/c") == tmp_path / "home" / "c" / "text"
    assert not (tmp_path / "env").exists()  # resolving creates nothing


@pytest.mark.parametrize("sub", ["features", "clips", "text"])
def test_cache_root_refuses_a_file(tmp_path: Path, sub: str) -> None:
    (tmp_path / sub).write_text("x")  # e.g. a mistyped --cache-dir one level too high
    with pytest.raises(ConfigError, match=f"cache folder {tmp_path / sub} is a file"):
        text_cache_dir(tmp_path)
    with pytest.raises(ConfigError, match=f"cache folder {tmp_path / sub} is a file"):
        cache_info(tmp_path)


# -- temporary files ---------------------------------------------------------------------------
def test_stale_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    folder = tmp_path / "features"
    folder.mkdir()
    stale = folder / f".{key(0)}.0123456789ab.tmp.safetensors"  # as atomic_path names them
    fresh = folder / f".{key(1)}.ba9876543210.tmp.safetensors"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")  # maybe another process writing right now
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    cache = FeatureCache(tmp_path)
    assert not stale.exists()
    assert fresh.exists()
    info = cache_info(tmp_path)
    assert (info.temp_files, info.feature_files) == (1, 0)  # never taken for a feature file
    assert cache.get(key(1)) is None
    assert clear_cache(tmp_path).temp_files == 1
    assert not fresh.exists()


# -- info / clear and the CLI ------------------------------------------------------------------


def test_info_and_clear(tmp_path: Path) -> None:
    feature_bytes, text_bytes = populate(tmp_path)
    info = cache_info(tmp_path)
    assert (info.feature_files, info.feature_bytes) == (3, feature_bytes)
    assert (info.clip_files, info.text_files, info.text_bytes) == (1, 1, text_bytes)
    assert info.temp_files == 0
    assert feature_bytes > 3 * nbytes(frame(0, torch.float32))  # tensor bytes + headers

    done = clear_cache(tmp_path)
    assert (done.feature_files, done.feature_bytes, done.clip_files) == (3, feature_bytes, 1)
    assert done.text_files == 0
    assert cache_info(tmp_path).text_files == 1
    assert (tmp_path / "notes.txt").exists()
    assert (tmp_path / "features" / "README").exists()
    done = clear_cache(tmp_path, text=True)
    assert (done.text_files, done.text_bytes, done.freed_bytes) == (1, text_bytes, text_bytes)
    assert clear_cache(tmp_path / "missing").freed_bytes == 0
    assert not (tmp_path / "missing").exists()
