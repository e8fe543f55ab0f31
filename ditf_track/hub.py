"""Model files from the Hugging Face Hub or a local folder, and lean loading of their weights.

:class:`ModelSource` is how every model (the DiT families and DINOv2) reaches its files: a local
folder in the hub's layout or a hub id, probed once so a missing network costs seconds, with
every hub failure and every damaged weights file turned into one actionable line.
:func:`load_truncated_weights` reads only the tensors a truncated model still has, straight to
the device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelLoadError

log = logging.getLogger(__name__)


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
            self._go_local(short_reason(exc))

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
                f"cannot read {path} ({short_reason(exc)}); {self.redownload_hint(path)}"
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
                f"cannot load {what} from model folder {self.folder} ({short_reason(err)}); "
                "is it a complete diffusers-format checkpoint?"
            )
        return ModelLoadError(
            f"could not fetch {what} of model {mid!r} from the Hugging Face Hub "
            f"({short_reason(err)}); check the network, or {self.ways_out()}"
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
        reason = self.unreachable or (short_reason(cause) if cause else "no answer")
        return ModelLoadError(
            f"could not reach the Hugging Face Hub at {constants.ENDPOINT} ({reason}) and model "
            f"{mid!r} ({what}) is not in the local cache; {self.ways_out()}"
        )


#: Seconds the one probe request waits for the Hub (``HF_HUB_ETAG_TIMEOUT`` overrides it).
HUB_PROBE_TIMEOUT = 5.0


def short_reason(exc: BaseException) -> str:
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
        return short_reason(exc)
    return None


@contextlib.contextmanager
def quiet_loading(bars: bool = False) -> Iterator[None]:
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
        problem = safetensors_problem(path) or short_reason(exc)
        raise source.damaged_error(path, problem) from exc
    with handle as f:
        yield f


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
                f"cannot read {path} ({short_reason(exc)}); {source.redownload_hint(path)}"
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
