"""The backbone protocol every DiT family answers, and what the families share.

A backbone loads a DiT from a hub id or a local folder in the hub's layout, encodes images to
latents, noises them for timestep t, builds the (cached) text condition, and runs the stock
diffusers transformer **up to block k only**, returning the pre-AdaLN feature z of block k and
that block's own modulation (γ, β). It never re-implements a forward pass: forward hooks on the
real blocks read the tensors and a private exception stops the forward once block k is read.

Loading is lean: the transformer is built without weights (``accelerate.init_empty_weights``),
its block list cut to blocks 0..k, and only the tensors of what remains are read from the
safetensors shards (only the shards that hold them are downloaded), straight to the device.
Text encoders (T5-XXL is ~9.5 GB) load only when a prompt's embedding is not in the on-disk
text cache, and are released right after.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

#: Token stride in pixels of every supported DiT: an 8× VAE and 2×2 patches.
TOKEN_STRIDE = 16


class StopForward(Exception):
    """Raised by the block-k hook to end the forward pass; never escapes a backbone."""


@dataclass
class TextCondition:
    """Text embeddings for one prompt, batch 1: what the transformer's forward takes.

    ``embeds`` ``(1, L, D)`` are the token embeddings (``encoder_hidden_states``); ``pooled``
    ``(1, P)`` the pooled embedding that conditions the AdaLN (SD3/Flux); ``mask`` ``(1, L)``
    the attention mask (PixArt).
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def to(self, device: torch.device, dtype: torch.dtype) -> TextCondition:
        return TextCondition(
            self.embeds.to(device, dtype),
            None if self.pooled is None else self.pooled.to(device, dtype),
            None if self.mask is None else self.mask.to(device),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"embeds": self.embeds}
        if self.pooled is not None:
            out["pooled"] = self.pooled
        if self.mask is not None:
            out["mask"] = self.mask
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}


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


class ModelSource:
    """Where a model's files come from: a local folder in the hub's layout, or a hub id.

    ``local_files_only`` (or ``HF_HUB_OFFLINE=1``) never touches the network; a hub id is then
    served from the local Hugging Face cache. Every hub failure becomes one actionable
    :class:`ModelLoadError` line.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        revision: str | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model = str(model)
        self.revision = revision
        offline_env = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        self.local_files_only = bool(local_files_only) or offline_env
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        path = Path(self.model).expanduser()
        self.folder: Path | None = path.resolve() if path.is_dir() else None
        if self.folder is None and (
            self.model.startswith((".", "/", "~"))
            or os.sep in self.model.strip("/").replace("/", "", 1)
        ):
            raise ModelLoadError(
                f"model folder {self.model!r} does not exist; pass an existing folder in the "
                "hub's layout (transformer/, vae/, text_encoder*/, tokenizer*/, scheduler/) "
                "or a hub id such as PixArt-alpha/PixArt-XL-2-1024-MS"
            )

    @property
    def is_local(self) -> bool:
        return self.folder is not None

    def describe(self) -> str:
        return str(self.folder) if self.folder is not None else self.model

    def require_subfolders(self, names: list[str]) -> None:
        """Fail early, naming the first missing subfolder of a local model folder."""
        if self.folder is None:
            return
        for name in names:
            if not (self.folder / name).is_dir():
                raise ModelLoadError(
                    f"model folder {self.folder} has no {name}/ subfolder; a model folder must "
                    "have the hub's layout (e.g. from `hf download <id> --local-dir DIR`)"
                )

    def file(self, subfolder: str, filename: str) -> Path:
        """Path of ``subfolder/filename``, downloading it (or taking it from the cache)."""
        if self.folder is not None:
            path = self.folder / subfolder / filename
            if not path.is_file():
                raise ModelLoadError(
                    f"model folder {self.folder} lacks {subfolder}/{filename}; is it a complete "
                    "diffusers-format checkpoint?"
                )
            return path
        with self.hub_errors(f"{subfolder}/{filename}"):
            return self._download(subfolder, filename)

    def has_file(self, subfolder: str, filename: str) -> bool:
        """Whether the model has this file (for a hub id: downloads it when it does)."""
        if self.folder is not None:
            return (self.folder / subfolder / filename).is_file()
        from huggingface_hub import errors as hub

        with self.hub_errors(f"{subfolder}/{filename}"):
            try:
                self._download(subfolder, filename)
            except hub.EntryNotFoundError:  # absent remotely, or not in the offline cache
                return False
        return True

    def _download(self, subfolder: str, filename: str) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(
                self.model,
                filename,
                subfolder=subfolder,
                revision=self.revision,
                cache_dir=self.cache_dir,
                local_files_only=self.local_files_only,
            )
        )

    def load_config(self, subfolder: str) -> dict[str, Any]:
        path = self.file(subfolder, "config.json")
        try:
            config: dict[str, Any] = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot read {path} ({exc}); re-download the model") from exc
        return config

    def pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a diffusers/transformers ``from_pretrained`` call."""
        kwargs: dict[str, Any] = {"local_files_only": self.local_files_only}
        if self.folder is None:
            kwargs["revision"] = self.revision
            if self.cache_dir is not None:
                kwargs["cache_dir"] = self.cache_dir
        return kwargs

    @property
    def path_or_id(self) -> str:
        return str(self.folder) if self.folder is not None else self.model

    @contextlib.contextmanager
    def hub_errors(self, what: str) -> Iterator[None]:
        """Map Hugging Face Hub failures to one actionable line naming the model."""
        from huggingface_hub import errors as hub

        mid = self.model
        try:
            yield
        except hub.GatedRepoError as exc:
            raise ModelLoadError(
                f"model {mid!r} is gated: accept its licence on https://huggingface.co/{mid} "
                "and log in with `hf auth login` (or set HF_TOKEN), then run again"
            ) from exc
        except hub.RevisionNotFoundError as exc:
            raise ModelLoadError(
                f"revision {self.revision!r} of model {mid!r} does not exist; check --revision"
            ) from exc
        except hub.RepositoryNotFoundError as exc:
            raise ModelLoadError(
                f"model {mid!r} was not found on the Hugging Face Hub (or is private); check the "
                "id, log in with `hf auth login` for a private model, or pass a local folder"
            ) from exc
        except hub.LocalEntryNotFoundError as exc:
            raise ModelLoadError(
                f"model {mid!r} ({what}) is not in the local Hugging Face cache and offline mode "
                "is on (HF_HUB_OFFLINE / --local-files-only); download it once with network "
                "access, or pass a local folder in the hub's layout"
            ) from exc
        except hub.EntryNotFoundError as exc:
            raise ModelLoadError(
                f"model {mid!r} has no file {what}; is it a diffusers-format repository of "
                "this family (pass --family to choose another)?"
            ) from exc
        except (hub.HfHubHTTPError, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ModelLoadError(
                f"could not fetch {what} of model {mid!r} from the Hugging Face Hub ({exc}); "
                "check the network, or use --local-files-only with a cached model or a folder"
            ) from exc


class _Truncated(nn.Module):
    """Stands in for a module after block k, which a DiTF forward never reaches."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError("this transformer was truncated after block k; its head is not loaded")


def _weight_files(source: ModelSource, subfolder: str, needed: set[str]) -> dict[Path, list[str]]:
    """Map the shard files that hold ``needed`` keys to those keys; fetch only those shards."""
    index_name = "diffusion_pytorch_model.safetensors.index.json"
    single = "diffusion_pytorch_model.safetensors"
    if source.has_file(subfolder, index_name):
        index = json.loads(source.file(subfolder, index_name).read_text("utf-8"))
        weight_map: dict[str, str] = index["weight_map"]
        missing = sorted(needed - set(weight_map))
        if missing:
            raise ModelLoadError(
                f"{source.describe()}/{subfolder} weights lack {missing[0]} (and "
                f"{len(missing) - 1} more); is it a complete checkpoint of this family?"
            )
        by_file: dict[str, list[str]] = {}
        for key in sorted(needed):
            by_file.setdefault(weight_map[key], []).append(key)
        return {source.file(subfolder, name): keys for name, keys in by_file.items()}
    return {source.file(subfolder, single): sorted(needed)}


def load_truncated_weights(
    model: nn.Module,
    source: ModelSource,
    subfolder: str,
    device: torch.device,
    dtype: torch.dtype,
) -> list[str]:
    """Materialise ``model``'s meta parameters from the checkpoint, tensor by tensor.

    Only the keys ``model`` still has are read (``safe_open`` reads tensors lazily), each cast
    to ``dtype`` and placed on ``device`` directly, so peak memory is about the kept weights.
    Buffers (built on the CPU by the constructor) are moved to ``device``. Returns the keys read.
    """
    from accelerate.utils import set_module_tensor_to_device
    from safetensors import safe_open

    needed = {name for name, p in model.named_parameters() if p.is_meta}
    files = _weight_files(source, subfolder, needed)
    read: list[str] = []
    open_device = "cpu" if device.type != "cuda" else str(device)
    for path, keys in files.items():
        with safe_open(str(path), framework="pt", device=open_device) as f:
            present = set(f.keys())
            for key in keys:
                if key not in present:
                    raise ModelLoadError(
                        f"{path} lacks tensor {key}; is it a complete checkpoint of this family?"
                    )
                tensor = f.get_tensor(key)
                set_module_tensor_to_device(model, key, device, value=tensor.to(dtype))
                read.append(key)
    for name, buf in list(model.named_buffers()):
        if buf.device != device:
            set_module_tensor_to_device(model, name, device, value=buf)
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:
        raise ModelLoadError(f"{source.describe()}/{subfolder}: tensor {left[0]} was not loaded")
    return read


def text_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where text embeddings are cached: ``cache_dir/text``, default ``~/.cache/ditf-track``."""
    root = cache_dir or os.environ.get("DITF_TRACK_CACHE") or Path.home() / ".cache" / "ditf-track"
    return Path(root).expanduser() / "text"


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

        ``prompts`` are encoded first (text cache, else the text encoders, then released), so
        the text encoders and the transformer are never on the device together.
        """
        import diffusers
        from accelerate import init_empty_weights

        device = device or torch.device("cpu")
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

        def encode_text(prompt: str) -> TextCondition:
            return cls.encode_prompt_with_pipeline(
                source, prompt, device=device, dtype=dtype, max_sequence_length=max_sequence_length
            )

        conditioner = TextConditioner(
            {
                "family": cls.family,
                "model": source.describe(),
                "model_files": folder_fingerprint(source.describe()),
                "revision": revision,
                "max_sequence_length": max_sequence_length,
            },
            encode_text,
            text_cache_dir(cache_dir),
        )
        for prompt in prompts:
            conditioner.get(prompt)
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

        with source.hub_errors("vae/"):
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
        import diffusers

        pipeline_cls = getattr(diffusers, cls.pipeline_class_name)
        text_folders = cls.text_subfolders()
        source.require_subfolders(text_folders)
        with source.hub_errors("text encoders"):
            pipe = pipeline_cls.from_pretrained(
                source.path_or_id,
                transformer=None,
                vae=None,
                dtype=dtype,
                **source.pretrained_kwargs(),
            )
        try:
            pipe.set_progress_bar_config(disable=True)
            for name in text_folders:
                if name.startswith("text_encoder"):
                    getattr(pipe, name).to(device)
            with torch.inference_mode():
                return cls.run_pipeline_encode(pipe, prompt, device, max_sequence_length)
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
        """Keep blocks 0..k (and the embedders) only; replace the head by :class:`_Truncated`."""

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
    def capture(
        self,
        noisy_latents: torch.Tensor,
        t: int,
        condition: TextCondition,
        k: int,
        condition_mode: str = "t+c",
        guidance: float | None = None,
    ) -> BlockCapture:
        """Run blocks 0..k on ``noisy_latents`` ``(N, c, H/8, W/8)`` and read block k."""

    @abstractmethod
    def block_eps(self, k: int) -> float:
        """The LayerNorm epsilon block k applies before its modulation."""

    # -- shared ------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(
            self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim
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
        config = self.vae.config
        dist = self.vae.encode(pixels.to(self.device, torch.float32)).latent_dist
        latents = dist.mean
        shift = getattr(config, "shift_factor", None) or 0.0
        return (latents - shift) * config.scaling_factor

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


class TextConditioner:
    """Prompt → :class:`TextCondition`, cached in memory and on disk (safetensors).

    The disk key is the family, model id (for a folder: its path and text-encoder files),
    revision, prompt and sequence length. ``encode`` (which loads the text encoders) runs only
    on a miss; ``encoder_loads`` counts those runs.
    """

    def __init__(
        self,
        key: dict[str, Any],
        encode: Callable[[str], TextCondition] | None,
        cache_dir: Path | None,
    ) -> None:
        self.key = key
        self.encode = encode
        self.cache_dir = cache_dir
        self.memory: dict[str, TextCondition] = {}
        self.encoder_loads = 0

    def path(self, prompt: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps({**self.key, "prompt": prompt}, sort_keys=True)
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"

    def is_cached(self, prompt: str) -> bool:
        path = self.path(prompt)
        return prompt in self.memory or (path is not None and path.is_file())

    def put(self, prompt: str, cond: TextCondition) -> None:
        self.memory[prompt] = cond

    def get(self, prompt: str) -> TextCondition:
        if prompt in self.memory:
            return self.memory[prompt]
        cond = self._read(prompt)
        if cond is None:
            if self.encode is None:
                raise ConfigError(
                    f"the prompt {prompt!r} is not cached and no text encoder is available; "
                    "load the model from a hub id or folder that has its text encoders"
                )
            self.encoder_loads += 1
            cond = self.encode(prompt)
            self._write(prompt, cond)
        self.memory[prompt] = cond
        return cond

    def _read(self, prompt: str) -> TextCondition | None:
        path = self.path(prompt)
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
            return TextCondition(tensors["embeds"], tensors.get("pooled"), tensors.get("mask"))
        except Exception:  # a truncated or corrupt cache file is recomputed
            log.warning("text cache file %s is unreadable; re-encoding the prompt", path)
            return None

    def _write(self, prompt: str, cond: TextCondition) -> None:
        path = self.path(prompt)
        if path is None:
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        meta = {k: str(v) for k, v in self.key.items()} | {"prompt": prompt}
        save_file(cond.tensors(), str(tmp), metadata=meta)
        os.replace(tmp, path)


def folder_fingerprint(
    model_id: str, patterns: tuple[str, ...] = ("text_encoder*", "tokenizer*")
) -> str | None:
    """For a local folder: sizes and mtimes of the files in ``patterns`` subfolders.

    A hub id is identified by its revision; a folder has none, so edited weights must change
    the cache keys some other way. ``None`` for a hub id.
    """
    path = Path(model_id)
    if not path.is_dir():
        return None
    parts = []
    subs = sorted({sub for pattern in patterns for sub in path.glob(pattern) if sub.is_dir()})
    for sub in subs:
        for f in sorted(sub.iterdir()):
            st = f.stat()
            parts.append(f"{sub.name}/{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


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
