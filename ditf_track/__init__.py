"""ditf-track: Diffusion Transformer features (DiTF) for video mask and keypoint propagation.

The data path, in the order a call follows it::

    video → frames → latents → block-k feature → AdaLN → discard → cache → k-NN → masks → PNGs
"""

from ._version import __version__
from .errors import (
    CancelledError,
    ConfigError,
    DeviceError,
    DitfError,
    InputError,
    ModelLoadError,
    OutputError,
)
from .presets import Preset, TaskSettings, available_presets, load_preset

__all__ = [
    "CancelledError",
    "ConfigError",
    "DeviceError",
    "DitfError",
    "InputError",
    "ModelLoadError",
    "OutputError",
    "Preset",
    "TaskSettings",
    "__version__",
    "available_presets",
    "load_preset",
]
