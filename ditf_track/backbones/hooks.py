"""Forward hooks that read block k of a stock transformer and stop its forward there.

Used by every DiT family and by DINOv2: no forward pass is re-implemented, and the blocks after
k never run.

Also the modulation helpers the AdaLN-zero families (SD3, Flux) share: the (γ, β, α) of a block
for a condition mode, from the block's own ``norm1`` output or its modulation MLP applied to one
part of the conditioning embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class StopForward(Exception):
    """Raised by the block-k hook to end the forward pass; :meth:`HookSet.run` catches it."""


class HookSet:
    """Forward hooks registered for one capture and always removed afterwards."""

    def __init__(self) -> None:
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.store: dict[str, Any] = {}

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def save_output(self, module: nn.Module, key: str) -> None:
        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            self.store[key] = output

        self.handles.append(module.register_forward_hook(hook))

    def save_output_and_stop(self, module: nn.Module, key: str) -> None:
        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            self.store[key] = output
            raise StopForward

        self.handles.append(module.register_forward_hook(hook))

    def save_input_and_stop(self, module: nn.Module, key: str) -> None:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.store[key] = (args, kwargs)
            raise StopForward

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def save_input(self, module: nn.Module, key: str) -> None:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.store[key] = (args, kwargs)

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def run(self, fn: Callable[[], Any]) -> None:
        """Call the model; the stop hook must fire, else block k was never reached."""
        try:
            fn()
        except StopForward:
            return
        raise RuntimeError("the forward finished without reaching block k's hook")


def modulation_chunks(
    linear: nn.Linear, temb: torch.Tensor, hidden: int
) -> tuple[torch.Tensor, ...]:
    """Split an AdaLN-zero modulation MLP's output ``linear(silu(temb))`` into its chunks."""
    out = linear(torch.nn.functional.silu(temb))
    return out.chunk(out.shape[-1] // hidden, dim=1)


def mlp_modulation(
    block: Any,
    norm1_output: tuple[torch.Tensor, ...],
    time_embeds: dict[str, torch.Tensor],
    condition_mode: str,
    hidden: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(γ, β, α) = (scale_mlp, shift_mlp, gate_mlp) of an AdaLN-zero block, for the condition.

    ``"t+c"`` takes them from the block's ``norm1`` output (x, gate_msa, shift_mlp, scale_mlp,
    gate_mlp, ...) as the forward computed them; ``"t"`` and ``"c"`` apply ``norm1.linear`` to
    the timestep (+ guidance) or pooled-text embedding alone. Chunks 3, 4, 5 are shift_mlp,
    scale_mlp, gate_mlp in both the 6- and the 9-chunk (dual attention) layouts.
    """
    if condition_mode == "t+c":
        return norm1_output[3], norm1_output[2], norm1_output[4]
    temb = time_embeds["t"] if condition_mode == "t" else time_embeds["c"]
    chunks = modulation_chunks(block.norm1.linear, temb, hidden)
    return chunks[4], chunks[3], chunks[5]


def watch_time_embeds(hooks: HookSet, time_text_embed: Any) -> None:
    """Keep the timestep, guidance and pooled-text parts of ``temb`` for the ablations."""
    hooks.save_output(time_text_embed.timestep_embedder, "t_emb")
    hooks.save_output(time_text_embed.text_embedder, "c_emb")
    if hasattr(time_text_embed, "guidance_embedder"):
        hooks.save_output(time_text_embed.guidance_embedder, "g_emb")


def time_embed_parts(store: dict[str, Any]) -> dict[str, torch.Tensor]:
    t_part = store["t_emb"] + store["g_emb"] if "g_emb" in store else store["t_emb"]
    return {"t": t_part, "c": store["c_emb"]}
