"""FLUX.1: ``FluxTransformer2DModel`` (19 double + 38 single blocks, d = 3072), CLIP-L + T5.

k is global: 0–18 are the double-stream blocks, 19–56 the single-stream blocks. A double block
is read like SD3's (z = input of ``norm2``, (γ, β) from ``norm1``). A single block has one AdaLN:
z is the input of ``block.norm`` (``AdaLayerNormZeroSingle``) and ẑ its first output; in
diffusers ≥ 0.35 the single block receives text and image separately and concatenates **text
first**, so the image tokens are ``[:, L_txt:]``. (γ, β) = (scale, shift) = chunks 1 and 0 of
``norm.linear(silu(temb))``. The 16-channel latents are packed 2×2 into 64-dim tokens; the
transformer gets σ = t/1000 (it multiplies timestep and guidance by 1000 itself); FLUX.1-dev
takes a guidance value (3.5 in the official code).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import DiTBackbone, TruncatedHead, flow_noise
from .hooks import (
    HookSet,
    mlp_modulation,
    modulation_chunks,
    time_embed_parts,
    watch_time_embeds,
)
from .text import TextCondition

#: FLUX.1-dev's guidance value in the official DiTF code.
DEFAULT_GUIDANCE = 3.5


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``(N, c, H, W)`` latents → ``(N, H/2 · W/2, 4c)`` tokens, row-major over 2×2 patches.

    The channel order within a token is (c, dy, dx), as ``FluxPipeline._pack_latents``.
    """
    n, c, h, w = latents.shape
    x = latents.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // 2) * (w // 2), c * 4)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """RoPE position ids ``(h·w, 3)``: (0, row, col) for each packed token."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device, dtype)


class FluxBackbone(DiTBackbone):
    family = "flux"
    pipeline_class_name = "FluxPipeline"
    transformer_class_name = "FluxTransformer2DModel"

    @staticmethod
    def count_blocks(config: dict[str, Any]) -> int:
        return int(config.get("num_layers", 19)) + int(config.get("num_single_layers", 38))

    @staticmethod
    def truncate(transformer: Any, k: int) -> None:
        n_double = len(transformer.transformer_blocks)
        transformer.transformer_blocks = nn.ModuleList(
            list(transformer.transformer_blocks)[: min(k + 1, n_double)]
        )
        transformer.single_transformer_blocks = nn.ModuleList(
            list(transformer.single_transformer_blocks)[: max(0, k + 1 - n_double)]
        )
        transformer.norm_out = TruncatedHead()
        transformer.proj_out = TruncatedHead()

    @staticmethod
    def text_subfolders() -> list[str]:
        return ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"]

    @staticmethod
    def run_pipeline_encode(
        pipe: Any, prompt: str, device: torch.device, max_sequence_length: int | None
    ) -> TextCondition:
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=max_sequence_length or 512,
        )
        return TextCondition(embeds=embeds, pooled=pooled)

    @property
    def num_double_blocks(self) -> int:
        return int(self.transformer.config.num_layers)

    def noise_latents(self, latents: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        return flow_noise(latents, t, noise)

    def _block(self, k: int) -> Any:
        n_double = self.num_double_blocks
        if k < n_double:
            return self.transformer.transformer_blocks[k]
        return self.transformer.single_transformer_blocks[k - n_double]

    def block_eps(self, k: int) -> float:
        block = self._block(k)
        norm = block.norm2 if k < self.num_double_blocks else block.norm.norm
        return float(norm.eps)

    def model_inputs(
        self,
        noisy_latents: torch.Tensor,
        t: int,
        condition: TextCondition,
        guidance: float | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of the transformer's forward for latents ``(N, 16, h8, w8)``.

        Latents are packed into tokens; the timestep is σ = t/1000 and, for guidance-distilled
        checkpoints (FLUX.1-dev), the guidance value defaults to 3.5.
        """
        n, _, h8, w8 = noisy_latents.shape
        cond = condition.to(self.device, self.dtype)
        if cond.pooled is None:
            raise ValueError("Flux needs the pooled text embedding")
        inputs: dict[str, Any] = {
            "hidden_states": pack_latents(noisy_latents.to(self.device, self.dtype)),
            "encoder_hidden_states": cond.embeds.expand(n, -1, -1),
            "pooled_projections": cond.pooled.expand(n, -1),
            "timestep": torch.full((n,), t / 1000.0, device=self.device, dtype=self.dtype),
            "img_ids": image_ids(h8 // 2, w8 // 2, self.device, self.dtype),
            "txt_ids": torch.zeros(cond.embeds.shape[1], 3, device=self.device, dtype=self.dtype),
            "return_dict": False,
        }
        if self.transformer.config.guidance_embeds:
            value = DEFAULT_GUIDANCE if guidance is None else guidance
            inputs["guidance"] = torch.full((n,), value, device=self.device, dtype=self.dtype)
        return inputs

    def token_grid(self, noisy_latents: torch.Tensor) -> tuple[int, int]:
        """Latents are packed 2×2 into tokens (the transformer's own patch size is 1)."""
        return noisy_latents.shape[-2] // 2, noisy_latents.shape[-1] // 2

    def tap(self, hooks: HookSet, k: int) -> None:
        block = self._block(k)
        watch_time_embeds(hooks, self.transformer.time_text_embed)
        if k >= self.num_double_blocks:
            hooks.save_input_and_stop(block.norm, "norm")
        else:
            hooks.save_output(block.norm1, "norm1")
            hooks.save_input_and_stop(block.norm2, "norm2")

    def block_input(self, store: dict[str, Any], k: int, inputs: dict[str, Any]) -> torch.Tensor:
        """A single block's input is text then image tokens: the image tokens are the tail."""
        if k >= self.num_double_blocks:
            txt_len = inputs["encoder_hidden_states"].shape[1]
            single_z: torch.Tensor = store["norm"][0][0][:, txt_len:]
            return single_z
        return super().block_input(store, k, inputs)

    def modulation(
        self, store: dict[str, Any], k: int, condition_mode: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A single block: (scale, shift, gate) = chunks 1, 0, 2 of ``norm.linear(silu(temb))``."""
        block = self._block(k)
        parts = time_embed_parts(store)
        hidden = self.hidden_size
        if k < self.num_double_blocks:
            return mlp_modulation(block, store["norm1"], parts, condition_mode, hidden)
        args, norm_kwargs = store["norm"]
        emb = norm_kwargs["emb"] if "emb" in norm_kwargs else args[1]
        temb = {"t+c": emb, "t": parts["t"], "c": parts["c"]}[condition_mode]
        beta, gamma, gate = modulation_chunks(block.norm.linear, temb, hidden)
        return gamma, beta, gate
