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
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
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
    served from the local Hugging Face cache. Online, the Hub is probed once with a single
    request (no retries, :data:`HUB_PROBE_TIMEOUT`) before the first file: when it cannot be
    reached every later file comes from the local cache, so a missing network costs seconds,
    not the hub client's half-minute of retries. Every hub failure becomes one actionable
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
        offline_env = any(
            os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
            for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # the hub honours both
        )
        #: the user's choice (flag or environment), as opposed to a Hub found unreachable.
        self.offline = bool(local_files_only) or offline_env
        self.local_files_only = self.offline
        #: why the Hub could not be reached (set by the probe), else ``None``.
        self.unreachable: str | None = None
        self._probed = False
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
            except hub.EntryNotFoundError:  # absent remotely, or not in the local-only cache
                return False
        return True

    def _download(self, subfolder: str, filename: str) -> Path:
        from huggingface_hub import hf_hub_download

        self.probe_hub()
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

    def probe_hub(self) -> None:
        """Once, for a hub id online: one quick request; unreachable → local cache only.

        Any HTTP answer (even 404 or 401) means the Hub is reachable; no answer (refused,
        DNS, timeout, proxy, TLS) or a 408/429/5xx means it is not, as the hub client itself
        would conclude after its retries.
        """
        if self._probed or self.folder is not None or self.local_files_only:
            return
        self._probed = True
        from huggingface_hub import errors as hub
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(self.model, "model_index.json", revision=self.revision)
        try:
            timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_PROBE_TIMEOUT)
        except ValueError:
            timeout = HUB_PROBE_TIMEOUT
        try:
            get_hf_file_metadata(url, timeout=timeout)
        except hub.HfHubHTTPError as exc:
            status = getattr(exc.response, "status_code", None)
            if status in (408, 429, 500, 502, 503, 504):
                self._go_local(f"it answered HTTP {status}")
        except Exception as exc:  # no HTTP answer at all
            self._go_local(_short_reason(exc))

    def _go_local(self, reason: str) -> None:
        self.unreachable = reason
        self.local_files_only = True
        log.info(
            "the Hugging Face Hub could not be reached (%s); using the local cache only", reason
        )

    def load_config(self, subfolder: str) -> dict[str, Any]:
        path = self.file(subfolder, "config.json")
        try:
            config: dict[str, Any] = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(
                f"cannot read {path} ({_short_reason(exc)}); {self.redownload_hint(path)}"
            ) from exc
        return config

    def pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a diffusers/transformers ``from_pretrained`` call."""
        self.probe_hub()
        kwargs: dict[str, Any] = {"local_files_only": self.local_files_only}
        if self.folder is None:
            kwargs["revision"] = self.revision
            if self.cache_dir is not None:
                kwargs["cache_dir"] = self.cache_dir
        return kwargs

    @property
    def path_or_id(self) -> str:
        return str(self.folder) if self.folder is not None else self.model

    # -- damaged files -----------------------------------------------------------------------
    def redownload_hint(self, path: Path) -> str:
        """How to replace one damaged file of this model (what an interrupted download leaves)."""
        if self.folder is not None:
            try:
                rel = path.resolve().relative_to(self.folder).as_posix()
            except ValueError:
                rel = path.name
            return (
                f"re-download it (`hf download <hub id> {rel} --local-dir {self.folder}`) "
                "or copy a good one in its place"
            )
        rel = self._hub_relative(path)
        rev = f" --revision {self.revision}" if self.revision else ""
        return (
            f"re-download it with `hf download {self.model} {rel}{rev} --force-download` (or "
            f"download the model with `hf download {self.model} --local-dir PATH` and pass "
            "--model PATH)"
        )

    def _hub_relative(self, path: Path) -> str:
        # hub cache: .../snapshots/<commit>/<subfolder>/<file> (a symlink into blobs/)
        parts = path.parts
        if "snapshots" in parts:
            i = len(parts) - 1 - parts[::-1].index("snapshots")
            return "/".join(parts[i + 2 :])
        return path.name

    def snapshot_folder(self) -> Path | None:
        """The folder holding this model's files: the local folder, or its hub-cache snapshot."""
        if self.folder is not None:
            return self.folder
        try:
            from huggingface_hub import try_to_load_from_cache

            for name in ("model_index.json", "config.json"):
                found = try_to_load_from_cache(
                    self.model, name, cache_dir=self.cache_dir, revision=self.revision
                )
                if isinstance(found, str):
                    return Path(found).parent
        except Exception:  # only a diagnosis helper: never hide the original error
            return None
        return None

    def damaged_file(self, subfolders: Sequence[str]) -> tuple[Path, str] | None:
        """The first safetensors file under ``subfolders`` whose header or length is wrong.

        Reading a header is cheap (a few kB), so this runs only after a load failed, to name
        the file instead of the loader's anonymous "error while deserializing header".
        """
        root = self.snapshot_folder()
        if root is None:
            return None
        for sub in subfolders:
            for path in sorted((root / sub).glob("*.safetensors")):
                problem = safetensors_problem(path)
                if problem is not None:
                    return path, problem
        return None

    @contextlib.contextmanager
    def load_errors(self, what: str, subfolders: Sequence[str]) -> Iterator[None]:
        """:meth:`hub_errors`, and a damaged weights file in ``subfolders`` named as such."""
        try:
            with self.hub_errors(what):
                yield
        except Exception as exc:
            damaged = self.damaged_file(subfolders)
            if damaged is None:
                raise
            raise self.damaged_error(*damaged) from exc

    def damaged_error(self, path: Path, problem: str) -> ModelLoadError:
        return ModelLoadError(
            f"model file {path} is damaged or incomplete ({problem}), as an interrupted "
            f"download leaves it; {self.redownload_hint(path)}"
        )

    # -- hub failures --------------------------------------------------------------------------
    def ways_out(self) -> str:
        mid = self.model
        return (
            f"download it where the Hub can be reached (`hf download {mid} --local-dir PATH`, "
            "then pass --model PATH), or use --local-files-only with a Hugging Face cache that "
            "holds it, or --preset lab (needs no weights)"
        )

    @contextlib.contextmanager
    def hub_errors(self, what: str) -> Iterator[None]:
        """Map Hugging Face Hub failures to one actionable line naming the model."""
        try:
            yield
        except ModelLoadError:
            raise
        except Exception as exc:
            mapped = self.hub_error(exc, what)
            if mapped is None:
                raise
            raise mapped from exc

    def hub_error(self, exc: BaseException, what: str) -> ModelLoadError | None:
        """The one-line error for a hub failure ``exc`` (or one it wraps), else ``None``."""
        from huggingface_hub import errors as hub

        mid = self.model
        err = _hub_cause(exc) or exc  # transformers/diffusers wrap hub failures in OSError
        if isinstance(err, hub.GatedRepoError):
            return ModelLoadError(
                f"model {mid!r} is gated: accept its licence on https://huggingface.co/{mid} "
                "and log in with `hf auth login` (or set HF_TOKEN), then run again"
            )
        if isinstance(err, hub.RevisionNotFoundError):
            return ModelLoadError(
                f"revision {self.revision!r} of model {mid!r} does not exist; check --revision"
            )
        if isinstance(err, hub.RepositoryNotFoundError):
            return ModelLoadError(
                f"model {mid!r} was not found on the Hugging Face Hub (or is private); check the "
                "id, log in with `hf auth login` for a private model, or pass a local folder"
            )
        if isinstance(err, hub.LocalEntryNotFoundError):
            return self.not_cached_error(what, err)
        if isinstance(err, hub.EntryNotFoundError):
            return ModelLoadError(
                f"model {mid!r} has no file {what}; is it a diffusers-format repository of "
                "this family (pass --family to choose another)?"
            )
        if not isinstance(err, hub.HfHubHTTPError | OSError) or isinstance(err, FileNotFoundError):
            return None
        if self.folder is not None:
            return ModelLoadError(
                f"cannot load {what} from model folder {self.folder} ({_short_reason(err)}); "
                "is it a complete diffusers-format checkpoint?"
            )
        return ModelLoadError(
            f"could not fetch {what} of model {mid!r} from the Hugging Face Hub "
            f"({_short_reason(err)}); check the network, or {self.ways_out()}"
        )

    def not_cached_error(self, what: str, exc: BaseException) -> ModelLoadError:
        mid = self.model
        if self.offline:
            return ModelLoadError(
                f"model {mid!r} ({what}) is not in the local Hugging Face cache and offline "
                "mode is on (HF_HUB_OFFLINE / --local-files-only); download it once with "
                f"network access (`hf download {mid} --local-dir PATH`, then pass --model PATH), "
                "or use --preset lab (needs no weights)"
            )
        from huggingface_hub import constants

        cause = exc.__cause__
        reason = self.unreachable or (_short_reason(cause) if cause else "no answer")
        return ModelLoadError(
            f"could not reach the Hugging Face Hub at {constants.ENDPOINT} ({reason}) and model "
            f"{mid!r} ({what}) is not in the local cache; {self.ways_out()}"
        )


#: Seconds the one probe request waits for the Hub (``HF_HUB_ETAG_TIMEOUT`` overrides it).
HUB_PROBE_TIMEOUT = 5.0


def _short_reason(exc: BaseException) -> str:
    """One line from an exception (hub and httpx messages span several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _hub_cause(exc: BaseException) -> BaseException | None:
    """The huggingface_hub error in ``exc``'s cause chain, if any."""
    from huggingface_hub import errors as hub

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, hub.HfHubHTTPError | hub.EntryNotFoundError):
            return current
        current = current.__cause__
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (header, length), or ``None``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:
        return _short_reason(exc)
    return None


@contextlib.contextmanager
def _quiet_loading(bars: bool = False) -> Iterator[None]:
    """Silence what a load prints that is no news to the user.

    diffusers passes huggingface_hub an argument it deprecated (``local_dir_use_symlinks``),
    which warns on every hub-id load. ``bars``: hide diffusers'/transformers' "Loading ..." bars
    (instant) too; only when nothing downloads, since transformers' switch also hides the hub's
    download bars.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        if not bars:
            yield
            return
        with _no_progress_bars():
            yield


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = (
        diffusers_logging.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
    )
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()


@contextlib.contextmanager
def _weights_file(source: ModelSource, path: Path, device: str) -> Iterator[Any]:
    """``safe_open(path)``; a damaged file becomes one line naming it and the fix."""
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device=device)
    except Exception as exc:
        problem = safetensors_problem(path) or _short_reason(exc)
        raise source.damaged_error(path, problem) from exc
    with handle as f:
        yield f


class _Truncated(nn.Module):
    """Stands in for a module after block k, which a DiTF forward never reaches."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError("this transformer was truncated after block k; its head is not loaded")


def _weight_files(source: ModelSource, subfolder: str, needed: set[str]) -> dict[Path, list[str]]:
    """Map the shard files that hold ``needed`` keys to those keys; fetch only those shards."""
    index_name = "diffusion_pytorch_model.safetensors.index.json"
    single = "diffusion_pytorch_model.safetensors"
    if source.has_file(subfolder, index_name):
        path = source.file(subfolder, index_name)
        try:
            weight_map: dict[str, str] = json.loads(path.read_text("utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"cannot read {path} ({_short_reason(exc)}); {source.redownload_hint(path)}"
            ) from exc
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
    Floating buffers (built on the CPU by the constructor) are cast and moved likewise, as
    diffusers' own ``from_pretrained(dtype=)`` does, except in the class's
    ``_keep_in_fp32_modules``. Returns the keys read.
    """
    from accelerate.utils import set_module_tensor_to_device

    keep_fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())

    def target(name: str, tensor: torch.Tensor) -> torch.dtype:
        # accelerate casts a value to the meta tensor's dtype (float32) unless told otherwise,
        # which would silently undo a bfloat16 load.
        if not tensor.is_floating_point() or any(m in name for m in keep_fp32):
            return tensor.dtype
        return dtype

    needed = {name for name, p in model.named_parameters() if p.is_meta}
    files = _weight_files(source, subfolder, needed)
    read: list[str] = []
    open_device = "cpu" if device.type != "cuda" else str(device)
    for path, keys in files.items():
        with _weights_file(source, path, open_device) as f:
            present = set(f.keys())
            for key in keys:
                if key not in present:
                    raise ModelLoadError(
                        f"{path} lacks tensor {key}; is it a complete checkpoint of this family?"
                    )
                tensor = f.get_tensor(key)
                set_module_tensor_to_device(
                    model, key, device, value=tensor, dtype=target(key, tensor)
                )
                read.append(key)
    for name, buf in list(model.named_buffers()):
        want = target(name, buf)
        if buf.device != device or buf.dtype != want:
            set_module_tensor_to_device(model, name, device, value=buf, dtype=want)
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
        from ..cache import cache_root  # the cache imports this module

        cache_root(cache_dir)  # a file given as the cache folder fails before any download
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

        with source.load_errors("vae/", ["vae"]), _quiet_loading():
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
        kwargs = source.pretrained_kwargs()
        quiet = kwargs["local_files_only"] or source.is_local  # no download bar to keep
        with source.load_errors("text encoders", text_folders), _quiet_loading(bars=quiet):
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
    on a miss; ``encoder_loads`` counts those runs. Each file records its key and a checksum
    of every tensor (the feature cache's scheme, :data:`ditf_track.cache.CHECKSUMS`): a
    damaged embedding would silently condition every frame wrongly, so it is re-encoded
    instead, with a warning. A cache folder that cannot be written costs a warning, not the run.
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
        return self.cache_dir / f"{self._digest(prompt)[:32]}.safetensors"

    def _digest(self, prompt: str) -> str:
        key = json.dumps({**self.key, "prompt": prompt}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()

    def is_cached(self, prompt: str) -> bool:
        """Whether ``prompt`` is in memory or in an intact file (then read into memory)."""
        if prompt not in self.memory:
            cond = self._read(prompt)
            if cond is not None:
                self.memory[prompt] = cond
        return prompt in self.memory

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
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                names: list[str] = f.keys()
                tensors = {name: f.get_tensor(name) for name in names}
        except Exception as exc:
            problem: str | None = f"unreadable ({_short_reason(exc)})"
        else:
            if metadata.get("format") != _TEXT_FORMAT:  # written by an older ditf-track
                log.info("text cache file %s has no checksum; re-encoding the prompt", path)
                return None
            problem = _text_file_problem(tensors, metadata, self._digest(prompt))
        if problem is not None:
            log.warning("text cache file %s is damaged: %s; re-encoding the prompt", path, problem)
            return None
        return TextCondition(tensors["embeds"], tensors.get("pooled"), tensors.get("mask"))

    def _write(self, prompt: str, cond: TextCondition) -> None:
        path = self.path(prompt)
        if path is None:
            return
        from safetensors.torch import save_file

        from .._atomic import atomic_path

        tensors = cond.tensors()
        meta = {k: str(v) for k, v in self.key.items()} | {
            "prompt": prompt,
            "format": _TEXT_FORMAT,
            "key": self._digest(prompt),
            "checksums": json.dumps({name: _checksum(t) for name, t in tensors.items()}),
        }
        try:
            with atomic_path(path, "text embedding") as tmp:
                save_file(tensors, str(tmp), metadata=meta)
        except Exception as exc:  # a cache that cannot write must not stop the run
            log.warning(
                "could not store the text embedding in the cache folder %s (%s); continuing "
                "without it (the prompt is encoded again next run)",
                path.parent,
                _short_reason(exc),
            )


_TEXT_FORMAT = "ditf-track-text/1"
_TEXT_CHECKSUM = "crc32"


def _checksum(tensor: torch.Tensor) -> str:
    from ..cache import CHECKSUMS, _tensor_bytes  # cache imports this module

    return f"{_TEXT_CHECKSUM}:{CHECKSUMS[_TEXT_CHECKSUM](_tensor_bytes(tensor.contiguous()))}"


def _text_file_problem(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], digest: str
) -> str | None:
    """Why a text cache file does not hold this prompt's embedding intact, or ``None``."""
    from ..cache import CHECKSUMS, _tensor_bytes

    if metadata.get("key") != digest:
        return "it holds another prompt's key"
    try:
        expected: dict[str, str] = json.loads(metadata.get("checksums", ""))
    except ValueError:
        return "its recorded checksums do not parse"
    if "embeds" not in tensors or set(expected) != set(tensors):
        return f"it holds tensors {sorted(tensors)}, recorded {sorted(expected)}"
    for name, tensor in tensors.items():
        algo, _, value = expected[name].partition(":")
        if algo not in CHECKSUMS:
            return f"unknown checksum {algo!r}"
        actual = CHECKSUMS[algo](_tensor_bytes(tensor))
        if actual != value:
            return f"{name}: {algo} {actual} differs from the recorded {value}"
    return None


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
