"""The k-NN backends (torch, faiss) against exact top-k, and their checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ditf_track.errors import ConfigError, InputError
from ditf_track.propagate import PropagationParams, knn_search, make_search, propagate_labels


@pytest.mark.parametrize("c", [3, 64, 257])
def test_knn_backends_equal_brute_force(c: int) -> None:
    g = torch.Generator().manual_seed(c)
    queries = F.normalize(torch.randn(300, c, generator=g), dim=1)
    database = F.normalize(torch.randn(1000, c, generator=g), dim=1)
    sims = queries.double() @ database.double().t()
    top = sims.topk(6, dim=1)
    clear = (top.values[:, 4] - top.values[:, 5]) > 1e-5
    assert clear.float().mean() > 0.9
    expected = top.indices[:, :5]
    for backend in ("torch", "faiss"):
        scores, index = knn_search(queries, database, 5, backend=backend)
        assert scores.shape == (300, 5)
        assert scores.dtype == torch.float32
        assert index.dtype == torch.int64
        same = [set(a.tolist()) == set(b.tolist()) for a, b in zip(index, expected)]
        assert all(s for s, ok in zip(same, clear.tolist()) if ok)
        assert torch.allclose(scores.double(), top.values[:, :5], atol=1e-5)


def test_knn_clamps_k_and_validates() -> None:
    queries, database = torch.randn(4, 8), torch.randn(3, 8)
    scores, index = knn_search(queries, database, 10, backend="torch")
    assert scores.shape == (4, 3)
    assert sorted(index[0].tolist()) == [0, 1, 2]
    with pytest.raises(InputError, match="same C"):
        knn_search(queries, torch.randn(3, 5), 2)
    with pytest.raises(ConfigError, match="backend"):
        knn_search(queries, database, 2, backend="annoy")  # type: ignore[arg-type]


# -- the official DAVIS numerics (issue 18 item 9) -----------------------------------------------
def _quantised_features(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Components k/16, |k| <= 8: exact in bfloat16, and every sum of their products is exact in
    float32, so the cosines do not depend on the summation order of a GEMM."""
    return torch.randint(-8, 9, shape, generator=g).float() / 16


def _planted_ties(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A query (12, 7, 9), three contexts and random soft labels (3, 3, 7, 9); context 1 repeats
    context 0 (a static frame: every cell tied with its copy) and context 2 repeats one vector
    over a 3 x 3 block."""
    contexts = _quantised_features(g, 3, 12, 7, 9)
    contexts[1] = contexts[0]
    contexts[2, :, 2:5, 3:6] = contexts[2, :, 3:4, 4:5]
    query = contexts[2].clone()
    query[:, ::2] = _quantised_features(g, 12, 4, 9)
    labels = torch.rand(3, 3, 7, 9, generator=g)
    return query, contexts, labels


def _dino_bf16(
    query: torch.Tensor,
    contexts: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    tau: float,
    radius: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force in the authors' order: dense ``exp(bmm / τ)`` in bfloat16, times the window
    mask, every entry below the k-th largest of its query's column set to 0, then the column
    normalised and the labels averaged (float32). Returns the soft labels and the kept counts."""
    m, c, h, w = contexts.shape
    q = query.to(torch.bfloat16).reshape(c, h * w).t().unsqueeze(0).repeat(m, 1, 1)
    src = contexts.to(torch.bfloat16).reshape(m, c, h * w)
    aff = torch.exp(torch.bmm(q, src) / tau)  # (M, query, source), bfloat16
    assert aff.dtype == torch.bfloat16
    if radius is not None:
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        near = (ys[:, None] - ys[None]).abs() <= radius
        near &= (xs[:, None] - xs[None]).abs() <= radius
        aff = aff * near.to(torch.bfloat16)
    aff = aff.transpose(2, 1).reshape(m * h * w, h * w)  # (M·source, query)
    kth = aff.topk(k, dim=0).values.min(0).values
    aff[aff < kth] = 0
    weights = aff.float() / aff.float().sum(0, keepdim=True)
    table = labels.float().reshape(m, -1, h * w).transpose(2, 1).reshape(m * h * w, -1)
    return (table.t() @ weights).reshape(-1, h, w), (aff > 0).sum(0)


@pytest.mark.parametrize("radius", [2, None])
def test_official_numerics_equal_bf16_tie_keeping_brute_force(radius: int | None) -> None:
    g = torch.Generator().manual_seed(18)
    query, contexts, labels = _planted_ties(g)
    params = PropagationParams(n_context=2, radius=radius, topk=5, numerics="official")
    soft = propagate_labels(query, contexts, labels, params)
    expected, kept = _dino_bf16(query, contexts, labels, 5, 0.1, radius)
    assert (kept > 5).float().mean() > 0.25  # the ties matter: many cells keep more than k
    # Same kept cells and bf16 affinities; only the float32 sum of the weights may differ in
    # summation order (rounding, ~1e-7).
    assert torch.allclose(soft, expected, atol=1e-6, rtol=0)
    assert torch.equal(soft.argmax(0), expected.argmax(0))
    search = make_search(params)
    neighbours = search.search(query, [search.prepare(f) for f in contexts])
    assert neighbours.affinity is not None
    assert torch.equal((neighbours.affinity > 0).sum(-1).flatten(), kept)


def test_official_and_exact_numerics_differ_on_ties() -> None:
    g = torch.Generator().manual_seed(18)
    query, contexts, labels = _planted_ties(g)
    exact = propagate_labels(query, contexts, labels, PropagationParams(n_context=2, radius=2))
    official = propagate_labels(
        query, contexts, labels, PropagationParams(n_context=2, radius=2, numerics="official")
    )
    diff = (exact - official).abs()
    assert diff.max() > 0.05
    assert (diff.amax(0) > 1e-3).float().mean() > 0.4  # 30 of the 63 cells change by > 1e-3


def test_official_numerics_refuse_a_temperature_that_overflows_bf16() -> None:
    with pytest.raises(ConfigError, match="overflows bfloat16"):
        PropagationParams(temperature=0.01, numerics="official")
    with pytest.raises(ConfigError, match="unknown numerics"):
        PropagationParams(numerics="fp16")  # type: ignore[arg-type]
    PropagationParams(temperature=0.01)  # exact: float32 softmax, no overflow
