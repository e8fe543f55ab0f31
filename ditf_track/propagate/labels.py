"""DAVIS label propagation (METHOD.md §4, DINO's ``eval_video_segmentation.py`` protocol).

Label maps are soft, one channel per label: ``(K, h, w)`` float on the feature grid, channel 0
the background and channel i the i-th object (as ``masks.labels_to_grid`` builds them). The
first frame's map is its mask downsampled to the grid (one-hot); every later frame's map is
the weighted average of its top-k context cells' maps, and is itself pushed to the context
queue unthresholded, as DINO does. :func:`soft_labels_to_mask` turns a map into an id mask
at the frame's size the way DINO writes its PNGs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError
from .params import PropagationParams
from .search import Neighbours, NeighbourSearch, PreparedContext, make_search


def aggregate_labels(
    neighbours: Neighbours, context_labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Average context labels with ``softmax(score / τ)`` over the kept neighbours.

    ``context_labels`` ``(M, K, h, w)`` are the maps of the stacked contexts that
    ``neighbours.index`` points into. Returns ``(K, h, w)`` float32.

    ``softmax(s/τ)`` over the kept cells is DINO's ``exp(s/τ)`` divided by its column sum
    (the maximum is subtracted first, which cancels in the ratio). With the official numerics
    (``neighbours.affinity`` set) the weights are the kept bfloat16 affinities over their sum,
    in float32 (the reference does not say in which dtype the authors do this; ``τ`` is
    already in the affinities).
    """
    if context_labels.ndim != 4:
        raise InputError(f"context labels must be (M, K, h, w), got {tuple(context_labels.shape)}")
    m, k_labels, h, w = (int(s) for s in context_labels.shape)
    if tuple(neighbours.scores.shape[:2]) != (h, w):
        raise InputError(
            f"labels on a {h}x{w} grid do not match features on a "
            f"{tuple(neighbours.scores.shape[:2])} grid; downsample the masks to the feature grid"
        )
    if neighbours.index.numel() and int(neighbours.index.max()) >= m * h * w:
        raise InputError(
            f"the neighbours point into more context frames than the {m} label maps given; "
            "pass one label map per context frame, in the order searched"
        )
    if neighbours.affinity is not None:
        affinity = neighbours.affinity.float()
        weights = affinity / affinity.sum(-1, keepdim=True)  # (h, w, k')
    else:
        weights = torch.softmax(neighbours.scores.float() / temperature, dim=-1)  # (h, w, k)
    table = context_labels.float().permute(0, 2, 3, 1).reshape(m * h * w, k_labels)
    picked = table[neighbours.index.to(table.device)]  # (h, w, k, K)
    out = torch.einsum("hwk,hwkc->chw", weights.to(table.device), picked)
    return out.contiguous()


def _check_labels(labels: torch.Tensor, features: torch.Tensor, name: str) -> None:
    if labels.ndim != 3:
        raise InputError(f"{name} must be (K, h, w) soft labels, got {tuple(labels.shape)}")
    if tuple(labels.shape[1:]) != tuple(features.shape[1:]):
        raise InputError(
            f"{name} on a {tuple(labels.shape[1:])} grid do not match features on a "
            f"{tuple(features.shape[1:])} grid; downsample the masks to the feature grid"
        )


@torch.inference_mode()
def propagate_labels(
    query: torch.Tensor,
    context_feats: torch.Tensor,
    context_labels: torch.Tensor,
    params: PropagationParams | None = None,
    *,
    search: NeighbourSearch | None = None,
) -> torch.Tensor:
    """One propagation step: the soft labels ``(K, h, w)`` float32 of ``query``.

    ``query`` ``(C, h, w)`` and ``context_feats`` ``(M, C, h, w)`` are L2-normalised
    features (float32, bfloat16 or float16; scores accumulate in float32);
    ``context_labels`` ``(M, K, h, w)`` their soft labels. All M frames are used (the caller
    chose them); ``params.n_context`` matters only to :func:`propagate_sequence`.
    """
    params = params or PropagationParams()
    if context_feats.ndim != 4:
        raise InputError(f"context features must be (M, C, h, w), got {tuple(context_feats.shape)}")
    if context_labels.ndim != 4 or context_labels.shape[0] != context_feats.shape[0]:
        raise InputError(
            f"need one (K, h, w) label map per context frame: {tuple(context_labels.shape)} "
            f"labels for {int(context_feats.shape[0])} frames"
        )
    _check_labels(context_labels[0], context_feats[0], "context labels")
    search = search or make_search(params)
    prepared = [search.prepare(f) for f in context_feats]
    neighbours = search.search(query, prepared)
    return aggregate_labels(neighbours, context_labels, params.temperature)


@torch.inference_mode()
def propagate_sequence(
    reference_feats: torch.Tensor,
    reference_labels: torch.Tensor,
    frames: Iterable[torch.Tensor],
    params: PropagationParams | None = None,
    *,
    search: NeighbourSearch | None = None,
) -> Iterator[torch.Tensor]:
    """Propagate a reference frame's labels through ``frames``, one soft map per frame.

    ``reference_feats`` ``(C, h, w)`` and ``reference_labels`` ``(K, h, w)`` (one-hot from
    the annotated mask) form the first context; each of ``frames`` (``(C, h, w)`` features,
    in propagation order — pass them reversed to go backwards) is matched against the
    reference plus the ``params.n_context`` frames propagated just before it (DINO's queue:
    first frame + n last), and its ``(K, h, w)`` float32 soft labels are yielded, then
    queued. A generator: stop iterating to stop the propagation.
    """
    params = params or PropagationParams()
    _check_labels(reference_labels, reference_feats, "reference labels")
    search = search or make_search(params)
    reference = search.prepare(reference_feats)
    reference_labels = reference_labels.float()
    queue: deque[tuple[PreparedContext, torch.Tensor]] = deque(maxlen=params.n_context)
    for features in frames:
        contexts = [reference] + [prepared for prepared, _ in queue]
        labels = torch.stack([reference_labels] + [lab for _, lab in queue])
        neighbours = search.search(features, contexts)
        del contexts  # the oldest context must be free before the next prepare reuses its slot
        soft = aggregate_labels(neighbours, labels, params.temperature)
        yield soft
        if params.n_context > 0:
            if len(queue) == params.n_context:
                queue.popleft()
            queue.append((search.prepare(features), soft))


def normalize_soft_labels(soft: torch.Tensor) -> torch.Tensor:
    """DINO's ``norm_mask``: rescale each channel of ``(K, H, W)`` to [0, 1] by its min/max.

    Channels whose maximum is not positive are left as they are (as DINO does). A channel
    that is constant and positive becomes 1 everywhere; DINO divides 0 by 0 there, and the
    resulting NaN wins its ``torch.max``, which 1 reproduces except for exact ties.
    """
    flat = soft.flatten(1)
    low = flat.amin(1)
    high = flat.amax(1)
    span = high - low
    scale = torch.where(span > 0, span, torch.ones_like(span))
    rescaled = (soft - low[:, None, None]) / scale[:, None, None]
    rescaled = torch.where((span > 0)[:, None, None], rescaled, torch.ones_like(soft))
    return torch.where((high > 0)[:, None, None], rescaled, soft)


def _first_argmax_ids(scores: torch.Tensor, ids: Sequence[int]) -> np.ndarray:
    """``ids[argmax_c scores[c]]`` as ``(H, W)`` uint8, the first channel winning ties.

    A running maximum over the K channels: several times faster on CPU than ``argmax(0)``,
    whose reduction over the outer dimension is slow.
    """
    best = scores[0].clone()
    out = torch.full(best.shape, ids[0], dtype=torch.uint8, device=scores.device)
    for channel in range(1, int(scores.shape[0])):
        better = scores[channel] > best
        out.masked_fill_(better, ids[channel])
        torch.maximum(best, scores[channel], out=best)
    return out.cpu().numpy()


def soft_labels_to_mask(
    soft: torch.Tensor,
    object_ids: Sequence[int],
    out_hw: tuple[int, int],
    stride: int,
) -> np.ndarray:
    """A ``(K, h, w)`` soft label map → an ``(H, W)`` uint8 id mask of the original frame.

    DINO's order: bilinear upsampling ×``stride`` to the model input (``align_corners=False``),
    per-channel min-max normalisation (:func:`normalize_soft_labels`), argmax over channels
    (the first channel wins ties), channel → id (channel 0 → 0, channel i → ``object_ids[i-1]``),
    then a nearest-neighbour resize to ``out_hw`` = (H, W) with PIL's ``NEAREST`` rule.
    """
    if soft.ndim != 3:
        raise InputError(f"soft labels must be (K, h, w), got {tuple(soft.shape)}")
    if len(object_ids) != int(soft.shape[0]) - 1:
        raise InputError(
            f"{int(soft.shape[0])} label channels need {int(soft.shape[0]) - 1} object ids "
            f"(channel 0 is the background), got {len(object_ids)}: {list(object_ids)}"
        )
    if any(not 0 < int(i) < 256 for i in object_ids):
        raise InputError(f"object ids {list(object_ids)} must be in 1..255 for a uint8 mask")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise InputError(f"stride={stride!r} must be an integer >= 1")
    height, width = (int(s) for s in out_hw)
    if height < 1 or width < 1:
        raise InputError(f"output size {out_hw} must be positive (H, W)")
    up = F.interpolate(
        soft[None].float(), scale_factor=stride, mode="bilinear", align_corners=False
    )
    ids = _first_argmax_ids(normalize_soft_labels(up[0]), [0, *(int(i) for i in object_ids)])
    if ids.shape == (height, width):
        return ids
    return np.asarray(Image.fromarray(ids).resize((width, height), Image.Resampling.NEAREST))
