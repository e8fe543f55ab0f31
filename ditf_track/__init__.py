"""ditf-track: Diffusion Transformer features (DiTF) for video mask and keypoint propagation.

The data path, in the order one call follows it — ``Tracker.propagate(state)``:

    video → frames             video.py: open_video → VideoSource (decord, PyAV, OpenCV; streamed)
    frames → latents           backbones/: DiTBackbone.encode_posterior, noise_latents
                               (each frame's own noise: noise.py, from its index in the file)
    latents → block-k feature  backbones/base.py: DiTBackbone.capture, <family>.py tap (hooks.py)
    → AdaLN → discard          features.py: adaln_modulate, find_massive_channels,
                               discard_channels (driven by extractor.py DiTFExtractor.extract)
    → cache                    cache/store.py: FeatureCache (memory LRU over safetensors files)
    → k-NN                     propagate/: WindowSearch / GlobalSearch, propagate_sequence
    → masks                    propagate/labels.py: soft_labels_to_mask
    → PNGs                     masks.py: write_mask (DAVIS palette), as cli/track.py does

:class:`Tracker` ties them together (SAM2's shape: a tracker, an explicit state, propagation
as a generator), and the CLI, the napari plugin and the evaluators all consume its generator:
``tracker/__init__.py`` holds it, ``tracker/schedule.py`` says which frames are propagated from
which annotation in which order, ``tracker/clip_features.py`` keys one clip's features.
"""

from ._version import __version__
from .cache import FeatureCache
from .config import FeatureConfig, Runtime, TrackerConfig
from .coords import (
    QueryPoints,
    napari_to_points,
    points_to_napari,
    read_points_csv,
    write_points_csv,
)
from .errors import (
    CancelledError,
    ConfigError,
    DeviceError,
    DitfError,
    InputError,
    ModelLoadError,
    OutputError,
)
from .extractor import DiTFExtractor, build_extractor, extractor_from_config
from .features import DiTFSettings, FeatureExtractor, FeatureMaps
from .images import model_input_size, read_image
from .lab import LabExtractor
from .masks import DAVIS_PALETTE, LabelMask, read_mask, write_mask
from .match import Matcher
from .precomputed import PrecomputedFeatures
from .presets import DEFAULT_PRESET, Preset, TaskSettings, available_presets, load_preset
from .propagate import PointParams, PropagationParams
from .tracker import FrameResult, ProgressEvent, SmallObjectWarning, Tracker, TrackerState
from .video import VideoSource, open_video, video_from_array

__all__ = [
    "DAVIS_PALETTE",
    "DEFAULT_PRESET",
    "CancelledError",
    "ConfigError",
    "DeviceError",
    "DiTFExtractor",
    "DiTFSettings",
    "DitfError",
    "FeatureCache",
    "FeatureConfig",
    "FeatureExtractor",
    "FeatureMaps",
    "FrameResult",
    "InputError",
    "LabExtractor",
    "LabelMask",
    "Matcher",
    "ModelLoadError",
    "OutputError",
    "PointParams",
    "PrecomputedFeatures",
    "Preset",
    "ProgressEvent",
    "PropagationParams",
    "QueryPoints",
    "Runtime",
    "SmallObjectWarning",
    "TaskSettings",
    "Tracker",
    "TrackerConfig",
    "TrackerState",
    "VideoSource",
    "__version__",
    "available_presets",
    "build_extractor",
    "extractor_from_config",
    "load_preset",
    "model_input_size",
    "napari_to_points",
    "open_video",
    "points_to_napari",
    "read_image",
    "read_mask",
    "read_points_csv",
    "video_from_array",
    "write_mask",
    "write_points_csv",
]
