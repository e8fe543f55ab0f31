"""The DiTF extractor: massive channels found and discarded, seeds, ensemble, text cache, errors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ditf_track.backbones.base as base_module
from ditf_track.config import FeatureConfig, Runtime, TrackerConfig
from ditf_track.errors import ConfigError, DeviceError, InputError
from ditf_track.extractor import DiTFExtractor, build_extractor, extractor_from_config
from ditf_track.features import DiTFSettings, FeatureExtractor
from ditf_track.lab import LabExtractor
from ditf_track.noise import default_noise_ids, item_noise
from ditf_track.presets import Preset, load_preset, preset_from_dict
from ditf_track.testing import build_tiny_pipeline, plant_massive_channels
from ditf_track.tracker import Tracker

IMAGES = np.random.RandomState(0).randint(0, 256, (2, 64, 96, 3), dtype=np.uint8)


def mean_patch_cosine(maps: torch.Tensor) -> float:
    """Mean cosine similarity between different cells of ``(N, C, h, w)`` maps (first image)."""
    v = torch.nn.functional.normalize(maps[0].flatten(1).T.float(), dim=1)
    sim = v @ v.T
    n = sim.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (n * n - n))


def dog_frame(shared: Path) -> np.ndarray:
    from PIL import Image

    frame = Image.open(shared / "davis/JPEGImages/480p/dog/00000.jpg")
    frame = frame.convert("RGB").resize((96, 64))
    return np.asarray(frame).copy()[None]


@pytest.mark.parametrize("tiny", ["pixart", "sd3", "sd3.5", "flux"])
def test_planted_massive_channels_are_found_and_zeroed(
    tmp_path: Path, tiny_model: Callable[..., Path], tiny: str, shared_data: Path
) -> None:
    family = {"sd3.5": "sd3"}.get(tiny, tiny)
    image = dog_frame(shared_data)
    clean = DiTFExtractor.from_pretrained(tiny_model(tiny), family=family, t=100, k=3)
    assert clean.extract(image).discarded_channels == ()
    planted = plant_massive_channels(build_tiny_pipeline(tiny, tmp_path / tiny), (3, 11), 400.0)
    maps = {
        (mode, stage): DiTFExtractor.from_pretrained(
            planted, family=family, t=100, k=3, feature_mode=mode, discard_stage=stage
        ).extract(image)
        for mode, stage in [
            ("original", "post_adaln"),
            ("adaln", "post_adaln"),
            ("adaln+discard", "post_adaln"),
            ("adaln+discard", "pre_norm"),
        ]
    }
    for stage in ("post_adaln", "pre_norm"):
        assert maps["adaln+discard", stage].discarded_channels == (3, 11)
    assert maps["adaln", "post_adaln"].discarded_channels == ()
    post = maps["adaln+discard", "post_adaln"]
    assert post.stats is not None
    assert post.stats.max_ratio[3] > 100
    assert post.features[:, [3, 11]].abs().max() == 0
    assert post.features[:, 5].abs().max() > 0
    norms = post.features.float().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # One shared direction dominates the raw feature; zeroing the planted channels before the
    # LayerNorm (the official code's stage) brings back the patches' own geometry.
    original = mean_patch_cosine(maps["original", "post_adaln"].features)
    assert original > 0.999
    assert mean_patch_cosine(maps["adaln+discard", "pre_norm"].features) < original - 0.015


def test_post_adaln_discard_on_heavy_tailed_planted_model(
    tmp_path: Path, shared_data: Path
) -> None:
    """The paper's stage, on a planted model whose LayerNorm the planted channels don't dominate.

    With a narrow random model's Gaussian background, any channel at 100× the median dominates
    the LayerNorm variance, which real DiT maps (heavy-tailed, 1152–3072 channels) do not; the
    planted content channels restore that, and the post-AdaLN discard then lowers the mean
    patch cosine as the paper reports.
    """
    folder = plant_massive_channels(
        build_tiny_pipeline("flux", tmp_path / "flux"),
        channels=(3, 11),
        value=150.0,
        content_channels=(0, 1, 2, 4, 5, 6, 7, 8),
        # 300 (before per-item noise) left content channel 6 at the rule's edge; at 150 the
        # rule finds (3, 11) alone and the cosine drops by > 0.2 for seeds 0-3 alike
        content_gain=150.0,
    )
    image = dog_frame(shared_data)
    original = DiTFExtractor.from_pretrained(
        folder, family="flux", t=100, k=3, feature_mode="original"
    ).extract(image)
    ditf = DiTFExtractor.from_pretrained(folder, family="flux", t=100, k=3).extract(image)
    assert ditf.discarded_channels == (3, 11)
    assert mean_patch_cosine(ditf.features) < mean_patch_cosine(original.features) - 0.1


def test_seed_and_ensemble(tiny_model: Callable[..., Path]) -> None:
    folder = tiny_model("sd3")
    make = lambda **kw: DiTFExtractor.from_pretrained(folder, family="sd3", t=400, k=2, **kw)  # noqa: E731
    a, b = make(seed=0).extract(IMAGES), make(seed=0).extract(IMAGES)
    torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
    c = make(seed=1).extract(IMAGES)
    assert (a.features - c.features).abs().max() > 1e-3
    # a frame's features do not depend on the other frames of the batch
    single = make(seed=0).extract(IMAGES[1:])
    torch.testing.assert_close(single.features[0], a.features[1], rtol=1e-5, atol=1e-5)
    # ensemble=2 averages the raw z of members 0 and 1 before the LayerNorm; each member has
    # its own VAE posterior sample and latent noise (computed by hand here, tolerance 1e-5)
    ens = make(seed=0, ensemble=2, feature_mode="original")
    z_ens = ens.capture(IMAGES).z
    b = ens.backbone
    ids = default_noise_ids(IMAGES)
    mean, std = b.encode_posterior(ens_pixels(IMAGES))
    zs = []
    for member in (0, 1):
        eps = item_noise(tuple(mean.shape[1:]), 0, ids, member, "vae")
        noise = item_noise(tuple(mean.shape[1:]), 0, ids, member, "latent")
        noisy = b.noise_latents(mean + std * eps, 400, noise)
        zs.append(b.capture(noisy, 400, b.condition(""), 2).z.float())
    torch.testing.assert_close(z_ens, (zs[0] + zs[1]) / 2, rtol=1e-5, atol=1e-5)
    assert (zs[0] - zs[1]).abs().max() > 1e-2  # the members drew different noise


def ens_pixels(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3) uint8`` → ``(N, 3, H, W)`` in [-1, 1], as the extractor feeds the VAE."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_noise_is_drawn_per_image_from_its_stable_id(tiny_model: Callable[..., Path]) -> None:
    """Issue 18 item 3: no noise map shared by the images of a batch, a pair or a clip."""
    folder = tiny_model("sd3")
    frame = IMAGES[:1]
    twice = np.concatenate([frame, frame])
    one = DiTFExtractor.from_pretrained(folder, family="sd3", t=400, k=2)
    # the content rule (default): the same image twice draws the same noise …
    same = one.extract(twice).features
    torch.testing.assert_close(same[0], same[1], rtol=1e-5, atol=1e-5)
    # … two identical frames of a video (their file indices) draw different noise
    frames = one.extract(twice, noise_ids=["frame:0", "frame:1"]).features
    assert (frames[0].float() - frames[1].float()).abs().max() > 1e-2
    # a frame's features depend on its id, not on its batch or its place in the batch
    four = np.random.RandomState(1).randint(0, 256, (4, 64, 96, 3), dtype=np.uint8)
    ids = [f"frame:{i}" for i in (10, 11, 12, 13)]
    batch4 = DiTFExtractor.from_pretrained(folder, family="sd3", t=400, k=2, batch_size=4)
    batch1 = DiTFExtractor.from_pretrained(folder, family="sd3", t=400, k=2, batch_size=1)
    f4 = batch4.extract(four, noise_ids=ids).features
    f1 = batch1.extract(four, noise_ids=ids).features
    torch.testing.assert_close(f1, f4, rtol=1e-5, atol=1e-5)
    alone = batch4.extract(four[2:3], noise_ids=ids[2:3]).features[0]
    torch.testing.assert_close(alone, f4[2], rtol=1e-5, atol=1e-5)
    reversed_ = batch4.extract(four[::-1].copy(), noise_ids=ids[::-1]).features
    torch.testing.assert_close(reversed_.flip(0), f4, rtol=1e-5, atol=1e-5)
    # a re-run is identical, bit for bit
    torch.testing.assert_close(batch4.extract(four, noise_ids=ids).features, f4, rtol=0, atol=0)
    with pytest.raises(InputError, match="3 noise ids for 4 images; give one id per image"):
        batch4.extract(four, noise_ids=ids[:3])


def test_vae_sample_off_encodes_the_posterior_mean(
    tiny_model: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ditf_track.extractor as extractor_module

    folder = tiny_model("flux")
    streams: list[str] = []
    draw = extractor_module.item_noise

    def recorded(*args: Any) -> torch.Tensor:
        streams.append(args[-1])
        return draw(*args)

    monkeypatch.setattr(extractor_module, "item_noise", recorded)
    mean_ex = DiTFExtractor.from_pretrained(
        folder, family="flux", t=90, k=2, feature_mode="original", vae_sample=False
    )
    z_mean = mean_ex.capture(IMAGES).z
    assert streams == ["latent"]  # no posterior sample was drawn
    b = mean_ex.backbone
    noise = draw(
        tuple(b.encode_images(ens_pixels(IMAGES)).shape[1:]),
        0,
        default_noise_ids(IMAGES),
        0,
        "latent",
    )
    noisy = b.noise_latents(b.encode_images(ens_pixels(IMAGES)), 90, noise)
    torch.testing.assert_close(
        z_mean, b.capture(noisy, 90, b.condition(""), 2).z.float(), rtol=1e-5, atol=1e-5
    )
    streams.clear()
    sampled = DiTFExtractor.from_pretrained(
        folder, family="flux", t=90, k=2, feature_mode="original"
    )
    assert sampled.settings.vae_sample is True  # the authors' default
    z_sample = sampled.capture(IMAGES).z
    assert streams == ["vae", "latent"]
    assert (z_sample - z_mean).abs().max() > 1e-3
    assert mean_ex.identity()["vae_sample"] is False
    assert sampled.identity()["vae_sample"] is True


def test_text_cache_hit_loads_no_text_encoder(
    tiny_model: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_model("flux")
    first = DiTFExtractor.from_pretrained(
        folder, family="flux", t=90, k=2, prompt="a photo of a image", cache_dir=tmp_path
    )
    assert first.backbone.conditioner is not None
    assert first.backbone.conditioner.encoder_loads == 1
    cached = list((tmp_path / "text").glob("*.safetensors"))
    assert len(cached) == 1

    import diffusers

    def no_pipeline(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a text encoder was loaded on a cache hit")

    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", no_pipeline)
    second = DiTFExtractor.from_pretrained(
        folder, family="flux", t=90, k=2, prompt="a photo of a image", cache_dir=tmp_path
    )
    assert second.backbone.conditioner is not None
    assert second.backbone.conditioner.encoder_loads == 0
    torch.testing.assert_close(second.extract(IMAGES).features, first.extract(IMAGES).features)
    # another prompt misses the cache
    with pytest.raises(AssertionError, match="text encoder was loaded"):
        DiTFExtractor.from_pretrained(
            folder, family="flux", t=90, k=2, prompt="a dog", cache_dir=tmp_path
        )
    # a corrupt cache file is re-encoded, not trusted
    monkeypatch.undo()
    cached[0].write_bytes(b"garbage")
    third = DiTFExtractor.from_pretrained(
        folder, family="flux", t=90, k=2, prompt="a photo of a image", cache_dir=tmp_path
    )
    assert third.backbone.conditioner is not None
    assert third.backbone.conditioner.encoder_loads == 1


def test_upsampled_maps(tiny_model: Callable[..., Path]) -> None:
    ex = DiTFExtractor.from_pretrained(
        tiny_model("pixart"), family="pixart", t=141, k=1, upsample=4
    )
    maps = ex.extract(IMAGES)
    assert maps.features.shape[-2:] == (16, 24)
    assert maps.stride == 4
    norms = maps.features.float().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_extractor_errors(tiny_model: Callable[..., Path]) -> None:
    folder = tiny_model("pixart")
    with pytest.raises(ConfigError, match="unknown preset"):
        build_extractor("nope")
    with pytest.raises(ConfigError, match="condition mode 'c'"):
        DiTFExtractor.from_pretrained(folder, family="pixart", t=141, k=1, condition="c")
    with pytest.raises(ConfigError, match=r"k=40 is out of range"):
        DiTFExtractor.from_pretrained(folder, family="pixart", t=141, k=40)
    with pytest.raises(ConfigError, match="t=1000"):
        DiTFSettings(t=1000, k=1)
    with pytest.raises(ConfigError, match="needs --family"):
        build_extractor(model=folder)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            DiTFExtractor.from_pretrained(folder, family="pixart", t=141, k=1, device="cuda")
    ex = DiTFExtractor.from_pretrained(folder, family="pixart", t=141, k=1)
    with pytest.raises(InputError, match="multiple of the token stride 16"):
        ex.extract(np.zeros((1, 60, 96, 3), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        ex.extract(np.zeros((1, 64, 96, 3), np.float32))


def test_preset_on_a_local_folder(
    tiny_model: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ditf_track.extractor"):
        ex = DiTFExtractor.from_preset("flux", "video", model=tiny_model("flux"), k=3)
    said = [r.getMessage() for r in caplog.records]
    ident = ex.identity()
    assert (ident["t"], ident["k"], ident["prompt"], ident["guidance"]) == (
        90,
        3,
        "a photo of a image",
        3.5,
    )
    assert ident["preset"] == "flux"
    assert ex.extract(IMAGES).features.shape == (2, 32, 4, 6)
    # The official profile's channels index FLUX.1-dev's 3,072; a 32-channel model is not the
    # model they were read from: the paper's profile, said once and recorded.
    assert ident["profile"] == {"requested": "official", "used": "paper"}
    assert (ident["discard_stage"], ident["discard_channels"]) == ("post_adaln", None)
    assert said == [
        "the official profile's discard channels [154, 1446] are those of "
        "black-forest-labs/FLUX.1-dev's 3072 channels; this model has 32, so the paper's "
        "profile is used"
    ]
    with pytest.raises(
        ConfigError,
        match=r"discard channels \[154, 1446\] are not all channels "
        r"of this model \(it has 32: 0..31\); give channels below 32 or "
        r"--discard-channels auto",
    ):
        DiTFExtractor.from_pretrained(
            tiny_model("flux"), family="flux", t=90, k=3, discard_channels=(154, 1446)
        )


def tiny_flux_preset(channels: tuple[int, ...] = (3, 11)) -> Preset:
    """The flux preset with a test profile: the official settings on a tiny Flux's 32-channel
    stream, with the channels planted in it."""
    raw = load_preset("flux").to_dict()
    official = raw["profiles"]["official"]
    official["model_channels"] = 32
    for task in ("correspondence", "video"):
        official[task]["discard_channels"] = list(channels)
    return preset_from_dict(raw, source="tiny flux test preset")


@pytest.fixture(scope="module")
def planted_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_tiny_pipeline("flux", tmp_path_factory.mktemp("planted") / "flux")
    return plant_massive_channels(folder, (3, 11), 400.0)


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)


def test_profiles_through_the_real_hooks_of_a_tiny_flux(
    planted_flux: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each profile's order of operations on what the hooks read, ensemble of 2.

    The hand computation (float64) averages each draw's raw block feature and modulation as
    the hooks returned them, then: official = zero 3 and 11 → LayerNorm → modulate; paper =
    LayerNorm → modulate → zero the rule's channels. Tolerance: atol 1e-5 on the unit-norm maps
    (the extractor computes in float32), rtol 0.
    """
    image = dog_frame(shared_data)
    maps: dict[str, torch.Tensor] = {}
    for profile in ("official", "paper"):
        ex = DiTFExtractor.from_preset(
            tiny_flux_preset(), "video", model=planted_flux, k=3, ensemble=2, profile=profile
        )
        draws: list[Any] = []
        capture = ex.backbone.capture

        def recording(*args: Any, capture: Any = capture, draws: Any = draws, **kw: Any) -> Any:
            draws.append(capture(*args, **kw))
            return draws[-1]

        monkeypatch.setattr(ex.backbone, "capture", recording)
        out = ex.extract(image)
        assert len(draws) == 2
        z = torch.stack([d.z.double() for d in draws]).mean(0)
        gamma = torch.stack([d.gamma.double() for d in draws]).mean(0)[:, None]
        beta = torch.stack([d.beta.double() for d in draws]).mean(0)[:, None]
        eps = draws[0].eps
        assert eps == 1e-6
        if profile == "official":
            assert (ex.settings.discard_stage, ex.settings.discard_channels) == (
                "pre_norm",
                (3, 11),
            )
            zeroed = z.clone()
            zeroed[..., [3, 11]] = 0.0
            tokens = _layer_norm(zeroed, eps) * (1 + gamma) + beta
        else:
            assert (ex.settings.discard_stage, ex.settings.discard_channels) == ("post_adaln", None)
            tokens = _layer_norm(z, eps) * (1 + gamma) + beta
            tokens[..., [3, 11]] = 0.0
        assert out.discarded_channels == (3, 11)
        assert ex.identity()["profile"] == {"requested": profile, "used": profile}
        h, w = draws[0].grid
        expected = torch.nn.functional.normalize(tokens.transpose(1, 2).reshape(1, -1, h, w), dim=1)
        torch.testing.assert_close(out.features.double(), expected, rtol=0, atol=1e-5)
        maps[profile] = out.features
    assert (maps["official"] - maps["paper"]).abs().max() > 0.05


def test_fixed_channels_are_compared_once_with_the_rule(
    planted_flux: Path,
    tiny_model: Callable[..., Path],
    shared_data: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    image = dog_frame(shared_data)
    ex = DiTFExtractor.from_preset(tiny_flux_preset((3, 5)), "video", model=planted_flux, k=3)
    with caplog.at_level(logging.WARNING, logger="ditf_track.extractor"):
        first = ex.extract(image)
        ex.extract(image)
        ex.extract(image, massive_channels=(3, 5))
    assert first.discarded_channels == (3, 5)  # the fixed ones, whatever the rule finds
    assert first.meta["rule_channels"] == [3, 11]
    assert [r.getMessage() for r in caplog.records] == [
        "the fixed discard channels [3, 5] differ from those the massive-activation rule finds "
        "on the first image or frame ([3, 11]); the fixed ones are discarded "
        "(--discard-channels auto uses the rule)"
    ]
    caplog.clear()
    agreeing = DiTFExtractor.from_preset(tiny_flux_preset(), "video", model=planted_flux, k=3)
    with caplog.at_level(logging.WARNING, logger="ditf_track.extractor"):
        agreeing.extract(image)
    assert caplog.records == []
    # a model without massive activations: the rule finds none, said once
    clean = DiTFExtractor.from_pretrained(tiny_model("flux"), family="flux", t=90, k=3)
    with caplog.at_level(logging.WARNING, logger="ditf_track.extractor"):
        assert clean.extract(image).discarded_channels == ()
        clean.extract(image)
    assert [r.getMessage() for r in caplog.records] == [
        "the massive-activation rule found no channel to discard on the first image or frame "
        "(none at |v| >= 100 x median |z|); nothing is discarded (fix them with "
        "--discard-channels or change --discard-ratio)"
    ]


def test_the_builders_decide_lab_once_and_every_extractor_has_a_device(
    tiny_model: Callable[..., Path],
) -> None:
    """Front ends build through the config; what comes back speaks the extractor protocol
    (``device`` included), and settings the lab baseline has no use for are named once."""
    told: list[str] = []
    lab_config = FeatureConfig(preset="lab", model="some/model", t=5, prompt="a dog")
    lab = extractor_from_config(lab_config, "video", Runtime(device="cpu"), warn=told.append)
    assert isinstance(lab, LabExtractor)
    assert told == ["the lab preset has no model or DiTF settings; ignoring them"]
    assert extractor_from_config(FeatureConfig(preset="lab"), warn=told.append) is not None
    assert len(told) == 1  # nothing given, nothing to say
    tracker = Tracker.from_config(TrackerConfig(features=lab_config), warn=told.append)
    assert len(told) == 2
    assert isinstance(tracker.extractor, LabExtractor)
    assert tracker.cache.device == torch.device("cpu")
    dit_config = FeatureConfig(
        preset=None, model=str(tiny_model("pixart")), family="pixart", t=141, k=1
    )
    assert dit_config.unused() is None
    dit = extractor_from_config(dit_config, warn=told.append)
    assert isinstance(dit, DiTFExtractor)
    assert len(told) == 2
    for extractor in (lab, dit):
        assert isinstance(extractor, FeatureExtractor)
        assert extractor.device == torch.device("cpu")
    with pytest.raises(ConfigError, match="not a DiT"):
        DiTFExtractor.from_preset("lab")


# (tiny folder, family, k): Flux k=3 is a single-stream block, SD3.5 has dual attention.
CASES = [("pixart", "pixart", 2), ("sd3", "sd3", 1), ("sd3.5", "sd3", 1), ("flux", "flux", 3)]


def frames(n: int = 2) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (n, 64, 96, 3), dtype=np.uint8)


@pytest.mark.parametrize(("tiny", "family", "k"), CASES)
def test_bf16_load_keeps_bf16_and_extracts(
    tiny_model: Callable[..., Path], tmp_path: Path, tiny: str, family: str, k: int
) -> None:
    folder = tiny_model(tiny)
    kwargs = {"family": family, "t": 200, "k": k, "cache_dir": tmp_path}
    bf16 = DiTFExtractor.from_pretrained(folder, dtype="bfloat16", **kwargs)
    transformer = bf16.backbone.transformer
    assert {p.dtype for p in transformer.parameters()} == {torch.bfloat16}
    floating = {b.dtype for b in transformer.buffers() if b.is_floating_point()}
    assert floating <= {torch.bfloat16}
    assert {p.dtype for p in bf16.backbone.vae.parameters()} == {torch.float32}
    # the weights are the checkpoint's, rounded: not a re-initialisation
    fp32 = DiTFExtractor.from_pretrained(folder, dtype="float32", **kwargs)
    for (name, p16), (_, p32) in zip(
        transformer.named_parameters(), fp32.backbone.transformer.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p16, p32.to(torch.bfloat16), msg=name)
    images = frames()
    maps = bf16.extract(images).features
    assert maps.dtype == torch.bfloat16
    assert torch.isfinite(maps.float()).all()
    ref = fp32.extract(images).features
    cosine = torch.nn.functional.cosine_similarity(maps.float(), ref, dim=1)
    assert cosine.mean() > 0.95, f"bf16 features differ from float32 ({cosine.mean():.3f})"


CAPTIONS = ["a photo of a car", "a photo of a dog", "the quick brown fox"]


def watch_text_and_transformer(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Hooks on what loads the text encoders, what encodes a prompt and what loads the
    transformer's weights: the events in order, e.g. ``["text encoders", ("encode", p), ...]``."""
    import diffusers

    from ditf_track.backbones import base
    from ditf_track.backbones.flux import FluxBackbone

    events: list[Any] = []
    load_pipeline = diffusers.FluxPipeline.from_pretrained.__func__  # type: ignore[attr-defined]
    encode = FluxBackbone.run_pipeline_encode
    load_weights = base.load_truncated_weights

    def loading_pipeline(cls: Any, *args: Any, **kwargs: Any) -> Any:
        events.append("text encoders")
        return load_pipeline(cls, *args, **kwargs)

    def encoding(pipe: Any, prompt: str, *args: Any) -> Any:
        events.append(("encode", prompt))
        return encode(pipe, prompt, *args)

    def loading_weights(*args: Any, **kwargs: Any) -> Any:
        events.append("transformer")
        return load_weights(*args, **kwargs)

    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", classmethod(loading_pipeline))
    monkeypatch.setattr(FluxBackbone, "run_pipeline_encode", staticmethod(encoding))
    monkeypatch.setattr(base, "load_truncated_weights", loading_weights)
    return events


def test_all_prompts_of_a_run_are_encoded_in_one_pass_before_the_transformer(
    tiny_model: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = watch_text_and_transformer(monkeypatch)
    folder = tiny_model("flux")
    kwargs: dict[str, Any] = {"family": "flux", "t": 90, "k": 2, "cache_dir": tmp_path}
    kwargs["prompt"] = "a photo of a image"
    run = [*CAPTIONS, CAPTIONS[0]]  # a caption shared by two images is encoded once
    first = DiTFExtractor.from_pretrained(folder, prompts=run, **kwargs)
    assert events == [
        "text encoders",
        ("encode", "a photo of a image"),
        *(("encode", c) for c in CAPTIONS),
        "transformer",
    ]
    conditioner = first.backbone.conditioner
    assert conditioner is not None
    assert (conditioner.encoder_loads, conditioner.encodings) == (1, 4)
    assert len(list((tmp_path / "text").glob("*.safetensors"))) == 4
    events.clear()
    first.extract(IMAGES, prompts=CAPTIONS[:2])
    assert events == []  # every prompt was encoded up front
    # a re-run finds every prompt in the text cache: no text encoder, the transformer once
    second = DiTFExtractor.from_pretrained(folder, prompts=run, **kwargs)
    assert events == ["transformer"]
    assert second.backbone.conditioner is not None
    assert (second.backbone.conditioner.encoder_loads, second.backbone.conditioner.encodings) == (
        0,
        0,
    )
    # prompts added after loading: the new ones with one more load, the cached ones skipped
    events.clear()
    assert second.encode_prompts([CAPTIONS[0], "a lazy cat", "over the dog", "a lazy cat"]) == [
        "a lazy cat",
        "over the dog",
    ]
    assert events == ["text encoders", ("encode", "a lazy cat"), ("encode", "over the dog")]
    events.clear()
    assert second.encode_prompts(["a lazy cat"]) == []
    assert events == []


def test_per_image_prompts_condition_each_image(
    tiny_model: Callable[..., Path], tmp_path: Path
) -> None:
    from ditf_track.cache import feature_key

    p1, p2 = CAPTIONS[:2]
    ex = DiTFExtractor.from_pretrained(
        tiny_model("flux"), family="flux", t=260, k=3, prompts=[p1, p2], cache_dir=tmp_path
    )
    asked: list[str] = []
    condition = ex.backbone.condition

    def spy(prompt: str) -> Any:
        asked.append(prompt)
        return condition(prompt)

    ex.backbone.condition = spy  # type: ignore[method-assign]
    images = np.random.RandomState(1).randint(0, 256, (3, 64, 96, 3), dtype=np.uint8)
    ids = ["a", "b", "c"]
    mixed = ex.extract(images, noise_ids=ids, prompts=[p1, p2, p1])
    assert asked == [p1, p2]  # one forward per distinct prompt
    assert mixed.meta["prompts"] == [p1, p2, p1]
    assert mixed.meta["prompt"] is None
    # each image equals itself extracted alone with its prompt (float32 on the CPU; batching
    # changes the summation order only)
    for i, prompt in enumerate([p1, p2, p1]):
        alone = ex.extract(images[i : i + 1], noise_ids=ids[i : i + 1], prompts=[prompt])
        assert alone.meta["prompt"] == prompt
        torch.testing.assert_close(mixed.features[i], alone.features[0], atol=1e-5, rtol=1e-4)
    # another prompt gives other features; no prompt is the settings' prompt
    first = ex.extract(images[:1], noise_ids=["a"], prompts=[p2]).features[0]
    assert (first - mixed.features[0]).abs().max() > 1e-3
    default = ex.extract(images[:1], noise_ids=["a"])
    assert "prompts" not in default.meta
    torch.testing.assert_close(
        default.features,
        ex.extract(images[:1], noise_ids=["a"], prompts=[ex.settings.prompt]).features,
    )
    # the feature identity and the cache key name the image's own prompt
    assert ex.identity(p1)["prompt"] == p1
    assert ex.identity()["prompt"] == ex.settings.prompt == ""
    assert ex.identity(p1) | {"prompt": p2} == ex.identity(p2)
    keys = {feature_key(ex.identity(p), "video", 0, (64, 96)) for p in (None, p1, p2)}
    assert len(keys) == 3


@pytest.mark.faults
def test_per_image_prompt_errors(tiny_model: Callable[..., Path]) -> None:
    ex = DiTFExtractor.from_pretrained(tiny_model("flux"), family="flux", t=260, k=3)
    with pytest.raises(InputError, match=r"^1 prompts for 2 images; give one prompt per image"):
        ex.extract(IMAGES, prompts=["a car"])
    with pytest.raises(InputError, match="a prompt must be a string, got 3"):
        ex.extract(IMAGES[:1], prompts=[3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="prompts must be a list of strings"):
        ex.extract(IMAGES[:1], prompts="a car")


def test_prompts_encoded_after_loading_move_the_transformer_aside_once(
    tiny_model: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CUDA device the transformer steps aside once for all new prompts (the device type
    is faked: the moves are recorded, not made), and once encoded they never move it again."""
    ex = DiTFExtractor.from_pretrained(
        tiny_model("flux"), family="flux", t=260, k=3, cache_dir=tmp_path
    )
    backbone = ex.backbone
    moves: list[str] = []

    class Transformer:
        def __init__(self, real: Any) -> None:
            self.real = real

        def to(self, device: Any) -> None:
            moves.append(str(device))

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return self.real(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    class FakeCuda:
        type = "cuda"

        def __str__(self) -> str:
            return "cuda"

    monkeypatch.setattr(backbone, "transformer", Transformer(backbone.transformer))
    monkeypatch.setattr(backbone, "device", FakeCuda())
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    assert ex.encode_prompts(CAPTIONS) == CAPTIONS
    assert moves == ["cpu", "cuda"]
    assert backbone.conditioner is not None
    assert backbone.conditioner.encoder_loads == 2  # the settings' prompt at load, then these
    assert ex.encode_prompts(CAPTIONS) == []
    assert moves == ["cpu", "cuda"]
    # condition() moves the transformer only for a prompt missing here: none is
    assert backbone.conditioner.missing(CAPTIONS) == []


@pytest.mark.parametrize("tiny", ["pixart", "sd3", "flux"])
def test_deferred_load_has_the_identity_of_a_loaded_model_and_loads_on_first_use(
    tiny_model: Callable[..., Path], tiny: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ray driver builds its extractor with ``defer_load``: the config is read and checked,
    the identity (cache keys, run fingerprints) is the loaded model's, and no weight is read
    until the first extract, whose features are the eager extractor's."""
    folder = tiny_model(tiny)
    family = "sd3" if tiny == "sd3" else tiny
    eager = DiTFExtractor.from_pretrained(folder, family=family, t=100, k=1)
    loads: list[str] = []
    real_read = base_module.load_truncated_weights

    def counted(transformer: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(family)
        return real_read(transformer, *args, **kwargs)

    monkeypatch.setattr(base_module, "load_truncated_weights", counted)
    deferred = DiTFExtractor.from_pretrained(folder, family=family, t=100, k=1, defer_load=True)
    assert deferred.identity() == eager.identity()
    assert deferred.identity("a photo of a dog") == eager.identity("a photo of a dog")
    assert deferred.device == eager.device
    assert not deferred.loaded
    assert loads == []
    images = np.random.default_rng(0).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    torch.testing.assert_close(deferred.extract(images).features, eager.extract(images).features)
    assert deferred.loaded
    assert loads == [family]
    deferred.extract(images)
    assert loads == [family]  # loaded once
    with pytest.raises(ConfigError, match="out of range"):
        DiTFExtractor.from_pretrained(folder, family=family, t=100, k=99, defer_load=True)
