"""Presets: the paper's Table 7 settings and the refusals of a bad preset."""

from __future__ import annotations

import pytest

from ditf_track.errors import ConfigError
from ditf_track.presets import DEFAULT_PRESET, available_presets, load_preset, preset_from_dict


def test_presets_paper_table7() -> None:
    assert set(available_presets()) >= {
        "pixart-alpha",
        "sd3",
        "sd3.5",
        "flux",
        "flux-schnell",
        "lab",
    }
    expected = {"pixart-alpha": (141, 14), "sd3": (340, 9), "sd3.5": (380, 23), "flux": (260, 28)}
    for name, (t, k) in expected.items():
        c = load_preset(name).correspondence
        assert (c.t, c.k, c.image_size) == (t, k, 960)
    flux = load_preset("flux")
    assert (flux.video.t, flux.video.k, flux.video.short_side) == (90, 24, 960)
    assert flux.video.prompt == "a photo of a image"
    assert flux.guidance == 3.5
    assert load_preset("sd3").video.tuned is False
    assert load_preset("flux-schnell").evaluated_in_paper is False
    assert DEFAULT_PRESET == "pixart-alpha"
    assert not load_preset(DEFAULT_PRESET).gated


def test_preset_errors() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*flux"):
        load_preset("nope")
    raw = load_preset("flux").to_dict()
    raw["family"] = "unet"
    with pytest.raises(ConfigError, match="unknown family"):
        preset_from_dict(raw)
    raw = load_preset("flux").to_dict()
    raw["video"]["t"] = 1000
    with pytest.raises(ConfigError, match="t=1000"):
        preset_from_dict(raw)
