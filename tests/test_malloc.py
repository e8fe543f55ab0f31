"""The glibc mmap threshold that keeps a long run's heap flat (benchmarks/long_video.py)."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

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


_MMAPPED_AFTER_A_LARGE_FREE = """
import ctypes, ctypes.util, sys
from ditf_track import _malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert _malloc.fix_mmap_threshold()
libc.free(libc.malloc(16 * 2**20))  # by default this raises the threshold to 16 MiB
before = libc.mallinfo2().hblks
block = libc.malloc(1_639_680)  # float32 scores of one object at 854x480; larger than the
# free top of the heap, so only the threshold decides between mmap and growing the heap
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize(("mode", "mmapped"), [("fixed", 1), ("default", 0)])
def test_a_frame_sized_buffer_stays_on_mmap_after_a_larger_one_was_freed(
    mode: str, mmapped: int
) -> None:
    """glibc's default raises its threshold when a large block is freed, so later per-frame
    buffers land in the heap; the fixed 128 KiB threshold keeps them mmapped (the 4 MiB one
    used before did not, for this 1.6 MB buffer)."""
    run = subprocess.run(
        [sys.executable, "-c", _MMAPPED_AFTER_A_LARGE_FREE, mode],
        env={**os.environ, "PYTHONPATH": str(Path(_malloc.__file__).parents[1])},
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(run.stdout) == mmapped, run.stderr
