"""SD3 and SD3.5: ``SD3Transformer2DModel`` (MMDiT), CLIP-L + CLIP-G + T5, 16-channel VAE.

Block k is a ``JointTransformerBlock``; its image stream computes
``ff(norm2(z) · (1 + scale_mlp) + shift_mlp)`` where (shift_mlp, scale_mlp) come from the
block's ``norm1`` (``AdaLayerNormZero``, or ``SD35AdaLayerNormZeroX`` in dual-attention blocks;
both return them as outputs 2 and 3). So z is the input of ``block.norm2`` and (γ, β) are read
from ``norm1``'s output. The AdaLN is conditioned on ``temb = time embedding + pooled-text
embedding``; the ``"t"`` / ``"c"`` ablations apply the block's own modulation MLP to one part.
Rectified flow: ``z_t = (1 − σ) z_0 + σ ε`` with σ = t/1000, and the transformer gets t.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import DiTBackbone, TruncatedHead, flow_noise
from .hooks import HookSet, mlp_modulation, time_embed_parts, watch_time_embeds
from .text import TextCondition


class SD3Backbone(DiTBackbone):
    family = "sd3"
    pipeline_class_name = "StableDiffusion3Pipeline"
    transformer_class_name = "SD3Transformer2DModel"

    @staticmethod
    def count_blocks(config: dict[str, Any]) -> int:
        return int(config.get("num_layers", 18))

    @staticmethod
    def truncate(transformer: Any, k: int) -> None:
        transformer.transformer_blocks = nn.ModuleList(
            list(transformer.transformer_blocks)[: k + 1]
        )
        transformer.norm_out = TruncatedHead()
        transformer.proj_out = TruncatedHead()

    @staticmethod
    def text_subfolders() -> list[str]:
        return [
            "text_encoder",
            "text_encoder_2",
            "text_encoder_3",
            "tokenizer",
            "tokenizer_2",
            "tokenizer_3",
        ]

    @staticmethod
    def run_pipeline_encode(
        pipe: Any, prompt: str, device: torch.device, max_sequence_length: int | None
    ) -> TextCondition:
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length or 256,
        )
        return TextCondition(embeds=embeds, pooled=pooled)

    def noise_latents(self, latents: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        return flow_noise(latents, t, noise)

    def block_eps(self, k: int) -> float:
        return float(self.transformer.transformer_blocks[k].norm2.eps)

    def model_inputs(
        self,
        noisy_latents: torch.Tensor,
        t: int,
        condition: TextCondition,
        guidance: float | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of the transformer's forward for latents ``(N, 16, h8, w8)``."""
        n = noisy_latents.shape[0]
        cond = condition.to(self.device, self.dtype)
        if cond.pooled is None:
            raise ValueError("SD3 needs the pooled text embedding")
        return {
            "hidden_states": noisy_latents.to(self.device, self.dtype),
            "encoder_hidden_states": cond.embeds.expand(n, -1, -1),
            "pooled_projections": cond.pooled.expand(n, -1),
            "timestep": torch.full((n,), float(t), device=self.device, dtype=self.dtype),
            "return_dict": False,
        }

    def tap(self, hooks: HookSet, k: int) -> None:
        block = self.transformer.transformer_blocks[k]
        watch_time_embeds(hooks, self.transformer.time_text_embed)
        hooks.save_output(block.norm1, "norm1")
        hooks.save_input_and_stop(block.norm2, "norm2")

    def modulation(
        self, store: dict[str, Any], k: int, condition_mode: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        block = self.transformer.transformer_blocks[k]
        return mlp_modulation(
            block, store["norm1"], time_embed_parts(store), condition_mode, self.hidden_size
        )
