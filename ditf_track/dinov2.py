"""DINOv2 features, the joint PCA, and their fusion with DiTF ("DiTF + DINOv2").

The paper concatenates DINOv2 features (ViT-B/14, the token facet of layer 11, 840×840 input)
with DiTF features along channels; for SD3.5 and Flux the DiT features are first reduced to 1280
dimensions by a PCA fitted jointly on the image pair. The fusion follows the code the paper
builds on (read for facts, nothing copied):

* SD-DINO, "A Tale of Two Features" (github Junyi42/sd-dino, commit b85df18,
  ``pck_spair_pascal.py``, ``extractor_dino.py``, ``utils/utils_correspondence.py``) and
  GeoAware-SC, "Telling Left from Right" (github Junyi42/GeoAware-SC, commit 99fd6b6,
  ``preprocess_map.py``, ``model_utils/extractor_dino.py``, ``pck_train.py``):

  - model ``dinov2_vitb14`` (patch 14, no registers), ImageNet mean/std;
  - input: the image resized so that its long side is 840 (aspect kept) and zero-padded,
    centred, to 840×840 (``resize(..., edge=False)``), so the token grid is 60×60;
  - "layer 11, facet token" is a forward hook on ``blocks[11]``: the output of the last block
    of ViT-B, **before** the final LayerNorm, with the CLS token dropped. In transformers'
    ``Dinov2Model`` that tensor is ``hidden_states[12]`` (``hidden_states[0]`` is the embedding
    output), *not* ``last_hidden_state``, which has the final LayerNorm applied;
  - the diffusion features are reduced by a PCA fitted on the tokens of *both* images of the
    pair together, centred by their joint mean (``co_pca``: ``torch.pca_lowrank`` on the
    concatenation); then each feature set is L2-normalised per location and the two are
    concatenated with equal weights (SD-DINO ``WEIGHT`` default 1, 1); GeoAware-SC
    (``normalize_feats``) then L2-normalises the concatenation, which divides it by √2.

What ditf-track does, and where it differs:

* DINOv2 through transformers (``Dinov2Model.from_pretrained``, default
  ``facebook/dinov2-base`` = ViT-B/14), the same 840 padded square, the output of block
  ``layer`` (0-indexed, default 11) read with a forward hook that stops the forward there.
  Resizing uses :func:`ditf_track.images.resize_image` (area/bilinear) instead of LANCZOS.
* The PCA is exact (an eigendecomposition of the joint covariance in float64, on the device),
  not ``pca_lowrank``'s randomised approximation, so it equals scikit-learn's ``PCA`` up to
  the sign of each component; signs are fixed so the largest-magnitude loading of each
  component is positive (scikit-learn's ``svd_flip`` rule). It is fitted on the pair's *raw*
  DiTF maps ẑ (the modulated features before any L2 normalisation, paper App. C). Which
  models it reduces is data, the preset's ``dinov2_pca_dim`` (:func:`pca_dim_for`): 1280 for
  SD3.5 (2432) and Flux (3072) as in the paper; none for PixArt-α (1152) and SD3 medium
  (1536), whose features are concatenated as they are. A bare ``--model`` (no preset) is
  reduced to 1280 when wider. ``pca_dim=None`` disables it.
* The two feature sets live on different grids (DiT: 16-px cells of the aspect-kept input;
  DINOv2: 14-px patches of the padded square). DINOv2 is resampled onto the **DiT grid**:
  each DiT cell centre is mapped to original-image pixels, then into the padded 840 square,
  and the DINOv2 map is sampled there bilinearly (``grid_sample``, ``align_corners=False``), so
  padding never enters a descriptor. At the defaults both grids have 60 cells on the long side.
* Fused descriptor = ``concat(normalise(DiT), normalise(DINOv2)) / √2`` — unit length, so
  cosine similarity ranks exactly as the references' L2 distance does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .backbones.hooks import HookSet
from .coords import grid_sample_coords, grid_to_frame, pixel_to_grid, rescale_points
from .devices import dtype_name, out_of_memory_as_error, resolve_device, resolve_dtype
from .errors import ConfigError, InputError, ModelLoadError
from .hub import ModelSource
from .images import resize_image
from .presets import load_preset

DINOV2_MODEL = "facebook/dinov2-base"
DINOV2_IMAGE_SIZE = 840  # SD-DINO / GeoAware-SC: 840 = 60 patches of 14
DINOV2_LAYER = 11  # 0-indexed block; the last of ViT-B/14
PCA_DIM = 1280  # the paper: DiT features of SD3.5 and Flux reduced to 1280 before fusion
# torchvision/DINOv2 ImageNet statistics (extractor_dino.py uses them for every "dino" model).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DINOv2Maps:
    """DINOv2 token features of one image on the padded square's patch grid.

    ``features`` is ``(C, g, g)`` (raw, not normalised) for a ``size``×``size`` input whose
    image content occupies ``content_box = (top, left, height, width)`` model-input pixels;
    ``image_hw`` is the original image's (H, W) and ``patch`` the patch size in pixels.
    """

    features: torch.Tensor
    size: int
    patch: int
    content_box: tuple[int, int, int, int]
    image_hw: tuple[int, int]

    def on_grid(
        self, grid_hw: tuple[int, int], model_hw: tuple[int, int], stride: int
    ) -> torch.Tensor:
        """Resample onto another feature grid of the same image: ``(C, gh, gw)``.

        The target grid has ``grid_hw`` cells of ``stride`` pixels over a model input of
        ``model_hw`` that is the whole original image resized (e.g. the DiT input). Each target
        cell centre is mapped to original pixels, then into the padded square, and the DINOv2
        map is sampled there bilinearly.
        """
        gh, gw = grid_hw
        ys, xs = torch.meshgrid(
            torch.arange(gh, dtype=torch.float64),
            torch.arange(gw, dtype=torch.float64),
            indexing="ij",
        )
        cells = torch.stack([ys, xs], dim=-1).reshape(-1, 2)
        frame_yx = grid_to_frame(cells, self.image_hw, model_hw, stride)
        top, left, ch, cw = self.content_box
        padded_yx = rescale_points(frame_yx, self.image_hw, (ch, cw))
        padded_yx = padded_yx + torch.tensor([top, left], dtype=padded_yx.dtype)
        dino_grid = pixel_to_grid(padded_yx, self.patch)
        g = self.features.shape[-1]
        uv = grid_sample_coords(dino_grid, (g, g)).to(self.features.device, torch.float32)
        sampled = F.grid_sample(
            self.features[None].float(),
            uv.view(1, gh, gw, 2),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return sampled[0]


class DINOv2Extractor:
    """The token output of one DINOv2 block on the padded 840×840 input (see module docstring).

    ``extract(image)`` takes one ``(H, W, 3) uint8`` RGB image and returns :class:`DINOv2Maps`.
    """

    def __init__(
        self,
        model: Any,
        *,
        layer: int = DINOV2_LAYER,
        image_size: int = DINOV2_IMAGE_SIZE,
        model_id: str = DINOV2_MODEL,
        revision: str | None = None,
    ) -> None:
        config = model.config
        patch = int(config.patch_size)
        n_layers = int(config.num_hidden_layers)
        if not 0 <= layer < n_layers:
            raise ConfigError(
                f"DINOv2 layer {layer} does not exist; {model_id} has blocks 0..{n_layers - 1}"
            )
        if image_size < patch or image_size % patch:
            raise ConfigError(
                f"DINOv2 input size {image_size} is not a multiple of its patch size {patch}; "
                f"use e.g. {max(1, round(image_size / patch)) * patch}"
            )
        self.model = model.eval()
        self.layer = layer
        self.image_size = image_size
        self.patch = patch
        self.model_id = model_id
        self.revision = revision

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str] = DINOV2_MODEL,
        *,
        layer: int = DINOV2_LAYER,
        image_size: int = DINOV2_IMAGE_SIZE,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> DINOv2Extractor:
        """Load a ``Dinov2Model`` from a hub id or a local folder (``save_pretrained`` layout)."""
        from transformers import Dinov2Model

        source = ModelSource(
            model, revision=revision, local_files_only=local_files_only, cache_dir=cache_dir
        )
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        with source.load_errors("DINOv2 weights", [""]), out_of_memory_as_error("loading DINOv2"):
            try:
                net: Any = Dinov2Model.from_pretrained(
                    source.path_or_id, dtype=dt, **source.pretrained_kwargs()
                )
            except OSError as exc:
                # hub failures that transformers wraps in OSError are mapped by hub_errors
                if source.is_local:
                    raise ModelLoadError(
                        f"cannot load DINOv2 from {source.describe()} ({exc}); pass a folder "
                        "written by Dinov2Model.save_pretrained or a hub id such as "
                        f"{DINOV2_MODEL}"
                    ) from exc
                raise
        net.to(dev)
        return cls(
            net,
            layer=layer,
            image_size=image_size,
            model_id=source.describe(),
            revision=revision,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def identity(self) -> dict[str, Any]:
        """Everything that changes the DINOv2 features (for config.json)."""
        return {
            "model": self.model_id,
            "revision": self.revision,
            "layer": self.layer,
            "image_size": self.image_size,
            "patch": self.patch,
            "dim": self.dim,
            "dtype": dtype_name(self.dtype),
            "hidden_state": f"hidden_states[{self.layer + 1}] (block {self.layer} output, "
            "before the final LayerNorm), CLS dropped",
        }

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """``(H, W, 3) uint8`` → ``(1, 3, S, S)`` normalised input and its content box.

        The long side becomes ``S`` (aspect kept, the short side rounded to whole pixels) and
        the image is centred on a black ``S``×``S`` canvas, as SD-DINO's ``resize`` does.
        """
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise InputError(
                f"image must be (H, W, 3) uint8 RGB, got {arr.shape} {arr.dtype}; convert it"
            )
        h, w = arr.shape[:2]
        s = self.image_size
        if h >= w:
            ch, cw = s, max(1, int(np.around(s * w / h)))
        else:
            ch, cw = max(1, int(np.around(s * h / w))), s
        top, left = (s - ch) // 2, (s - cw) // 2
        canvas = np.zeros((s, s, 3), dtype=np.uint8)
        canvas[top : top + ch, left : left + cw] = resize_image(arr, (ch, cw))
        x = torch.from_numpy(canvas).to(self.device).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=x.device)[:, None, None]
        return ((x - mean) / std)[None].to(self.dtype), (top, left, ch, cw)

    @torch.inference_mode()
    def extract(self, image: np.ndarray) -> DINOv2Maps:
        """Block-``layer`` token features of ``image`` ``(H, W, 3) uint8``: ``(C, g, g)``."""
        pixels, box = self.preprocess(image)
        block = self.model.encoder.layer[self.layer]
        with HookSet() as hooks, out_of_memory_as_error("extracting DINOv2 features"):
            hooks.save_output_and_stop(block, "block")  # later blocks are not needed
            hooks.run(lambda: self.model(pixel_values=pixels))
        output = hooks.store["block"]
        tokens = (output[0] if isinstance(output, tuple) else output)[0]  # (1 + g·g, C), CLS first
        g = self.image_size // self.patch
        patches = tokens[-g * g :]  # drop CLS (and registers, were there any)
        maps = patches.T.reshape(-1, g, g)
        hw = (int(image.shape[0]), int(image.shape[1]))
        return DINOv2Maps(maps, self.image_size, self.patch, box, hw)


@dataclass(frozen=True)
class JointPCA:
    """A PCA fitted on the feature vectors of several maps together (an image pair or a clip).

    ``mean`` is ``(C,)``, ``components`` ``(D, C)`` (rows are unit principal axes, by
    decreasing variance), ``explained_variance`` ``(D,)`` (unbiased, as scikit-learn).
    """

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, maps: Sequence[torch.Tensor], dim: int) -> JointPCA:
        """Fit on every location of ``maps`` (each ``(C, h, w)`` or ``(N, C, h, w)``) at once.

        The output width is ``min(dim, C, number of locations)``. Exact: eigendecomposition
        of the joint covariance in float64 on the maps' device.
        """
        if dim < 1:
            raise ConfigError(f"PCA dimension {dim} must be at least 1")
        x = torch.cat([_tokens(m) for m in maps]).double()
        n, c = x.shape
        if n < 2:
            raise InputError("a PCA needs at least 2 feature vectors; use larger images")
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / (n - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        d = min(dim, c, n)
        order = torch.argsort(evals, descending=True)[:d]
        comps = evecs[:, order].T.contiguous()  # (D, C)
        flip = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
        comps = comps * torch.where(flip == 0, torch.ones_like(flip), flip)
        return cls(mean, comps, evals[order].clamp_min(0))

    def transform(self, maps: torch.Tensor) -> torch.Tensor:
        """Project ``(C, h, w)`` or ``(N, C, h, w)`` → ``(D, h, w)`` / ``(N, D, h, w)`` float32."""
        squeeze = maps.ndim == 3
        m = maps[None] if squeeze else maps
        n, c, h, w = m.shape
        x = m.permute(0, 2, 3, 1).reshape(-1, c).double()
        y = (x - self.mean) @ self.components.T
        out = y.reshape(n, h, w, -1).permute(0, 3, 1, 2).float().contiguous()
        return out[0] if squeeze else out


def _tokens(maps: torch.Tensor) -> torch.Tensor:
    """``(C, h, w)`` or ``(N, C, h, w)`` → ``(L, C)``."""
    m = maps[None] if maps.ndim == 3 else maps
    if m.ndim != 4:
        raise ValueError(f"feature maps must be (C, h, w) or (N, C, h, w), got {tuple(maps.shape)}")
    return m.permute(0, 2, 3, 1).reshape(-1, m.shape[1])


def reduce_jointly(
    maps: Sequence[torch.Tensor], pca_dim: int | None = PCA_DIM
) -> tuple[list[torch.Tensor], JointPCA | None]:
    """PCA-reduce ``maps`` (same C) with one PCA fitted on all of them, if C exceeds ``pca_dim``.

    Returns the maps (float32, reduced or unchanged) and the fitted PCA (None when skipped).
    """
    widths = {int(m.shape[-3]) for m in maps}
    if len(widths) != 1:
        raise ValueError(f"maps have different channel counts {sorted(widths)}")
    if pca_dim is None or widths.pop() <= pca_dim:
        return [m.float() for m in maps], None
    pca = JointPCA.fit(maps, pca_dim)
    return [pca.transform(m) for m in maps], pca


def pca_dim_for(preset: str | None) -> tuple[int | None, str]:
    """The width the DiT features are PCA-reduced to before the fusion, and the rule's name.

    The preset's ``dinov2_pca_dim`` (paper App. C: SD3.5 and Flux to 1280, PixArt-α and SD3
    not at all); without a preset, :data:`PCA_DIM` (reduce when wider).
    """
    if preset is None:
        return PCA_DIM, f"no preset: reduced to {PCA_DIM} when wider"
    dim = load_preset(preset).dinov2_pca_dim
    if dim is None:
        return None, f"preset {preset}: no PCA (concatenated as is)"
    return dim, f"preset {preset}: PCA to {dim}"


def fuse_features(dit: torch.Tensor, dino: torch.Tensor) -> torch.Tensor:
    """``concat(normalise(dit), normalise(dino)) / √2`` along channels: unit-length descriptors.

    ``dit`` ``(C1, h, w)`` and ``dino`` ``(C2, h, w)`` on the same grid → ``(C1 + C2, h, w)``.
    """
    if dit.shape[-2:] != dino.shape[-2:]:
        raise ValueError(f"grids differ: {tuple(dit.shape)} vs {tuple(dino.shape)}")
    a = F.normalize(dit.float(), dim=-3, eps=1e-12)
    b = F.normalize(dino.float().to(a.device), dim=-3, eps=1e-12)
    return torch.cat([a, b], dim=-3) / math.sqrt(2.0)
