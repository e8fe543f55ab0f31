"""Label propagation: averages of the neighbours' labels, sequences, masks, and on real DAVIS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_propagate_search import random_case

from ditf_track.errors import InputError
from ditf_track.propagate import (
    PropagationParams,
    aggregate_labels,
    make_search,
    normalize_soft_labels,
    propagate_labels,
    propagate_sequence,
    soft_labels_to_mask,
)


def test_labels_are_averages() -> None:
    """One-hot context labels give per-cell distributions (sum 1, in [0, 1])."""
    query, contexts, _ = random_case(8, 2, 16, 10, 10)
    onehot = F.one_hot(torch.randint(0, 4, (2, 10, 10)), 4).permute(0, 3, 1, 2).float()
    out = propagate_labels(query, contexts, onehot, PropagationParams.dino())
    assert torch.allclose(out.sum(0), torch.ones(10, 10), atol=1e-6)
    assert out.min() >= 0
    assert out.max() <= 1 + 1e-6


def test_identical_frames_copy_labels() -> None:
    """k = 1 against an identical frame: every cell finds itself (self-similarity 1 is the
    unique maximum for distinct unit vectors) and copies its own label."""
    query, _, labels = random_case(9, 1, 32, 8, 12)
    out = propagate_labels(query, query[None], labels[:1], PropagationParams(radius=3, topk=1))
    assert torch.allclose(out, labels[0], atol=1e-6)


def test_shape_errors_name_the_fix() -> None:
    query, contexts, labels = random_case(1, 2, 8, 5, 6)
    with pytest.raises(InputError, match="one"):
        propagate_labels(query, contexts, labels[:1])
    with pytest.raises(InputError, match="grid"):
        propagate_labels(query, contexts, labels[..., :3])
    search = make_search(PropagationParams.dino())
    prepared = [search.prepare(contexts[0])]
    with pytest.raises(InputError, match="same settings"):
        search.search(query[:, :4], prepared)


def test_soft_labels_to_mask_places_a_block() -> None:
    """An object on grid cells rows 1-2, cols 2-3 (stride 4) lands on pixels 4..11 x 8..15.

    Bilinear upsampling (align_corners=False) ramps each edge over one cell; across an edge
    the object's value at pixel p is 0.375 outside and 0.625 inside, so the cut falls exactly
    on the cell border. At the 4 corner pixels of the block both ramps multiply:
    0.625² = 0.39 < 0.61 for the background, so those 4 pixels stay background.
    """
    soft = torch.zeros(2, 4, 6)
    soft[0] = 1
    soft[0, 1:3, 2:4] = 0
    soft[1, 1:3, 2:4] = 1
    mask = soft_labels_to_mask(soft, [5], (16, 24), stride=4)
    expected = np.zeros((16, 24), np.uint8)
    expected[4:12, 8:16] = 5
    expected[[4, 4, 11, 11], [8, 15, 8, 15]] = 0
    assert mask.dtype == np.uint8
    assert mask.shape == (16, 24)
    assert (mask == expected).all()


def test_soft_labels_to_mask_maps_non_contiguous_ids_and_resizes() -> None:
    soft = torch.zeros(3, 2, 2)
    soft[0, 0, 0] = soft[1, 0, 1] = soft[2, 1, :] = 1.0
    # stride 1: no interpolation; ids 3 and 7; then nearest 2x2 -> 4x6 (PIL's rule).
    mask = soft_labels_to_mask(soft, [3, 7], (4, 6), stride=1)
    expected = np.array([[0, 0, 0, 3, 3, 3], [0, 0, 0, 3, 3, 3], [7] * 6, [7] * 6], np.uint8)
    assert (mask == expected).all()
    with pytest.raises(InputError, match="object ids"):
        soft_labels_to_mask(soft, [3], (4, 6), stride=1)


def test_normalize_soft_labels_is_dinos_norm_mask() -> None:
    soft = torch.tensor(
        [[[0.2, 0.6], [0.4, 0.2]], [[0.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]]
    )
    out = normalize_soft_labels(soft)
    assert torch.allclose(out[0], torch.tensor([[0.0, 1.0], [0.5, 0.0]]))
    assert (out[1] == 0).all()
    assert (out[2] == 1).all()


def test_sequence_uses_reference_plus_n_last_frames() -> None:
    """The generator's step t equals one propagate_labels call on the reference and the
    n_context frames before t, with their yielded labels (DINO's queue)."""
    g = torch.Generator().manual_seed(4)
    feats = F.normalize(torch.randn(6, 16, 8, 9, generator=g), dim=1)
    ref_labels = F.one_hot(torch.randint(0, 3, (8, 9), generator=g), 3).permute(2, 0, 1).float()
    params = PropagationParams(n_context=2, radius=3, topk=4)
    outs = list(propagate_sequence(feats[0], ref_labels, iter(feats[1:]), params))
    assert len(outs) == 5
    labels = [ref_labels, *outs]
    for t in range(1, 6):
        ctx = [0, *range(max(1, t - 2), t)]
        step = propagate_labels(feats[t], feats[ctx], torch.stack([labels[i] for i in ctx]), params)
        assert torch.allclose(outs[t - 1], step, atol=1e-6)


def test_sequence_stops_early_and_runs_backwards() -> None:
    g = torch.Generator().manual_seed(5)
    feats = F.normalize(torch.randn(5, 8, 6, 6, generator=g), dim=1)
    labels = F.one_hot(torch.randint(0, 2, (6, 6), generator=g), 2).permute(2, 0, 1).float()
    consumed = []

    def frames():
        for t in (3, 2, 1, 0):  # backwards from an annotated frame 4
            consumed.append(t)
            yield feats[t]

    gen = propagate_sequence(feats[4], labels, frames(), PropagationParams(radius=2))
    first = next(gen)
    assert first.shape == (2, 6, 6)
    assert consumed == [3]
    gen.close()
    assert consumed == [3]


def _load_clip(shared: Path, seq: str) -> tuple[list[np.ndarray], int, int]:
    folder = shared / "davis" / "Annotations" / "480p" / seq
    masks = [np.asarray(Image.open(p).convert("L")) > 127 for p in sorted(folder.glob("*.png"))]
    height, width = masks[0].shape
    return masks, height, width


def _grid_fraction(mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of foreground in each cell of a (h, w) grid over the resized mask (area)."""
    h, w = grid
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=(h * 8, w * 8), mode="area").reshape(h, 8, w, 8).mean((1, 3))


def _oracle_features(
    fractions: list[torch.Tensor], c: int, noise: float, seed: int
) -> torch.Tensor:
    """Per cell: fraction·fg_code + (1 - fraction)·bg_code + Gaussian noise, L2-normalised."""
    g = torch.Generator().manual_seed(seed)
    codes = F.normalize(torch.randn(2, c, generator=g), dim=1)
    frac = torch.stack(fractions)[:, None]  # (T, 1, h, w)
    feats = frac * codes[1][None, :, None, None] + (1 - frac) * codes[0][None, :, None, None]
    feats = feats + noise * torch.randn(feats.shape, generator=g)
    return F.normalize(feats, dim=1)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _davis_j(
    feats: torch.Tensor,
    ref_labels: torch.Tensor,
    masks: list[np.ndarray],
    stride: int,
    params: PropagationParams | None = None,
) -> list[float]:
    """Per-frame IoU of the propagated masks (frames 1..) against the GT (DINO's settings)."""
    height, width = masks[0].shape
    params = PropagationParams.dino() if params is None else params
    outs = propagate_sequence(feats[0], ref_labels, iter(feats[1:]), params)
    return [
        _iou(soft_labels_to_mask(s, [1], (height, width), stride) > 0, gt)
        for s, gt in zip(outs, masks[1:])
    ]


def _shuffle_cells(feats: torch.Tensor, seed: int) -> torch.Tensor:
    """Each frame's cells permuted at random: same feature statistics, no geometry."""
    g = torch.Generator().manual_seed(seed)
    t, c, h, w = feats.shape
    perms = [torch.randperm(h * w, generator=g) for _ in range(t)]
    return torch.stack([f.reshape(c, h * w)[:, p].reshape(c, h, w) for f, p in zip(feats, perms)])


def test_oracle_features_follow_a_real_clip(shared_data: Path) -> None:
    """Fast tier: the first 15 frames of car-shadow on a 30x53 grid (stride 16 at 480p)."""
    masks, _, _ = _load_clip(shared_data, "car-shadow")
    masks = masks[:15]
    fractions = [_grid_fraction(m, (30, 53)) for m in masks]
    feats = _oracle_features(fractions, c=16, noise=0.1, seed=0)
    ref_labels = F.one_hot((fractions[0] >= 0.5).long(), 2).permute(2, 0, 1).float()
    j = float(np.mean(_davis_j(feats, ref_labels, masks, 16)))
    j_shuffled = float(np.mean(_davis_j(_shuffle_cells(feats, 1), ref_labels, masks, 16)))
    assert j >= 0.9, f"J = {j:.3f}"
    assert j_shuffled < j - 0.3, f"shuffled J = {j_shuffled:.3f} vs {j:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("seq", ["blackswan", "car-shadow", "dog"])
def test_oracle_features_reproduce_davis_ground_truth(shared_data: Path, seq: str) -> None:
    """Features that encode the GT (plus noise) must carry the first-frame mask through the
    real motion of the whole clip; the same features with cells shuffled must not."""
    masks, _, _ = _load_clip(shared_data, seq)
    # The 60x106 grid of DiTF's DAVIS setting (stride 16 at short side 960), here as stride 8
    # on the 480p frames. A perfect label map on this grid scores J = 0.97-0.98.
    grid, stride = (60, 106), 8
    fractions = [_grid_fraction(m, grid) for m in masks]
    feats = _oracle_features(fractions, c=16, noise=0.2, seed=0)
    ref_labels = F.one_hot((fractions[0] >= 0.5).long(), 2).permute(2, 0, 1).float()
    per_frame = _davis_j(feats, ref_labels, masks, stride)
    j = float(np.mean(per_frame))
    assert j >= 0.9, f"{seq}: J = {j:.3f}"
    # Shuffled: the first 20 frames suffice to show the collapse.
    j_shuffled = float(
        np.mean(_davis_j(_shuffle_cells(feats[:20], 1), ref_labels, masks[:20], stride))
    )
    j_prefix = float(np.mean(per_frame[:19]))
    assert j_shuffled < j_prefix - 0.3, f"{seq}: shuffled J = {j_shuffled:.3f} vs {j_prefix:.3f}"


def test_global_sequence_on_davis_oracle(shared_data: Path) -> None:
    masks, _, _ = _load_clip(shared_data, "car-shadow")
    masks = masks[:12]
    fractions = [_grid_fraction(m, (15, 27)) for m in masks]
    feats = _oracle_features(fractions, c=16, noise=0.2, seed=2)
    ref_labels = F.one_hot((fractions[0] >= 0.5).long(), 2).permute(2, 0, 1).float()
    j = np.mean(_davis_j(feats, ref_labels, masks, 32, PropagationParams(radius=None)))
    assert j >= 0.8


def test_aggregate_rejects_mismatched_grids() -> None:
    query, contexts, labels = random_case(2, 2, 8, 4, 4)
    search = make_search(PropagationParams.dino())
    nb = search.search(query, [search.prepare(f) for f in contexts])
    with pytest.raises(InputError, match="grid"):
        aggregate_labels(nb, labels[..., :3, :3], 0.1)
    with pytest.raises(InputError, match="one label map per context"):
        aggregate_labels(nb, labels[:1], 0.1)
