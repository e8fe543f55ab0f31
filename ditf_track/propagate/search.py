"""Top-k context cells for every query cell: the affinity half of label propagation.

Two exact searches share one interface: :class:`WindowSearch` (the square neighbourhood of
DINO's ``restrict_neighborhood``, computed without ever forming the dense ``hw x hw`` matrix)
and :class:`GlobalSearch` (every context cell, through :func:`~.knn.knn_search`). Both take
context frames ``prepare``-d once, so a frame that stays in the propagation queue for n steps
is rearranged once, not n times, and both return :class:`Neighbours`.

Shapes: features ``(C, h, w)`` (L2-normalised over C), context stacks ``(M, C, h, w)``. A
neighbour index is the flat cell ``m·h·w + y·w + x`` of the stacked contexts ``(M, h, w)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from .knn import KnnBackend, knn_search, resolve_knn_backend
from .params import PropagationParams

# Query-strip width (cells) of the windowed search. Each GEMM multiplies the (2r + 1) x strip
# query cells that can see one context row by that row's strip + 2r cells, so the work done
# is (strip + 2r)/(2r + 1) of the useful work: 1.28 at strip 8, r 12 (1.35 with the 106 -> 112
# column padding). Measured on the project's shared 2-core AVX-512 CPU (benchmarks/RESULTS.md,
# --sweep 4,6,8,10,12,16, best of interleaved rounds): strips 4-16 are within that busy
# machine's noise of each other (C = 3072: 0.17-0.29 frames/s; strip 8 had the best median,
# 0.23; C = 1152: strip 8 best, 1.27); strip 8 makes the context segment 32 cells at r = 12,
# a shape MKL runs at 140-145 GFLOP/s against 149 for a plain large matmul in a quiet probe.
# CUDA uses the same default; it has not been measured on a GPU yet.
DEFAULT_STRIP_WIDTH = 8


@dataclass(frozen=True)
class Neighbours:
    """The kept context cells of every query cell.

    ``scores`` ``(h, w, k)`` float32 cosine similarities in descending order (``-inf`` marks
    an empty slot when a clipped window holds fewer than k cells); ``index`` ``(h, w, k)``
    int64 flat cells ``m·h·w + y·w + x`` of the stacked contexts (in range even for empty
    slots). The softmax weights are ``softmax(scores / τ)`` over the last dimension.
    """

    scores: torch.Tensor
    index: torch.Tensor


@dataclass(frozen=True)
class PreparedContext:
    """One context frame rearranged for a search (opaque; made by ``prepare``)."""

    data: torch.Tensor
    grid: tuple[int, int]
    channels: int


class NeighbourSearch(Protocol):
    """What the propagation needs from a search: prepare contexts once, then search."""

    topk: int

    def prepare(self, features: torch.Tensor) -> PreparedContext: ...

    def search(self, query: torch.Tensor, contexts: Sequence[PreparedContext]) -> Neighbours: ...


def make_search(
    params: PropagationParams,
    *,
    strip_width: int | None = None,
    knn_backend: KnnBackend = "auto",
) -> NeighbourSearch:
    """The search ``params`` ask for: windowed when ``radius`` is set, global otherwise."""
    if params.radius is None:
        return GlobalSearch(params.topk, backend=knn_backend)
    return WindowSearch(params.radius, params.topk, strip_width=strip_width)


def _check_features(features: torch.Tensor, name: str) -> None:
    if features.ndim != 3:
        raise InputError(f"{name} must be a (C, h, w) feature map, got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise InputError(f"{name} must be a float tensor, got {features.dtype}")


def _compute_dtype(features: torch.Tensor) -> torch.dtype:
    """bf16/fp16 stay as they are on CUDA (cuBLAS accumulates in fp32 and writes fp32);
    the CPU kernels would round outputs to the input dtype, so CPU computes in float32."""
    if features.device.type == "cuda" and features.dtype in (torch.bfloat16, torch.float16):
        return features.dtype
    return torch.float32


def _check_contexts(query: torch.Tensor, contexts: Sequence[PreparedContext]) -> tuple[int, int]:
    _check_features(query, "query")
    if not contexts:
        raise InputError("propagation needs at least one context frame; got none")
    grid = (int(query.shape[1]), int(query.shape[2]))
    for ctx in contexts:
        if ctx.grid != grid or ctx.channels != int(query.shape[0]):
            raise InputError(
                f"context features of {ctx.channels} x {ctx.grid} do not match the query's "
                f"{int(query.shape[0])} x {grid}; extract all frames with the same settings"
            )
    return grid


def merge_topk(
    scores: torch.Tensor, index: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over the last dimension of candidate lists ``(..., n)``: the top-k of per-frame
    top-k lists is the top-k over the union, so frames can be searched one at a time."""
    k = min(k, int(scores.shape[-1]))
    values, pos = scores.topk(k, dim=-1)
    return values, index.gather(-1, pos)


class WindowSearch:
    """Exact top-k within the square window ``|Δy|, |Δx| <= radius`` (cells), windows clipped
    at the grid border; cost proportional to the window, not to the frame.

    Algorithm. Queries are cut into vertical strips of ``strip_width`` columns. For context
    row y' and strip s, the query cells that can see row y' are the rows y'-r..y'+r of the
    strip, ``(2r+1)·strip`` cells stored contiguously, and the context cells they can see are
    the ``strip + 2r`` cells of row y' around the strip, also contiguous. One batched GEMM per
    (context, strip) scores every context row against its query block, over *views* of the
    features (no copies; the batch stride is one row). Each query's ``(2r+1) x (2r+1)``
    window is then read back from those scores as a strided view, cells outside the grid
    are set to ``-inf``, and one ``topk`` runs over the windows of a group of contexts side
    by side (the top-k of per-group top-k lists is the overall top-k, :func:`merge_topk`).
    Nothing of size ``h·w x h·w`` is ever formed; memory is ~40 MB of scores plus up to
    192 MB of windows at the DAVIS default.

    Ties: exactly k cells are kept (``torch.topk``). DINO keeps every cell whose weight
    reaches the k-th largest, which differs only when several cells have bit-identical
    similarity at the k-th place.
    """

    def __init__(self, radius: int, topk: int, *, strip_width: int | None = None) -> None:
        PropagationParams(radius=radius, topk=topk)  # validates both
        strip = DEFAULT_STRIP_WIDTH if strip_width is None else strip_width
        if isinstance(strip, bool) or not isinstance(strip, int) or strip < 1:
            raise ConfigError(f"strip_width={strip_width!r} must be an integer >= 1 (default 8)")
        self.radius = radius
        self.topk = topk
        self.strip_width = strip

    def _geometry(self, grid: tuple[int, int]) -> tuple[int, int, int, int, int]:
        h, w = grid
        ry, rx = min(self.radius, h - 1), min(self.radius, w - 1)
        strip = self.strip_width
        n_strips = math.ceil(w / strip)
        return ry, rx, strip, n_strips, n_strips * strip

    def prepare(self, features: torch.Tensor) -> PreparedContext:
        """``(C, h, w)`` → rows ``(h, W + 2r_x, C)`` channel-last, zero-padded left/right."""
        _check_features(features, "context features")
        c, h, w = (int(s) for s in features.shape)
        _, rx, _, _, width = self._geometry((h, w))
        rows = features.to(_compute_dtype(features)).permute(1, 2, 0)
        rows = F.pad(rows, (0, 0, rx, width - w + rx)).contiguous()
        return PreparedContext(rows, (h, w), c)

    @torch.inference_mode()
    def search(self, query: torch.Tensor, contexts: Sequence[PreparedContext]) -> Neighbours:
        """Top-k window neighbours of every cell of ``query`` ``(C, h, w)`` in ``contexts``."""
        h, w = _check_contexts(query, contexts)
        c = int(query.shape[0])
        ry, rx, strip, n_strips, width = self._geometry((h, w))
        span = 2 * ry + 1  # query rows that see one context row
        halo = strip + 2 * rx  # context cells one strip's windows cover in a row
        block = span * strip
        device = query.device
        dtype = contexts[0].data.dtype

        # Queries as strips (S, h + 2ry, strip, C), zero rows/columns outside the grid.
        q = query.to(dtype).permute(1, 2, 0)
        q = F.pad(q, (0, 0, 0, width - w, ry, ry))
        strips = q.reshape(h + 2 * ry, n_strips, strip, c).transpose(0, 1).contiguous()

        # scores[s, ry + y', Δ, j, σ]: context cell (y', s·strip - rx + σ) against query cell
        # (y' - ry + Δ, s·strip + j); σ innermost so that each window row reads back
        # contiguously. Rows outside [ry, ry + h) stay -inf: they stand for context rows
        # outside the grid.
        scores = torch.empty(
            (n_strips, h + 2 * ry, span, strip, halo), device=device, dtype=torch.float32
        )
        scores[:, :ry].fill_(float("-inf"))
        scores[:, ry + h :].fill_(float("-inf"))
        st = scores.stride()

        # Per query (s, y, j): its window's candidates (i, d) = context row y - ry + i and
        # column s·strip + j - rx + d, read from the scores as a strided view (σ = j + d,
        # Δ = 2ry - i). Rows need no mask (i spans the window; padding rows are -inf).
        wx = 2 * rx + 1
        window_view = scores.as_strided(
            (n_strips, h, strip, span, wx),
            (st[0], st[1], st[3] + st[4], st[1] - st[2], st[4]),
            scores.storage_offset() + (span - 1) * st[2],
        )
        # Columns outside the grid are -inf.
        j = torch.arange(strip, device=device)
        d = torch.arange(wx, device=device)
        col = (torch.arange(n_strips, device=device) * strip - rx)[:, None, None] + j[:, None] + d
        bias = torch.zeros(col.shape, device=device)
        bias.masked_fill_((col < 0) | (col >= w), float("-inf"))
        bias = bias[:, None, :, None, :]  # (S, 1, strip, 1, wx)
        row0 = (torch.arange(h, device=device) - ry)[None, :, None, None]  # (1, h, 1, 1)
        col0 = col[:, None, :, :1]  # (S, 1, strip, 1): column of d = 0

        # Windows of several contexts side by side, so that one topk call covers them: on
        # CPU topk costs ~3.5 µs per row plus ~3.6 ns per value, so rows of 8 x 625 values
        # are 1.6x cheaper than 8 rows of 625.
        n_cand = span * wx
        per_context = n_strips * h * strip * n_cand * 4
        group = max(1, min(len(contexts), _WINDOW_BUFFER_BYTES // per_context))
        windowed = torch.empty((n_strips, h, strip, group, span, wx), device=device)
        all_scores, all_index = [], []
        for first in range(0, len(contexts), group):
            chunk = contexts[first : first + group]
            for g, ctx in enumerate(chunk):
                rows_m = ctx.data
                base = rows_m.storage_offset()
                row_stride = rows_m.stride(0)
                for s in range(n_strips):
                    queries_s = strips[s].as_strided((h, block, c), (strip * c, c, 1))
                    context_s = rows_m.as_strided(
                        (h, halo, c), (row_stride, c, 1), base + s * strip * c
                    )
                    out = scores[s, ry : ry + h].view(h, block, halo)
                    _bmm_f32(queries_s, context_s.transpose(1, 2), out)
                torch.add(window_view, bias, out=windowed[:, :, :, g])
            candidates = windowed[:, :, :, : len(chunk)].reshape(n_strips, h, strip, -1)
            values, pos = candidates.topk(min(self.topk, len(chunk) * n_cand), dim=-1)
            m = torch.div(pos, n_cand, rounding_mode="floor")
            i, d = torch.div(pos % n_cand, wx, rounding_mode="floor"), pos % wx
            y_ctx = (row0 + i).clamp_(0, h - 1)
            x_ctx = (col0 + d).clamp_(0, w - 1)
            all_scores.append(values)
            all_index.append(y_ctx * w + x_ctx + (m + first) * (h * w))
        values, index = merge_topk(torch.cat(all_scores, -1), torch.cat(all_index, -1), self.topk)
        # (S, h, strip, k) → (h, S·strip, k) → crop the padded columns.
        values = values.permute(1, 0, 2, 3).reshape(h, width, -1)[:, :w]
        index = index.permute(1, 0, 2, 3).reshape(h, width, -1)[:, :w]
        return Neighbours(values.contiguous(), index.contiguous())


# Scratch for the windows of a group of contexts (float32): 6720 queries x 625 candidates
# x 8 contexts at the DAVIS default (134 MB) fit in one group.
_WINDOW_BUFFER_BYTES = 192 * 2**20

_BMM_OUT_DTYPE_OK: bool | None = None


def _bmm_f32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``out = a @ b`` (batched) with a float32 ``out``; half inputs only reach here on CUDA."""
    global _BMM_OUT_DTYPE_OK
    if a.dtype == torch.float32:
        torch.bmm(a, b, out=out)
        return
    if _BMM_OUT_DTYPE_OK is not False:
        try:
            torch.bmm(a, b, torch.float32, out=out)
            _BMM_OUT_DTYPE_OK = True
            return
        except (RuntimeError, TypeError):  # torch < 2.8: no out_dtype
            _BMM_OUT_DTYPE_OK = False
    out.copy_(torch.bmm(a, b))


class GlobalSearch:
    """Exact top-k over every cell of every context frame (no window), via k-NN search."""

    def __init__(self, topk: int, *, backend: KnnBackend = "auto") -> None:
        PropagationParams(radius=None, topk=topk)
        resolve_knn_backend(backend, torch.device("cpu"))  # validates the name
        self.topk = topk
        self.backend: KnnBackend = backend

    def prepare(self, features: torch.Tensor) -> PreparedContext:
        """``(C, h, w)`` → ``(h·w, C)`` row-major cells."""
        _check_features(features, "context features")
        c, h, w = (int(s) for s in features.shape)
        cells = features.to(_compute_dtype(features)).reshape(c, h * w).t().contiguous()
        return PreparedContext(cells, (h, w), c)

    @torch.inference_mode()
    def search(self, query: torch.Tensor, contexts: Sequence[PreparedContext]) -> Neighbours:
        """Top-k neighbours of every cell of ``query`` ``(C, h, w)`` among all context cells."""
        h, w = _check_contexts(query, contexts)
        c = int(query.shape[0])
        cells = query.to(contexts[0].data.dtype).reshape(c, h * w).t()
        all_scores, all_index = [], []
        for m, ctx in enumerate(contexts):
            values, index = knn_search(cells, ctx.data, self.topk, backend=self.backend)
            all_scores.append(values)
            all_index.append(index + m * h * w)
        values, index = merge_topk(torch.cat(all_scores, -1), torch.cat(all_index, -1), self.topk)
        return Neighbours(values.reshape(h, w, -1), index.reshape(h, w, -1))
