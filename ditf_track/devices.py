"""Device and dtype resolution shared by the API, the CLI and the plugin.

Library defaults follow diffusers (CPU, float32); ``"auto"`` picks cuda → mps → cpu and
bf16 on CUDA sm80+, fp16 on older CUDA and MPS, fp32 on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import ConfigError, DeviceError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/``"cpu"``/``"cuda[:N]"``/``"mps"`` into a usable device, or raise."""
    if device is None:
        return torch.device("cpu")
    name = str(device) if isinstance(device, torch.device) else device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} was asked for but CUDA is not available "
                "(torch.cuda.is_available() is False); install a CUDA build of PyTorch "
                "or use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} was asked for but only {torch.cuda.device_count()} "
                "CUDA device(s) exist; pick one of cuda:0..cuda:"
                f"{torch.cuda.device_count() - 1}"
            )
    elif dev.type == "mps" and not _mps_available():
        raise DeviceError("device 'mps' was asked for but MPS is not available; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"`` → bf16 on CUDA sm80+, fp16 on older CUDA/MPS, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype is None:
        resolved = torch.float32
    elif dtype == "auto":
        if device.type == "cuda":
            major, _ = torch.cuda.get_device_capability(device)
            return torch.bfloat16 if major >= 8 else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    else:
        try:
            resolved = DTYPES[dtype.lower()]
        except KeyError as exc:
            raise ConfigError(
                f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16"
            ) from exc
    if resolved == torch.float16 and device.type == "cpu":
        raise ConfigError("float16 is not supported on the CPU; use --dtype float32 (or bfloat16)")
    return resolved


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``, for config files and cache keys."""
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def out_of_memory_as_error(what: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into a one-line :class:`DeviceError` with the fixes."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise DeviceError(
            f"out of GPU memory while {what}; use a smaller --short-side/--size, a smaller "
            "batch (--batch-size 1), --dtype bfloat16, or free the GPU from other processes"
        ) from exc


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
