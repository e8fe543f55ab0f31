"""Cache keys (ditf_track/cache/keys.py): what changes a key, what must not, and bad input."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cache_helpers import SIZE, VIDEO, identity, key

from ditf_track.cache import clip_key, feature_key
from ditf_track.extractor import DiTFExtractor
from ditf_track.features import DiscardRule, DiTFSettings

#: One changed value per DiTFSettings field (checked to cover them all) and per load argument of
#: the extractor that changes the features; device, local_files_only, cache_dir and batch_size
#: do not (a frame's features do not depend on its batch) and stay out of the key on purpose.
SETTING_CHANGES: dict[str, Any] = {
    "t": 142,
    "k": 2,
    "prompt": "a photo",
    "guidance": 3.5,
    "condition": "t",
    "feature_mode": "adaln",
    "discard_stage": "pre_norm",
    "discard_channels": (3,),
    "discard_rule": DiscardRule(ratio=50.0),
    "seed": 1,
    "ensemble": 2,
    "upsample": 2,
    "vae_sample": False,
}
LOAD_CHANGES: dict[str, Any] = {
    "dtype": "bfloat16",
    "revision": "def456",
    "max_sequence_length": 7,
    "preset": "pixart-alpha",
    "profile": "paper",  # asked for; the default asks for official (the paper's here)
}


def test_extractor_identity_changes_with_every_setting_and_load_argument(
    tiny_model: Callable[..., Path],
) -> None:
    assert set(SETTING_CHANGES) == set(DiTFSettings.__dataclass_fields__)
    folder = tiny_model("pixart")
    base_settings = DiTFSettings(t=141, k=1)
    base = DiTFExtractor.from_pretrained(folder, family="pixart", settings=base_settings)
    variants: dict[str, DiTFExtractor] = {
        name: DiTFExtractor.from_pretrained(
            folder, family="pixart", settings=dataclasses.replace(base_settings, **{name: value})
        )
        for name, value in SETTING_CHANGES.items()
    }
    for name, value in LOAD_CHANGES.items():
        variants[name] = DiTFExtractor.from_pretrained(
            folder, family="pixart", settings=base_settings, **{name: value}
        )
    variants["model"] = DiTFExtractor.from_pretrained(  # other weights, same family
        tiny_model("pixart", seed=1), family="pixart", settings=base_settings
    )
    variants["family"] = DiTFExtractor.from_pretrained(
        tiny_model("sd3"), family="sd3", settings=base_settings
    )
    ident = base.identity()
    assert DiTFExtractor.from_pretrained(folder, family="pixart", t=141, k=1).identity() == ident
    for name, extractor in variants.items():
        changed = extractor.identity()
        assert changed != ident, name
        assert feature_key(changed, VIDEO, 3, SIZE) != feature_key(ident, VIDEO, 3, SIZE), name
        assert clip_key(changed, VIDEO, SIZE) != clip_key(ident, VIDEO, SIZE), name


def test_extractor_identity_names_the_noise_rule(
    tiny_model: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cached feature of the shared-noise rule misses once the per-item rule is in."""
    import ditf_track.extractor as extractor_module
    from ditf_track.noise import NOISE_RULE

    extractor = DiTFExtractor.from_pretrained(tiny_model("pixart"), family="pixart", t=141, k=1)
    ident = extractor.identity()
    assert ident["noise"] == NOISE_RULE
    monkeypatch.setattr(extractor_module, "NOISE_RULE", "one map per latent size")
    changed = extractor.identity()
    assert feature_key(changed, VIDEO, 3, SIZE) != feature_key(ident, VIDEO, 3, SIZE)
    assert clip_key(changed, VIDEO, SIZE) != clip_key(ident, VIDEO, SIZE)


def test_key_changes_with_min_token_fraction() -> None:
    rule = DiscardRule(min_token_fraction=0.6)
    assert key(0, discard_rule=rule) != key(0)


def test_key_changes_with_video_frame_and_size() -> None:
    ident = identity()
    base = feature_key(ident, VIDEO, 3, SIZE)
    assert feature_key(ident, "1" * 64, 3, SIZE) != base
    assert feature_key(ident, VIDEO, 4, SIZE) != base
    assert feature_key(ident, VIDEO, 3, SIZE[::-1]) != base  # (H, W) order matters
    assert clip_key(ident, "1" * 64, SIZE) != clip_key(ident, VIDEO, SIZE)
    assert clip_key(ident, VIDEO, (256, 192)) != clip_key(ident, VIDEO, SIZE)


def test_identical_settings_give_the_same_key() -> None:
    a = identity()
    b = dict(reversed(list(identity().items())))  # another dict, other insertion order
    assert feature_key(a, VIDEO, np.int64(3), list(SIZE)) == feature_key(b, VIDEO, 3, SIZE)
    assert clip_key(a, VIDEO, SIZE) == clip_key(b, VIDEO, [128, 192])
    assert re.fullmatch("[0-9a-f]{64}", key(0))  # a sha256 hex digest
    # the clip key is not any frame's key
    assert clip_key(a, VIDEO, SIZE) not in {feature_key(a, VIDEO, i, SIZE) for i in range(5)}


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_feature_key_rejects_bad_frame_index(bad: Any) -> None:
    with pytest.raises(ValueError, match="frame index"):
        feature_key(identity(), VIDEO, bad, SIZE)
