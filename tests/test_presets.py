"""Presets: the paper's Table 7 settings and the refusals of a bad preset."""

from __future__ import annotations

import pytest

from ditf_track.errors import ConfigError
from ditf_track.presets import (
    DEFAULT_PRESET,
    PairProtocol,
    available_presets,
    load_preset,
    preset_from_dict,
    resolve_pair_protocol,
)


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


def test_resolved_settings_per_profile_and_task() -> None:
    """Flux: official = the authors' code (pre-norm, 154 and 1446 at both operating points),
    paper = the paper's text; everywhere else official is paper and says so."""
    from ditf_track.features import resolve_settings
    from ditf_track.presets import PROFILES, TASKS, resolve_profile

    flux = load_preset("flux")
    for task in TASKS:
        official, r = resolve_settings(flux, task, "official")
        assert (official.discard_stage, official.discard_channels) == ("pre_norm", (154, 1446))
        assert (r.requested, r.used, r.model_channels, r.note) == (
            "official",
            "official",
            3072,
            None,
        )
        paper, r = resolve_settings(flux, task, "paper")
        assert (paper.discard_stage, paper.discard_channels) == ("post_adaln", None)
        assert (r.requested, r.used) == ("paper", "paper")
        # the profile changes only how features are computed, never t, k or the prompt
        assert (official.t, official.k, official.prompt) == (paper.t, paper.k, paper.prompt)
    video, _ = resolve_settings(flux, "video", "official")
    assert (video.t, video.k, video.prompt) == (90, 24, "a photo of a image")
    assert resolve_settings(flux, "video")[0] == video  # official is the default
    for name in ("pixart-alpha", "sd3", "sd3.5", "flux-schnell"):
        preset = load_preset(name)
        for task in TASKS:
            official, r = resolve_settings(preset, task, "official")
            assert official == resolve_settings(preset, task, "paper")[0], (name, task)
            assert (official.discard_stage, official.discard_channels) == ("post_adaln", None)
            assert (r.requested, r.used) == ("official", "paper")
            assert "official is the same as paper" in str(r.note)
    # without a preset (a bare --model) both are the paper's; lab has no profiles
    for profile in PROFILES:
        bare = resolve_profile(None, "video", profile)
        assert (bare.used, bare.settings.discard_stage, bare.settings.discard_channels) == (
            "paper",
            "post_adaln",
            None,
        )
    assert load_preset("lab").profiles == {}
    # given settings override the profile's
    s, _ = resolve_settings(flux, "video", "official", discard_channels="auto", t=100)
    assert (s.discard_stage, s.discard_channels, s.t) == ("pre_norm", None, 100)
    s, _ = resolve_settings(flux, "video", "paper", discard_channels=(7,), discard_ratio=50)
    assert (s.discard_stage, s.discard_channels, s.discard_rule.ratio) == ("post_adaln", (7,), 50)


def test_profile_errors() -> None:
    from ditf_track.config import FeatureConfig
    from ditf_track.presets import resolve_profile

    with pytest.raises(ConfigError, match="unknown profile 'authors'; use one of official, paper"):
        resolve_profile(load_preset("flux"), "video", "authors")
    with pytest.raises(ConfigError, match="unknown profile 'x'"):
        FeatureConfig(profile="x")
    assert FeatureConfig().profile == "official"
    assert FeatureConfig(discard_channels="1446,154").discard_channels == (154, 1446)  # type: ignore[arg-type]
    assert FeatureConfig(discard_channels="auto").discard_channels == "auto"
    raw = load_preset("flux").to_dict()
    del raw["profiles"]["paper"]
    with pytest.raises(ConfigError, match=r"profiles \['official'\] must be exactly"):
        preset_from_dict(raw)
    raw = load_preset("flux").to_dict()
    raw["profiles"]["official"]["video"]["discard_stage"] = "before"
    with pytest.raises(ConfigError, match="unknown discard stage 'before'"):
        preset_from_dict(raw)
    raw = load_preset("flux").to_dict()
    raw["profiles"]["official"]["video"]["discard_channels"] = [154, "x"]
    with pytest.raises(ConfigError, match="'x' is not a channel index"):
        preset_from_dict(raw)
    raw = load_preset("pixart-alpha").to_dict()
    raw["profiles"]["official"]["video"] = {"discard_stage": "pre_norm"}
    with pytest.raises(ConfigError, match="official is the same as paper; give it no settings"):
        preset_from_dict(raw)
    raw = load_preset("lab").to_dict()
    raw["profiles"] = load_preset("flux").to_dict()["profiles"]
    with pytest.raises(ConfigError, match="the lab baseline has no profiles"):
        preset_from_dict(raw)


# (preset, benchmark, profile) → (long_side, square, resize, ensemble, upsample_from, used,
# assumed): the pair protocol each evaluator runs with.
PAIR_PROTOCOLS = [
    ("flux", "spair", "official", (640, None, "pil-bicubic", 8, "raw", "official", False)),
    ("flux", "pf-pascal", "official", (640, None, "pil-bicubic", 8, "raw", "official", True)),
    ("flux", "ap-10k", "official", (640, None, "pil-bicubic", 8, "raw", "official", True)),
    ("flux", "hpatches", "official", (640, None, "pil-bicubic", 8, "raw", "official", True)),
    ("flux", "spair", "paper", (None, 960, "auto", 1, "raw", "paper", False)),
    ("flux", "ap-10k", "paper", (None, 960, "auto", 1, "raw", "paper", False)),
    ("flux", "hpatches", "paper", (None, 960, "auto", 1, "raw", "paper", True)),
    ("sd3", "spair", "official", (None, 960, "auto", 1, "raw", "paper", False)),
    ("sd3.5", "pf-pascal", "official", (None, 960, "auto", 1, "raw", "paper", False)),
    ("pixart-alpha", "spair", "official", (None, 960, "auto", 1, "raw", "paper", False)),
    ("flux-schnell", "spair", "official", (None, 960, "auto", 1, "raw", "paper", False)),
    ("lab", "spair", "official", (960, None, "auto", 1, "raw", "official", False)),
    (None, "spair", "official", (None, 960, "auto", 1, "raw", "paper", False)),
    (None, "hpatches", "paper", (None, 960, "auto", 1, "raw", "paper", True)),
]


@pytest.mark.parametrize(("name", "benchmark", "profile", "expected"), PAIR_PROTOCOLS)
def test_pair_protocol_per_profile_and_benchmark(
    name: str | None, benchmark: str, profile: str, expected: tuple[object, ...]
) -> None:
    """Issue 18: flux official = the authors' SPair script (long side 640, PIL bicubic, 8 draws,
    the unnormalised map upsampled), assumed for the other benchmarks and labelled so; paper =
    the paper's 960x960; official is paper for the presets without authors' code, with a note."""
    preset = load_preset(name) if name is not None else None
    r = resolve_pair_protocol(preset, benchmark, profile)
    *settings, used, assumed = expected
    assert [r.long_side, r.square, r.resize, r.ensemble, r.upsample_from] == settings
    assert (r.requested, r.used, r.benchmark) == (profile, used, benchmark)
    assert (r.assumption is not None) == assumed
    if assumed and used == "official":
        assert "the authors' code evaluates SPair-71k only" in str(r.assumption)
    if profile == "official" and used == "paper":
        assert "is the same as paper" in str(r.note) or "no preset" in str(r.note)
    assert r.to_dict()["resize"] == settings[2]
    # no benchmark (the match command): nothing is assumed
    assert resolve_pair_protocol(preset, None, profile).assumption is None


def test_pair_protocol_overrides_and_errors() -> None:
    flux = load_preset("flux")
    r = resolve_pair_protocol(flux, "spair", "official").replace(long_side=None, ensemble=2)
    assert (r.long_side, r.ensemble, r.resize, r.overridden) == (
        640,
        2,
        "pil-bicubic",
        ("ensemble",),
    )
    r = resolve_pair_protocol(flux, "spair", "paper").replace(long_side=512, resize="area")
    assert (r.long_side, r.square, r.resize) == (512, None, "area")
    assert r.overridden == ("long_side", "resize")
    r = resolve_pair_protocol(flux, "spair", "official").replace(square=768)
    assert (r.long_side, r.square) == (None, 768)
    with pytest.raises(ConfigError, match="one of --long-side and --square"):
        r.replace(long_side=512, square=512)
    with pytest.raises(ConfigError, match="unknown resize 'lanczos'"):
        r.replace(resize="lanczos")
    with pytest.raises(ConfigError, match="unknown pair benchmark 'davis'"):
        resolve_pair_protocol(flux, "davis", "official")
    raw = load_preset("flux").to_dict()
    raw["profiles"]["official"]["pairs"]["square"] = 960
    with pytest.raises(ConfigError, match="flux.*official: pairs protocol: give exactly one"):
        preset_from_dict(raw, source="flux.yaml")
    raw = load_preset("flux").to_dict()
    raw["profiles"]["official"]["pairs"]["assumption"] = None
    with pytest.raises(ConfigError, match="say in `assumption`"):
        preset_from_dict(raw)
    raw = load_preset("flux").to_dict()
    del raw["profiles"]["paper"]["pairs"]
    with pytest.raises(ConfigError, match="profile paper has no pairs protocol"):
        preset_from_dict(raw)
    raw = load_preset("flux").to_dict()
    raw["profiles"]["paper"]["pairs"]["upsample_from"] = "cells"
    with pytest.raises(ConfigError, match="unknown upsample_from 'cells'"):
        preset_from_dict(raw)
    raw = load_preset("sd3").to_dict()
    del raw["dinov2_pca_dim"]
    with pytest.raises(ConfigError, match="no dinov2_pca_dim"):
        preset_from_dict(raw)
    # the DINOv2 PCA rule (paper App. C): SD3.5 and Flux reduced to 1280, PixArt-α and SD3 not
    widths = {name: load_preset(name).dinov2_pca_dim for name in available_presets()}
    assert widths == {
        "flux": 1280,
        "flux-schnell": 1280,
        "lab": None,
        "pixart-alpha": None,
        "sd3": None,
        "sd3.5": 1280,
    }


def test_official_pair_protocol_prompts_each_image_with_its_category() -> None:
    """The authors never condition on the empty prompt: without a captions file their SPair
    script's per-category prompt; the paper's profile keeps the preset's prompt."""
    flux = load_preset("flux")
    official = resolve_pair_protocol(flux, "spair", "official")
    assert official.prompt_template == "a photo of a {category}"
    assert resolve_pair_protocol(flux, "spair", "paper").prompt_template is None
    assert resolve_pair_protocol(load_preset("sd3"), "spair", "official").prompt_template is None
    with pytest.raises(ConfigError, match="has no {category}"):
        PairProtocol(long_side=640, prompt_template="a photo")
