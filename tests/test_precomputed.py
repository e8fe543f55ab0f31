"""Precomputed features (``PrecomputedFeatures``, ``FeatureConfig.features_file``): the same
propagation as the extractor the file came from, absolute frame indices, float dtypes, one frame
read at a time, the header faults, and the one builder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ditf_track import LabExtractor, Tracker
from ditf_track import precomputed as precomputed_module
from ditf_track.config import FeatureConfig, Runtime, TrackerConfig
from ditf_track.errors import ConfigError, InputError
from ditf_track.export import extract_to_safetensors
from ditf_track.features import FeatureExtractor
from ditf_track.noise import frame_noise_id, image_noise_id
from ditf_track.precomputed import PrecomputedFeatures, expected_grid, frame_index
from ditf_track.video import open_video

DOG = "davis/JPEGImages/480p/dog"
DOG_MASK = "davis/Annotations/480p/dog/00000.png"
SIDE = 64  # lab at short side 64: a 4 x 7 grid on 854 x 480 frames


def lab_file(frames: Path, out: Path, **selection: int) -> Path:
    """The lab maps of ``frames`` (a selection) as ``extract`` writes them."""
    video = open_video(frames, **selection)
    return extract_to_safetensors(LabExtractor(), video, out, size=(SIDE, 112))


def masks(tracker: Tracker, frames: Path, mask: Path, **selection: int) -> list[np.ndarray]:
    state = tracker.init_state(frames, **selection)
    tracker.add_mask(state, 0, mask)
    return [r.labels for r in tracker.propagate(state)]


def test_precomputed_features_are_public_api() -> None:
    import ditf_track

    assert ditf_track.PrecomputedFeatures is PrecomputedFeatures
    assert "PrecomputedFeatures" in ditf_track.__all__


def test_frame_index_inverts_the_noise_id() -> None:
    assert [frame_index(frame_noise_id(i)) for i in (0, 7, 1234)] == [0, 7, 1234]
    with pytest.raises(InputError, match="per video frame"):
        frame_index(image_noise_id(np.zeros((4, 4, 3), np.uint8)))


def test_propagation_equals_the_extractor_the_file_came_from(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lab maps through a file give the masks of the lab extractor itself, bit for bit, and the
    file's frames are read by their index in the video (``--start 2 --end 6``: rows 2..5)."""
    frames, mask = shared_data / DOG, shared_data / DOG_MASK
    path = lab_file(frames, tmp_path / "lab.safetensors", end=8)
    features = PrecomputedFeatures(path)
    assert (features.num_frames, features.grid, features.stride) == (8, (4, 7), 16)
    assert features.short_side == SIDE
    direct = masks(Tracker(LabExtractor(), short_side=SIDE), frames, mask, end=8)
    read = masks(Tracker(features, short_side=SIDE), frames, mask, end=8)
    assert len(read) == 8
    for a, b in zip(direct, read, strict=True):
        np.testing.assert_array_equal(a, b)
    # a selection: positions 0..3 are file frames 2..5, whose rows differ from rows 0..3
    rows: list[Any] = []
    original = PrecomputedFeatures.read

    def spy(self: PrecomputedFeatures, file_index: int) -> torch.Tensor:
        rows.append(self.row(file_index))
        return original(self, file_index)

    monkeypatch.setattr(PrecomputedFeatures, "read", spy)
    direct = masks(Tracker(LabExtractor(), short_side=SIDE), frames, mask, start=2, end=6)
    read = masks(Tracker(features, short_side=SIDE), frames, mask, start=2, end=6)
    assert sorted(set(rows)) == [2, 3, 4, 5]
    for a, b in zip(direct, read, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_selection_file_serves_its_frames_by_their_index(
    shared_data: Path, tmp_path: Path
) -> None:
    """``extract --start 2 --end 6`` records frame indices 2..5: row 0 is frame 2, and a
    frame it lacks is one line naming the frames it holds."""
    frames = shared_data / DOG
    path = lab_file(frames, tmp_path / "part.safetensors", start=2, end=6)
    features = PrecomputedFeatures(path)
    assert features.rows == {2: 0, 3: 1, 4: 2, 5: 3}
    whole = lab_file(frames, tmp_path / "whole.safetensors", end=8)
    images = np.zeros((2, SIDE, 112, 3), np.uint8)
    ids = [frame_noise_id(3), frame_noise_id(5)]
    got = features.extract(images, noise_ids=ids).features
    torch.testing.assert_close(
        got, PrecomputedFeatures(whole).extract(images, noise_ids=ids).features
    )
    features.check_video(open_video(frames, start=2, end=6))
    with pytest.raises(InputError, match=r"no features for frame 1 \(it holds frames 2-5\)"):
        features.check_video(open_video(frames, start=1, end=6))


def test_bf16_and_fp16_files_without_metadata(shared_data: Path, tmp_path: Path) -> None:
    """A foreign file (no metadata, reduced precision, other C) is read as float32 unit vectors
    at the file index; the stride is the default 16."""
    frames = shared_data / DOG
    total = open_video(frames).total_frames
    raw = torch.randn(total, 5, 4, 7, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.bfloat16, torch.float16):
        path = tmp_path / f"{dtype}.safetensors"
        save_file({"features": raw.to(dtype)}, str(path))
        features = PrecomputedFeatures(path)
        assert features.stride == precomputed_module.DEFAULT_STRIDE == 16
        assert features.rows is None
        features.check_video(open_video(frames, start=40, end=44))
        got = features.extract(
            np.zeros((1, SIDE, 112, 3), np.uint8), noise_ids=[frame_noise_id(41)]
        ).features
        assert got.dtype == torch.float32
        assert got.shape == (1, 5, 4, 7)
        expected = torch.nn.functional.normalize(raw[41:42].to(dtype).float(), dim=1)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        torch.testing.assert_close(got.norm(dim=1), torch.ones(1, 4, 7))


def test_one_frame_is_read_per_call(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading frame i slices only row i of the tensor (never the whole ``features``), on a file
    opened for that read; propagating 8 frames reads each row a bounded number of times."""
    frames, mask = shared_data / DOG, shared_data / DOG_MASK
    path = lab_file(frames, tmp_path / "lab.safetensors", end=8)
    features = PrecomputedFeatures(path)
    reads: list[Any] = []
    opened = precomputed_module.safe_open

    class Slice:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getitem__(self, key: Any) -> torch.Tensor:
            reads.append(key)
            return self.inner[key]

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    class Handle:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.inner = opened(*args, **kwargs)

        def __enter__(self) -> Handle:
            self.inner.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.__exit__(*exc)

        def get_slice(self, name: str) -> Slice:
            return Slice(self.inner.get_slice(name))

    monkeypatch.setattr(precomputed_module, "safe_open", Handle)
    one = features.read(6)
    assert reads == [6]
    assert one.shape == (3, 4, 7)
    reads.clear()
    masks(Tracker(features, short_side=SIDE), frames, mask, end=8)
    assert all(isinstance(k, int) for k in reads), reads  # one row per read
    assert sorted(set(reads)) == list(range(8))


def test_the_one_builder_makes_it_and_bypasses_the_disk_cache(
    shared_data: Path, tmp_path: Path
) -> None:
    """``Tracker.from_config`` with ``features_file``: the file's extractor at its short side,
    a memory-only feature cache (the file is the cache), the default preset dropped."""
    frames, mask = shared_data / DOG, shared_data / DOG_MASK
    path = lab_file(frames, tmp_path / "lab.safetensors", end=8)
    cache = tmp_path / "cache"
    config = TrackerConfig(
        features=FeatureConfig(features_file=str(path)),
        runtime=Runtime(device="cpu", cache_dir=str(cache)),
    )
    assert config.features.preset is None
    assert config.features.resolved_short_side() == SIDE
    tracker = Tracker.from_config(config)
    assert isinstance(tracker.extractor, PrecomputedFeatures)
    assert isinstance(tracker.extractor, FeatureExtractor)  # the protocol, checked at runtime
    direct = masks(Tracker(LabExtractor(), short_side=SIDE), frames, mask, end=8)
    for a, b in zip(direct, masks(tracker, frames, mask, end=8), strict=True):
        np.testing.assert_array_equal(a, b)
    tracker.cache.close()
    assert not list(cache.rglob("*.safetensors"))
    identity = tracker.extractor.identity()
    assert identity["shape"] == [8, 3, 4, 7]
    assert identity["dtype"] == "F32"
    assert identity["size"] == path.stat().st_size
    assert identity["path"] == str(path.resolve())


@pytest.mark.faults
@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"preset": "lab"}, "--preset"),
        ({"model": "some/model", "family": "flux"}, "--model, --family"),
        ({"t": 90, "k": 3}, "--t, --k"),
        ({"short_side": 64}, "--short-side"),
        ({"dtype": "bfloat16"}, "--dtype"),
        ({"profile": "paper"}, "--profile"),
    ],
)
def test_a_features_file_takes_no_model_options(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=f"replaces the model and its settings; drop {named} "):
        FeatureConfig(features_file="f.safetensors", **settings)


def write_file(path: Path, fault: str) -> Path:
    """A features file with one fault."""
    good = torch.rand(8, 3, 4, 7)
    if fault == "corrupt":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    elif fault == "truncated":
        save_file({"features": good}, str(path))
        path.write_bytes(path.read_bytes()[:-100])
    elif fault == "no tensor":
        save_file({"feats": good}, str(path))
    elif fault == "int":
        save_file({"features": good.to(torch.int32)}, str(path))
    elif fault == "3-d":
        save_file({"features": good[0]}, str(path))
    elif fault == "bad metadata":
        save_file({"features": good}, str(path), metadata={"ditf_track": "{oops"})
    elif fault == "bad indices":
        meta = {"ditf_track": json.dumps({"frame_indices": [0, 1, 2, 3, 4, 5, 6, 6]})}
        save_file({"features": good}, str(path), metadata=meta)
    elif fault != "missing":
        raise AssertionError(fault)
    return path


@pytest.mark.faults
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("missing", "cannot read features file .* check the path"),
        ("corrupt", "is not a readable safetensors file .* re-copy it"),
        ("truncated", "is not a readable safetensors file"),
        ("no tensor", "holds no tensor named 'features' \\(it holds: feats\\); save the maps"),
        ("int", "'features' is I32, not a float tensor; save the features as float32"),
        ("3-d", r"has shape \[3, 4, 7\], not \(T, C, h, w\)"),
        ("bad metadata", "its 'ditf_track' metadata is not JSON"),
        ("bad indices", "are not 8 distinct frame indices, one per row; re-extract it"),
    ],
)
def test_header_faults_are_one_input_error(tmp_path: Path, fault: str, message: str) -> None:
    path = write_file(tmp_path / "f.safetensors", fault)
    with pytest.raises(InputError, match=message) as caught:
        PrecomputedFeatures(path)
    assert "\n" not in str(caught.value)


@pytest.mark.faults
def test_frame_count_and_grid_mismatches(shared_data: Path, tmp_path: Path) -> None:
    frames = shared_data / DOG
    video = open_video(frames, end=8)
    path = tmp_path / "short.safetensors"
    save_file({"features": torch.rand(8, 3, 4, 7)}, str(path))  # the clip has 60 frames
    with pytest.raises(InputError, match="holds 8 frames but .* has 60; give one row per frame"):
        PrecomputedFeatures(path).check_video(video)
    save_file({"features": torch.rand(60, 3, 4, 4)}, str(path))
    with pytest.raises(InputError, match=r"a 4x4 grid \(h x w\) does not tile 854x480 frames"):
        PrecomputedFeatures(path).check_video(video)
    assert expected_grid((480, 854), (4, 4), 16) == (4, 7)
    assert expected_grid((480, 854), (4, 7), 8) == (4, 7)
    save_file({"features": torch.rand(60, 3, 7, 4)}, str(path))  # transposed
    with pytest.raises(InputError, match="does not tile"):
        PrecomputedFeatures(path).check_video(video)
    meta = {"ditf_track": json.dumps({"original_size": [240, 427]})}
    save_file({"features": torch.rand(60, 3, 4, 7)}, str(path), metadata=meta)
    with pytest.raises(InputError, match="extracted from 427x240 frames but .* 854x480"):
        PrecomputedFeatures(path).check_video(video)
    # the images a tracker at another short side would pass
    features = PrecomputedFeatures(tmp_path / "short.safetensors")
    with pytest.raises(InputError, match="track at short side 64"):
        features.extract(np.zeros((1, 96, 176, 3), np.uint8), noise_ids=[frame_noise_id(0)])
