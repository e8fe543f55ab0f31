"""One clip's features: the extractor, the feature cache, the video and its model input size.

:class:`ClipFeatures` is the one place that keys a clip's frames in the
:class:`~ditf_track.cache.FeatureCache` and fixes its massive channels. The rule, for every
command (``track``, ``extract``) and every front end: the massive channels are found on frame 0
of the selection, held for every frame of the clip (they enter every frame's key) and stored as
the clip's metadata, so a later run on the same clip discards the same channels without
extracting frame 0 again.

Frames are known by their index in the file or folder, never by their position in the
selection: it keys them in the cache (with the file's hash, not the selection's) and seeds their
noise (:func:`~ditf_track.noise.frame_noise_id`), so ``--start 0`` and ``--start 10`` give frame
12 the same features and ``track --end 8`` reuses a whole-file run's frames. The clip's metadata
is keyed by the file index of the frame its channels were found on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..cache import FeatureCache, clip_key, feature_key
from ..features import FeatureExtractor
from ..images import Interpolation
from ..noise import frame_noise_id
from ..video import VideoSource, resize_frames


class ClipFeatures:
    """Features of ``video`` (a selection of frames) at model ``input_size`` ``(H', W')``.

    ``get(frame_idx)`` returns the ``(C, h, w)`` map of a position in the selection (0 … T−1)
    from the cache, else extracts it; ``extract(frames)`` runs one batch through the extractor;
    ``missing(frames)`` names the frames that are not cached. ``on_extract(n)`` is told of every
    ``n`` frames that went through the extractor (cache misses).
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        video: VideoSource,
        input_size: tuple[int, int],
        *,
        cache: FeatureCache | None = None,
        interpolation: Interpolation = "auto",
        video_hash: str | None = None,
        on_extract: Callable[[int], None] | None = None,
    ) -> None:
        self.extractor = extractor
        self.video = video
        self.input_size = input_size
        self.cache = cache if cache is not None else FeatureCache(None)
        self.interpolation = interpolation
        self.video_hash = video_hash if video_hash is not None else video.file_hash()
        self.on_extract = on_extract
        # What the features depend on besides the frame: the extractor and the resize.
        self.identity: dict[str, Any] = {**extractor.identity(), "resize": interpolation}
        self._channels: tuple[int, ...] | None = None

    @property
    def clip_key(self) -> str:
        """The key of the clip's metadata (its massive channels, found on the selection's first
        frame: that frame's file index enters the key)."""
        first = int(self.video.frame_indices[0])
        identity = {**self.identity, "channels_frame": first}
        return clip_key(identity, self.video_hash, self.input_size)

    def known_channels(self) -> tuple[int, ...] | None:
        """The massive channels if already found (here or by an earlier run), else None."""
        if self._channels is None:
            meta = self.cache.get_clip_meta(self.clip_key)
            if meta is not None and "massive_channels" in meta:
                self._channels = tuple(int(c) for c in meta["massive_channels"])
        return self._channels

    @property
    def massive_channels(self) -> tuple[int, ...]:
        """The clip's massive channels, found on frame 0 of the selection (extracting it)."""
        channels = self.known_channels()
        if channels is None:
            maps = self.extractor.extract(self._frames([0]), noise_ids=self.noise_ids([0]))
            self._count(1)
            channels = self._channels = tuple(maps.meta.get("massive_channels", ()))
            self.cache.put_clip_meta(self.clip_key, {"massive_channels": list(channels)})
            self.cache.put(self.key(0), maps.features[0])
        return channels

    def key(self, frame_idx: int) -> str:
        """The cache key of one position in the selection (the channels must be known)."""
        identity = {**self.identity, "massive_channels": list(self.massive_channels)}
        index = int(self.video.frame_indices[frame_idx])
        return feature_key(identity, self.video_hash, index, self.input_size)

    def missing(self, frames: Sequence[int]) -> list[int]:
        """The frames of ``frames`` to extract, in order; a clip seen for the first time under
        these settings has nothing cached and needs frame 0 first (its channels)."""
        if self.known_channels() is None:
            return [0, *(f for f in frames if f != 0)]
        return [f for f in frames if not self.cache.contains(self.key(f))]

    def get(self, frame_idx: int) -> torch.Tensor:
        """The ``(C, h, w)`` feature map of one frame (from the cache, else extracted)."""
        key = self.key(frame_idx)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        self.extract([frame_idx])
        found = self.cache.get(key)
        assert found is not None
        return found

    def extract(self, frames: Sequence[int]) -> None:
        """Extract ``frames`` in one batch into the cache."""
        channels = self.massive_channels
        maps = self.extractor.extract(
            self._frames(frames), massive_channels=channels, noise_ids=self.noise_ids(frames)
        )
        self._count(len(frames))
        for frame_idx, feats in zip(frames, maps.features):
            self.cache.put(self.key(frame_idx), feats)

    def noise_ids(self, frames: Sequence[int]) -> list[str]:
        """The stable noise ids of positions in the selection: their file indices."""
        return [frame_noise_id(int(self.video.frame_indices[f])) for f in frames]

    def _frames(self, frames: Sequence[int]) -> np.ndarray:
        """``(N, H', W', 3) uint8`` model-input frames of positions in the selection."""
        return resize_frames(
            self.video.read_batch(list(frames)), self.input_size, interpolation=self.interpolation
        )

    def _count(self, n: int) -> None:
        if self.on_extract is not None:
            self.on_extract(n)


__all__ = ["ClipFeatures"]
