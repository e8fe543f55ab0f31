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
    preset: str, k: int | None = None
) -> tuple[type[DiTBackbone], torch.nn.Module]:
    """``preset``'s backbone class and real transformer on the meta device (no memory held),
    truncated to blocks 0..k unless ``k`` is None."""
    import diffusers
    from accelerate import init_empty_weights

    cls = backbone_class(load_preset(preset).family)
    with init_empty_weights():
        transformer = getattr(diffusers, cls.transformer_class_name).from_config(
            TRANSFORMERS[preset]
        )
    if k is not None:
        cls.truncate(transformer, k)
    return cls, transformer


def build_random_backbone(
    preset: str, k: int, device: torch.device, dtype: torch.dtype
) -> DiTBackbone:
    """Blocks 0..k of ``preset``'s real architecture with random weights, and its VAE."""
    import diffusers

    family = load_preset(preset).family
    cls, transformer = empty_transformer(preset, k)
    random_weights(transformer, device, dtype)
    vae = diffusers.AutoencoderKL(**VAES[family])
    vae.decoder = None
    vae.post_quant_conv = None
    backbone = cls(
        transformer,
        vae.to(device),
        k_max=k,
        num_blocks=cls.count_blocks(TRANSFORMERS[preset]),
        model_id=f"random:{preset}",
        scheduler_config=PIXART_BETAS,
        device=device,
        dtype=dtype,
    )
    tokens, width, pooled = TEXT_SHAPES[family]
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
