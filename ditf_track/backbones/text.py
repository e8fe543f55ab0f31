"""Text conditions: prompt → embeddings, cached in memory and on disk.

Text encoders (T5-XXL is ~9.5 GB) load only when a prompt's embedding is not in the on-disk
text cache (``<root>/text``, :func:`ditf_track.cache.text_cache_dir`), once for all the
prompts a run needs (:meth:`TextConditioner.ensure`), and are released right after; the files
are written atomically (:func:`ditf_track._atomic.atomic_path`) and checksummed like the
feature cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_path
from ..cache import checksum_problem, tensor_checksum
from ..errors import ConfigError
from ..hub import short_reason

log = logging.getLogger(__name__)


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


class TextConditioner:
    """Prompt → :class:`TextCondition`, cached in memory and on disk (safetensors).

    The disk key is the family, model id (for a folder: its path and text-encoder files),
    revision, prompt and sequence length. The text encoders load only on a miss:
    :meth:`ensure` encodes every missing prompt of a run with one load (``encode_many``, else
    ``encode`` per prompt); ``encoder_loads`` counts the loads, ``encodings`` the prompts
    encoded. Each file records its key and a checksum
    of every tensor (the feature cache's scheme, :func:`ditf_track.cache.tensor_checksum`): a
    damaged embedding would silently condition every frame wrongly, so it is re-encoded
    instead, with a warning. A cache folder that cannot be written costs a warning, not the run.
    """

    def __init__(
        self,
        key: dict[str, Any],
        encode: Callable[[str], TextCondition] | None,
        cache_dir: Path | None,
        *,
        encode_many: Callable[[Sequence[str]], list[TextCondition]] | None = None,
    ) -> None:
        self.key = key
        self.encode = encode
        self.encode_many = encode_many
        self.cache_dir = cache_dir
        self.memory: dict[str, TextCondition] = {}
        self.encoder_loads = 0
        self.encodings = 0

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

    def get(self, prompt: str) -> TextCondition:
        if not self.is_cached(prompt):
            self.ensure([prompt])
        return self.memory[prompt]

    def missing(self, prompts: Iterable[str]) -> list[str]:
        """The distinct ``prompts`` in neither memory nor an intact cache file, in order."""
        return [p for p in dict.fromkeys(prompts) if not self.is_cached(p)]

    def ensure(self, prompts: Iterable[str]) -> list[str]:
        """Encode every prompt of ``prompts`` not cached yet, all with ONE text-encoder load;
        return those encoded. Each is kept in memory and written to the cache folder."""
        todo = self.missing(prompts)
        if not todo:
            return []
        if self.encode is None and self.encode_many is None:
            raise ConfigError(
                f"the prompt {todo[0]!r} is not cached and no text encoder is available; "
                "load the model from a hub id or folder that has its text encoders"
            )
        self.encoder_loads += 1
        if self.encode_many is not None:
            conds = self.encode_many(todo)
        else:
            assert self.encode is not None
            conds = [self.encode(p) for p in todo]
        if len(conds) != len(todo):
            raise RuntimeError(f"{len(todo)} prompts gave {len(conds)} text conditions")
        self.encodings += len(todo)
        for prompt, cond in zip(todo, conds):
            self._write(prompt, cond)
            self.memory[prompt] = cond
        return todo

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
            problem: str | None = f"unreadable ({short_reason(exc)})"
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

        tensors = cond.tensors()
        meta = {k: str(v) for k, v in self.key.items()} | {
            "prompt": prompt,
            "format": _TEXT_FORMAT,
            "key": self._digest(prompt),
            "checksums": json.dumps({name: tensor_checksum(t) for name, t in tensors.items()}),
        }
        try:
            with atomic_path(path, "text embedding") as tmp:
                save_file(tensors, str(tmp), metadata=meta)
        except Exception as exc:  # a cache that cannot write must not stop the run
            log.warning(
                "could not store the text embedding in the cache folder %s (%s); continuing "
                "without it (the prompt is encoded again next run)",
                path.parent,
                short_reason(exc),
            )


_TEXT_FORMAT = "ditf-track-text/1"


def _text_file_problem(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], digest: str
) -> str | None:
    """Why a text cache file does not hold this prompt's embedding intact, or ``None``."""
    if metadata.get("key") != digest:
        return "it holds another prompt's key"
    try:
        expected: dict[str, str] = json.loads(metadata.get("checksums", ""))
    except ValueError:
        return "its recorded checksums do not parse"
    if "embeds" not in tensors or set(expected) != set(tensors):
        return f"it holds tensors {sorted(tensors)}, recorded {sorted(expected)}"
    for name, tensor in tensors.items():
        problem = checksum_problem(tensor, expected[name])
        if problem is not None:
            return f"{name}: {problem}"
    return None
