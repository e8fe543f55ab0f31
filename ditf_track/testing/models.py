"""Tiny DiT pipelines for tests: real diffusers/transformers classes, random weights, hub layout.

No weights can be downloaded in CI, so every family is tested on a tiny model built from
config with the real classes and saved with the pipeline's own ``save_pretrained`` — the
folder has exactly the layout of a hub repository (``model_index.json``, ``transformer/``,
``vae/``, ``text_encoder*/``, ``tokenizer*/``, ``scheduler/``) and is loaded back through the
same code path a user takes. Tokenizers are built locally from a small vocabulary.

The VAE downsamples 8× and the transformer patchifies 2× (Flux packs 2×2), so the token
stride is 16 pixels as in the real models.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch

TinyFamily = Literal["pixart", "sd3", "sd3.5", "flux", "flux-schnell"]
TINY_FAMILIES: tuple[str, ...] = ("pixart", "sd3", "sd3.5", "flux", "flux-schnell")

_WORDS = [
    "a",
    "photo",
    "of",
    "image",
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "cat",
    "car",
    "bird",
]
_LETTERS = list("abcdefghijklmnopqrstuvwxyz")
_MERGES: Any = [("p", "h")]  # transformers 5 takes merge pairs as tuples


def _t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in _WORDS] + [(c, -3.0) for c in _LETTERS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _LETTERS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    vocab["ph"] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab,
        merges=_MERGES,
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=77,
    )


def _t5_encoder(d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=64,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )
    return T5EncoderModel(config).eval()


def _clip_encoder(hidden: int, projection: int | None) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def _vae(latent_channels: int, scaling: float, shift: float | None) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling,
        shift_factor=shift,
    )


def build_tiny_pipeline(
    family: TinyFamily,
    folder: str | Path,
    *,
    num_layers: int = 4,
    seed: int = 0,
    max_shard_size: str | None = None,
    amplify_adaln: float = 3.0,
) -> Path:
    """Write a tiny random-weight pipeline of ``family`` to ``folder`` in the hub's layout.

    ``num_layers`` is the number of transformer blocks (for Flux: 2 double blocks and
    ``num_layers - 2`` single blocks). ``max_shard_size`` (e.g. ``"20KB"``) shards the
    transformer weights with an index file, as the large hub checkpoints are.
    ``amplify_adaln`` scales the AdaLN modulation weights: with default random init |γ|, |β|
    are ~0.1, so ẑ would be almost the raw feature and a test could not tell them apart.
    """
    folder = Path(folder)
    torch.manual_seed(seed)
    pipe: Any
    transformer: Any
    if family == "pixart":
        from diffusers import (
            DPMSolverMultistepScheduler,
            PixArtAlphaPipeline,
            PixArtTransformer2DModel,
        )

        transformer = PixArtTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=8,
            num_layers=num_layers,
            cross_attention_dim=24,
            caption_channels=16,
            sample_size=8,
            patch_size=2,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            use_additional_conditions=True,
        )
        pipe = PixArtAlphaPipeline(
            tokenizer=_t5_tokenizer(),
            text_encoder=_t5_encoder(16),
            vae=_vae(4, 0.18215, None),
            transformer=transformer,
            scheduler=DPMSolverMultistepScheduler(),
        )
    elif family in ("sd3", "sd3.5"):
        from diffusers import (
            FlowMatchEulerDiscreteScheduler,
            SD3Transformer2DModel,
            StableDiffusion3Pipeline,
        )

        extra = (
            {"qk_norm": "rms_norm", "dual_attention_layers": (0, 1)} if family == "sd3.5" else {}
        )
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=num_layers,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=24,
            pos_embed_max_size=48,
            **extra,
        )
        pipe = StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(16, 1.5305, 0.0609),
            text_encoder=_clip_encoder(16, 12),
            tokenizer=_clip_tokenizer(),
            text_encoder_2=_clip_encoder(16, 12),
            tokenizer_2=_clip_tokenizer(),
            text_encoder_3=_t5_encoder(32),
            tokenizer_3=_t5_tokenizer(),
        )
    elif family in ("flux", "flux-schnell"):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

        if num_layers < 3:
            raise ValueError("a tiny Flux needs at least 3 blocks (2 double + 1 single)")
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=2,
            num_single_layers=num_layers - 2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=16,
            guidance_embeds=family == "flux",
            axes_dims_rope=(4, 6, 6),
        )
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(16, 0.3611, 0.1159),
            text_encoder=_clip_encoder(16, None),
            tokenizer=_clip_tokenizer(),
            text_encoder_2=_t5_encoder(32),
            tokenizer_2=_t5_tokenizer(),
            transformer=transformer,
        )
    else:
        raise ValueError(f"unknown tiny family {family!r}; use one of {TINY_FAMILIES}")
    _amplify_adaln(pipe.transformer, amplify_adaln)
    pipe.save_pretrained(folder, safe_serialization=True)
    if max_shard_size is not None:
        for f in (folder / "transformer").glob("diffusion_pytorch_model*"):
            f.unlink()
        pipe.transformer.save_pretrained(folder / "transformer", max_shard_size=max_shard_size)
    return folder


def _amplify_adaln(transformer: Any, factor: float) -> None:
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            is_modulation = name.endswith("scale_shift_table") or any(
                part in name for part in ("norm1.linear", "norm.linear", "adaln_single.linear")
            )
            if is_modulation:
                param.mul_(factor)


def plant_massive_channels(
    folder: str | Path,
    channels: tuple[int, ...] = (3, 11),
    value: float = 400.0,
    content_channels: tuple[int, ...] = (),
    content_gain: float = 1.0,
) -> Path:
    """Give ``channels`` a large constant on every token of the residual stream.

    The bias of the patch embedding (PixArt, SD3: ``pos_embed.proj``; Flux: ``x_embedder``) is
    set to ``value`` for those channels, so every block's input carries them far above the
    median magnitude, like the massive activations of real DiTs. Real feature maps are also
    heavy-tailed (SD3.5's 10th-largest channel is −0.18 ± 2.36 beside a small median, paper §1),
    which a narrow random model lacks: ``content_gain`` scales the embedding weights of
    ``content_channels`` so they vary strongly from token to token.
    """
    import diffusers

    folder = Path(folder)
    config = json.loads((folder / "transformer" / "config.json").read_text("utf-8"))
    cls = getattr(diffusers, config["_class_name"])
    transformer = cls.from_pretrained(str(folder / "transformer"))
    embed = (
        transformer.x_embedder if hasattr(transformer, "x_embedder") else transformer.pos_embed.proj
    )
    with torch.no_grad():
        for c in channels:
            embed.bias[c] = value
        for c in content_channels:
            embed.weight[c] *= content_gain
    for f in (folder / "transformer").glob("diffusion_pytorch_model*"):
        f.unlink()
    transformer.save_pretrained(str(folder / "transformer"))
    return folder


@contextmanager
def isolated_caches(mktemp: Callable[[str], Path]) -> Iterator[None]:
    """A private feature cache and Hugging Face home, and an offline hub, for a test session.

    ``mktemp(name)`` makes a fresh folder (pytest's ``tmp_path_factory.mktemp``); the
    environment is restored on exit, so tests never touch ``~/.cache`` nor the network.
    """
    keys = ("DITF_TRACK_CACHE", "HF_HUB_OFFLINE", "HF_HOME")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ["DITF_TRACK_CACHE"] = str(mktemp("ditf-cache"))
    os.environ["HF_HOME"] = str(mktemp("hf-home"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tiny_model_factory(mktemp: Callable[[str], Path]) -> Callable[..., Path]:
    """``get(family, **options)``: a :func:`build_tiny_pipeline` folder, built once per options."""
    built: dict[tuple[object, ...], Path] = {}

    def get(family: TinyFamily, **options: Any) -> Path:
        key = (family, *sorted(options.items()))
        if key not in built:
            built[key] = build_tiny_pipeline(family, mktemp(f"tiny-{family}"), **options)
        return built[key]

    return get
