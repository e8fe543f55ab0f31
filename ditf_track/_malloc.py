"""Keep a long run's heap from growing with the video (glibc only).

glibc serves an allocation above its mmap threshold with its own ``mmap``, returned to the
system when freed, and everything smaller from the heap. By default that threshold starts at
128 KiB and rises (up to 32 MiB) each time such a block is freed, so after the first frames the
per-frame buffers (the decoded and resized frame, a 410 kB label map at 854×480, the
upsampled label scores: 0.1–20 MB each) all come from the heap, between the feature cache's
long-lived entries, and the freed holes are not reused well: ``track --preset lab`` grew by
~3 MB per frame at short side 960 and by 0.2–0.25 MB per frame at 240
(``benchmarks/long_video.py``, RESULTS.md; how much depended on the machine's load). A fixed
threshold of 128 KiB keeps every such buffer on ``mmap``; only small objects share the heap
with the cache. (A 4 MiB threshold stopped the growth at 960 but not at 240; one malloc arena
for all threads did not stop it either.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

#: ``M_MMAP_THRESHOLD`` of glibc's ``<malloc.h>``.
_M_MMAP_THRESHOLD = -3
#: Buffers from this size on are mmapped (glibc's initial value, no longer raised).
MMAP_THRESHOLD = 128 * 2**10


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
