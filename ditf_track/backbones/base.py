"""The backbone protocol every DiT family answers, and what the families share.

A backbone loads a DiT from a hub id or a local folder in the hub's layout, encodes images to
latents, noises them for timestep t, builds the (cached) text condition, and runs the stock
diffusers transformer **up to block k only**, returning the pre-AdaLN feature z of block k and
that block's own modulation (γ, β). It never re-implements a forward pass: forward hooks on the
real blocks read the tensors and a private exception stops the forward once block k is read
(:mod:`.hooks`).

Loading is lean: the transformer is built without weights (``accelerate.init_empty_weights``),
its block list cut to blocks 0..k, and only the tensors of what remains are read from the
safetensors shards (only the shards that hold them are downloaded), straight to the device
(:mod:`ditf_track.hub`). Text encoders load only on a text-cache miss (:mod:`.text`).
"""

from __future__ import annotations

import functools
import gc
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..cache import text_cache_dir
from ..errors import ConfigError, ModelLoadError
from ..hub import ModelSource, folder_fingerprint, load_truncated_weights, quiet_loading
from .hooks import HookSet
from .text import TextCondition, TextConditioner

#: Token stride in pixels of every supported DiT: an 8× VAE and 2×2 patches.
TOKEN_STRIDE = 16


@dataclass
class BlockCapture:
    """What the hooks read at block k for a batch of N images.

    ``z`` ``(N, h·w, C)``: the pre-AdaLN image-token feature, row-major on the token grid
    ``grid`` = (h, w). ``gamma``/``beta`` ``(N, C)``: the block's own scale and shift for the
    requested condition mode; ``gate`` ``(N, C)``: the residual gate α of the same AdaLN
    (paper Fig. 3). ``eps``: the block's LayerNorm epsilon.
    """

    z: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    gate: torch.Tensor
    grid: tuple[int, int]
    eps: float


@dataclass(frozen=True)
class BackbonePlan:
    """A backbone before its weights load: what the model's config says (family, described id,
    block count, channel width) and how it would be placed (device, dtype). Enough for an
    extractor's identity and checks, so a process that never extracts (a Ray driver) loads no
    model; ``load()`` gives the :class:`DiTBackbone`."""

    family: str
    model_id: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype
    k_max: int
    num_blocks: int
    hidden_size: int
    load: Callable[[], DiTBackbone]


class TruncatedHead(nn.Module):
    """Stands in for a module after block k, which a DiTF forward never reaches."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError("this transformer was truncated after block k; its head is not loaded")


def flow_noise(latents: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """Rectified-flow interpolation at σ = t/1000, without a resolution shift (official code)."""
    sigma = t / 1000.0
    return (1.0 - sigma) * latents + sigma * noise.to(latents.device, latents.dtype)


class DiTBackbone(ABC):
    """One DiT family. Subclasses say how to cut, hook and feed their transformer.

    Construct with :meth:`load` (hub id or folder) or directly from modules (benchmarks build
    full-size architectures with random weights). Images are ``(N, 3, H, W)`` floats in
    [-1, 1] with H, W multiples of :data:`TOKEN_STRIDE`.
    """

    family: ClassVar[str]
    #: diffusers pipeline class name used to encode prompts (text encoders + tokenizers only).
    pipeline_class_name: ClassVar[str]
    transformer_class_name: ClassVar[str]
    #: subfolders a local model folder must have for feature extraction.
    required_subfolders: ClassVar[tuple[str, ...]] = ("transformer", "vae")
    stride: int = TOKEN_STRIDE
    #: condition modes this family's AdaLN cannot separate → the one-line error saying so.
    unavailable_conditions: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        *,
        k_max: int,
        num_blocks: int,
        model_id: str,
        revision: str | None = None,
        conditioner: TextConditioner | None = None,
        scheduler_config: dict[str, Any] | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        # diffusers modules are dynamically typed; Any keeps mypy honest about what it can check.
        self.transformer: Any = transformer.eval().requires_grad_(False)
        self.vae: Any = vae.eval().requires_grad_(False)
        self.k_max = k_max
        self.num_blocks = num_blocks
        self.model_id = model_id
        self.revision = revision
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.scheduler_config = scheduler_config or {}
        self.conditioner = conditioner

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def _checked_config(
        cls,
        model: str | os.PathLike[str],
        k: int,
        revision: str | None,
        local_files_only: bool | None,
        hub_cache_dir: str | os.PathLike[str] | None,
    ) -> tuple[ModelSource, dict[str, Any], int]:
        """The model's source, its transformer config and block count, checked against this
        family and ``k`` (the config file only: fails before any weight is read)."""
        source = ModelSource(
            model, revision=revision, local_files_only=local_files_only, cache_dir=hub_cache_dir
        )
        source.require_subfolders(list(cls.required_subfolders))
        config = source.load_config("transformer")
        if config.get("_class_name") not in (None, cls.transformer_class_name):
            raise ModelLoadError(
                f"{source.describe()} holds a {config.get('_class_name')}, not the "
                f"{cls.transformer_class_name} of family {cls.family!r}; pass the right --family"
            )
        num_blocks = cls.count_blocks(config)
        if not 0 <= k < num_blocks:
            raise ConfigError(
                f"block index k={k} is out of range for {source.describe()}, which has "
                f"{num_blocks} blocks; pick k in 0..{num_blocks - 1}"
            )
        return source, config, num_blocks

    @classmethod
    def plan(
        cls,
        model: str | os.PathLike[str],
        *,
        k: int,
        revision: str | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        hub_cache_dir: str | os.PathLike[str] | None = None,
        max_sequence_length: int | None = None,
        prompts: tuple[str, ...] = ("",),
    ) -> BackbonePlan:
        """What :meth:`load` would load, from the transformer's config alone (no weight read):
        the checks of the model and ``k``, and what an extractor's identity needs. Its
        ``load()`` loads the backbone with these arguments."""
        # A file given as the cache folder fails here, before any download.
        text_folder = text_cache_dir(cache_dir)
        device = device or torch.device("cpu")
        source, config, num_blocks = cls._checked_config(
            model, k, revision, local_files_only, hub_cache_dir
        )
        return BackbonePlan(
            family=cls.family,
            model_id=source.describe(),
            revision=revision,
            device=device,
            dtype=dtype,
            k_max=k,
            num_blocks=num_blocks,
            hidden_size=int(config["num_attention_heads"] * config["attention_head_dim"]),
            load=functools.partial(
                cls._load_planned,
                source,
                config,
                num_blocks,
                k=k,
                revision=revision,
                device=device,
                dtype=dtype,
                text_folder=text_folder,
                max_sequence_length=max_sequence_length,
                prompts=prompts,
            ),
        )

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str],
        *,
        k: int,
        revision: str | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        hub_cache_dir: str | os.PathLike[str] | None = None,
        max_sequence_length: int | None = None,
        prompts: tuple[str, ...] = ("",),
    ) -> DiTBackbone:
        """Load blocks 0..k of the transformer and the VAE encoder from a hub id or folder.

        ``prompts`` are encoded first (text cache, else the text encoders, loaded once for all
        of them, then released), so the text encoders and the transformer are never on the
        device together.
        """
        return cls.plan(
            model,
            k=k,
            revision=revision,
            device=device,
            dtype=dtype,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            hub_cache_dir=hub_cache_dir,
            max_sequence_length=max_sequence_length,
            prompts=prompts,
        ).load()

    @classmethod
    def _load_planned(
        cls,
        source: ModelSource,
        config: dict[str, Any],
        num_blocks: int,
        *,
        k: int,
        revision: str | None,
        device: torch.device,
        dtype: torch.dtype,
        text_folder: Path,
        max_sequence_length: int | None,
        prompts: tuple[str, ...],
    ) -> DiTBackbone:
        """:meth:`load` once :meth:`plan` has read and checked the config."""

        def encode_text(prompts: Sequence[str]) -> list[TextCondition]:
            return cls.encode_prompts_with_pipeline(
                source, prompts, device=device, dtype=dtype, max_sequence_length=max_sequence_length
            )

        conditioner = TextConditioner(
            {
                "family": cls.family,
                "model": source.describe(),
                "model_files": folder_fingerprint(source.describe()),
                "revision": revision,
                "max_sequence_length": max_sequence_length,
            },
            None,
            text_folder,
            encode_many=encode_text,
        )
        conditioner.ensure(prompts)
        # diffusers takes seconds to import: only after the config came (or failed to come).
        import diffusers
        from accelerate import init_empty_weights

        with init_empty_weights():
            transformer = getattr(diffusers, cls.transformer_class_name).from_config(config)
        cls.truncate(transformer, k)
        load_truncated_weights(transformer, source, "transformer", device, dtype)
        vae = cls._load_vae(source, device)
        scheduler_config: dict[str, Any] = {}
        if source.has_file("scheduler", "scheduler_config.json"):
            scheduler_config = json.loads(
                source.file("scheduler", "scheduler_config.json").read_text("utf-8")
            )
        return cls(
            transformer,
            vae,
            k_max=k,
            num_blocks=num_blocks,
            model_id=source.describe(),
            revision=revision,
            conditioner=conditioner,
            scheduler_config=scheduler_config,
            device=device,
            dtype=dtype,
        )

    @staticmethod
    def _load_vae(source: ModelSource, device: torch.device) -> nn.Module:
        """The VAE in float32 (its encoder is small; the official code runs it in fp32 too)."""
        from diffusers import AutoencoderKL

        with source.load_errors("vae/", ["vae"]), quiet_loading():
            vae = AutoencoderKL.from_pretrained(
                source.path_or_id,
                subfolder="vae",
                dtype=torch.float32,
                **source.pretrained_kwargs(),
            )
        vae.decoder = None  # only encode() is used; frees ~2/3 of the VAE
        vae.post_quant_conv = None
        return vae.to(device)

    @classmethod
    def encode_prompt_with_pipeline(
        cls,
        source: ModelSource,
        prompt: str,
        *,
        device: torch.device,
        dtype: torch.dtype,
        max_sequence_length: int | None,
    ) -> TextCondition:
        """Load the pipeline's text encoders and tokenizers only, encode, and release them."""
        return cls.encode_prompts_with_pipeline(
            source, [prompt], device=device, dtype=dtype, max_sequence_length=max_sequence_length
        )[0]

    @classmethod
    def encode_prompts_with_pipeline(
        cls,
        source: ModelSource,
        prompts: Sequence[str],
        *,
        device: torch.device,
        dtype: torch.dtype,
        max_sequence_length: int | None,
    ) -> list[TextCondition]:
        """Load the text encoders once, encode each of ``prompts`` (batch 1 each, so every
        condition equals a lone encoding), and release them."""
        import diffusers

        pipeline_cls = getattr(diffusers, cls.pipeline_class_name)
        text_folders = cls.text_subfolders()
        source.require_subfolders(text_folders)
        kwargs = source.pretrained_kwargs()
        quiet = kwargs["local_files_only"] or source.is_local  # no download bar to keep
        with source.load_errors("text encoders", text_folders), quiet_loading(bars=quiet):
            pipe = pipeline_cls.from_pretrained(
                source.path_or_id,
                transformer=None,
                vae=None,
                dtype=dtype,
                **kwargs,
            )
        try:
            pipe.set_progress_bar_config(disable=True)
            for name in text_folders:
                if name.startswith("text_encoder"):
                    getattr(pipe, name).to(device)
            with torch.inference_mode():
                return [
                    cls.run_pipeline_encode(pipe, prompt, device, max_sequence_length)
                    for prompt in prompts
                ]
        finally:
            del pipe
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    # -- family specifics --------------------------------------------------------------------
    @staticmethod
    @abstractmethod
    def count_blocks(config: dict[str, Any]) -> int:
        """Number of transformer blocks (global index range) from the transformer config."""

    @staticmethod
    @abstractmethod
    def truncate(transformer: Any, k: int) -> None:
        """Keep blocks 0..k (and the embedders) only; replace the head by :class:`TruncatedHead`."""

    @staticmethod
    @abstractmethod
    def text_subfolders() -> list[str]:
        """The text encoder/tokenizer subfolders the pipeline needs."""

    @staticmethod
    @abstractmethod
    def run_pipeline_encode(
        pipe: Any, prompt: str, device: torch.device, max_sequence_length: int | None
    ) -> TextCondition:
        """Call the pipeline's own ``encode_prompt`` and keep what the transformer takes."""

    @abstractmethod
    def noise_latents(self, latents: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """``z_t`` for timestep ``t`` from clean latents ``z_0`` and Gaussian ``noise``."""

    @abstractmethod
    def model_inputs(
        self,
        noisy_latents: torch.Tensor,
        t: int,
        condition: TextCondition,
        guidance: float | None = None,
    ) -> dict[str, Any]:
        """The transformer forward's keyword arguments; ``capture`` and tests use the same."""

    @abstractmethod
    def tap(self, hooks: HookSet, k: int) -> None:
        """Hook block k: save what z and the modulation are read from; the last hook stops."""

    def block_input(self, store: dict[str, Any], k: int, inputs: dict[str, Any]) -> torch.Tensor:
        """z ``(N, h·w, C)``: block k's image tokens before its AdaLN, from the hook store.

        In every family's (double) block that is the input of ``norm2``, which :meth:`tap`
        saves under ``"norm2"``; Flux's single blocks override it.
        """
        z: torch.Tensor = store["norm2"][0][0]
        return z

    @abstractmethod
    def modulation(
        self, store: dict[str, Any], k: int, condition_mode: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(γ, β, α) ``(N, C)`` each: block k's scale, shift and gate for ``condition_mode``."""

    @abstractmethod
    def block_eps(self, k: int) -> float:
        """The LayerNorm epsilon block k applies before its modulation."""

    # -- shared ------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(
            self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim
        )

    def token_grid(self, noisy_latents: torch.Tensor) -> tuple[int, int]:
        """(h, w) token grid of latents ``(N, c, H/8, W/8)``: one token per patch."""
        patch = int(self.transformer.config.patch_size)
        return noisy_latents.shape[-2] // patch, noisy_latents.shape[-1] // patch

    @torch.inference_mode()
    def capture(
        self,
        noisy_latents: torch.Tensor,
        t: int,
        condition: TextCondition,
        k: int,
        condition_mode: str = "t+c",
        guidance: float | None = None,
    ) -> BlockCapture:
        """Run blocks 0..k on ``noisy_latents`` ``(N, c, H/8, W/8)`` and read block k.

        The same steps for every family: check the request, run the stock forward with the
        family's hooks (:meth:`tap`) until block k, then read z and the modulation from what the
        hooks saved. The hooks are removed before anything is read.
        """
        if condition_mode in self.unavailable_conditions:
            raise ConfigError(self.unavailable_conditions[condition_mode])
        self.check_k(k)
        inputs = self.model_inputs(noisy_latents, t, condition, guidance)
        with HookSet() as hooks:
            self.tap(hooks, k)
            hooks.run(lambda: self.transformer(**inputs))
        store = hooks.store
        gamma, beta, gate = self.modulation(store, k, condition_mode)
        return BlockCapture(
            z=self.block_input(store, k, inputs),
            gamma=gamma,
            beta=beta,
            gate=gate,
            grid=self.token_grid(noisy_latents),
            eps=self.block_eps(k),
        )

    def check_k(self, k: int) -> None:
        if not 0 <= k <= self.k_max:
            raise ConfigError(
                f"block index k={k} was not loaded (blocks 0..{self.k_max} are); "
                f"load the model with k={k}"
                if k < self.num_blocks
                else f"block index k={k} is out of range; the model has {self.num_blocks} blocks "
                f"(pick k in 0..{self.num_blocks - 1})"
            )

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latent means of ``pixels`` ``(N, 3, H, W)`` in [-1, 1], with scaling and shift."""
        return self.encode_posterior(pixels)[0]

    @torch.inference_mode()
    def encode_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior of ``pixels`` ``(N, 3, H, W)`` in [-1, 1] in the transformer's
        latent space: (mean, std), each ``(N, c, H/8, W/8)`` float32 with scaling and shift
        applied, so a posterior sample is ``mean + std · ε`` (as ``latent_dist.sample()``)."""
        config = self.vae.config
        dist = self.vae.encode(pixels.to(self.device, torch.float32)).latent_dist
        shift = getattr(config, "shift_factor", None) or 0.0
        return (dist.mean - shift) * config.scaling_factor, dist.std * config.scaling_factor

    def prepare_conditions(self, prompts: Iterable[str]) -> list[str]:
        """Encode every uncached prompt of ``prompts`` in one pass (one text-encoder load; on a
        CUDA device the transformer steps aside once); return those encoded."""
        wanted = list(dict.fromkeys(prompts))
        if self.conditioner is None:
            for prompt in wanted[:1]:
                self.condition(prompt)  # the one-line error: no text encoder
            return []
        todo = self.conditioner.missing(wanted)
        if not todo:
            return []
        if self.device.type != "cuda":
            return self.conditioner.ensure(todo)
        self.transformer.to("cpu")
        torch.cuda.empty_cache()
        try:
            return self.conditioner.ensure(todo)
        finally:
            self.transformer.to(self.device)

    def condition(self, prompt: str) -> TextCondition:
        """The text condition for ``prompt`` on this backbone's device and dtype.

        On a text-cache miss on a CUDA device the transformer steps aside to the CPU while the
        text encoders run, so a new prompt never needs room for both at once.
        """
        if self.conditioner is None:
            raise ConfigError(
                f"no text encoder is available to encode the prompt {prompt!r}; load the "
                "model from a hub id or folder that has its text encoders"
            )
        if self.device.type == "cuda" and not self.conditioner.is_cached(prompt):
            self.transformer.to("cpu")
            torch.cuda.empty_cache()
            try:
                cond = self.conditioner.get(prompt)
            finally:
                self.transformer.to(self.device)
        else:
            cond = self.conditioner.get(prompt)
        return cond.to(self.device, self.dtype)
