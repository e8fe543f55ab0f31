"""Exact k-nearest-neighbour search by inner product (cosine on L2-normalised vectors).

Used for global propagation (no window) and for keypoint matching. Two interchangeable
implementations return the same neighbours: FAISS (``IndexFlatIP``; ``GpuIndexFlatIP`` when
the installed faiss has GPUs) and torch (chunked matmul + ``topk``). Both are exact brute force;
they differ only in speed and in the order of exactly tied scores.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ConfigError, InputError

KnnBackend = Literal["auto", "faiss", "torch"]
KNN_BACKENDS: tuple[str, ...] = ("auto", "faiss", "torch")

# Scores of one chunk of queries against the whole database are materialised in float32.
# 256 MiB is 1318 queries against 8 frames of 106x60 cells; that 1318 x 3072 x 50880 matmul
# ran at 183 GFLOP/s on the project's CPU, the rate of a plain large matmul.
_TORCH_CHUNK_BYTES = 256 * 2**20

_gpu_resources: dict[int, Any] = {}
_gpu_lock = threading.Lock()


def faiss_available() -> bool:
    """Whether ``import faiss`` works (faiss-cpu or faiss-gpu)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_gpu_count() -> int:
    """GPUs the installed faiss can use (0 with faiss-cpu or without CUDA)."""
    try:
        import faiss
    except ImportError:
        return 0
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def resolve_knn_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` → FAISS when it is installed and can run where the data is, else torch.

    CPU: faiss-cpu (``IndexFlatIP``): for 6360 queries against 8 x 6360 vectors, k = 5, on
    the project's 2-core CPU it took 0.99 / 9.1 / 21.1 s at C = 3 / 1152 / 3072 against
    1.39 / 10.1 / 21.9 s for torch (benchmarks/RESULTS.md; best of 3 / 1 / 1 on a busy
    machine). CUDA: faiss-gpu (``StandardGpuResources``) when the installed faiss has
    GPUs, else torch, which runs the same brute force with cuBLAS and needs no host round
    trip (not yet measured on a GPU).
    """
    if backend not in KNN_BACKENDS:
        raise ConfigError(f"unknown k-NN backend {backend!r}; use one of {KNN_BACKENDS}")
    if backend != "auto":
        if backend == "faiss" and not faiss_available():
            raise ConfigError(
                "k-NN backend 'faiss' needs faiss; pip install faiss-cpu (or faiss-gpu), "
                "or use backend='torch'"
            )
        return backend
    if device.type == "cuda":
        return "faiss" if faiss_gpu_count() > 0 else "torch"
    return "faiss" if faiss_available() else "torch"


def knn_search(
    queries: torch.Tensor,
    database: torch.Tensor,
    k: int,
    *,
    backend: KnnBackend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` database rows with the largest inner product for every query row.

    ``queries`` ``(Q, C)`` and ``database`` ``(D, C)`` are float tensors (any float dtype; the
    products are accumulated and returned in float32). Returns ``scores (Q, k')`` float32 in
    descending order and ``indices (Q, k')`` int64 rows of ``database``, with
    ``k' = min(k, D)``, on the queries' device. L2-normalise both sides for cosine similarity.
    """
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise InputError(
            f"k-NN needs queries (Q, C) and database (D, C) with the same C, got "
            f"{tuple(queries.shape)} and {tuple(database.shape)}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k={k!r} must be an integer >= 1")
    if database.shape[0] == 0:
        raise InputError("the k-NN database is empty; give at least one vector")
    k = min(k, int(database.shape[0]))
    chosen = resolve_knn_backend(backend, queries.device)
    if chosen == "faiss":
        return _knn_faiss(queries, database, k)
    return _knn_torch(queries, database, k)


def matmul_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` accumulated and returned in float32, for float32/bfloat16/float16 inputs.

    CUDA: half types go to cuBLAS as they are with a float32 output (``out_dtype``) so that
    the scores are not rounded to 8 mantissa bits. CPU: half inputs are upcast first (the CPU
    kernels would round the output to the input dtype).
    """
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        return a @ b
    if (
        a.device.type == "cuda"
        and a.dtype == b.dtype
        and a.dtype in (torch.bfloat16, torch.float16)
    ):
        try:
            return torch.mm(a, b, torch.float32)
        except (RuntimeError, TypeError):  # torch < 2.8 has no out_dtype
            return (a @ b).float()
    return a.float() @ b.float()


def _knn_torch(
    queries: torch.Tensor, database: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    db_t = database.t()
    n_db = int(database.shape[0])
    chunk = max(1, _TORCH_CHUNK_BYTES // (4 * n_db))
    scores, indices = [], []
    for start in range(0, int(queries.shape[0]), chunk):
        block = matmul_f32(queries[start : start + chunk], db_t)
        values, index = block.topk(k, dim=1)
        scores.append(values)
        indices.append(index)
    if not scores:
        empty = torch.empty((0, k), device=queries.device)
        return empty, empty.long()
    return torch.cat(scores), torch.cat(indices)


def _gpu_resource(device_index: int) -> Any:
    import faiss

    with _gpu_lock:
        if device_index not in _gpu_resources:
            _gpu_resources[device_index] = faiss.StandardGpuResources()
        return _gpu_resources[device_index]


def _knn_faiss(
    queries: torch.Tensor, database: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    channels = int(queries.shape[1])
    q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    db = np.ascontiguousarray(database.detach().float().cpu().numpy())
    use_gpu = faiss_gpu_count() > 0 and (queries.device.type == "cuda" or torch.cuda.is_available())
    index: Any
    if use_gpu:
        device_index = (queries.device.index or 0) if queries.device.type == "cuda" else 0
        config = faiss.GpuIndexFlatConfig()
        config.device = device_index
        index = faiss.GpuIndexFlatIP(_gpu_resource(device_index), channels, config)
    else:
        index = faiss.IndexFlatIP(channels)
    index.add(db)
    scores, indices = index.search(q, k)
    return (
        torch.from_numpy(scores).to(queries.device),
        torch.from_numpy(indices.astype(np.int64)).to(queries.device),
    )
