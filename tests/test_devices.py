"""Device and dtype resolution."""

from __future__ import annotations

import pytest
import torch

from ditf_track.devices import resolve_device, resolve_dtype
from ditf_track.errors import ConfigError, DeviceError


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="float16 is not supported on the CPU"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available.*--device cpu"):
            resolve_device("cuda")
        assert resolve_device("auto").type in ("cpu", "mps")
