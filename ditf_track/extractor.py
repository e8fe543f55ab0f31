"""The DiTF feature extractor: images → latents → block-k feature → AdaLN → discard → maps.

:class:`DiTFExtractor` drives a :class:`~ditf_track.backbones.DiTBackbone` with the DiTF math of
:mod:`ditf_track.features`. Build it from a preset (``DiTFExtractor.from_preset("flux")``) or
from a hub id / folder and a family (``DiTFExtractor.from_pretrained(path, family="sd3", t=,
k=)``); :func:`build_extractor` also returns the weight-free ``lab`` baseline.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .backbones import TOKEN_STRIDE, BackbonePlan, BlockCapture, DiTBackbone, backbone_class
from .devices import dtype_name, out_of_memory_as_error, resolve_device, resolve_dtype
from .errors import ConfigError, InputError
from .features import (
    DiTFSettings,
    FeatureExtractor,
    FeatureMaps,
    cell_norms,
    find_massive_channels,
    massive_activation_stats,
    modulate_and_discard,
    normalize_maps,
    resolve_settings,
    tokens_to_maps,
)
from .hub import folder_fingerprint
from .noise import NOISE_RULE, check_noise_ids, default_noise_ids, item_noise
from .precomputed import PrecomputedFeatures
from .presets import DEFAULT_PROFILE, Preset, ResolvedProfile, Task, load_preset, resolve_profile

if TYPE_CHECKING:
    from .config import FeatureConfig, Runtime

log = logging.getLogger(__name__)


class DiTFExtractor:
    """DiTF features of a DiT (PixArt-α, SD3/SD3.5, Flux); implements ``FeatureExtractor``.

    ``extract(images)`` takes ``(N, H, W, 3) uint8`` RGB with H, W multiples of 16 and returns
    :class:`FeatureMaps` ``(N, C, H/16, W/16)`` (× ``upsample``). Each image and ensemble
    member gets its own noise (and VAE posterior sample), drawn from the seed and the image's
    stable id (:mod:`ditf_track.noise`) — never from its place in the batch — so a frame's
    features are the same whichever frames it is extracted with.

    ``profile`` is the resolved profile the settings came from (``identity()`` records it).
    Fixed ``discard_channels`` are compared once, on the first image or frame, with the
    channels the rule finds there: a disagreement is one logged warning naming both sets, as is
    a rule that finds none.
    """

    def __init__(
        self,
        backbone: DiTBackbone | BackbonePlan,
        settings: DiTFSettings,
        *,
        batch_size: int | None = None,
        preset: str | None = None,
        max_sequence_length: int | None = None,
        profile: ResolvedProfile | None = None,
    ) -> None:
        if settings.k > backbone.k_max:
            raise ConfigError(
                f"block index k={settings.k} was not loaded (blocks 0..{backbone.k_max} are)"
            )
        if backbone.family == "pixart" and settings.condition == "c":
            raise ConfigError(
                "condition mode 'c' is not available for PixArt-α: its AdaLN takes the "
                "timestep (and image size) only; use 't+c' or 't'"
            )
        width = backbone.hidden_size
        fixed = settings.discard_channels or ()
        if any(c >= width for c in fixed):
            raise ConfigError(
                f"discard channels {list(fixed)} are not all channels of this model (it has "
                f"{width}: 0..{width - 1}); give channels below {width} or --discard-channels auto"
            )
        #: the model as described before loading (identity, device, dtype: no weights needed)
        self._described: DiTBackbone | BackbonePlan = backbone
        self._backbone = backbone if isinstance(backbone, DiTBackbone) else None
        self.settings = settings
        self.profile = profile or resolve_profile(None, "video", DEFAULT_PROFILE)
        self._channels_checked = False
        self.batch_size = batch_size
        self.preset = preset
        self.max_sequence_length = max_sequence_length  # the text condition's token count
        self.stride = TOKEN_STRIDE // settings.upsample if settings.upsample > 1 else TOKEN_STRIDE

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_preset(
        cls,
        name: str | Preset,
        task: Task = "correspondence",
        *,
        model: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int | None = None,
        profile: str = DEFAULT_PROFILE,
        prompts: Sequence[str] = (),
        defer_load: bool = False,
        **overrides: Any,
    ) -> DiTFExtractor:
        """A preset's model with its ``task`` settings under ``profile``; ``overrides`` replace
        any setting.

        ``model`` replaces the preset's hub id with another id or a local folder (same family).
        ``prompts`` (the per-image prompts a run will pass to :meth:`extract`) are encoded with
        the settings' prompt in one pass, before the transformer loads. ``defer_load``: read
        and check the model's config only, and load the model (and encode the prompts) when it
        is first used — :meth:`identity` needs no weights (a Ray driver whose workers extract).
        A profile whose fixed channels index another width than the loaded model's (a tiny test
        model under the ``flux`` preset) does not apply to those weights: the paper's profile is
        used, with one logged warning, and ``identity()`` records it.
        """
        preset = load_preset(name) if isinstance(name, str) else name
        if preset.weight_free:
            raise ConfigError("the lab preset is not a DiT; use build_extractor('lab')")
        settings, resolved = resolve_settings(preset, task, profile, **overrides)
        backbone = cls._load_backbone(
            model or preset.model_id or "",
            family=preset.family,
            settings=settings,
            device=device,
            dtype=dtype,
            revision=revision if revision is not None else preset.revision,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            max_sequence_length=preset.max_sequence_length,
            prompts=prompts,
            defer_load=defer_load,
        )
        width = backbone.hidden_size
        if resolved.model_channels is not None and width != resolved.model_channels:
            note = (
                f"the {resolved.requested} profile's discard channels "
                f"{list(resolved.settings.discard_channels or ())} are those of "
                f"{preset.model_id}'s {resolved.model_channels} channels; this model has "
                f"{width}, so the paper's profile is used"
            )
            log.warning("%s", note)
            paper = resolve_profile(preset, task, "paper")
            resolved = dataclasses.replace(paper, requested=resolved.requested, note=note)
            settings, resolved = resolve_settings(preset, task, resolved, **overrides)
        return cls(
            backbone,
            settings,
            batch_size=batch_size,
            preset=preset.name,
            max_sequence_length=preset.max_sequence_length,
            profile=resolved,
        )

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str],
        *,
        family: str,
        settings: DiTFSettings | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_sequence_length: int | None = None,
        batch_size: int | None = None,
        preset: str | None = None,
        profile: str | ResolvedProfile = DEFAULT_PROFILE,
        prompts: Sequence[str] = (),
        defer_load: bool = False,
        **fields: Any,
    ) -> DiTFExtractor:
        """Load blocks 0..k of ``model`` (hub id or folder in the hub's layout) of ``family``.

        No preset describes the model, so both profiles are the paper's computation; ``fields``
        (t, k and any other DiTF setting) are used where ``settings`` is None; ``prompts`` as
        in :meth:`from_preset`.
        """
        if settings is None:
            settings, resolved = resolve_settings(None, "video", profile, **fields)
        elif isinstance(profile, ResolvedProfile):
            resolved = profile
        else:
            resolved = resolve_profile(None, "video", profile)
        backbone = cls._load_backbone(
            model,
            family=family,
            settings=settings,
            device=device,
            dtype=dtype,
            revision=revision,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            max_sequence_length=max_sequence_length,
            prompts=prompts,
            defer_load=defer_load,
        )
        return cls(
            backbone,
            settings,
            batch_size=batch_size,
            preset=preset,
            max_sequence_length=max_sequence_length,
            profile=resolved,
        )

    @staticmethod
    def _load_backbone(
        model: str | os.PathLike[str],
        *,
        family: str,
        settings: DiTFSettings,
        device: str | torch.device,
        dtype: str | torch.dtype | None,
        revision: str | None,
        local_files_only: bool | None,
        cache_dir: str | os.PathLike[str] | None,
        max_sequence_length: int | None,
        prompts: Sequence[str] = (),
        defer_load: bool = False,
    ) -> DiTBackbone | BackbonePlan:
        """Blocks 0..k of ``model`` and what encodes ``settings.prompt`` and ``prompts`` (all
        encoded first, with one text-encoder load); with ``defer_load`` only its checked plan
        (the config read, nothing loaded until the extractor first needs the model)."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        plan = backbone_class(family).plan(
            model,
            k=settings.k,
            revision=revision,
            device=dev,
            dtype=dt,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            max_sequence_length=max_sequence_length,
            prompts=(settings.prompt, *_check_prompts(prompts)),
        )
        if defer_load:
            return plan
        with out_of_memory_as_error("loading the model"):
            return plan.load()

    @property
    def backbone(self) -> DiTBackbone:
        """The loaded model; an extractor built with ``defer_load`` loads it here, on first use."""
        if self._backbone is None:
            assert isinstance(self._described, BackbonePlan)
            with out_of_memory_as_error("loading the model"):
                self._backbone = self._described.load()
            self._described = self._backbone
        return self._backbone

    @property
    def loaded(self) -> bool:
        """Whether the model's weights are loaded (False until first use with ``defer_load``)."""
        return self._backbone is not None

    @property
    def device(self) -> torch.device:
        return self._described.device

    # -- protocol ----------------------------------------------------------------------------
    def identity(self, prompt: str | None = None) -> dict[str, Any]:
        """Everything that changes the features (cache keys, config.json); ``prompt``: the
        identity of a feature extracted with that per-image prompt instead of the settings'."""
        b = self._described
        settings = self.settings.to_dict()
        if prompt is not None:
            settings["prompt"] = prompt
        return {
            "extractor": "ditf",
            "preset": self.preset,
            "family": b.family,
            "model": b.model_id,
            "revision": b.revision,
            "model_files": folder_fingerprint(b.model_id, ("transformer", "vae")),
            "dtype": dtype_name(b.dtype),
            "max_sequence_length": self.max_sequence_length,
            "stride": self.stride,
            "noise": NOISE_RULE,
            "profile": self.profile.key(),
            **settings,
        }

    def encode_prompts(self, prompts: Sequence[str]) -> list[str]:
        """Encode every uncached prompt of ``prompts`` in one pass (one text-encoder load; on a
        CUDA device the transformer steps aside once), so later :meth:`extract` calls with
        them never load a text encoder; return the prompts encoded."""
        return self.backbone.prepare_conditions(_check_prompts(prompts))

    @torch.inference_mode()
    def extract(
        self,
        images: np.ndarray | torch.Tensor,
        *,
        massive_channels: Sequence[int] | None = None,
        noise_ids: Sequence[str] | None = None,
        prompts: Sequence[str] | None = None,
    ) -> FeatureMaps:
        """DiTF maps of ``images`` ``(N, H, W, 3) uint8``; see the class docstring.

        ``noise_ids`` are the images' stable ids, one each (a video frame's
        :func:`~ditf_track.noise.frame_noise_id`); None: each image's content hash.
        ``prompts`` are the images' own text conditions, one each (a caption per image); None:
        the settings' prompt. Images are run in groups of equal prompt (each image's noise is
        its own, so grouping changes nothing); ``meta["prompts"]`` lists them and
        :meth:`identity` with an image's prompt is its feature identity.
        """
        pixels = _to_pixels(images)
        ids = self._noise_ids(images, noise_ids, len(pixels))
        texts = self._prompts(prompts, len(pixels))
        size = (int(pixels.shape[2]), int(pixels.shape[3]))
        step = self.batch_size or len(pixels)
        groups: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            groups.setdefault(text, []).append(i)
        parts = []
        order: list[int] = []
        for text, members in groups.items():
            for j in range(0, len(members), step):
                chunk = members[j : j + step]
                batch = pixels[chunk[0] : chunk[-1] + 1] if len(groups) == 1 else pixels[chunk]
                parts.append(self._capture(batch, [ids[i] for i in chunk], text))
                order += chunk
        maps = self.features_from_block(_reorder(_concat(parts), order), size, massive_channels)
        if prompts is not None:
            maps.meta["prompts"] = texts
            maps.meta["prompt"] = texts[0] if len(groups) == 1 else None
        return maps

    def features_from_block(
        self,
        cap: BlockCapture,
        input_size: tuple[int, int],
        massive_channels: Sequence[int] | None = None,
    ) -> FeatureMaps:
        """Apply the feature mode (original / AdaLN / AdaLN + discard) to block-k tensors.

        ``cap.z`` ``(N, h·w, C)``, ``cap.gamma``/``cap.beta`` ``(N, C)``: ensemble means, the
        authors' order (the modulation depends on t and the text, not on the noise, so each
        draw's equals the mean exactly).
        Massive channels are those given (held for a clip), else the settings' fixed ones, else
        the rule's on z. AdaLN runs in float32; maps come back in the model dtype.
        """
        s = self.settings
        z, gamma, beta, grid, eps = cap.z, cap.gamma, cap.beta, cap.grid, cap.eps
        stats = massive_activation_stats(z, s.discard_rule.ratio)
        found = find_massive_channels(stats, s.discard_rule)
        if massive_channels is not None:
            channels = tuple(int(c) for c in massive_channels)
        else:
            channels = s.discard_channels if s.discard_channels is not None else found
        discard = s.feature_mode == "adaln+discard"
        if discard and massive_channels is None and not self._channels_checked:
            self._channels_checked = True
            self._warn_about_channels(found)
        tokens = modulate_and_discard(
            z.float(),
            gamma.float(),
            beta.float(),
            channels,
            feature_mode=s.feature_mode,
            discard_stage=s.discard_stage,
            eps=eps,
        )
        raw = tokens_to_maps(tokens, grid)
        maps = normalize_maps(raw, s.upsample).to(self.backbone.dtype)
        return FeatureMaps(
            features=maps,
            stride=self.stride,
            input_size=input_size,
            discarded_channels=channels if discard else (),
            stats=stats,
            norms=cell_norms(raw, s.upsample),
            meta={
                "massive_channels": list(channels),
                "rule_channels": list(found),
                **self.identity(),
            },
        )

    def _warn_about_channels(self, found: tuple[int, ...]) -> None:
        """The one check of the channels on the first image or frame (see the class docstring)."""
        fixed = self.settings.discard_channels
        ratio = self.settings.discard_rule.ratio
        if fixed is not None and tuple(fixed) != found:
            log.warning(
                "the fixed discard channels %s differ from those the massive-activation rule "
                "finds on the first image or frame (%s); the fixed ones are discarded "
                "(--discard-channels auto uses the rule)",
                list(fixed),
                list(found) or "none",
            )
        elif fixed is None and not found:
            log.warning(
                "the massive-activation rule found no channel to discard on the first image or "
                "frame (none at |v| >= %g x median |z|); nothing is discarded (fix them with "
                "--discard-channels or change --discard-ratio)",
                ratio,
            )

    @torch.inference_mode()
    def capture(
        self, images: np.ndarray | torch.Tensor, *, noise_ids: Sequence[str] | None = None
    ) -> BlockCapture:
        """Raw block-k tensors of ``images`` (z averaged over the ensemble); for ``inspect``."""
        pixels = _to_pixels(images)
        return self._capture(pixels, self._noise_ids(images, noise_ids, len(pixels)))

    def _prompts(self, prompts: Sequence[str] | None, count: int) -> list[str]:
        if prompts is None:
            return [self.settings.prompt] * count
        texts = _check_prompts(prompts)
        if len(texts) != count:
            raise InputError(
                f"{len(texts)} prompts for {count} images; give one prompt per image (or none)"
            )
        return texts

    @staticmethod
    def _noise_ids(
        images: np.ndarray | torch.Tensor, noise_ids: Sequence[str] | None, count: int
    ) -> list[str]:
        if noise_ids is None:
            return default_noise_ids(images)
        return check_noise_ids(noise_ids, count)

    def _capture(
        self, pixels: torch.Tensor, noise_ids: Sequence[str], prompt: str | None = None
    ) -> BlockCapture:
        """Block k of ``pixels`` ``(N, 3, H, W)``, z (float32) averaged over the ensemble;
        conditioned on ``prompt`` (None: the settings').

        Member m of image i draws its VAE posterior sample (``vae_sample``) and its latent
        noise from generators seeded by (seed, ``noise_ids[i]``, m): on the CPU, then moved.
        """
        s = self.settings
        b = self.backbone
        cond = b.condition(s.prompt if prompt is None else prompt)
        with out_of_memory_as_error("extracting features"):
            mean, std = b.encode_posterior(pixels)
            shape = tuple(mean.shape[1:])
            z_sum: torch.Tensor | None = None
            for member in range(s.ensemble):
                latents = mean
                if s.vae_sample:
                    eps = item_noise(shape, s.seed, noise_ids, member, "vae").to(mean.device)
                    latents = mean + std * eps
                noise = item_noise(shape, s.seed, noise_ids, member, "latent")
                noisy = b.noise_latents(latents.to(b.dtype), s.t, noise.to(mean.device))
                cap = b.capture(noisy, s.t, cond, s.k, s.condition, s.guidance)
                z32 = cap.z.float()
                z_sum = z32 if z_sum is None else z_sum + z32
        assert z_sum is not None
        return dataclasses.replace(cap, z=z_sum / s.ensemble)


def _concat(parts: Sequence[BlockCapture]) -> BlockCapture:
    """Captures of consecutive batches → one capture of all their images (same grid and eps)."""
    return dataclasses.replace(
        parts[0],
        z=torch.cat([p.z for p in parts]),
        gamma=torch.cat([p.gamma for p in parts]),
        beta=torch.cat([p.beta for p in parts]),
        gate=torch.cat([p.gate for p in parts]),
    )


def _reorder(cap: BlockCapture, order: Sequence[int]) -> BlockCapture:
    """A capture of images in ``order`` (image ``order[j]`` at row j) → rows by image index."""
    if list(order) == sorted(order):
        return cap
    rows = torch.as_tensor(np.argsort(np.asarray(order)), device=cap.z.device)
    return dataclasses.replace(
        cap,
        z=cap.z[rows],
        gamma=cap.gamma[rows.to(cap.gamma.device)],
        beta=cap.beta[rows.to(cap.beta.device)],
        gate=cap.gate[rows.to(cap.gate.device)],
    )


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    """``prompts`` as a list, each checked to be text (a caption table may hold other JSON)."""
    if isinstance(prompts, str):
        raise InputError(f"prompts must be a list of strings, one per image, not {prompts!r}")
    texts = list(prompts)
    for text in texts:
        if not isinstance(text, str):
            raise InputError(f"a prompt must be a string, got {text!r}; give the caption text")
    return texts


def _to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(N, H, W, 3) uint8`` (or one ``(H, W, 3)`` image) → ``(N, 3, H, W)`` float in [-1, 1]."""
    arr = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(
            f"images must be (N, H, W, 3) RGB, got shape {tuple(arr.shape)}; convert the input"
        )
    if arr.dtype != torch.uint8:
        raise InputError(f"images must be uint8 RGB, got {arr.dtype}; convert to uint8 0..255")
    h, w = int(arr.shape[1]), int(arr.shape[2])
    if h % TOKEN_STRIDE or w % TOKEN_STRIDE or h == 0 or w == 0:
        raise InputError(
            f"image size {w}x{h} is not a multiple of the token stride {TOKEN_STRIDE}; resize "
            "first (ditf_track.images.model_input_size gives a valid size)"
        )
    return arr.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def build_extractor(
    preset: str | None = None,
    task: Task = "video",
    *,
    model: str | os.PathLike[str] | None = None,
    family: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    prompts: Sequence[str] = (),
    **kwargs: Any,
) -> FeatureExtractor:
    """An extractor from a preset name, or from ``model`` + ``family`` (+ ``t``, ``k``).

    ``preset="lab"`` gives the weight-free colour baseline (the one place that builds it; it
    takes no model nor DiTF settings, and ignores them). With ``model`` and a preset, the
    preset's settings are used on that model (its family must match). ``prompts``: the
    per-image prompts of the run, encoded in one pass before the transformer loads (the lab
    baseline takes no text and ignores them).
    """
    if preset is None and model is None:
        raise ConfigError("give a preset (--preset) or a model and its family (--model --family)")
    if preset is not None:
        p = load_preset(preset)
        if p.weight_free:
            from .lab import LabExtractor

            return LabExtractor(device=device)
        if family is not None and family != p.family:
            raise ConfigError(f"preset {preset!r} is family {p.family!r}, not {family!r}")
        return DiTFExtractor.from_preset(
            p, task, model=model, device=device, dtype=dtype, prompts=prompts, **kwargs
        )
    if family is None:
        raise ConfigError(
            f"--model {model} needs --family (pixart, sd3 or flux) or a --preset of that family"
        )
    return DiTFExtractor.from_pretrained(
        model or "", family=family, device=device, dtype=dtype, prompts=prompts, **kwargs
    )


def extractor_from_config(
    features: FeatureConfig,
    task: Task = "video",
    runtime: Runtime | None = None,
    *,
    warn: Callable[[str], None] | None = None,
    prompts: Sequence[str] = (),
    defer_load: bool = False,
) -> FeatureExtractor:
    """The extractor a :class:`~ditf_track.config.FeatureConfig` describes, for ``task``;
    ``prompts`` as in :func:`build_extractor`, ``defer_load`` as in
    :meth:`DiTFExtractor.from_preset` (a DiT's weights load on first use).

    A weight-free preset (``lab``) takes no model nor DiTF settings: they are dropped, and
    ``warn`` (a front end's ``log.warning``, say) is told so in one line (``features.unused()``).
    A ``features_file`` gives a :class:`~ditf_track.precomputed.PrecomputedFeatures` (no model).
    """
    from .config import Runtime

    run = runtime or Runtime()
    if features.features_file is not None:
        return PrecomputedFeatures(features.features_file, device=run.device)
    unused = features.unused()
    if unused is not None and warn is not None:
        warn(unused)
    return build_extractor(
        features.preset,
        task,
        model=features.model,
        family=features.family,
        device=run.device,
        dtype=features.dtype,
        revision=features.revision,
        local_files_only=run.local_files_only or None,
        cache_dir=run.cache_dir,
        batch_size=run.batch_size,
        profile=features.profile,
        prompts=prompts,
        defer_load=defer_load,
        **features.overrides(),
    )
