"""What builds a tracker, as one frozen value: :class:`TrackerConfig`.

The CLI (from its options), the napari plugin (from its widgets) and the evaluation workers fill
one and hand it to :meth:`Tracker.from_config <ditf_track.tracker.Tracker.from_config>`; no
front end sorts keyword arguments between the extractor, the cache and the tracker itself.

The three parts differ in what they may change, on purpose:

* :class:`FeatureConfig` — the model, its DiTF settings and the input-size rule: everything that
  changes a frame's features. Only this part (resolved through the built extractor's
  ``identity()``) keys the feature cache, so a run that changes a propagation setting re-runs the
  propagation on cached features.
* the propagation fields of :class:`TrackerConfig` — they change the results, never a feature.
* :class:`Runtime` — where features are computed and kept; changes neither.

``to_dict()`` of the whole config is what a run records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError
from .images import Interpolation
from .precomputed import PrecomputedFeatures
from .presets import (
    DEFAULT_PRESET,
    DEFAULT_PROFILE,
    Task,
    check_profile,
    load_preset,
    parse_discard_channels,
    preset_size,
)
from .propagate import PointParams, PropagationParams

LabelMode = Literal["area", "nearest"]
PointsMode = Literal["query", "heatmap"]
LABEL_MODES: tuple[str, ...] = ("area", "nearest")
POINTS_MODES: tuple[str, ...] = ("query", "heatmap")
#: DiTF settings a :class:`FeatureConfig` may override (None: the preset's).
SETTING_OVERRIDES: tuple[str, ...] = (
    "t",
    "k",
    "prompt",
    "guidance",
    "feature_mode",
    "condition",
    "discard_stage",
    "discard_channels",
    "discard_ratio",
    "seed",
    "ensemble",
    "vae_sample",
)
#: Frames per extraction batch of a tracker when :attr:`Runtime.batch_size` names none.
DEFAULT_TRACKER_BATCH = 4


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that changes a frame's features.

    ``preset`` names the model and its per-task settings (None: ``model`` with its ``family``);
    ``model`` replaces the preset's weights. The DiTF settings (``t`` … ``ensemble``) are the
    preset's where None; ``profile`` picks how the preset computes features (``official``: the
    authors' code where it exists, Flux; ``paper``: the paper's text; see
    :func:`~ditf_track.presets.resolve_profile`), and the settings given override it
    (``vae_sample``: the VAE posterior sample per item, on unless a profile says otherwise;
    False: the posterior mean).
    ``discard_channels`` is ``"auto"`` (the rule) or fixed channels. Frames are resized so the
    short side is ``short_side`` (None: the preset's, else
    :data:`~ditf_track.presets.DEFAULT_SIDE`), both sides multiples of the token stride
    (``rounding``/``long_multiple`` as in :func:`~ditf_track.images.model_input_size`).

    ``features_file`` replaces the model: the maps of a safetensors file (``ditf-track
    extract``'s, or any ``features`` tensor ``(T, C, h, w)``; see :mod:`ditf_track.precomputed`),
    read frame by frame. It takes no model, DiTF setting nor input size (the file fixes them);
    the default preset is then dropped (``preset`` None).
    """

    preset: str | None = DEFAULT_PRESET
    profile: str = DEFAULT_PROFILE
    model: str | None = None
    family: str | None = None
    revision: str | None = None
    dtype: str | None = "auto"
    t: int | None = None
    k: int | None = None
    prompt: str | None = None
    guidance: float | None = None
    feature_mode: str | None = None
    condition: str | None = None
    discard_stage: str | None = None
    discard_channels: tuple[int, ...] | Literal["auto"] | None = None
    discard_ratio: float | None = None
    seed: int | None = None
    ensemble: int | None = None
    vae_sample: bool | None = None
    short_side: int | None = None
    long_multiple: int | None = None
    rounding: Literal["nearest", "floor"] = "nearest"
    interpolation: Interpolation = "auto"
    features_file: str | None = None

    def __post_init__(self) -> None:
        if self.features_file is not None:
            self._check_features_file()
        elif self.preset is None and self.model is None:
            raise ConfigError(
                "give a preset (--preset) or a model and its family (--model --family)"
            )
        check_profile(self.profile)
        if self.discard_channels is not None and self.discard_channels != "auto":
            channels = parse_discard_channels(self.discard_channels)
            object.__setattr__(self, "discard_channels", channels)
        if self.short_side is not None and self.short_side < 1:
            raise ConfigError(f"short side {self.short_side} must be a positive number of pixels")

    def _check_features_file(self) -> None:
        """A features file fixes the model, its settings and the grid: nothing else may."""
        object.__setattr__(self, "features_file", str(self.features_file))
        if self.preset == DEFAULT_PRESET:
            object.__setattr__(self, "preset", None)
        given = [
            name
            for name, value, default in (
                ("preset", self.preset, None),
                ("model", self.model, None),
                ("family", self.family, None),
                ("revision", self.revision, None),
                ("profile", self.profile, DEFAULT_PROFILE),
                ("dtype", self.dtype, "auto"),
                ("short_side", self.short_side, None),
                ("long_multiple", self.long_multiple, None),
                ("rounding", self.rounding, "nearest"),
                *((name, getattr(self, name), None) for name in SETTING_OVERRIDES),
            )
            if value is not None and value != default
        ]
        if given:
            options = ", ".join(f"--{n.replace('_', '-')}" for n in given)
            raise ConfigError(
                f"--features {self.features_file} replaces the model and its settings; drop "
                f"{options} (the features file fixes them)"
            )

    def overrides(self) -> dict[str, Any]:
        """The DiTF settings given, by name (the rest are the preset's)."""
        return {n: getattr(self, n) for n in SETTING_OVERRIDES if getattr(self, n) is not None}

    def unused(self) -> str | None:
        """A one-line warning when settings are given that the chosen extractor has no use for
        (a weight-free preset takes no model nor DiTF settings)."""
        if self.preset is None or not load_preset(self.preset).weight_free:
            return None
        if self.model is not None or self.overrides():
            return f"the {self.preset} preset has no model or DiTF settings; ignoring them"
        return None

    def resolved_short_side(self, task: Task = "video") -> int:
        """``short_side``, else the preset's ``task`` short side, else the default side; with a
        features file, the side that gives its grid (its header is read)."""
        if self.features_file is not None:
            return PrecomputedFeatures(self.features_file).short_side
        return self.short_side or preset_size(self.preset, task, "short_side")


@dataclass(frozen=True)
class Runtime:
    """Where and how features are computed and kept; never changes a feature or a result.

    ``batch_size`` is the images per forward pass (None or 0: a whole extraction batch) and the
    tracker's extraction batch (None or 0: :data:`DEFAULT_TRACKER_BATCH`). ``cache_dir`` holds text
    embeddings and features (None: ``$DITF_TRACK_CACHE`` or ``~/.cache/ditf-track``);
    ``disk_cache=False`` keeps features in memory only.
    """

    device: str = "auto"
    batch_size: int | None = None
    cache_dir: str | None = None
    disk_cache: bool = True
    local_files_only: bool = False


@dataclass(frozen=True)
class TrackerConfig:
    """Everything that builds a :class:`~ditf_track.tracker.Tracker` (see the module docstring).

    ``label_mode`` brings annotated masks to the token grid (``"area"``: soft labels, keeps
    objects smaller than a cell; ``"nearest"``: DINO's protocol). ``points_mode`` is how points
    are tracked unless a ``propagate`` call says otherwise, with ``point_params``.
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    params: PropagationParams = field(default_factory=PropagationParams)
    label_mode: LabelMode = "area"
    points_mode: PointsMode = "query"
    point_params: PointParams = field(default_factory=PointParams)
    runtime: Runtime = field(default_factory=Runtime)

    def __post_init__(self) -> None:
        check_tracker_settings(self.label_mode, self.points_mode, self.tracker_batch_size)

    @property
    def tracker_batch_size(self) -> int:
        """Frames extracted per batch by the tracker."""
        return self.runtime.batch_size or DEFAULT_TRACKER_BATCH

    def to_dict(self) -> dict[str, Any]:
        """The whole config as plain data (JSON-safe)."""
        return dataclasses.asdict(self)


def check_tracker_settings(label_mode: str, points_mode: str, batch_size: int) -> None:
    """The tracker's own settings, checked before any model is loaded."""
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"unknown label mode {label_mode!r}; use 'area' or 'nearest'")
    check_points_mode(points_mode)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1")


def check_points_mode(mode: str) -> None:
    if mode not in POINTS_MODES:
        raise ConfigError(f"unknown points mode {mode!r}; use 'query' or 'heatmap'")


__all__ = [
    "DEFAULT_TRACKER_BATCH",
    "LABEL_MODES",
    "POINTS_MODES",
    "SETTING_OVERRIDES",
    "FeatureConfig",
    "LabelMode",
    "PointsMode",
    "Runtime",
    "TrackerConfig",
]
