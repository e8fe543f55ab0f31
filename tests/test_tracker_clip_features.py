"""ClipFeatures: one clip's feature keys, massive channels and extraction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ditf_track.cache import FeatureCache
from ditf_track.config import FeatureConfig, Runtime, TrackerConfig
from ditf_track.features import FeatureMaps
from ditf_track.lab import LabExtractor
from ditf_track.propagate import PointParams, PropagationParams
from ditf_track.tracker import ClipFeatures, Tracker
from ditf_track.video import video_from_array

#: One change per propagation setting: none may change a feature key (a correction or a new
#: --radius re-runs the propagation on cached features).
PROPAGATION_CHANGES: dict[str, Any] = {
    "params": PropagationParams(n_context=3, radius=4, topk=9, temperature=0.3),
    "label_mode": "nearest",
    "points_mode": "heatmap",
    "point_params": PointParams(radius=3, min_similarity=0.2, cycle_threshold=None, sigma=2.0),
    "runtime": Runtime(batch_size=2, disk_cache=False),
}


#: One change per feature setting (the preset's is checked by the extractor identity test in
#: test_cache.py: a tiny model has too few blocks for a real preset's k).
FEATURE_CHANGES: dict[str, Any] = {
    "revision": "def456",
    "dtype": "bfloat16",
    "t": 142,
    "k": 2,
    "prompt": "a photo",
    "guidance": 3.5,
    "feature_mode": "adaln",
    "condition": "t",
    "discard_stage": "pre_norm",
    "discard_channels": (3,),
    "discard_ratio": 50.0,
    "seed": 1,
    "ensemble": 2,
    "short_side": 80,
    "long_multiple": 64,
    "rounding": "floor",  # through the input size: 96 x 170.8 → 96 x 160, not 96 x 176
    "interpolation": "bilinear",
    "profile": "paper",  # asked for (the default asks for official, the paper's here)
}


def test_only_the_feature_config_keys_the_feature_cache(
    tiny_model: Callable[..., Path], shared_data: Path
) -> None:
    clip = shared_data / "davis/JPEGImages/480p/dog"
    base = TrackerConfig(
        features=FeatureConfig(
            preset=None,
            model=str(tiny_model("pixart")),
            family="pixart",
            t=141,
            k=1,
            short_side=96,
        ),
        runtime=Runtime(disk_cache=False),
    )

    def key(config: TrackerConfig) -> str:
        tracker = Tracker.from_config(config)
        state = tracker.init_state(clip, end=2)
        return state.features.key(1)

    reference = key(base)
    for name, value in PROPAGATION_CHANGES.items():
        assert key(dataclasses.replace(base, **{name: value})) == reference, name
    other_models = {"model": str(tiny_model("pixart", seed=1)), "family": "sd3"}
    changes = {**FEATURE_CHANGES, **other_models}
    assert set(changes) | {"preset"} == {f.name for f in dataclasses.fields(FeatureConfig)}
    for name, value in changes.items():
        features = dataclasses.replace(base.features, **{name: value})
        if name == "family":
            features = dataclasses.replace(features, model=str(tiny_model("sd3")))
        assert key(dataclasses.replace(base, features=features)) != reference, name


class BatchChannels:
    """The lab baseline, but "finds" channel ``len(batch) − 1`` massive when not told which to
    hold: a clip whose channels were found on another batch than frame 0 alone would show it."""

    def __init__(self) -> None:
        self.inner = LabExtractor()
        self.stride = self.inner.stride
        self.device = self.inner.device
        self.batches: list[tuple[int, Any]] = []

    def identity(self) -> dict[str, Any]:
        return {**self.inner.identity(), "batch_channels": True}

    def extract(self, images: Any, *, massive_channels: Any = None) -> FeatureMaps:
        self.batches.append((len(images), massive_channels))
        found = (len(images) - 1,) if massive_channels is None else tuple(massive_channels)
        maps = self.inner.extract(images, massive_channels=found)
        return dataclasses.replace(maps, meta={**maps.meta, "massive_channels": list(found)})


def test_channels_found_on_frame_0_alone_then_held_and_remembered() -> None:
    frames = np.random.RandomState(0).randint(0, 256, (4, 32, 48, 3), dtype=np.uint8)
    video = video_from_array(frames)
    cache = FeatureCache(None)
    extractor = BatchChannels()
    counted: list[int] = []
    clip = ClipFeatures(extractor, video, (32, 48), cache=cache, on_extract=counted.append)
    assert clip.known_channels() is None
    assert clip.missing([2, 3]) == [0, 2, 3]  # frame 0 first: its channels key every frame
    clip.extract([2, 3])
    assert clip.massive_channels == (0,)  # found on frame 0 alone, not on the batch of two
    assert extractor.batches == [(1, None), (2, (0,))]
    assert counted == [1, 2]
    assert clip.missing([0, 1, 2, 3]) == [1]
    assert torch.equal(clip.get(2), cache.get(clip.key(2)))
    assert extractor.batches[-1] == (2, (0,))  # a cache hit extracts nothing
    # a later run on the same clip reads the channels from the clip's metadata
    again = ClipFeatures(BatchChannels(), video, (32, 48), cache=cache)
    assert again.known_channels() == (0,)
    assert again.key(3) == clip.key(3)
