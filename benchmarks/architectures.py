"""Full-size architectures of every preset, from the real hub configs, with random weights.

Speed and memory do not depend on trained weights, so benchmarks build each preset's real
transformer and VAE configuration (copied from the hub repositories' ``config.json``) without
downloading anything: blocks 0..k only, random weights written straight to the device, and a
random text condition of the real shape.
"""

from __future__ import annotations

from typing import Any

import torch

from ditf_track.backbones import DiTBackbone, TextCondition, backbone_class
from ditf_track.presets import load_preset

# transformer/config.json of each hub repository (the keys that change the architecture).
TRANSFORMERS: dict[str, dict[str, Any]] = {
    "pixart-alpha": {  # PixArt-alpha/PixArt-XL-2-1024-MS
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "attention_head_dim": 72,
        "caption_channels": 4096,
        "cross_attention_dim": 1152,
        "in_channels": 4,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-06,
        "norm_type": "ada_norm_single",
        "num_attention_heads": 16,
        "num_embeds_ada_norm": 1000,
        "num_layers": 28,
        "out_channels": 8,
        "patch_size": 2,
        "sample_size": 128,
    },
    "sd3": {  # stabilityai/stable-diffusion-3-medium-diffusers
        "attention_head_dim": 64,
        "caption_projection_dim": 1536,
        "in_channels": 16,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 24,
        "out_channels": 16,
        "patch_size": 2,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "sample_size": 128,
    },
    "sd3.5": {  # stabilityai/stable-diffusion-3.5-large
        "attention_head_dim": 64,
        "caption_projection_dim": 2432,
        "dual_attention_layers": [],
        "in_channels": 16,
        "joint_attention_dim": 4096,
        "num_attention_heads": 38,
        "num_layers": 38,
        "out_channels": 16,
        "patch_size": 2,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "qk_norm": "rms_norm",
        "sample_size": 128,
    },
    "flux": {  # black-forest-labs/FLUX.1-dev
        "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56],
        "guidance_embeds": True,
        "in_channels": 64,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 19,
        "num_single_layers": 38,
        "patch_size": 1,
        "pooled_projection_dim": 768,
    },
}
TRANSFORMERS["flux-schnell"] = {**TRANSFORMERS["flux"], "guidance_embeds": False}

# vae/config.json: the SD VAE (4 latent channels) for PixArt, the 16-channel VAE for the rest.
_VAE_COMMON: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "in_channels": 3,
    "out_channels": 3,
}
VAES: dict[str, dict[str, Any]] = {
    "pixart": {**_VAE_COMMON, "latent_channels": 4, "scaling_factor": 0.18215},
    "sd3": {
        **_VAE_COMMON,
        "latent_channels": 16,
        "scaling_factor": 1.5305,
        "shift_factor": 0.0609,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    "flux": {
        **_VAE_COMMON,
        "latent_channels": 16,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
}

# (text tokens, text width, pooled width) the transformer receives for one prompt.
TEXT_SHAPES: dict[str, tuple[int, int, int | None]] = {
    "pixart": (120, 4096, None),  # T5-XXL, max_sequence_length 120
    "sd3": (77 + 256, 4096, 2048),  # CLIP-L/G (padded to 4096) + T5 tokens; pooled CLIP-L+G
    "flux": (512, 4096, 768),  # T5 tokens; pooled CLIP-L
}
PIXART_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02}

# Tiny widths for smoke runs on the CPU (benchmarks/gpu_suite.py --smoke): the real configs
# with narrow attention, text and VAE, but the real block counts, so every k stays valid.
TINY_TRANSFORMERS: dict[str, dict[str, Any]] = {
    "pixart": {  # width 24: the resolution and aspect embeddings take a third each
        "attention_head_dim": 12,
        "num_attention_heads": 2,
        "cross_attention_dim": 24,
        "caption_channels": 16,
    },
    "sd3": {
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "joint_attention_dim": 16,
        "caption_projection_dim": 16,
        "pooled_projection_dim": 16,
    },
    "flux": {
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 16,
        "pooled_projection_dim": 16,
        "axes_dims_rope": [4, 6, 6],
    },
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": [8, 8, 8, 8],
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
TINY_TEXT_SHAPES: dict[str, tuple[int, int, int | None]] = {
    "pixart": (8, 16, None),
    "sd3": (8, 16, 16),
    "flux": (8, 16, 16),
}


def transformer_config(preset: str, tiny: bool = False) -> dict[str, Any]:
    """``preset``'s transformer config: the hub's, or its tiny-width variant."""
    config = dict(TRANSFORMERS[preset])
    if tiny:
        config.update(TINY_TRANSFORMERS[load_preset(preset).family])
    return config


def dit_flops(
    family: str, config: dict[str, Any], k: int, image_tokens: int, text_tokens: int
) -> float:
    """FLOPs of one image through blocks 0..k as a DiTF capture runs them (2 FLOPs per MAC).

    With N image tokens, T text tokens, L = N + T and width d = heads x head_dim, the MACs of
    one block are, split into the attention part A and the MLP part M (hidden width 4d):

    * PixArt-α (self-attention on N, cross-attention to T): A = 6·N·d² + 2·T·d² + 2·N²·d +
      2·N·T·d (q, k, v, out projections; K and V of the text; scores and weighted sum),
      M = 8·N·d²;
    * SD3, SD3.5 and Flux's double blocks (joint attention over L): A = 4·L·d² + 2·L²·d,
      M = 8·L·d²;
    * Flux's single blocks (fused q, k, v + MLP-in, then out of d + 4d): 12·L·d² + 2·L²·d.

    Blocks 0..k-1 run whole; block k runs its attention part only (the capture stops at its
    second norm), a Flux single block k none (it stops at its first). Left out: embedders,
    AdaLN linears (per image, not per token), norms, activations, softmax, and the VAE.
    """
    n, t = image_tokens, text_tokens
    d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    if family == "pixart":
        attention = 6 * n * d * d + 2 * t * d * d + 2 * n * n * d + 2 * n * t * d
        macs = k * (attention + 8 * n * d * d) + attention
    elif family == "sd3":
        length = n + t
        attention = 4 * length * d * d + 2 * length * length * d
        macs = k * (attention + 8 * length * d * d) + attention
    elif family == "flux":
        length = n + t
        attention = 4 * length * d * d + 2 * length * length * d
        double = int(config["num_layers"])
        single = 12 * length * d * d + 2 * length * length * d
        full_double = min(k, double)
        macs = full_double * (attention + 8 * length * d * d) + max(0, k - double) * single
        if k < double:
            macs += attention
    else:
        raise ValueError(f"unknown DiT family {family!r}")
    return 2.0 * macs


def random_weights(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Materialise meta parameters on ``device``: N(0, 0.02) matrices, unit norm weights."""
    from accelerate.utils import set_module_tensor_to_device

    gen = torch.Generator(device=device).manual_seed(0)
    for name, param in list(model.named_parameters()):
        if not param.is_meta:
            continue
        if param.ndim >= 2:
            value = torch.empty(param.shape, device=device, dtype=dtype).normal_(
                0, 0.02, generator=gen
            )
        elif "norm" in name and name.endswith("weight"):
            value = torch.ones(param.shape, device=device, dtype=dtype)
        else:
            value = torch.zeros(param.shape, device=device, dtype=dtype)
        # dtype= here: without it accelerate casts the value back to the meta parameter's
        # float32, and a bf16 benchmark would hold (and measure) float32 weights.
        set_module_tensor_to_device(model, name, device, value=value, dtype=dtype)
    for name, buf in list(model.named_buffers()):
        set_module_tensor_to_device(model, name, device, value=buf)


def empty_transformer(
    preset: str, k: int | None = None, tiny: bool = False
) -> tuple[type[DiTBackbone], torch.nn.Module]:
    """``preset``'s backbone class and real transformer on the meta device (no memory held),
    truncated to blocks 0..k unless ``k`` is None; ``tiny``: the tiny-width variant."""
    import diffusers
    from accelerate import init_empty_weights

    cls = backbone_class(load_preset(preset).family)
    with init_empty_weights():
        transformer = getattr(diffusers, cls.transformer_class_name).from_config(
            transformer_config(preset, tiny)
        )
    if k is not None:
        cls.truncate(transformer, k)
    return cls, transformer


def build_random_backbone(
    preset: str, k: int, device: torch.device, dtype: torch.dtype, tiny: bool = False
) -> DiTBackbone:
    """Blocks 0..k of ``preset``'s real architecture with random weights, and its VAE
    (``tiny``: narrow widths, the real block counts; for smoke runs on the CPU)."""
    import diffusers
    from accelerate import init_empty_weights

    family = load_preset(preset).family
    cls, transformer = empty_transformer(preset, k, tiny)
    random_weights(transformer, device, dtype)
    with init_empty_weights():  # the encoder only, in float32 as the library runs it
        vae = diffusers.AutoencoderKL(**{**VAES[family], **(TINY_VAE if tiny else {})})
    vae.decoder = None
    vae.post_quant_conv = None
    random_weights(vae, device, torch.float32)
    backbone = cls(
        transformer,
        vae,
        k_max=k,
        num_blocks=cls.count_blocks(transformer_config(preset, tiny)),
        model_id=f"random:{preset}",
        scheduler_config=PIXART_BETAS,
        device=device,
        dtype=dtype,
    )
    tokens, width, pooled = (TINY_TEXT_SHAPES if tiny else TEXT_SHAPES)[family]
    gen = torch.Generator().manual_seed(1)
    condition = TextCondition(
        embeds=torch.randn(1, tokens, width, generator=gen),
        pooled=None if pooled is None else torch.randn(1, pooled, generator=gen),
        mask=torch.ones(1, tokens, dtype=torch.long) if family == "pixart" else None,
    )
    backbone.conditioner = _FixedConditioner(condition)
    return backbone


class _FixedConditioner:
    """A text condition without text encoders: the same random embedding for every prompt."""

    def __init__(self, condition: TextCondition) -> None:
        self.condition = condition
        self.encoder_loads = 0

    def is_cached(self, prompt: str) -> bool:
        return True

    def get(self, prompt: str) -> TextCondition:
        return self.condition
