"""The k-NN backends (torch, faiss) against exact top-k, and their checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ditf_track.errors import ConfigError, InputError
from ditf_track.propagate import knn_search


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
