"""PixArt-α: ``PixArtTransformer2DModel`` (28 blocks, d = 1152), T5 text encoder, SD VAE.

Block k is a ``BasicTransformerBlock`` with ``ada_norm_single``: self-attention, cross-attention
to the text (no norm, no gate), then ``ff(norm2(z) · (1 + scale_mlp) + shift_mlp)``. So z is the
input of ``block.norm2`` and (γ, β) = (scale_mlp, shift_mlp), chunks 4 and 3 of
``scale_shift_table + timestep`` where ``timestep`` is the block's (N, 6·d) AdaLN input. That
AdaLN depends on t plus the resolution/aspect-ratio embedding the 1024 model needs (taken from
the real input size) — never on text, so a ``"c"`` condition is an error here.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .base import DiTBackbone, TruncatedHead
from .hooks import HookSet
from .text import TextCondition


class PixArtBackbone(DiTBackbone):
    family = "pixart"
    pipeline_class_name = "PixArtAlphaPipeline"
    transformer_class_name = "PixArtTransformer2DModel"
    required_subfolders = ("transformer", "vae", "scheduler")
    unavailable_conditions: ClassVar[dict[str, str]] = {
        "c": "condition mode 'c' is not available for PixArt-α: its AdaLN is conditioned on "
        "the timestep (and image size) only; use 't+c' or 't'"
    }

    @staticmethod
    def count_blocks(config: dict[str, Any]) -> int:
        return int(config.get("num_layers", 28))

    @staticmethod
    def truncate(transformer: Any, k: int) -> None:
        transformer.transformer_blocks = nn.ModuleList(
            list(transformer.transformer_blocks)[: k + 1]
        )
        transformer.norm_out = TruncatedHead()
        transformer.proj_out = TruncatedHead()
        del transformer.scale_shift_table  # the output head's modulation

    @staticmethod
    def text_subfolders() -> list[str]:
        return ["text_encoder", "tokenizer"]

    @staticmethod
    def run_pipeline_encode(
        pipe: Any, prompt: str, device: torch.device, max_sequence_length: int | None
    ) -> TextCondition:
        embeds, mask, _, _ = pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=False,
            num_images_per_prompt=1,
            device=device,
            clean_caption=False,
            max_sequence_length=max_sequence_length or 120,
        )
        return TextCondition(embeds=embeds, mask=mask)

    def noise_latents(self, latents: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """DDPM forward process with the model's own β schedule (scheduler config)."""
        scheduler = self._ddpm_scheduler()
        timesteps = torch.full((latents.shape[0],), t, dtype=torch.long)
        noisy: torch.Tensor = scheduler.add_noise(
            latents.float().cpu(), noise.float().cpu(), timesteps
        )
        return noisy.to(latents.device, latents.dtype)

    def _ddpm_scheduler(self) -> Any:
        from diffusers import DDPMScheduler

        if getattr(self, "_ddpm", None) is None:
            keys = (
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
            )
            config = {k: self.scheduler_config[k] for k in keys if k in self.scheduler_config}
            self._ddpm = DDPMScheduler(**config)
        return self._ddpm

    def block_eps(self, k: int) -> float:
        return float(self.transformer.transformer_blocks[k].norm2.eps)

    def model_inputs(
        self,
        noisy_latents: torch.Tensor,
        t: int,
        condition: TextCondition,
        guidance: float | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of the transformer's forward for these latents ``(N, 4, h8, w8)``.

        The resolution/aspect-ratio condition is the real input size in pixels, as the
        PixArt-α pipeline passes it to the 1024 model.
        """
        n, _, h8, w8 = noisy_latents.shape
        cond = condition.to(self.device, self.dtype)
        added: dict[str, torch.Tensor | None] = {"resolution": None, "aspect_ratio": None}
        if self.transformer.use_additional_conditions:
            height, width = h8 * 8, w8 * 8
            added = {
                "resolution": torch.tensor([[height, width]], dtype=self.dtype).repeat(n, 1),
                "aspect_ratio": torch.tensor([[height / width]], dtype=self.dtype).repeat(n, 1),
            }
            added = {key: v.to(self.device) for key, v in added.items() if v is not None}
        return {
            "hidden_states": noisy_latents.to(self.device, self.dtype),
            "encoder_hidden_states": cond.embeds.expand(n, -1, -1),
            "encoder_attention_mask": None if cond.mask is None else cond.mask.expand(n, -1),
            "timestep": torch.full((n,), float(t), device=self.device, dtype=self.dtype),
            "added_cond_kwargs": added,
            "return_dict": False,
        }

    def tap(self, hooks: HookSet, k: int) -> None:
        block = self.transformer.transformer_blocks[k]
        hooks.save_input(block, "block")
        hooks.save_input_and_stop(block.norm2, "norm2")

    def modulation(
        self, store: dict[str, Any], k: int, condition_mode: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scale_mlp, shift_mlp, gate_mlp): chunks 4, 3, 5 of the table plus the block's AdaLN."""
        block = self.transformer.transformer_blocks[k]
        block_timestep = store["block"][1]["timestep"]
        n = block_timestep.shape[0]
        chunks = (block.scale_shift_table[None] + block_timestep.reshape(n, 6, -1)).chunk(6, dim=1)
        return chunks[4][:, 0], chunks[3][:, 0], chunks[5][:, 0]
