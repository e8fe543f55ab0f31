"""The weight-free ``lab`` baseline: CIE-Lab colour averaged over stride x stride cells.

Not DiTF. It needs no model weights, so it runs the whole pipeline (extraction → cache →
propagation → masks → evaluation) on any machine, gives the lower bound in evaluation tables,
and lets tests propagate real video. Cells are 16 x 16 model-input pixels like the DiTs'
token grid, so its maps have the same (h, w) as a DiT's at the same input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from .errors import ConfigError, InputError
from .features import FeatureMaps, discard_channels, normalize_maps

# Centre and scale of CIE-Lab (D65; L in [0, 100], a and b about [-110, 110] for sRGB) that
# make the three axes comparable before the cosine: (L - 50, a, b) / 50, with the lightness
# axis weighted by ``lightness_weight``.
LAB_CENTRE = (50.0, 0.0, 0.0)
LAB_SCALE = 50.0


class LabExtractor:
    """CIE-Lab colour per ``stride`` x ``stride`` cell as a 3-channel :class:`FeatureMaps`.

    Per cell: the mean of ``((L - 50)·lightness_weight, a, b) / 50`` over the cell's pixels,
    L2-normalised (cosine similarity then compares hue and lightness direction, not
    magnitude). ``lightness_weight`` < 1 makes shading matter less than hue; the default was
    the best of the variants tried on real DAVIS clips (benchmarks/lab_variants.py).
    """

    def __init__(self, stride: int = 16, *, lightness_weight: float = 0.5) -> None:
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ConfigError(f"lab stride={stride!r} must be an integer >= 1 (default 16)")
        if not (isinstance(lightness_weight, (int, float)) and lightness_weight >= 0):
            raise ConfigError(
                f"lightness_weight={lightness_weight!r} must be a number >= 0 (default 0.5)"
            )
        self.stride = stride
        self.lightness_weight = float(lightness_weight)

    def identity(self) -> dict[str, Any]:
        """Everything that changes the features (for cache keys and config.json)."""
        return {
            "extractor": "lab",
            "stride": self.stride,
            "colour_space": "CIE-Lab D65 (OpenCV, sRGB)",
            "centre": list(LAB_CENTRE),
            "scale": LAB_SCALE,
            "lightness_weight": self.lightness_weight,
            "pooling": "mean",
            "version": 1,
        }

    @torch.inference_mode()
    def extract(
        self, images: np.ndarray | torch.Tensor, *, massive_channels: Sequence[int] | None = None
    ) -> FeatureMaps:
        """``(N, H, W, 3) uint8`` RGB → maps ``(N, 3, H/stride, W/stride)`` float32, unit norm.

        ``massive_channels`` (none exist in Lab) are zeroed if given, as the protocol asks.
        """
        array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise InputError(
                f"lab features need (N, H, W, 3) uint8 RGB images, got {array.shape} "
                f"{array.dtype}; convert frames with video.read_frames"
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
        centre = np.asarray(LAB_CENTRE, np.float32)
        weight = np.asarray([self.lightness_weight, 1.0, 1.0], np.float32) / LAB_SCALE
        out = np.empty((n, 3, h, w), np.float32)
        for i in range(n):
            lab = cv2.cvtColor(array[i].astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
            cells = lab.reshape(h, s, w, s, 3).mean(axis=(1, 3), dtype=np.float64)
            out[i] = ((cells.astype(np.float32) - centre) * weight).transpose(2, 0, 1)
        maps = discard_channels(torch.from_numpy(out), channels, dim=1)
        return FeatureMaps(
            features=normalize_maps(maps),
            stride=s,
            input_size=(height, width),
            discarded_channels=channels,
            meta={"extractor": "lab"},
        )
