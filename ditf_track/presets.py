"""Presets: the model and per-task DiTF settings, stored as data in ``configs/*.yaml``.

The top-level ``configs/`` folder installs as the package ``ditf_track.configs`` (pyproject's
``package-dir``), so the presets are read through :mod:`importlib.resources` in a wheel and in an
editable install alike.

A preset names a model (hub id, family, gating) and carries one :class:`TaskSettings` per task,
because the best timestep t and block k differ between image-pair correspondence (paper
Table 7) and video label propagation (the official DiTF DAVIS script).

It also carries *profiles*: how features are computed, per task. ``official`` is what the
authors' code does (github.com/ganchaofan0000/DiTF, FLUX.1-dev only: the massive channels
154 and 1446 zeroed in the raw block feature before the LayerNorm); ``paper`` is the paper's
text (channels found by the massive-activation rule, zeroed after the AdaLN). Where no authors'
code exists, ``official`` is the same as ``paper`` and the preset says so (``same_as``).
:func:`resolve_profile` is the one place that picks a profile's feature settings.

A profile's ``pairs`` block is the *protocol* of the pair benchmarks (SPair-71k, PF-PASCAL,
AP-10K, HPatches): model input size and resize method, ensemble size, and how the target map is
upsampled for matching (:class:`PairProtocol`). These cost time (an 8-draw ensemble, say), so
they apply in the evaluators and wherever asked for explicitly, never silently in ``match``.
:func:`resolve_pair_protocol` is the one place that picks them; where the profile's source
states them for another benchmark only, the result carries that as a labelled assumption.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
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
#: Model input side in pixels where neither the user nor the preset names one (960: the side of
#: the paper's square input, and the authors' DAVIS short side).
DEFAULT_SIDE = 960
SizeField = Literal["image_size", "pair_long_side", "short_side"]
ProfileName = Literal["official", "paper"]
PROFILES: tuple[str, ...] = ("official", "paper")
#: The authors' computation where their code exists (Flux), else the paper's (the same there).
DEFAULT_PROFILE = "official"
#: The pair benchmarks a profile's ``pairs`` protocol serves.
PAIR_BENCHMARKS: tuple[str, ...] = ("spair", "pf-pascal", "ap-10k", "hpatches")
#: Resize methods of :func:`ditf_track.images.resize_image` (``pil-bicubic``: PIL's bicubic
#: filter, what the authors' SPair script gets from ``Image.resize``).
RESIZE_METHODS: tuple[str, ...] = ("auto", "area", "bilinear", "bicubic", "nearest", "pil-bicubic")
#: What the target map is bilinearly upsampled from before the per-pixel L2 normalisation:
#: ``raw``, the unnormalised modulated map (the authors' SPair script, and the paper's
#: "upsample, then normalise"), or ``unit``, the L2-normalised cells (ditf-track before 0.x).
UPSAMPLE_FROM: tuple[str, ...] = ("raw", "unit")
#: Where the massive channels are zeroed: in the AdaLN output (the paper's text) or in the raw
#: block feature before the LayerNorm (the authors' code).
DISCARD_STAGES: tuple[str, ...] = ("post_adaln", "pre_norm")


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


def parse_discard_channels(value: object) -> tuple[int, ...] | None:
    """``"auto"`` / None → None (the massive-activation rule finds them); ``"154,1446"`` or a
    list of ints → the sorted channel tuple. Shared by the CLI option and the preset field."""
    if value is None or value == "auto":
        return None
    items: list[object]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    channels: list[int] = []
    for item in items:
        try:
            channel = int(item)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            channel = -1
        if channel < 0 or isinstance(item, (bool, float)):
            raise ConfigError(
                f"discard channels {value!r}: {item!r} is not a channel index; give "
                "comma-separated whole numbers >= 0 (e.g. 154,1446) or 'auto'"
            )
        channels.append(channel)
    if not channels:
        raise ConfigError(
            "discard channels: the list is empty; give channels (e.g. 154,1446), 'auto' for "
            "the rule, or --feature-mode adaln for no discard"
        )
    return tuple(sorted(set(channels)))


@dataclass(frozen=True)
class ProfileSettings:
    """How one task's features are computed under a profile.

    ``discard_stage`` is where the massive channels are zeroed (:data:`DISCARD_STAGES`);
    ``discard_channels`` a fixed list, or None for the channels the rule finds on the first
    image or frame.
    """

    discard_stage: str = "post_adaln"
    discard_channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.discard_stage not in DISCARD_STAGES:
            raise ConfigError(
                f"unknown discard stage {self.discard_stage!r}; use one of {DISCARD_STAGES}"
            )
        object.__setattr__(self, "discard_channels", parse_discard_channels(self.discard_channels))


@dataclass(frozen=True)
class PairProtocol:
    """How a pair benchmark's images become features and matches under a profile.

    The model input is ``long_side`` (aspect kept, each side rounded to a multiple of 16) or
    ``square`` × ``square`` (aspect ignored): exactly one is set. ``resize`` is the method
    (:data:`RESIZE_METHODS`), ``ensemble`` the noise draws averaged, ``upsample_from`` what the
    target map is upsampled from (:data:`UPSAMPLE_FROM`). ``prompt_template`` is each image's
    prompt on its category where no captions file is given (None: the preset's prompt; the
    authors never condition on the empty prompt). ``stated_for`` are the benchmarks
    whose settings the profile's source gives; ``assumption`` says what the others assume by
    reusing them (required when ``stated_for`` leaves any out).
    """

    long_side: int | None = None
    square: int | None = None
    resize: str = "auto"
    ensemble: int = 1
    upsample_from: str = "raw"
    prompt_template: str | None = None
    stated_for: tuple[str, ...] = PAIR_BENCHMARKS
    assumption: str | None = None

    def __post_init__(self) -> None:
        if self.prompt_template is not None and "{category}" not in self.prompt_template:
            raise ConfigError(
                f"pairs protocol: prompt_template {self.prompt_template!r} has no {{category}}"
            )
        sides = [v for v in (self.long_side, self.square) if v is not None]
        if len(sides) != 1:
            raise ConfigError(
                f"pairs protocol: give exactly one of long_side and square (got long_side="
                f"{self.long_side}, square={self.square})"
            )
        if isinstance(sides[0], bool) or not isinstance(sides[0], int) or sides[0] < 16:
            raise ConfigError(f"pairs protocol: input side {sides[0]!r} must be a whole >= 16")
        if self.resize not in RESIZE_METHODS:
            raise ConfigError(
                f"pairs protocol: unknown resize {self.resize!r}; use one of {RESIZE_METHODS}"
            )
        if self.upsample_from not in UPSAMPLE_FROM:
            raise ConfigError(
                f"pairs protocol: unknown upsample_from {self.upsample_from!r}; use one of "
                f"{UPSAMPLE_FROM}"
            )
        check_t_k(0, 0, self.ensemble)
        stated = tuple(self.stated_for)
        unknown = sorted(set(stated) - set(PAIR_BENCHMARKS))
        if unknown or not stated:
            raise ConfigError(
                f"pairs protocol: stated_for {list(stated)} must name some of {PAIR_BENCHMARKS}"
            )
        object.__setattr__(self, "stated_for", stated)
        if set(stated) != set(PAIR_BENCHMARKS) and not self.assumption:
            raise ConfigError(
                "pairs protocol: stated_for leaves out some benchmarks; say in `assumption` "
                "what reusing the settings there assumes"
            )


@dataclass(frozen=True)
class ResolvedPairProtocol:
    """A pair benchmark's protocol settings as a run uses them: the profile asked for
    (``requested``) and the one that gave them (``used``), their ``source``, the settings, and
    ``assumption`` (None where the source states them for this ``benchmark``). ``note`` says why
    ``used`` differs from ``requested``. ``overridden`` lists the settings given explicitly
    (command-line flags), which replace the profile's."""

    requested: str
    used: str
    source: str
    benchmark: str | None
    long_side: int | None
    square: int | None
    resize: str
    ensemble: int
    upsample_from: str
    prompt_template: str | None = None
    assumption: str | None = None
    note: str | None = None
    overridden: tuple[str, ...] = ()

    def replace(self, **given: Any) -> ResolvedPairProtocol:
        """These settings with the ``given`` ones (None: not given) in place of the profile's;
        a ``long_side`` replaces ``square`` and the other way round."""
        given = {k: v for k, v in given.items() if v is not None}
        changed = tuple(sorted(given))
        if "long_side" in given and "square" in given:
            raise ConfigError("give one of --long-side and --square, not both")
        if "long_side" in given:
            given["square"] = None
        elif "square" in given:
            given["long_side"] = None
        PairProtocol(
            **{
                name: given.get(name, getattr(self, name))
                for name in ("long_side", "square", "resize", "ensemble", "upsample_from")
            }
        )  # validates the combination
        return dataclasses.replace(self, **given, overridden=changed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Profile:
    """One profile of a preset: its per-task settings and where they come from.

    ``same_as`` names the profile whose settings this one is (``official`` where no authors'
    code exists); ``model_channels`` is the width of the residual stream that
    ``discard_channels`` index (FLUX.1-dev's 3072): weights of another width are not the model
    the list was read from, so the profile does not apply to them.
    """

    source: str
    correspondence: ProfileSettings | None = None
    video: ProfileSettings | None = None
    same_as: str | None = None
    model_channels: int | None = None
    pairs: PairProtocol | None = None


@dataclass(frozen=True)
class ResolvedProfile:
    """The profile a run asked for (``requested``) and the one whose settings it got
    (``used``; they differ where ``official`` is the same as ``paper``), with those settings
    for its task. ``note`` says why, where they differ."""

    requested: str
    used: str
    source: str
    settings: ProfileSettings
    model_channels: int | None = None
    note: str | None = None

    def key(self) -> dict[str, str]:
        """What enters an extractor's identity (the settings enter it on their own)."""
        return {"requested": self.requested, "used": self.used}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The paper's computation for a model no preset describes (a bare ``--model``).
_PAPER_SOURCE = (
    "the paper's text (sec. 4.3): channels found by the massive-activation rule "
    "(|v| >= 100 x median), zeroed after the AdaLN"
)
#: The paper's pair protocol for a model no preset describes: 960x960 input (its appendix), one
#: draw, the target map upsampled before the L2 normalisation.
_PAPER_PAIRS = PairProtocol(
    square=DEFAULT_SIDE,
    stated_for=("spair", "pf-pascal", "ap-10k"),
    assumption="the paper states its input size for semantic correspondence; HPatches is "
    "assumed to use the same",
)
_PAPER_PAIRS_SOURCE = "the paper's text (appendix): 960x960 input"
#: The weight-free colour baseline: no paper, no authors' code; ditf-track's own sizes.
_LAB_PAIRS_SOURCE = "the lab baseline (not DiTF): ditf-track's own input size"


def check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")


def resolve_profile(
    preset: Preset | None, task: Task, profile: str = DEFAULT_PROFILE
) -> ResolvedProfile:
    """``profile``'s settings for ``preset``'s ``task`` (None: a model no preset describes, where
    both profiles are the paper's)."""
    check_profile(profile)
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if preset is None or not preset.profiles:
        note = None
        if profile != "paper":
            what = "no preset names this model" if preset is None else f"{preset.name} is no DiT"
            note = f"{what}: {profile} is the paper's computation"
        return ResolvedProfile(profile, "paper", _PAPER_SOURCE, ProfileSettings(), note=note)
    chosen = preset.profiles[profile]
    used = chosen.same_as or profile
    target = preset.profiles[used]
    settings = target.correspondence if task == "correspondence" else target.video
    assert settings is not None  # preset_from_dict checks it
    note = (
        f"{profile} is the same as {used} for {preset.name}: {chosen.source}"
        if chosen.same_as
        else None
    )
    return ResolvedProfile(
        profile, used, target.source, settings, model_channels=target.model_channels, note=note
    )


def resolve_pair_protocol(
    preset: Preset | None, benchmark: str | None, profile: str = DEFAULT_PROFILE
) -> ResolvedPairProtocol:
    """``profile``'s pair protocol for ``preset`` on ``benchmark`` (one of
    :data:`PAIR_BENCHMARKS`; None: no benchmark, e.g. ``match``, so no assumption is labelled).

    Without a preset (a bare ``--model``) both profiles are the paper's text; the weight-free
    ``lab`` baseline has no profiles and keeps its preset's long side.
    """
    check_profile(profile)
    if benchmark is not None and benchmark not in PAIR_BENCHMARKS:
        raise ConfigError(f"unknown pair benchmark {benchmark!r}; use one of {PAIR_BENCHMARKS}")
    note = None
    if preset is None or not preset.profiles:
        if preset is not None and preset.weight_free:
            side = preset.correspondence.pair_long_side or DEFAULT_SIDE
            pairs, used, source = PairProtocol(long_side=side), profile, _LAB_PAIRS_SOURCE
        else:
            pairs, used, source = _PAPER_PAIRS, "paper", _PAPER_PAIRS_SOURCE
            if profile != "paper":
                note = f"no preset names this model: {profile} is the paper's protocol"
    else:
        chosen = preset.profiles[profile]
        used = chosen.same_as or profile
        target = preset.profiles[used]
        assert target.pairs is not None  # preset_from_dict checks it
        pairs, source = target.pairs, target.source
        if chosen.same_as:
            note = f"{profile} is the same as {used} for {preset.name}: {chosen.source}"
    assumption = None
    if benchmark is not None and benchmark not in pairs.stated_for:
        assumption = pairs.assumption
    return ResolvedPairProtocol(
        requested=profile,
        used=used,
        source=source,
        benchmark=benchmark,
        long_side=pairs.long_side,
        square=pairs.square,
        resize=pairs.resize,
        ensemble=pairs.ensemble,
        upsample_from=pairs.upsample_from,
        prompt_template=pairs.prompt_template,
        assumption=assumption,
        note=note,
    )


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
    profiles: dict[str, Profile] = field(default_factory=dict)
    #: DiT width a PCA reduces the features to before the DINOv2 fusion (paper App. C: 1280
    #: for SD3.5 and Flux); None: concatenated without PCA (PixArt-α, SD3; the lab baseline).
    dinov2_pca_dim: int | None = None

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
    """The checkout's ``configs/`` folder when this code runs from a checkout, else the installed
    ``ditf_track.configs`` package.

    An editable install maps ``ditf_track.configs`` to the checkout it was made from, which
    need not be the one running (a git worktree on ``PYTHONPATH``); one made before the presets
    moved out of ``ditf_track/`` maps only ``ditf_track``: there ``ditf_track.configs`` is
    missing, or is a leftover ``ditf_track/configs/__pycache__`` that imports as an empty
    namespace package.
    """
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs" / "__init__.py").is_file():
        return checkout / "configs"
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
        data["profiles"] = _profiles_from(data.get("profiles") or {}, family, source)
        if "dinov2_pca_dim" not in data and family != "lab":
            raise ConfigError(
                f"{source}: no dinov2_pca_dim (1280 where the paper reduces the DiT features "
                "before the DINOv2 fusion, null where it does not); see configs/flux.yaml"
            )
        pca = data.get("dinov2_pca_dim")
        if pca is not None and (isinstance(pca, bool) or not isinstance(pca, int) or pca < 1):
            raise ConfigError(f"{source}: dinov2_pca_dim {pca!r} must be a whole >= 1 or null")
        return Preset(**data)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{source}: invalid preset ({exc}); see configs/*.yaml") from exc


def _profiles_from(raw: dict[str, Any], family: str, source: str) -> dict[str, Profile]:
    """The ``profiles`` section: both profiles for a DiT (``official`` may be ``same_as``
    ``paper``), none for the weight-free baseline."""
    if family == "lab":
        if raw:
            raise ConfigError(f"{source}: the lab baseline has no profiles; remove the section")
        return {}
    if set(raw) != set(PROFILES):
        raise ConfigError(
            f"{source}: profiles {sorted(raw)} must be exactly {list(PROFILES)}; see "
            "configs/flux.yaml"
        )
    profiles: dict[str, Profile] = {}
    for name, entry in raw.items():
        data = dict(entry)
        same_as = data.get("same_as")
        if same_as is not None:
            if same_as not in PROFILES or same_as == name or raw[same_as].get("same_as"):
                raise ConfigError(
                    f"{source}: profile {name} is the same as {same_as!r}, which is not a "
                    "profile with settings"
                )
            if any(v is not None for k, v in data.items() if k not in ("same_as", "source")):
                raise ConfigError(
                    f"{source}: profile {name} is the same as {same_as}; give it no settings"
                )
        else:
            for task in TASKS:
                if task not in data:
                    raise ConfigError(f"{source}: profile {name} has no {task} settings")
                data[task] = ProfileSettings(**data[task])
            if "pairs" not in data:
                raise ConfigError(
                    f"{source}: profile {name} has no pairs protocol; see configs/flux.yaml"
                )
            data["pairs"] = _pairs_from(data["pairs"], f"{source}: profile {name}")
        profiles[name] = Profile(**data)
    return profiles


def _pairs_from(raw: Any, where: str) -> PairProtocol:
    """A profile's ``pairs`` mapping → :class:`PairProtocol` (errors name the file and profile)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: pairs must be a mapping; see configs/flux.yaml")
    data = dict(raw)
    if "stated_for" in data:
        data["stated_for"] = tuple(data["stated_for"] or ())
    try:
        return PairProtocol(**data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
