"""The glibc mmap threshold that keeps a long run's heap flat (benchmarks/long_video.py)."""

from __future__ import annotations

import ctypes
import platform

import pytest

from ditf_track import _malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_threshold_is_set_on_glibc() -> None:
    assert _malloc.fix_mmap_threshold()


def test_threshold_is_skipped_without_mallopt(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(name: str) -> ctypes.CDLL:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert _malloc.fix_mmap_threshold() is False
