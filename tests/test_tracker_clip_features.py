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
from ditf_track.extractor import DiTFExtractor
from ditf_track.features import FeatureMaps
from ditf_track.lab import LabExtractor
from ditf_track.propagate import PointParams, PropagationParams
from ditf_track.tracker import ClipFeatures, Tracker
from ditf_track.video import open_video, video_from_array

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
    "vae_sample": False,
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
    # features_file replaces the model (its identity names the file): test_precomputed.py
    assert set(changes) | {"preset", "features_file"} == {
        f.name for f in dataclasses.fields(FeatureConfig)
    }
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

    def extract(
        self, images: Any, *, massive_channels: Any = None, noise_ids: Any = None
    ) -> FeatureMaps:
        self.batches.append((len(images), massive_channels))
        found = (len(images) - 1,) if massive_channels is None else tuple(massive_channels)
        maps = self.inner.extract(images, massive_channels=found, noise_ids=noise_ids)
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


def test_a_frame_has_the_same_features_in_every_selection_and_batch(
    tiny_model: Callable[..., Path], shared_data: Path
) -> None:
    """Issue 18 item 3: a frame's noise comes from its index in the file (tolerance 1e-5: the
    same noise through batches of other sizes), and identical frames draw different noise."""
    dog = shared_data / "davis/JPEGImages/480p/dog"
    size = (64, 96)
    extractor = DiTFExtractor.from_pretrained(
        tiny_model("sd3"), family="sd3", t=400, k=2, feature_mode="adaln", batch_size=4
    )
    from_0 = ClipFeatures(extractor, open_video(dog, end=14), size)
    from_10 = ClipFeatures(extractor, open_video(dog, start=10, end=14), size)
    assert from_10.noise_ids([2]) == ["frame:12"] == from_0.noise_ids([12])
    from_0.extract([9, 10, 11, 12])  # frame 12 in a batch of 4 …
    torch.testing.assert_close(from_10.get(2), from_0.get(12), rtol=1e-5, atol=1e-5)  # … of 1
    # the same picture twice in one video: two frames, two noise draws
    frame = open_video(dog, end=1).read(0)
    twice = ClipFeatures(extractor, video_from_array(np.stack([frame, frame])), size)
    assert (twice.get(0).float() - twice.get(1).float()).abs().max() > 1e-2


def test_selections_of_a_file_share_their_frames_keys(shared_data: Path) -> None:
    """Frames are keyed by file index and the file's hash: ``--end 8`` fills the cache for a
    whole-file run; the clip's channels are keyed by the frame they were found on."""
    dog = shared_data / "davis/JPEGImages/480p/dog"
    cache = FeatureCache(None)
    size = (32, 48)
    short = ClipFeatures(BatchChannels(), open_video(dog, end=8), size, cache=cache)
    short.extract(list(range(8)))
    counted: list[int] = []
    whole = ClipFeatures(
        BatchChannels(), open_video(dog), size, cache=cache, on_extract=counted.append
    )
    assert whole.video_hash == short.video_hash
    assert whole.clip_key == short.clip_key
    assert whole.known_channels() == (0,)
    assert whole.missing(list(range(10))) == [8, 9]
    assert whole.key(5) == short.key(5)
    torch.testing.assert_close(whole.get(5), short.get(5), rtol=0, atol=0)
    assert counted == []
    later = ClipFeatures(BatchChannels(), open_video(dog, start=2, end=8), size, cache=cache)
    assert later.clip_key != short.clip_key  # its channels are found on frame 2
    assert later.massive_channels == (0,)
    assert later.key(3) == short.key(5)  # frame 5 of the file, position 3 of the selection
    strided = ClipFeatures(BatchChannels(), open_video(dog, end=8, stride=2), size, cache=cache)
    assert strided.key(2) == short.key(4)
