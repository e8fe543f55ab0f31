"""The weight-free ``lab`` baseline: CIE-Lab colour averaged over stride x stride cells.

Not DiTF. It needs no model weights, so it runs the whole pipeline (extraction → cache →
propagation → masks → evaluation) on any machine, gives the lower bound in evaluation tables,
and lets tests propagate real video. Cells are 16 x 16 model-input pixels like the DiTs'
token grid, so its maps have the same (h, w) as a DiT's at the same input size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from .errors import ConfigError, InputError
from .features import FeatureMaps, discard_channels, normalize_maps

log = logging.getLogger(__name__)

# Per cell the feature is (L + offset, a, b) / 50 before the L2 normalisation (the common
# factor 1/50 only keeps values near 1; it does not change the cosine). CIE-Lab D65 as
# OpenCV computes it from sRGB: L in [0, 100], a and b within about ±110.
LAB_SCALE = 50.0
# Offset on the lightness axis, measured on 5 real DAVIS clips (DINO's r = 12, k = 5,
# τ = 0.1, 60x106 grid; benchmarks/lab_variants.py): mean J 0.524 centred (L - 50),
# 0.540 (L), 0.549 (L + 50), 0.551 (L + 100). Centring makes grey cells near-zero
# vectors whose direction is noise after normalisation; an offset keeps every cell's
# direction defined and lets the cosine compare chroma relative to lightness.
DEFAULT_LIGHTNESS_OFFSET = 100.0


class LabExtractor:
    """CIE-Lab colour per ``stride`` x ``stride`` cell as a 3-channel :class:`FeatureMaps`.

    Per cell: the mean Lab colour of its pixels, ``(L + lightness_offset, a, b) / 50``,
    L2-normalised over the 3 channels. Deterministic; no parameters to load.

    It always runs on the CPU (OpenCV's colour conversion), whatever ``device`` asks for: a
    device other than ``"cpu"``/``"auto"`` is logged as unused, and :attr:`device` is the CPU,
    which ``config.json`` records.
    """

    def __init__(
        self,
        stride: int = 16,
        *,
        lightness_offset: float = DEFAULT_LIGHTNESS_OFFSET,
        device: str | torch.device | None = "cpu",
    ) -> None:
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ConfigError(f"lab stride={stride!r} must be an integer >= 1 (default 16)")
        if not isinstance(lightness_offset, (int, float)) or not np.isfinite(lightness_offset):
            raise ConfigError(
                f"lightness_offset={lightness_offset!r} must be a finite number (default 100)"
            )
        asked = "cpu" if device is None else str(device).strip().lower()
        if asked not in ("cpu", "auto"):
            try:
                torch.device(asked)
            except RuntimeError as exc:
                raise ConfigError(
                    f"unknown device {asked!r}; use auto, cpu, cuda, cuda:N or mps"
                ) from exc
            log.warning(
                "the lab preset computes colours on the CPU (OpenCV); device %r is not used",
                asked,
            )
        self.stride = stride
        self.lightness_offset = float(lightness_offset)

    @property
    def device(self) -> torch.device:
        """Where the features are computed and returned: always the CPU."""
        return torch.device("cpu")

    def identity(self) -> dict[str, Any]:
        """Everything that changes the features (for cache keys and config.json)."""
        return {
            "extractor": "lab",
            "stride": self.stride,
            "colour_space": "CIE-Lab D65 (OpenCV, from sRGB)",
            "lightness_offset": self.lightness_offset,
            "scale": LAB_SCALE,
            "pooling": "mean",
            "version": 1,
        }

    @torch.inference_mode()
    def extract(
        self,
        images: np.ndarray | torch.Tensor,
        *,
        massive_channels: Sequence[int] | None = None,
        noise_ids: Sequence[str] | None = None,
    ) -> FeatureMaps:
        """``(N, H, W, 3) uint8`` RGB → maps ``(N, 3, H/stride, W/stride)`` float32, unit norm.

        ``massive_channels`` (none exist in Lab) are zeroed if given, as the protocol asks;
        ``noise_ids`` are accepted and unused (colours draw no noise).
        """
        array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise InputError(
                f"lab features need (N, H, W, 3) uint8 RGB images, got {array.shape} "
                f"{array.dtype}; convert the frames to uint8 RGB first"
            )
        n, height, width, _ = array.shape
        s = self.stride
        if height % s or width % s or height == 0 or width == 0:
            raise InputError(
                f"image size {height}x{width} is not a multiple of the stride {s}; resize the "
                "frames to the model input size first"
            )
        channels = tuple(int(c) for c in (massive_channels or ()))
        if any(not 0 <= c < 3 for c in channels):
            raise ConfigError(f"massive_channels {list(channels)} must be in 0..2 for lab")
        h, w = height // s, width // s
        shift = np.asarray([self.lightness_offset, 0.0, 0.0], np.float32)
        out = np.empty((n, 3, h, w), np.float32)
        for i in range(n):
            lab = cv2.cvtColor(array[i].astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
            cells = lab.reshape(h, s, w, s, 3).mean(axis=(1, 3), dtype=np.float64)
            out[i] = ((cells.astype(np.float32) + shift) / LAB_SCALE).transpose(2, 0, 1)
        maps = discard_channels(torch.from_numpy(out), channels, dim=1)
        return FeatureMaps(
            features=normalize_maps(maps),
            stride=s,
            input_size=(height, width),
            discarded_channels=channels,
            meta={"extractor": "lab"},
        )
