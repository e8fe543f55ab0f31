"""Keep a long run's heap from growing with the video (glibc only).

glibc serves an allocation above its mmap threshold with its own ``mmap``, returned to the
system when freed, and raises that threshold (up to 32 MiB) each time such a block is freed.
After the first frames every per-frame buffer (the decoded and resized frame, the upsampled
label scores: 1–20 MB each) then comes from the heap, between the feature cache's long-lived
entries, and the freed holes are not reused well: ``track --preset lab`` at short side 960
grew by ~3 MB per frame (``benchmarks/long_video.py``). A fixed threshold keeps such buffers
on ``mmap``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

#: ``M_MMAP_THRESHOLD`` of glibc's ``<malloc.h>``.
_M_MMAP_THRESHOLD = -3
#: Buffers from this size on are mmapped: a frame at 960 short side and up.
MMAP_THRESHOLD = 4 * 2**20


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Set glibc's mmap threshold to ``threshold`` bytes for this process (which also stops
    its dynamic raising). Returns whether it was set (False outside glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # musl has no mallopt
        return False


__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]
