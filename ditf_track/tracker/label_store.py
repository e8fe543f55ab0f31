"""Each frame's latest label map, in bounded memory.

A full-resolution map is ``H·W`` bytes (2 MB at 1080p), so a state that kept every frame's map
would grow with the video. Propagation needs none of them: it reads the annotation and carries
its context at the token grid (:func:`~ditf_track.propagate.propagate_sequence`). The
:class:`LabelStore` keeps the last few maps in memory and the others in lossless PNG files:
those a front end already wrote (a *writer*, e.g. the CLI's run folder), else files of its own
in a temporary folder it creates, and deletes when closed or garbage-collected.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..masks import read_mask, write_mask

#: Writes one frame's ``(H, W) uint8`` labels and returns the PNG file it wrote (or one that
#: already holds those labels, e.g. a resumed run's); called with ``(frame_idx, labels)``.
LabelWriter = Callable[[int, np.ndarray], Path]


def _remove_owned(files: set[Path], folder: list[Path]) -> None:
    """Delete the files a store wrote itself and its temporary folder (only if then empty)."""
    for path in list(files):
        path.unlink(missing_ok=True)
    files.clear()
    for spill in folder:
        # gone already, or someone else put a file there: leave it, and the folder
        with contextlib.suppress(OSError):
            spill.rmdir()
    folder.clear()


class LabelStore(MutableMapping[int, np.ndarray]):
    """Frame index → ``(H, W) uint8`` labels; at most ``capacity`` maps held in memory.

    Setting a frame stores its map (through the writer, when one is set with
    :meth:`write_with`); when more than ``capacity`` maps are in memory the oldest set leaves
    memory, spilled first to a PNG in the store's temporary folder unless a writer already wrote
    it. Reading a frame that left memory reads its file back (byte-equal: PNG is lossless).
    Thread-safe (the napari worker sets while the UI thread may read).
    """

    def __init__(self, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be at least 1")
        self.capacity = capacity
        self._memory: OrderedDict[int, np.ndarray] = OrderedDict()
        self._files: dict[int, Path] = {}  # frames with a file holding their latest labels
        self._owned: set[Path] = set()  # files this store wrote (it deletes only these)
        self._spill_dir: list[Path] = []  # the temporary folder, once created
        self._writer: LabelWriter | None = None
        self._lock = threading.RLock()
        self._cleanup = weakref.finalize(self, _remove_owned, self._owned, self._spill_dir)

    # -- the mapping ---------------------------------------------------------------------------
    def __setitem__(self, frame_idx: int, labels: np.ndarray) -> None:
        frame_idx = int(frame_idx)
        with self._lock:
            self._forget(frame_idx)  # a failed write below leaves no stale map behind
            if self._writer is not None:
                self._files[frame_idx] = Path(self._writer(frame_idx, labels))
            self._memory[frame_idx] = labels
            while len(self._memory) > self.capacity:
                self._evict()

    def __getitem__(self, frame_idx: int) -> np.ndarray:
        with self._lock:
            held = self._memory.get(frame_idx)
            if held is not None:
                return held
            path = self._files.get(frame_idx)
        if path is None:
            raise KeyError(frame_idx)
        return read_mask(path).labels

    def __delitem__(self, frame_idx: int) -> None:
        with self._lock:
            if frame_idx not in self:
                raise KeyError(frame_idx)
            self._forget(frame_idx)

    def __contains__(self, frame_idx: object) -> bool:
        return frame_idx in self._memory or frame_idx in self._files

    def __iter__(self) -> Iterator[int]:
        with self._lock:
            return iter(sorted(self._memory.keys() | self._files.keys()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._memory.keys() | self._files.keys())

    def __repr__(self) -> str:
        return f"LabelStore({len(self)} frames, {len(self._memory)} in memory)"

    def clear(self) -> None:
        """Forget every frame; the store's own files are deleted, a writer's are left."""
        with self._lock:
            self._memory.clear()
            self._files.clear()
            _remove_owned(self._owned, self._spill_dir)

    # -- storage -------------------------------------------------------------------------------
    def write_with(self, writer: LabelWriter | None) -> None:
        """Store every map set from now on through ``writer`` (the caller's files, never
        deleted here) instead of spilling it to the store's own folder; None to stop."""
        with self._lock:
            self._writer = writer

    @property
    def in_memory(self) -> tuple[int, ...]:
        """The frames whose maps are held in memory, oldest first (at most ``capacity``)."""
        with self._lock:
            return tuple(self._memory)

    @property
    def spill_folder(self) -> Path | None:
        """The store's temporary folder, while it exists."""
        return self._spill_dir[0] if self._spill_dir else None

    def close(self) -> None:
        """Delete the store's own files and folder now (also done when it is collected)."""
        self.clear()

    def _forget(self, frame_idx: int) -> None:
        self._memory.pop(frame_idx, None)
        path = self._files.pop(frame_idx, None)
        if path is not None and path in self._owned:
            self._owned.discard(path)
            path.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Move the oldest map out of memory, writing it first if no file holds it."""
        frame_idx, labels = next(iter(self._memory.items()))
        if frame_idx not in self._files:
            if not self._spill_dir:
                self._spill_dir.append(Path(tempfile.mkdtemp(prefix="ditf-track-labels-")))
            path = self._spill_dir[0] / f"{frame_idx:06d}.png"
            try:
                write_mask(path, labels)
            except OutputError as exc:  # the map stays in memory; nothing is lost
                raise OutputError(
                    f"cannot move frame {frame_idx}'s labels out of memory to {path} "
                    f"({exc.__cause__ or exc}); free space there or set TMPDIR to a larger disk"
                ) from exc
            self._owned.add(path)
            self._files[frame_idx] = path
        del self._memory[frame_idx]


__all__ = ["LabelStore", "LabelWriter"]
