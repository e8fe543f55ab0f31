"""One long video's features extracted ahead of propagation by other processes (Ray workers),
handed over through the on-disk feature cache.

The driver fixes the clip's massive channels on frame 0 (:attr:`ClipFeatures.massive_channels`,
stored as the clip's cache metadata), then splits the frames propagation will read into chunks:
in the order it first reads them, ``batch_size`` frames each, the batches the in-process run
extracts, so that every frame gets the same bytes. Workers extract chunks into the shared cache
folder (:func:`extract_chunk`); the driver's :class:`StreamedCache` makes a read of a frame wait
for its chunk, then finds the file as a cache hit, so propagation runs in frame order while the
workers run ahead. :class:`ChunkGate` holds the hand-over and bounds how far ahead the workers
get (``lookahead`` chunks beyond the one propagation reads): the cache's disk budget must not
evict a frame before it is read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..cache import FeatureCache
from ..errors import DitfError
from ..images import Interpolation
from ..video import open_video
from .clip_features import ClipFeatures

if TYPE_CHECKING:
    from . import Tracker, TrackerState


@dataclass(frozen=True)
class ChunkJob:
    """What a worker needs to extract one chunk: the selection (``start:end:stride`` of
    ``video``), its hash, model input size ``(H', W')`` and resize, the cache root, the chunk's
    positions in the selection and the channels fixed on frame 0 (checked against the cache's)."""

    video: str
    start: int
    end: int | None
    stride: int
    video_hash: str
    input_size: tuple[int, int]
    interpolation: Interpolation
    cache_dir: str
    frames: tuple[int, ...]
    channels: tuple[int, ...]
    exit_at: int | None = None  # tests: the worker exits on a first attempt at this position


def plan_chunks(tracker: Tracker, state: TrackerState) -> list[list[int]]:
    """The frames the next :meth:`Tracker.propagate` reads and finds neither cached nor queued,
    in the order it first reads them, in chunks of the tracker's ``batch_size`` (frame 0's
    channels must be fixed: :meth:`Tracker.massive_channels`)."""
    clip = tracker._clip(state)
    schedule = tracker._schedule(state, tracker.points_mode)
    missing = clip.missing(schedule.feature_frames())
    size = max(1, tracker.batch_size)
    return [missing[i : i + size] for i in range(0, len(missing), size)]


class ChunkGate:
    """The hand-over between the thread that hears workers and the propagation (thread-safe).

    ``chunks`` are the cache keys of each chunk. :meth:`wait` (propagation) blocks until a
    key's chunk is done and raises the chunk's failure; :meth:`admit` (before a chunk is sent)
    blocks while the chunk lies more than ``lookahead`` chunks beyond the one propagation reads,
    unless propagation itself waits (a chunk still out must be heard: no deadlock).
    """

    def __init__(self, chunks: Sequence[Sequence[str]], lookahead: int) -> None:
        self._chunk_of = {key: i for i, keys in enumerate(chunks) for key in keys}
        self._done = [False] * len(chunks)
        self._failure: str | None = None
        self._reading = 0
        self._blocked = False
        self._stopped = False
        self.lookahead = lookahead
        self._cond = threading.Condition()

    def wait(self, key: str) -> None:
        i = self._chunk_of.get(key)
        if i is None:
            return
        with self._cond:
            self._reading = max(self._reading, i)
            self._cond.notify_all()
            while not self._done[i] and self._failure is None:
                self._blocked = True
                self._cond.notify_all()
                self._cond.wait()
            self._blocked = False
            if not self._done[i]:
                raise DitfError(self._failure or "the Ray workers stopped; run again")

    def admit(self, i: int) -> bool:
        """Whether chunk ``i`` is to be sent (False once the run stopped or failed)."""
        with self._cond:
            while (
                not self._stopped
                and self._failure is None
                and i > self._reading + self.lookahead
                and not self._blocked
            ):
                self._cond.wait()
            return not self._stopped and self._failure is None

    def done(self, i: int) -> None:
        with self._cond:
            self._done[i] = True
            self._cond.notify_all()

    def fail(self, message: str) -> None:
        with self._cond:
            if self._failure is None:
                self._failure = message
            self._cond.notify_all()

    def stop(self) -> None:
        """No further chunk is sent (propagation ended, or failed)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


class StreamedCache(FeatureCache):
    """The driver's feature cache: a read of a key that a chunk is bringing waits for it
    (``gate``), then reads the worker's file like any disk hit."""

    gate: ChunkGate | None = None

    def get(self, key: str) -> torch.Tensor | None:
        if self.gate is not None:
            self.gate.wait(key)
        return super().get(key)


def extract_chunk(extractor: Any, job: ChunkJob, attempt: int) -> int:
    """On a worker: extract ``job.frames`` in one batch into the shared cache (disk only: the
    driver reads them there); returns the frame count."""
    video = open_video(job.video, job.start, job.end, job.stride)
    cache = FeatureCache(job.cache_dir, device=extractor.device, device_budget=0)
    try:
        clip = ClipFeatures(
            extractor,
            video,
            job.input_size,
            cache=cache,
            interpolation=job.interpolation,
            video_hash=job.video_hash,
        )
        if clip.known_channels() != job.channels:
            raise DitfError(
                f"the feature cache {job.cache_dir} does not hold frame 0's massive channels "
                "where this worker runs; give --cache-dir on a file system every node shares"
            )
        if job.exit_at is not None and attempt == 0 and job.exit_at in job.frames:
            os._exit(3)  # as if the worker were killed mid-chunk
        clip.extract(job.frames)
    finally:
        cache.close()
    return len(job.frames)


__all__ = ["ChunkGate", "ChunkJob", "StreamedCache", "extract_chunk", "plan_chunks"]
