"""Presets: the model and per-task DiTF settings, stored as data in ``configs/*.yaml``.

The top-level ``configs/`` folder installs as the package ``ditf_track.configs`` (pyproject's
``package-dir``), so the presets are read through :mod:`importlib.resources` in a wheel and in an
editable install alike.

A preset names a model (hub id, family, gating) and carries one :class:`TaskSettings` per task,
because the best timestep t and block k differ between image-pair correspondence (paper
Table 7) and video label propagation (the official DiTF DAVIS script).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from .errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

Family = Literal["pixart", "sd3", "flux", "lab"]
Task = Literal["correspondence", "video"]
FAMILIES: tuple[str, ...] = ("pixart", "sd3", "flux", "lab")
TASKS: tuple[str, ...] = ("correspondence", "video")
DEFAULT_PRESET = "pixart-alpha"
#: Model input side in pixels where neither the user nor the preset names one (the paper's).
DEFAULT_SIDE = 960
SizeField = Literal["image_size", "pair_long_side", "short_side"]


def check_t_k(t: int, k: int, ensemble: int = 1) -> None:
    """The DiTF timestep ``t`` in [0, 1000), block index ``k`` ≥ 0 and ensemble size ≥ 1: the
    one check behind a preset's :class:`TaskSettings` and :class:`~ditf_track.features.DiTFSettings`
    (whatever the front end)."""
    if not 0 <= t < 1000:
        raise ConfigError(f"timestep t={t} is outside [0, 1000); pick t in 0..999")
    if k < 0:
        raise ConfigError(f"block index k={k} is negative; pick k >= 0")
    if ensemble < 1:
        raise ConfigError(f"ensemble={ensemble} must be at least 1")


@dataclass(frozen=True)
class TaskSettings:
    """DiTF settings for one task.

    ``t`` is the diffusion timestep in [0, 1000); ``k`` the global block index (for Flux: 0–18
    double blocks, 19–56 single blocks). Images are resized so that the square side
    (``image_size``), the pair's long side (``pair_long_side``) or the video's short side
    (``short_side``) has that many pixels. ``tuned`` is False where the values were carried over
    from another task rather than tuned for this one.
    """

    t: int
    k: int
    prompt: str = ""
    ensemble: int = 1
    tuned: bool = True
    image_size: int | None = None
    pair_long_side: int | None = None
    short_side: int | None = None

    def __post_init__(self) -> None:
        check_t_k(self.t, self.k, self.ensemble)


@dataclass(frozen=True)
class Resources:
    """Sizes for the README table: parameters in billions (exact), GB (estimates)."""

    transformer_params_b: float
    blocks_params_b: float
    download_gb: float
    gpu_gb_first_run: float
    gpu_gb: float


@dataclass(frozen=True)
class Preset:
    """A validated preset file."""

    name: str
    family: Family
    model_id: str | None
    revision: str | None
    gated: bool
    evaluated_in_paper: bool
    description: str
    max_sequence_length: int | None
    guidance: float | None
    resources: Resources
    correspondence: TaskSettings
    video: TaskSettings

    @property
    def weight_free(self) -> bool:
        """The colour baseline (``lab``): no model to load, no DiTF settings, not a DiT. The one
        place that tells it apart; :func:`~ditf_track.extractor.build_extractor` branches on it."""
        return self.family == "lab"

    def task(self, task: Task) -> TaskSettings:
        """The settings for ``"correspondence"`` or ``"video"``."""
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
        return self.correspondence if task == "correspondence" else self.video

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _preset_folder() -> Traversable:
    """The installed ``ditf_track.configs`` package, or the checkout's ``configs/`` folder.

    An editable install made before the presets moved out of ``ditf_track/`` maps only
    ``ditf_track``: there ``ditf_track.configs`` is missing, or is a leftover
    ``ditf_track/configs/__pycache__`` that imports as an empty namespace package.
    """
    try:
        folder = resources.files("ditf_track.configs")
        if any(f.name.endswith(".yaml") for f in folder.iterdir()):
            return folder
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "configs"


def available_presets() -> list[str]:
    """Names of the bundled presets, sorted."""
    files = _preset_folder().iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


@cache
def load_preset(name: str) -> Preset:
    """Load and validate a bundled preset by name (e.g. ``"flux"``)."""
    names = available_presets()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(names)}")
    text = _preset_folder().joinpath(f"{name}.yaml").read_text("utf-8")
    return preset_from_dict(yaml.safe_load(text), source=f"{name}.yaml")


def preset_size(preset: str | None, task: Task, size: SizeField) -> int:
    """A size setting of ``preset``'s ``task`` (:data:`DEFAULT_SIDE` where it names none, or
    without a preset: a bare ``--model``)."""
    if preset is None:
        return DEFAULT_SIDE
    value = getattr(load_preset(preset).task(task), size)
    return int(value) if value is not None else DEFAULT_SIDE


def preset_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Preset:
    """Validate a preset mapping (as read from YAML) into a frozen :class:`Preset`."""
    try:
        data = dict(raw)
        family = data["family"]
        if family not in FAMILIES:
            raise ConfigError(f"{source}: unknown family {family!r}; use one of {FAMILIES}")
        data["resources"] = Resources(**data["resources"])
        data["correspondence"] = TaskSettings(**data["correspondence"])
        data["video"] = TaskSettings(**data["video"])
        return Preset(**data)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{source}: invalid preset ({exc}); see configs/*.yaml") from exc
