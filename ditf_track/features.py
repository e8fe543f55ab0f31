"""DiTF itself: AdaLN modulation of the block-k feature and channel discard.

A DiT block's residual stream carries *massive activations*: a few fixed channels about 100×
the median magnitude on every patch token (paper §1; SD3.5 channel 676, Flux channels 154 and
1446). They dominate cosine similarity, so raw block features match poorly. DiTF takes the
block-k feature z *before* the block's AdaLN, applies that AdaLN's own channel-wise modulation
``ẑ = (1 + γ) · LayerNorm(z) + β`` (which suppresses most of the massive channels' weight),
then zeroes the channels that are still massive ("channel discard"). The channel set is found
from statistics of z and held fixed for every frame of a clip so that cosine similarities stay
comparable across frames.

Two orders of operations exist (``discard_stage``, chosen by a preset's profile, see
:mod:`ditf_track.presets`): the paper's text zeroes the channels in the AdaLN output
(``post_adaln``); the authors' code zeroes a fixed list (Flux: 154, 1446) in the raw z *before*
the LayerNorm (``pre_norm``), so the LayerNorm's mean and variance leave them out. Either way an
ensemble averages the raw z and the modulation over its noise draws first.

Token tensors are ``(N, L, C)`` (batch, image tokens in row-major grid order, channels);
feature maps are ``(N, C, h, w)`` on the token grid, one cell per ``stride`` model-input pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError
from .presets import (
    DEFAULT_PROFILE,
    DISCARD_STAGES,
    Preset,
    ResolvedProfile,
    Task,
    check_t_k,
    parse_discard_channels,
    resolve_profile,
)

FeatureMode = Literal["original", "adaln", "adaln+discard"]
DiscardStage = Literal["post_adaln", "pre_norm"]
ConditionMode = Literal["t+c", "t", "c"]
FEATURE_MODES: tuple[str, ...] = ("original", "adaln", "adaln+discard")
CONDITION_MODES: tuple[str, ...] = ("t+c", "t", "c")


@dataclass(frozen=True)
class DiscardRule:
    """When a channel of the pre-AdaLN feature z counts as massive.

    An activation is massive when ``|v| ≥ ratio × median(|z|)`` of its image's feature map
    (paper §1, ratio 100). Massive activations sit on *every* patch token, so a channel is
    discarded when at least ``min_token_fraction`` of its tokens are massive; this keeps a
    single outlier token from discarding a channel.
    """

    ratio: float = 100.0
    min_token_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.ratio <= 1:
            raise ConfigError(f"discard ratio {self.ratio} must be > 1 (the paper uses 100)")
        if not 0 < self.min_token_fraction <= 1:
            raise ConfigError(f"min_token_fraction {self.min_token_fraction} must be in (0, 1]")


@dataclass(frozen=True)
class DiTFSettings:
    """Everything that changes a DiTF feature map (and therefore enters the cache key).

    ``t`` is the timestep in [0, 1000); ``k`` the global block index; ``condition`` picks what
    conditions the AdaLN modulation used on z (``"t+c"`` timestep and pooled text, ``"t"`` or
    ``"c"`` alone, an ablation); ``upsample`` > 1 bilinearly upsamples the maps before the L2
    normalisation (as the official SPair script does). ``seed`` and ``ensemble`` draw each
    item's own noise (:mod:`ditf_track.noise`); ``vae_sample`` encodes with a posterior sample
    ``mean + std·ε`` of the VAE, drawn per item and member as the official code does (False:
    the posterior mean, no noise). ``discard_stage`` is where the massive channels are zeroed
    (see the module docstring); ``discard_channels`` fixes them (the authors' list for Flux),
    None finds them with ``discard_rule`` on the first image or frame. ``prompt`` is the text
    condition of every image unless a call gives each image its own (a caption per image,
    :meth:`~ditf_track.extractor.DiTFExtractor.extract`'s ``prompts``; the feature identity
    then holds that image's prompt).
    """

    t: int
    k: int
    prompt: str = ""
    guidance: float | None = None
    condition: ConditionMode = "t+c"
    feature_mode: FeatureMode = "adaln+discard"
    discard_stage: DiscardStage = "post_adaln"
    discard_channels: tuple[int, ...] | None = None
    discard_rule: DiscardRule = field(default_factory=DiscardRule)
    seed: int = 0
    ensemble: int = 1
    upsample: int = 1
    vae_sample: bool = True

    def __post_init__(self) -> None:
        check_t_k(self.t, self.k, self.ensemble)
        if not isinstance(self.vae_sample, bool):
            raise ConfigError(f"vae_sample must be True or False, got {self.vae_sample!r}")
        if self.condition not in CONDITION_MODES:
            raise ConfigError(
                f"unknown condition mode {self.condition!r}; use one of {CONDITION_MODES}"
            )
        if self.feature_mode not in FEATURE_MODES:
            raise ConfigError(
                f"unknown feature mode {self.feature_mode!r}; use one of {FEATURE_MODES}"
            )
        if self.discard_stage not in DISCARD_STAGES:
            raise ConfigError(
                f"unknown discard stage {self.discard_stage!r}; use one of {DISCARD_STAGES}"
            )
        if self.upsample < 1:
            raise ConfigError(f"upsample={self.upsample} must be at least 1")
        object.__setattr__(self, "discard_channels", parse_discard_channels(self.discard_channels))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ActivationStats:
    """Per-channel statistics of a pre-AdaLN feature map (paper Fig. 2, §1).

    ``mean``/``std`` are across tokens; ``max_ratio`` is ``max|v| / median|z|`` (the median over
    the whole map of its image); ``massive_fraction`` the share of tokens whose ``|v|`` reaches
    ``ratio × median|z|``. All arrays are ``(C,)`` float64 numpy (small, serialisable).
    """

    mean: np.ndarray
    std: np.ndarray
    max_abs: np.ndarray
    max_ratio: np.ndarray
    massive_fraction: np.ndarray
    median_abs: float
    ratio: float

    @property
    def num_channels(self) -> int:
        return int(self.mean.shape[0])


def massive_activation_stats(z: torch.Tensor, ratio: float = 100.0) -> ActivationStats:
    """Statistics of ``z`` ``(N, L, C)`` per channel; medians are per image (paper §1)."""
    if z.ndim != 3:
        raise ValueError(f"expected tokens (N, L, C), got shape {tuple(z.shape)}")
    z32 = z.detach().float()
    magnitude = z32.abs()
    median = magnitude.flatten(1).median(dim=1).values.clamp_min(1e-12)  # (N,)
    massive = magnitude >= ratio * median[:, None, None]
    flat = z32.reshape(-1, z32.shape[-1])
    max_ratio = (magnitude / median[:, None, None]).amax(dim=(0, 1))
    return ActivationStats(
        mean=flat.mean(0).double().cpu().numpy(),
        std=flat.std(0, unbiased=False).double().cpu().numpy(),
        max_abs=magnitude.amax(dim=(0, 1)).double().cpu().numpy(),
        max_ratio=max_ratio.double().cpu().numpy(),
        massive_fraction=massive.float().mean(dim=(0, 1)).double().cpu().numpy(),
        median_abs=float(median.mean()),
        ratio=float(ratio),
    )


def find_massive_channels(
    z_or_stats: torch.Tensor | ActivationStats, rule: DiscardRule | None = None
) -> tuple[int, ...]:
    """Channels of the pre-AdaLN feature that carry massive activations, sorted."""
    rule = rule or DiscardRule()
    if isinstance(z_or_stats, ActivationStats):
        if z_or_stats.ratio != rule.ratio:
            raise ConfigError(
                f"statistics were computed with ratio {z_or_stats.ratio}, the rule asks for "
                f"{rule.ratio}; pass the feature tensor z instead"
            )
        stats = z_or_stats
    else:
        z = z_or_stats if z_or_stats.ndim == 3 else z_or_stats.flatten(2).transpose(1, 2)
        stats = massive_activation_stats(z, rule.ratio)
    picked = np.flatnonzero(stats.massive_fraction >= rule.min_token_fraction)
    return tuple(int(c) for c in picked)


def adaln_modulate(
    z: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """``(1 + γ) · LayerNorm(z) + β`` with a LayerNorm without affine, as the DiT block does.

    ``z`` is ``(N, L, C)``; ``gamma``/``beta`` are ``(N, C)`` (or broadcastable ``(N, 1, C)``).
    The arithmetic order equals diffusers' blocks so that the result matches the tensor that
    enters the block's feed-forward bit for bit in float32.
    """
    if gamma.ndim == 2:
        gamma, beta = gamma[:, None, :], beta[:, None, :]
    normed = F.layer_norm(z, (z.shape[-1],), eps=eps)
    return normed * (1 + gamma) + beta


def modulate_and_discard(
    z: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    channels: Sequence[int],
    *,
    feature_mode: str = "adaln+discard",
    discard_stage: str = "post_adaln",
    eps: float = 1e-6,
) -> torch.Tensor:
    """The DiTF tokens ``(N, L, C)`` of the block feature ``z`` ``(N, L, C)`` and its modulation
    ``gamma``/``beta`` ``(N, C)`` — each already the mean over an ensemble's draws.

    ``original``: z itself; ``adaln``: ``(1 + γ) · LN(z) + β``; ``adaln+discard`` zeroes
    ``channels`` in that output (``post_adaln``, the paper) or in z before the LayerNorm
    (``pre_norm``, the authors' code). Computed in ``z``'s dtype.
    """
    if feature_mode == "original":
        return z
    discard = feature_mode == "adaln+discard"
    if discard and discard_stage == "pre_norm":
        z = discard_channels(z, channels)
    tokens = adaln_modulate(z, gamma, beta, eps)
    if discard and discard_stage == "post_adaln":
        tokens = discard_channels(tokens, channels)
    return tokens


def discard_channels(x: torch.Tensor, channels: Sequence[int], dim: int = -1) -> torch.Tensor:
    """A copy of ``x`` with ``channels`` along ``dim`` set to zero."""
    if not channels:
        return x
    out = x.clone()
    index = torch.as_tensor(list(channels), device=x.device, dtype=torch.long)
    out.index_fill_(dim, index, 0)
    return out


def resolve_settings(
    preset: Preset | None,
    task: Task,
    profile: str | ResolvedProfile = DEFAULT_PROFILE,
    **overrides: Any,
) -> tuple[DiTFSettings, ResolvedProfile]:
    """The one place a preset, a task, a profile and the given settings become DiTF settings.

    The preset's ``task`` settings (t, k, prompt, ensemble, guidance), then the profile's
    (discard stage and channels), then ``overrides`` (None: not given). ``discard_ratio`` sets
    the rule's ratio; ``discard_channels`` takes ``"auto"`` (the rule), ``"154,1446"`` or a list.
    Without a preset, ``t`` and ``k`` must be given and both profiles are the paper's.
    """
    resolved = (
        profile if isinstance(profile, ResolvedProfile) else resolve_profile(preset, task, profile)
    )
    fields: dict[str, Any] = {
        "discard_stage": resolved.settings.discard_stage,
        "discard_channels": resolved.settings.discard_channels,
    }
    if preset is not None and not preset.weight_free:
        task_settings = preset.task(task)
        fields.update(
            t=task_settings.t,
            k=task_settings.k,
            prompt=task_settings.prompt,
            ensemble=task_settings.ensemble,
            guidance=preset.guidance,
        )
    fields.update({name: v for name, v in overrides.items() if v is not None})
    ratio = fields.pop("discard_ratio", None)
    if ratio is not None:
        fields["discard_rule"] = DiscardRule(ratio=float(ratio))
    if "t" not in fields or "k" not in fields:
        raise ConfigError("give t and k (or a preset) to build a DiTF extractor")
    known = set(DiTFSettings.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown DiTF setting(s) {unknown}; known: {sorted(known)}")
    return DiTFSettings(**fields), resolved


@dataclass
class FeatureMaps:
    """Dense features on the token grid, ready for cosine similarity.

    ``features`` is ``(N, C, h, w)``, L2-normalised over C at every cell; cell (i, j) covers
    model-input pixels ``[i·stride, (i+1)·stride) × [j·stride, (j+1)·stride)`` (divide ``stride``
    by ``upsample`` when the maps were upsampled). ``input_size`` is the model input (H, W).
    ``discarded_channels`` are the channels zeroed (empty when none were); ``stats`` are the
    statistics of the pre-AdaLN feature z they were found from. ``norms`` ``(N, h, w)`` float32
    are the cells' L2 norms before the normalisation (``features · norms`` is the unnormalised
    map that pair matching upsamples, :mod:`ditf_track.match`); None: unit cells throughout.
    """

    features: torch.Tensor
    stride: int
    input_size: tuple[int, int]
    discarded_channels: tuple[int, ...] = ()
    stats: ActivationStats | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    norms: torch.Tensor | None = None

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the maps."""
        return int(self.features.shape[-2]), int(self.features.shape[-1])

    def __len__(self) -> int:
        return int(self.features.shape[0])


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything that turns RGB frames into :class:`FeatureMaps` (DiTF, or the ``lab`` baseline).

    ``extract`` takes ``(N, H, W, 3) uint8`` RGB images whose sides are multiples of ``stride``
    and returns maps of ``(H/stride, W/stride)`` cells. ``massive_channels`` fixes the discarded
    channels (found on the first frames of a clip, then held); ``None`` finds them on this batch.
    ``noise_ids`` are the images' stable ids, one each, that seed their noise
    (:mod:`ditf_track.noise`: a video frame's index in its file; None: each image's content
    hash); an extractor without noise ignores them.
    ``identity()`` lists everything that changes the features, for cache keys and config.json.
    ``device`` is where the maps come back (the feature cache keeps them there; config.json
    records it): every extractor has one, so no caller asks which kind of extractor it holds.
    """

    stride: int

    @property
    def device(self) -> torch.device: ...

    def identity(self) -> dict[str, Any]: ...

    def extract(
        self,
        images: np.ndarray | torch.Tensor,
        *,
        massive_channels: Sequence[int] | None = None,
        noise_ids: Sequence[str] | None = None,
    ) -> FeatureMaps: ...


def tokens_to_maps(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(N, h·w, C)`` row-major tokens → ``(N, C, h, w)`` maps."""
    n, length, c = tokens.shape
    h, w = grid
    if length != h * w:
        raise ValueError(f"{length} tokens do not fill a {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(n, c, h, w)


def normalize_maps(maps: torch.Tensor, upsample: int = 1) -> torch.Tensor:
    """Optionally upsample ``(N, C, h, w)`` bilinearly by ``upsample``, then L2-normalise over C."""
    if upsample > 1:
        maps = F.interpolate(maps, scale_factor=upsample, mode="bilinear", align_corners=False)
    return F.normalize(maps, dim=1, eps=1e-12)


def cell_norms(maps: torch.Tensor, upsample: int = 1) -> torch.Tensor:
    """L2 norms ``(N, h, w)`` float32 of the cells of ``(N, C, h, w)`` maps, upsampled as
    :func:`normalize_maps` upsamples them: the factor that undoes its normalisation."""
    if upsample > 1:
        maps = F.interpolate(maps, scale_factor=upsample, mode="bilinear", align_corners=False)
    return maps.float().norm(dim=1)
