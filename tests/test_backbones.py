"""DiTF on the stock diffusers classes: tap points, modulation chunks, truncation, loading.

Every family is a tiny random-weight pipeline saved in the hub's layout and loaded through the
same code path a user takes. Values that could be wrong are checked against an *untruncated*
model's own tensors and against a hand computation of (1 + γ)·LN(z) + β.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from test_hub import truncate

from ditf_track.backbones import DiTBackbone, backbone_class
from ditf_track.backbones.hooks import modulation_chunks
from ditf_track.errors import ConfigError, ModelLoadError
from ditf_track.extractor import DiTFExtractor
from ditf_track.features import adaln_modulate

# (tiny folder family, backbone family, block indices to read). The tiny Flux has 2 double
# blocks (k = 0, 1) then 2 single blocks (k = 2, 3); the last block of SD3 is context_pre_only.
CASES = [
    ("pixart", "pixart", [0, 2, 3]),
    ("sd3", "sd3", [1, 3]),
    ("sd3.5", "sd3", [0, 1, 3]),  # dual-attention blocks 0-1, qk RMS-norm
    ("flux", "flux", [0, 1, 2, 3]),
]


def untruncated_backbone(folder: Path, family: str) -> DiTBackbone:
    """A backbone around the complete stock transformer, loaded with from_pretrained."""
    cls = backbone_class(family)
    lean = cls.load(folder, k=0)
    full = getattr(diffusers, cls.transformer_class_name).from_pretrained(
        str(folder), subfolder="transformer"
    )
    n = cls.count_blocks(dict(full.config))
    return cls(
        full,
        lean.vae,
        k_max=n - 1,
        num_blocks=n,
        model_id=str(folder),
        conditioner=lean.conditioner,
        scheduler_config=lean.scheduler_config,
    )


def all_blocks(transformer: Any) -> list[torch.nn.Module]:
    blocks = list(transformer.transformer_blocks)
    return blocks + list(getattr(transformer, "single_transformer_blocks", []))


def noisy_latents(backbone: DiTBackbone, n: int = 2, hw: tuple[int, int] = (8, 12)) -> torch.Tensor:
    channels = backbone.vae.config.latent_channels
    return torch.randn((n, channels, *hw), generator=torch.Generator().manual_seed(7))


def actual_ff_input(backbone: DiTBackbone, latents: torch.Tensor, t: int, k: int) -> torch.Tensor:
    """The tensor the untruncated model really modulates at block k (image tokens)."""
    block = all_blocks(backbone.transformer)[k]
    cond = backbone.condition("")
    inputs = backbone.model_inputs(latents, t, cond)
    seen: dict[str, torch.Tensor] = {}
    txt = inputs["encoder_hidden_states"].shape[1]

    def ff_input(_m: Any, args: tuple[torch.Tensor, ...]) -> None:
        seen["x"] = args[0].clone()

    def single_norm_output(_m: Any, _a: Any, out: tuple[torch.Tensor, ...]) -> None:
        seen["x"] = out[0][:, txt:].clone()  # text tokens come first

    if hasattr(block, "ff") and block.ff is not None:
        handle = block.ff.register_forward_pre_hook(ff_input)
    else:  # Flux single block: the first output of its AdaLN is the modulated feature
        handle = block.norm.register_forward_hook(single_norm_output)
    try:
        with torch.inference_mode():
            backbone.transformer(**inputs)
    finally:
        handle.remove()
    return seen["x"]


@pytest.mark.parametrize(("tiny", "family", "ks"), CASES)
def test_modulated_feature_is_what_enters_the_block(
    tiny_model: Callable[..., Path], tiny: str, family: str, ks: list[int]
) -> None:
    backbone = untruncated_backbone(tiny_model(tiny), family)
    latents = noisy_latents(backbone)
    for k in ks:
        cap = backbone.capture(latents, 260, backbone.condition(""), k)
        actual = actual_ff_input(backbone, latents, 260, k)
        zhat = adaln_modulate(cap.z, cap.gamma, cap.beta, cap.eps)
        assert zhat.shape == actual.shape == (2, 4 * 6, backbone.hidden_size)
        torch.testing.assert_close(zhat, actual, rtol=0, atol=1e-6)
        # by hand: LayerNorm without affine over channels, then the block's own scale/shift
        mean = cap.z.mean(-1, keepdim=True)
        var = cap.z.var(-1, unbiased=False, keepdim=True)
        by_hand = (cap.z - mean) / torch.sqrt(var + cap.eps) * (1 + cap.gamma[:, None]) + cap.beta[
            :, None
        ]
        torch.testing.assert_close(by_hand, actual, rtol=1e-5, atol=1e-5)
        # the wrong chunk or the wrong tap point would be visibly different
        swapped = adaln_modulate(cap.z, cap.beta, cap.gamma, cap.eps)
        assert (swapped - actual).abs().max() > 0.1
        assert (cap.z - actual).abs().max() > 0.1


@pytest.mark.parametrize(("tiny", "family", "ks"), CASES)
def test_no_block_after_k_runs(
    tiny_model: Callable[..., Path], tiny: str, family: str, ks: list[int]
) -> None:
    backbone = untruncated_backbone(tiny_model(tiny), family)
    latents = noisy_latents(backbone, n=1)
    blocks = all_blocks(backbone.transformer)
    entered: list[int] = []

    def count(i: int) -> Callable[..., None]:
        return lambda _m, _a: entered.append(i)

    handles = [b.register_forward_pre_hook(count(i)) for i, b in enumerate(blocks)]
    try:
        for k in ks:
            entered.clear()
            backbone.capture(latents, 100, backbone.condition(""), k)
            assert entered == list(range(k + 1))
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize(("tiny", "family", "k"), [("pixart", "pixart", 1), ("flux", "flux", 2)])
def test_truncated_load_reads_only_blocks_up_to_k(
    tiny_model: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tiny: str,
    family: str,
    k: int,
) -> None:
    import safetensors

    folder = tiny_model(tiny, max_shard_size="20KB")
    shards = sorted((folder / "transformer").glob("*.safetensors"))
    assert len(shards) > 3, "the fixture must be sharded"
    opened: list[str] = []
    read: list[str] = []
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
            opened.append(Path(path).name)
            self.inner = real_open(path, *args, **kwargs)

        def __enter__(self) -> Spy:
            self.inner.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            self.inner.__exit__(*exc)

        def keys(self) -> list[str]:
            return list(self.inner.keys())

        def get_tensor(self, key: str) -> torch.Tensor:
            read.append(key)
            return self.inner.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    backbone = backbone_class(family).load(folder, k=k)
    blocks = all_blocks(backbone.transformer)
    assert len(blocks) == k + 1
    later = [
        key
        for key in read
        if any(key.startswith(f"{prefix}.{i}.") for prefix, i in _later_block_prefixes(family, k))
    ]
    assert read, "nothing was read"
    assert later == []
    assert not any(key.startswith(("norm_out.", "proj_out.")) for key in read)
    assert len(set(opened)) < len(shards), "shards holding only later blocks must stay closed"
    # the lean model gives the same block-k feature as the complete one
    full = untruncated_backbone(folder, family)
    latents = noisy_latents(full, n=1)
    lean_cap = backbone.capture(latents, 300, backbone.condition(""), k)
    full_cap = full.capture(latents, 300, full.condition(""), k)
    torch.testing.assert_close(lean_cap.z, full_cap.z, rtol=0, atol=0)
    torch.testing.assert_close(lean_cap.gamma, full_cap.gamma, rtol=0, atol=0)


def _later_block_prefixes(family: str, k: int) -> list[tuple[str, int]]:
    if family == "flux":  # 2 double blocks then single blocks, global index k
        doubles = [("transformer_blocks", i) for i in range(k + 1, 2)]
        singles = [("single_transformer_blocks", i) for i in range(max(0, k - 1), 10)]
        return doubles + singles
    return [("transformer_blocks", i) for i in range(k + 1, 10)]


@pytest.mark.parametrize(
    ("tiny", "family", "k"), [("sd3", "sd3", 2), ("flux", "flux", 1), ("flux", "flux", 3)]
)
def test_condition_ablations_use_the_blocks_own_mlp(
    tiny_model: Callable[..., Path], tiny: str, family: str, k: int
) -> None:
    backbone = untruncated_backbone(tiny_model(tiny), family)
    tr = backbone.transformer
    latents = noisy_latents(backbone, n=1)
    cond = backbone.condition("")
    parts: dict[str, torch.Tensor] = {}
    emb = tr.time_text_embed
    handles = [
        emb.timestep_embedder.register_forward_hook(lambda _m, _a, o: parts.__setitem__("t", o)),
        emb.text_embedder.register_forward_hook(lambda _m, _a, o: parts.__setitem__("c", o)),
    ]
    if hasattr(emb, "guidance_embedder"):
        handles.append(
            emb.guidance_embedder.register_forward_hook(lambda _m, _a, o: parts.__setitem__("g", o))
        )
    try:
        caps = {mode: backbone.capture(latents, 260, cond, k, mode) for mode in ("t+c", "t", "c")}
    finally:
        for h in handles:
            h.remove()
    block = all_blocks(tr)[k]
    linear = block.norm1.linear if hasattr(block, "norm1") else block.norm.linear
    shift_i, scale_i = (3, 4) if hasattr(block, "norm1") else (0, 1)
    t_part = parts["t"] + parts.get("g", 0)
    for mode, temb in (("t+c", t_part + parts["c"]), ("t", t_part), ("c", parts["c"])):
        chunks = modulation_chunks(linear, temb, backbone.hidden_size)
        torch.testing.assert_close(caps[mode].gamma, chunks[scale_i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(caps[mode].beta, chunks[shift_i], rtol=1e-5, atol=1e-5)
    assert (caps["t"].gamma - caps["t+c"].gamma).abs().max() > 1e-3
    torch.testing.assert_close(caps["t"].z, caps["t+c"].z)  # the blocks themselves are unchanged


def test_pixart_takes_resolution_condition_and_refuses_c(tiny_model: Callable[..., Path]) -> None:
    backbone = backbone_class("pixart").load(tiny_model("pixart"), k=1)
    cond = backbone.condition("")
    latents = noisy_latents(backbone, n=1)
    inputs = backbone.model_inputs(latents, 141, cond)
    assert inputs["added_cond_kwargs"]["resolution"].tolist() == [[64.0, 96.0]]
    assert inputs["added_cond_kwargs"]["aspect_ratio"].tolist() == [[pytest.approx(64 / 96)]]
    with pytest.raises(ConfigError, match="not available for PixArt"):
        backbone.capture(latents, 141, cond, 1, "c")


def test_noise_schedules() -> None:
    from ditf_track.backbones.base import flow_noise

    z0, eps = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 3.0)
    torch.testing.assert_close(flow_noise(z0, 250, eps), torch.full_like(z0, 0.75 + 0.75))


def test_pixart_ddpm_noise_uses_model_schedule(tiny_model: Callable[..., Path]) -> None:
    backbone = backbone_class("pixart").load(tiny_model("pixart"), k=0)
    z0, eps = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    betas = torch.linspace(0.0001, 0.02, 1000, dtype=torch.float64)  # the tiny scheduler's
    alpha_bar = torch.cumprod(1 - betas, 0)[141]
    out = backbone.noise_latents(z0, 141, eps)
    torch.testing.assert_close(out, torch.full_like(z0, float(alpha_bar.sqrt())))


def test_flux_packing_matches_the_pipeline() -> None:
    from diffusers import FluxPipeline

    from ditf_track.backbones.flux import pack_latents

    latents = torch.randn(2, 16, 6, 8)
    expected = FluxPipeline._pack_latents(latents, 2, 16, 6, 8)
    torch.testing.assert_close(pack_latents(latents), expected, rtol=0, atol=0)


def test_flux_guidance_only_for_dev(tiny_model: Callable[..., Path]) -> None:
    dev = backbone_class("flux").load(tiny_model("flux"), k=2)
    schnell = backbone_class("flux").load(tiny_model("flux-schnell"), k=2)
    latents = noisy_latents(dev, n=1)
    assert dev.model_inputs(latents, 90, dev.condition(""))["guidance"].tolist() == [3.5]
    assert "guidance" not in schnell.model_inputs(latents, 90, schnell.condition(""))
    inputs = dev.model_inputs(latents, 90, dev.condition(""))
    assert inputs["timestep"].tolist() == [pytest.approx(0.09)]  # Flux receives sigma


def test_flux_guidance_reaches_the_embedder_as_3504_in_bf16(
    tiny_model: Callable[..., Path],
) -> None:
    """Issue 18 item 9: diffusers' Flux computes ``guidance.to(dtype) * 1000`` in the model
    dtype, as the authors' code does; in bf16, 3.5 → 3.5 * 1000 rounds to 3504 (bf16 has 8
    significant bits: neighbours 3488, 3504, 3520), the value the guidance embedder sees."""
    extractor = DiTFExtractor.from_pretrained(
        tiny_model("flux"), family="flux", t=260, k=3, dtype="bfloat16", vae_sample=False
    )
    embed = extractor.backbone.transformer.time_text_embed
    seen: list[torch.Tensor] = []
    handle = embed.register_forward_pre_hook(lambda _m, args: seen.append(args[1].clone()))
    try:
        extractor.extract(np.zeros((1, 32, 32, 3), np.uint8))
    finally:
        handle.remove()
    assert len(seen) == 1
    assert seen[0].dtype == torch.bfloat16
    assert seen[0].float().tolist() == [3504.0]
    assert torch.tensor(3.5, dtype=torch.bfloat16) * 1000 == 3504


def test_loading_errors(tiny_model: Callable[..., Path], tmp_path: Path) -> None:
    folder = tiny_model("sd3")
    with pytest.raises(ModelLoadError, match="does not exist"):
        backbone_class("sd3").load(tmp_path / "nowhere", k=1)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "transformer").symlink_to(folder / "transformer")
    with pytest.raises(ModelLoadError, match="no vae/ subfolder"):
        backbone_class("sd3").load(partial, k=1)
    with pytest.raises(ConfigError, match=r"k=9 is out of range.*4 blocks.*0\.\.3"):
        backbone_class("sd3").load(folder, k=9)
    with pytest.raises(ModelLoadError, match="not the FluxTransformer2DModel"):
        backbone_class("flux").load(folder, k=1)
    with pytest.raises(ConfigError, match="unknown model family 'unet'"):
        backbone_class("unet")


# -- the text-embedding cache (backbones/text.py; faults) ----------------------------------------


def flip_data_bytes(path: Path) -> None:
    """Flip bytes in the tensor data of a safetensors file, leaving its header intact."""
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    start = 8 + header_len
    for i in range(start, len(data), 7):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def load_flux(folder: Path, cache: Path) -> DiTFExtractor:
    return DiTFExtractor.from_pretrained(
        folder, family="flux", t=90, k=2, prompt="a photo of a dog", cache_dir=cache
    )


def encoder_loads(ex: DiTFExtractor) -> int:
    assert ex.backbone.conditioner is not None
    return ex.backbone.conditioner.encoder_loads


@pytest.mark.faults
@pytest.mark.parametrize("damage", [flip_data_bytes, truncate])
def test_damaged_text_embedding_is_re_encoded(
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
) -> None:
    folder = tiny_model("flux")
    first = load_flux(folder, tmp_path)
    good = first.backbone.condition("a photo of a dog")
    (text_file,) = (tmp_path / "text").glob("*.safetensors")
    damage(text_file)
    with caplog.at_level(logging.WARNING):
        second = load_flux(folder, tmp_path)
    assert encoder_loads(second) == 1, "a damaged embedding was trusted"
    # ditf-track's own warnings (a library's, e.g. transformers' on its first import, are not)
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("ditf_")
    ]
    assert len(warnings) == 1
    assert f"text cache file {text_file} is damaged" in warnings[0].getMessage()
    torch.testing.assert_close(second.backbone.condition("a photo of a dog").embeds, good.embeds)
    # the re-encoded file replaced the damaged one and is trusted again
    third = load_flux(folder, tmp_path)
    assert encoder_loads(third) == 0


@pytest.mark.faults
def test_text_embedding_store_failure_warns_and_continues(
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import safetensors.torch

    def full_disk(*args: Any, **kwargs: Any) -> None:
        Path(args[1]).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with caplog.at_level(logging.WARNING):
        ex = load_flux(tiny_model("flux"), tmp_path)
    assert np.isfinite(ex.extract(np.zeros((1, 64, 64, 3), np.uint8)).features.numpy()).all()
    # (the extractor's own note that a blank image has no massive channel is not this warning)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
        and r.name.startswith("ditf_")
        and r.name != "ditf_track.extractor"
    ]
    assert len(warnings) == 1
    assert "could not store the text embedding in the cache folder" in warnings[0]
    assert "No space left on device" in warnings[0]
    assert list((tmp_path / "text").iterdir()) == [], "a partial file was left behind"


@pytest.mark.faults
def test_cache_dir_that_is_a_file_fails_before_loading(
    tiny_model: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers

    def no_pipeline(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", no_pipeline)
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("my notes")
    with pytest.raises(ConfigError, match=r"cache folder .*cache is a file, not a folder"):
        load_flux(tiny_model("flux"), not_a_folder)
    assert not_a_folder.read_text() == "my notes"


def test_text_conditioner_encodes_all_missing_prompts_with_one_load(tmp_path: Path) -> None:
    from ditf_track.backbones.text import TextCondition, TextConditioner

    batches: list[list[str]] = []

    def encode_many(prompts: Any) -> list[TextCondition]:
        batches.append(list(prompts))
        return [TextCondition(torch.full((1, 2, 3), float(len(p)))) for p in prompts]

    def conditioner() -> TextConditioner:
        return TextConditioner({"model": "m"}, None, tmp_path, encode_many=encode_many)

    first = conditioner()
    assert first.ensure(["a car", "a dog", "a car", ""]) == ["a car", "a dog", ""]
    assert batches == [["a car", "a dog", ""]]
    assert (first.encoder_loads, first.encodings) == (1, 3)
    assert first.ensure(["a dog"]) == []
    assert float(first.get("a car").embeds[0, 0, 0]) == 5.0
    assert len(batches) == 1
    # a new conditioner on the same folder: every prompt from the cache, no encoder
    second = conditioner()
    assert second.missing(["a car", "a dog", "", "a bird"]) == ["a bird"]
    assert float(second.get("a dog").embeds[0, 0, 0]) == 5.0
    assert (second.encoder_loads, second.encodings) == (0, 0)
    second.get("a bird")  # a miss through get(): one more load for that prompt alone
    assert batches[-1] == ["a bird"]
    assert (second.encoder_loads, second.encodings) == (1, 1)
    # without an encoder, a missing prompt is one line
    bare = TextConditioner({"model": "m"}, None, None)
    with pytest.raises(ConfigError, match="the prompt 'a cat' is not cached and no text encoder"):
        bare.ensure(["a cat"])
