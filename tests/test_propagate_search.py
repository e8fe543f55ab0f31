"""The neighbour searches (window, global) against a brute-force transcription of METHOD.md §4."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ditf_track.propagate import (
    GlobalSearch,
    PropagationParams,
    WindowSearch,
    propagate_labels,
)


def brute_force(
    query: torch.Tensor,
    contexts: torch.Tensor,
    labels: torch.Tensor,
    radius: int | None,
    k: int,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """METHOD.md §4 written out densely in float64: every query cell against every cell of
    every context, an explicit square mask, top-k jointly over the M contexts, exp(s/τ)
    normalised to sum 1, weighted average. Also returns the gap between the k-th and the
    (k+1)-th candidate per query, so tests can skip near-ties (where fp32 may pick another)."""
    c, h, w = query.shape
    m = contexts.shape[0]
    q = query.reshape(c, h * w).t().double()
    ctx = contexts.reshape(m, c, h * w).double()
    aff = torch.einsum("qc,mcn->qmn", q, ctx)  # (hw, M, hw)
    if radius is not None:
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        yy, xx = yy.flatten(), xx.flatten()
        inside = ((yy[:, None] - yy[None, :]).abs() <= radius) & (
            (xx[:, None] - xx[None, :]).abs() <= radius
        )
        aff = aff.masked_fill(~inside[:, None, :], float("-inf"))
    aff = aff.reshape(h * w, m * h * w)
    k = min(k, m * h * w)
    order = aff.sort(dim=1, descending=True).values
    n_finite = torch.isfinite(order).sum(1)
    if order.shape[1] > k:
        gap = torch.where(n_finite > k, order[:, k - 1] - order[:, k], 1.0)
    else:
        gap = torch.ones(h * w, dtype=order.dtype)
    top, idx = aff.topk(k, dim=1)
    weight = torch.exp(top / tau)
    weight = weight / weight.sum(1, keepdim=True)
    table = labels.double().permute(0, 2, 3, 1).reshape(m * h * w, -1)
    out = (weight[:, :, None] * table[idx]).sum(1)
    return out.t().reshape(-1, h, w), gap.reshape(h, w)


def random_case(seed: int, m: int, c: int, h: int, w: int, n_labels: int = 3):
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(c, h, w, generator=g), dim=0)
    contexts = F.normalize(torch.randn(m, c, h, w, generator=g), dim=1)
    labels = torch.rand(m, n_labels, h, w, generator=g)
    return query, contexts, labels


def assert_matches(out: torch.Tensor, ref: torch.Tensor, gap: torch.Tensor, atol: float) -> None:
    """Equal at every query whose k-th candidate is not within 1e-4 of the next one."""
    clear = gap > 1e-4
    assert clear.float().mean() > 0.8, "test case has too many near-ties"
    diff = (out.double() - ref).abs().amax(0)
    assert diff[clear].max().item() < atol


GRIDS = [(7, 11), (13, 5), (16, 24), (1, 9)]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("m", [1, 2, 8])
@pytest.mark.parametrize("radius", [1, 3, 12, 40])
def test_window_step_equals_brute_force(grid: tuple[int, int], m: int, radius: int) -> None:
    h, w = grid
    for k, tau in [(1, 0.05), (5, 0.1), (15, 0.2)]:
        query, contexts, labels = random_case(h * 1000 + w * 10 + m + radius + k, m, 24, h, w)
        ref, gap = brute_force(query, contexts, labels, radius, k, tau)
        params = PropagationParams(radius=radius, topk=k, temperature=tau)
        for strip in (1, 3, 8):
            search = WindowSearch(radius, k, strip_width=strip)
            out = propagate_labels(query, contexts, labels, params, search=search)
            assert out.shape == (3, h, w)
            assert out.dtype == torch.float32
            assert_matches(out, ref, gap, 1e-5)


def test_window_neighbours_are_the_brute_force_cells() -> None:
    query, contexts, _ = random_case(7, 3, 16, 9, 14)
    search = WindowSearch(2, 5)
    nb = search.search(query, [search.prepare(f) for f in contexts])
    assert nb.scores.shape == (9, 14, 5)
    assert nb.index.shape == (9, 14, 5)
    cells = contexts.permute(0, 2, 3, 1).reshape(-1, 16)
    again = torch.einsum("hwc,hwkc->hwk", query.permute(1, 2, 0), cells[nb.index])
    assert torch.allclose(again, nb.scores, atol=1e-5)  # scores are the cosines of the indices
    m_idx, rest = nb.index // (9 * 14), nb.index % (9 * 14)
    y, x = rest // 14, rest % 14
    yq = torch.arange(9)[:, None, None]
    xq = torch.arange(14)[None, :, None]
    assert ((y - yq).abs() <= 2).all()
    assert ((x - xq).abs() <= 2).all()
    assert (m_idx < 3).all()
    assert (nb.scores[..., :-1] >= nb.scores[..., 1:]).all()


def test_clipped_window_with_fewer_cells_than_k() -> None:
    """A corner cell with r = 1 sees 4 cells per context; k = 15 keeps all 4 (DINO keeps the
    zeros of the masked affinity too, which add nothing)."""
    query, contexts, labels = random_case(3, 1, 8, 6, 6)
    ref, _ = brute_force(query, contexts, labels, 1, 15, 0.1)
    out = propagate_labels(query, contexts, labels, PropagationParams(radius=1, topk=15))
    assert torch.allclose(out.double(), ref, atol=1e-6)


@pytest.mark.parametrize("grid", [(7, 11), (13, 5)])
def test_global_step_equals_brute_force(grid: tuple[int, int]) -> None:
    h, w = grid
    query, contexts, labels = random_case(11, 3, 32, h, w)
    ref, gap = brute_force(query, contexts, labels, None, 5, 0.1)
    params = PropagationParams(radius=None, topk=5)
    for backend in ("torch", "faiss"):
        out = propagate_labels(
            query, contexts, labels, params, search=GlobalSearch(5, backend=backend)
        )
        assert_matches(out, ref, gap, 1e-5)


def test_radius_beyond_grid_equals_global() -> None:
    query, contexts, labels = random_case(5, 2, 16, 6, 9)
    windowed = propagate_labels(query, contexts, labels, PropagationParams(radius=30))
    whole = propagate_labels(query, contexts, labels, PropagationParams(radius=None))
    assert torch.allclose(windowed, whole, atol=1e-6)


def test_bfloat16_features_track_the_float32_reference() -> None:
    query, contexts, labels = random_case(21, 4, 64, 12, 17)
    ref, _ = brute_force(query, contexts, labels, 3, 5, 0.1)
    out = propagate_labels(
        query.bfloat16(), contexts.bfloat16(), labels, PropagationParams(radius=3)
    )
    assert out.dtype == torch.float32
    # bf16 rounds each feature to 8 bits: neighbours with close scores may swap.
    assert (out.double() - ref).abs().mean() < 0.02
    assert (out.argmax(0) == ref.argmax(0)).float().mean() > 0.9
