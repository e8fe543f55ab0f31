"""Top-k context cells for every query cell: the affinity half of label propagation.

Two exact searches share one interface: :class:`WindowSearch` (the square neighbourhood of
DINO's ``restrict_neighborhood``, computed without ever forming the dense ``hw x hw`` matrix)
and :class:`GlobalSearch` (every context cell, through :func:`~.knn.knn_search`). Both take
context frames ``prepare``-d once, so a frame that stays in the propagation queue for n steps
is rearranged once, not n times, and both return :class:`Neighbours`.

Shapes: features ``(C, h, w)`` (L2-normalised over C), context stacks ``(M, C, h, w)``. A
neighbour index is the flat cell ``m·h·w + y·w + x`` of the stacked contexts ``(M, h, w)``.

Numerics (:class:`~.params.PropagationParams`). ``exact``: cosines accumulated and kept in
float32, exactly k cells (``topk``). ``official``, the authors' DiTF DAVIS script as issue 18
describes it (the affinity ``exp(bmm / τ)`` in bfloat16, every cell at or above the k-th largest
affinity kept, the others set to 0): features rounded to bfloat16, their products accumulated in
float32 and each cosine rounded to bfloat16 (cuBLAS' bf16 GEMM, up to summation order; torch may
also reduce split-K partial sums in bf16 there, which is not reproduced), then ``/ τ`` and
``exp`` as torch's bfloat16 ops, each rounding its result to bfloat16. Cells outside the window
have affinity 0, as DINO's neighbourhood mask makes them. Ties are decided on the bf16
affinities, so cells with different cosines that round to the same affinity tie too. The
reference text does not say in which dtype the authors normalise the kept affinities and
aggregate the labels; here both are float32 (:func:`~.labels.aggregate_labels`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from .knn import KnnBackend, knn_search, matmul_f32, resolve_knn_backend
from .params import Numerics, PropagationParams

# Query-strip width (cells) of the windowed search. Each GEMM multiplies the (2r + 1) x strip
# query cells that can see one context row by that row's strip + 2r cells (of every context at
# once), so the work done is (strip + 2r)/(2r + 1) of the useful work: 1.20 at strip 6, r 12
# (1.22 with the 106 -> 108 column padding; strip 8: 1.28 and 1.35). Measured on the project's
# 2-core AVX-512 CPU, quiet (benchmarks/RESULTS.md, --sweep 4,6,8,12,16, frames/s, best of
# interleaved rounds): C = 3072: 0.59 / 0.60 / 0.57 / 0.53 / 0.44; C = 1152: 1.56 / 1.53 /
# 1.45 / 1.39 / 1.24. Strip 6 is within 2 % of the best at both widths and launches a third
# fewer GEMMs than strip 4 (18 strips against 27 at 106 columns), which matters more on a
# GPU. CUDA uses the same default; it has not been measured on a GPU yet.
DEFAULT_STRIP_WIDTH = 6


@dataclass(frozen=True)
class Neighbours:
    """The kept context cells of every query cell.

    ``scores`` ``(h, w, k)`` float32 cosine similarities in descending order (``-inf`` marks
    an empty slot when a clipped window holds fewer than k cells); ``index`` ``(h, w, k)``
    int64 flat cells ``m·h·w + y·w + x`` of the stacked contexts (in range even for empty
    slots). The softmax weights are ``softmax(scores / τ)`` over the last dimension.

    ``affinity`` ``(h, w, k')`` float32, only with the official numerics: the bfloat16
    affinities ``exp(cos/τ)`` of the kept cells and 0 in the other slots; ``k' >= k`` is the
    most cells any query kept (ties at the k-th place), and the weights are ``affinity`` over
    its sum. ``scores`` then holds the bfloat16 cosines of the kept cells, ``-inf`` elsewhere.
    """

    scores: torch.Tensor
    index: torch.Tensor
    affinity: torch.Tensor | None = None


@dataclass(frozen=True)
class PreparedContext:
    """One context frame rearranged for a search (opaque; made by ``prepare``).

    A windowed search also keeps the frame in a slot of its interleaved buffer (``slot`` of
    ``buffer``), released when this object is garbage-collected.
    """

    data: torch.Tensor
    grid: tuple[int, int]
    channels: int
    slot: int | None = field(default=None, compare=False)
    buffer: _SlotBuffer | None = field(default=None, compare=False, repr=False)


class _SlotBuffer:
    """Prepared context rows interleaved as ``(h, W + 2r_x, slots, C)``, the context innermost.

    With the contexts side by side in memory, one GEMM per query strip scores the strip's
    query block against the halo of every context at once (see :class:`WindowSearch`), and a
    propagation step copies only its one new frame in, instead of stacking every context again.
    """

    def __init__(
        self,
        rows_shape: tuple[int, int, int],
        dtype: torch.dtype,
        device: torch.device,
        capacity: int,
    ) -> None:
        h, width, c = rows_shape
        # Zeros, not empty: a free slot is scored too (then masked), and garbage could be NaN.
        self.data = torch.zeros((h, width, capacity, c), dtype=dtype, device=device)
        self.free = list(range(capacity - 1, -1, -1))

    @property
    def capacity(self) -> int:
        return int(self.data.shape[2])

    def acquire(self) -> int:
        if not self.free:  # more live contexts than expected: double the slots
            old = self.data
            h, width, cap, c = old.shape
            self.data = torch.zeros((h, width, 2 * cap, c), dtype=old.dtype, device=old.device)
            self.data[:, :, :cap] = old
            self.free = list(range(2 * cap - 1, cap - 1, -1))
        return self.free.pop()

    def release(self, slot: int) -> None:
        self.free.append(slot)


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
    capacity: int | None = None,
) -> NeighbourSearch:
    """The search ``params`` ask for: windowed when ``radius`` is set, global otherwise.

    ``capacity``: how many prepared contexts are alive at once (a windowed search keeps them
    in one buffer); one propagation sequence has ``n_context + 1``, the default.
    """
    numerics, tau = params.numerics, params.temperature
    if params.radius is None:
        return GlobalSearch(params.topk, backend=knn_backend, numerics=numerics, temperature=tau)
    slots = params.n_context + 1 if capacity is None else capacity
    return WindowSearch(
        params.radius,
        params.topk,
        strip_width=strip_width,
        capacity=slots,
        numerics=numerics,
        temperature=tau,
    )


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


def official_affinity(cosines: torch.Tensor, temperature: float) -> torch.Tensor:
    """The authors' ``exp(cos / τ)``: the float32 cosines rounded to bfloat16, then the
    division and the exponential as bfloat16 ops (each result rounded to bfloat16). Returns
    bfloat16, 0 where a cosine is ``-inf`` (a cell outside the window)."""
    return torch.exp(cosines.to(torch.bfloat16) / temperature)


def keep_ties(affinity: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every candidate whose ``affinity (..., n)`` reaches the k-th largest of its row.

    Returns ``values (..., k')`` float32 in descending order, 0 in the slots of a row that
    keeps fewer than ``k'`` (the most any row keeps), and their positions ``(..., k')`` in the
    last dimension. Candidates of affinity 0 (outside the window) are never kept.
    """
    k = min(k, int(affinity.shape[-1]))
    if k == 0:
        return affinity.new_zeros(affinity.shape, dtype=torch.float32), torch.zeros(
            affinity.shape, dtype=torch.long, device=affinity.device
        )
    kth = affinity.topk(k, dim=-1).values[..., -1:]
    kept = (affinity >= kth) & (affinity > 0)
    width = max(k, int(kept.sum(-1).max()) if kept.numel() else k)
    values, pos = affinity.topk(width, dim=-1)
    values = torch.where((values >= kth) & (values > 0), values, 0).float()
    return values, pos


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

    Ties (``numerics="exact"``): exactly k cells are kept (``torch.topk``). DINO keeps every
    cell whose weight reaches the k-th largest, which differs only when several cells have
    bit-identical float32 similarity at the k-th place. ``numerics="official"`` keeps them all,
    on bfloat16 affinities (module docstring), the window's cells being the only candidates.
    """

    def __init__(
        self,
        radius: int,
        topk: int,
        *,
        strip_width: int | None = None,
        capacity: int = 8,
        numerics: Numerics = "exact",
        temperature: float = 0.1,
    ) -> None:
        PropagationParams(radius=radius, topk=topk, temperature=temperature, numerics=numerics)
        strip = DEFAULT_STRIP_WIDTH if strip_width is None else strip_width
        if isinstance(strip, bool) or not isinstance(strip, int) or strip < 1:
            raise ConfigError(
                f"strip_width={strip_width!r} must be an integer >= 1 "
                f"(default {DEFAULT_STRIP_WIDTH})"
            )
        self.radius = radius
        self.topk = topk
        self.numerics = numerics
        self.temperature = temperature
        self.strip_width = strip
        self.capacity = max(1, capacity)
        self._buffers: dict[tuple[object, ...], _SlotBuffer] = {}
        self._scratches: dict[str, torch.Tensor] = {}

    def _scratch(
        self, name: str, shape: tuple[int, ...], device: torch.device
    ) -> tuple[torch.Tensor, bool]:
        """A float32 work tensor kept between searches, and whether it was just made.

        Reusing it saves a step from faulting in ~350 MB of fresh pages at the DAVIS default
        (steps of 1.5 s instead of 1.7–2.1 s on the project's CPU).
        """
        kept = self._scratches.get(name)
        if kept is not None and kept.shape == shape and kept.device == device:
            return kept, False
        self._scratches.pop(name, None)
        made = self._scratches[name] = torch.empty(shape, device=device, dtype=torch.float32)
        return made, True

    def _rounded(self, features: torch.Tensor) -> torch.Tensor:
        """The official numerics compute on bfloat16 features (stored as float32 on CPU)."""
        if self.numerics == "official":
            return features.to(torch.bfloat16).to(_compute_dtype(features))
        return features

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
        dtype = _compute_dtype(features)
        shape = (h, width + 2 * rx, c)
        key = (shape, dtype, features.device)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = _SlotBuffer(shape, dtype, features.device, self.capacity)
        slot = buffer.acquire()
        # Slots are zero outside the grid columns and only the interior is ever written.
        buffer.data[:, rx : rx + w, slot] = self._rounded(features).permute(1, 2, 0)
        prepared = PreparedContext(buffer.data[:, :, slot], (h, w), c, slot, buffer)
        weakref.finalize(prepared, buffer.release, slot)
        return prepared

    def _groups(
        self, contexts: Sequence[PreparedContext], per_context: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Context rows interleaved as ``(h, W + 2rx, g, C)`` and each slot's context position.

        Contexts are scored in groups whose rows sit side by side, the context innermost, so
        that one GEMM per strip scores the query block against the halo of *every* context of
        the group (N = halo·g instead of halo: 182 against 119 GFLOP/s at C = 3072, g = 8 on
        the project's CPU), and one topk runs over their windows side by side (on CPU topk
        costs ~3.5 µs per row plus ~3.6 ns per value: rows of 8 x 625 values are 1.6x cheaper
        than 8 rows of 625). Contexts prepared by this search already live in its slot buffer
        (a propagation step copies in only its new frame); others are stacked per call.
        Position -1 marks a slot that holds no context of this search.
        """
        buffer = contexts[0].buffer
        slots = [ctx.slot for ctx in contexts]
        if (
            buffer is not None
            and all(ctx.buffer is buffer for ctx in contexts)
            and len(set(slots)) == len(slots)
            and buffer.capacity * per_context <= _WINDOW_BUFFER_BYTES
        ):
            position = torch.full((buffer.capacity,), -1, dtype=torch.long)
            position[torch.tensor(slots, dtype=torch.long)] = torch.arange(len(contexts))
            yield buffer.data, position
            return
        group = max(1, min(len(contexts), _WINDOW_BUFFER_BYTES // per_context))
        for first in range(0, len(contexts), group):
            chunk = contexts[first : first + group]
            stacked = torch.stack([ctx.data for ctx in chunk], dim=2)
            yield stacked, torch.arange(first, first + len(chunk))

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
        strips = torch.zeros((n_strips, h + 2 * ry, strip, c), device=device, dtype=dtype)
        rows = self._rounded(query).permute(1, 2, 0)
        inner = strips.transpose(0, 1)[ry : ry + h]  # a view: (h, S, strip, C)
        full = w // strip
        inner[:, :full].copy_(rows[:, : full * strip].unflatten(1, (full, strip)))
        if full < n_strips:
            inner[:, full, : w - full * strip].copy_(rows[:, full * strip :])

        # Columns outside the grid are -inf; window candidate (i, d) of query (s, y, j) is
        # context row y - ry + i, column s·strip + j - rx + d.
        wx = 2 * rx + 1
        j = torch.arange(strip, device=device)
        d = torch.arange(wx, device=device)
        col = (torch.arange(n_strips, device=device) * strip - rx)[:, None, None] + j[:, None] + d
        bias = torch.zeros(col.shape, device=device)
        bias.masked_fill_((col < 0) | (col >= w), float("-inf"))
        bias = bias[:, None, :, None, None, :]  # (S, 1, strip, 1, 1, wx)
        row0 = (torch.arange(h, device=device) - ry)[None, :, None, None]  # (1, h, 1, 1)
        col0 = col[:, None, :, :1]  # (S, 1, strip, 1): column of d = 0

        n_cand = span * wx
        per_context = n_strips * (h + 2 * ry) * block * halo * 4 + n_strips * h * strip * n_cand * 4
        all_scores, all_index, all_affinity = [], [], []
        for stacked, position in self._groups(contexts, per_context):
            g = int(stacked.shape[2])
            # scores[s, ry + y', Δ, j, σ, m]: context m's cell (y', s·strip - rx + σ) against
            # query cell (y' - ry + Δ, s·strip + j). Rows outside [ry, ry + h) stay -inf: they
            # stand for context rows outside the grid.
            scores, fresh = self._scratch(
                "scores", (n_strips, h + 2 * ry, span, strip, halo, g), device
            )
            if fresh:  # the GEMMs below never write these rows
                scores[:, :ry].fill_(float("-inf"))
                scores[:, ry + h :].fill_(float("-inf"))
            st = scores.stride()
            base = stacked.storage_offset()
            row_stride = stacked.stride(0)
            for s in range(n_strips):
                queries_s = strips[s].as_strided((h, block, c), (strip * c, c, 1))
                context_s = stacked.as_strided(
                    (h, halo * g, c), (row_stride, c, 1), base + s * strip * g * c
                )
                out = scores[s, ry : ry + h].view(h, block, halo * g)
                _bmm_f32(queries_s, context_s.transpose(1, 2), out)
            # Per query (s, y, j) and context m: its window (i, d), σ = j + d, Δ = 2ry - i,
            # read from the scores as a strided view; rows need no mask (padding rows are -inf);
            # slots of the buffer that hold no context of this search are -inf too.
            window_view = scores.as_strided(
                (n_strips, h, strip, g, span, wx),
                (st[0], st[1], st[3] + st[4], st[5], st[1] - st[2], st[4]),
                scores.storage_offset() + (span - 1) * st[2],
            )
            slot_bias = torch.where(position >= 0, 0.0, float("-inf")).to(device)
            windowed, _ = self._scratch("windowed", tuple(window_view.shape), device)
            torch.add(window_view, bias + slot_bias[:, None, None], out=windowed)
            candidates = windowed.reshape(n_strips, h, strip, -1)
            if self.numerics == "official":
                affinity = official_affinity(candidates, self.temperature)
                affinity, pos = keep_ties(affinity, self.topk)
                cosines = candidates.gather(-1, pos).to(torch.bfloat16).float()
                values = torch.where(affinity > 0, cosines, float("-inf"))
                all_affinity.append(affinity)
            else:
                values, pos = candidates.topk(min(self.topk, g * n_cand), dim=-1)
            m = position.to(device)[torch.div(pos, n_cand, rounding_mode="floor")].clamp_(min=0)
            i, d_pos = torch.div(pos % n_cand, wx, rounding_mode="floor"), pos % wx
            y_ctx = (row0 + i).clamp_(0, h - 1)
            x_ctx = (col0 + d_pos).clamp_(0, w - 1)
            all_scores.append(values)
            all_index.append(y_ctx * w + x_ctx + m * (h * w))
        scores, index = torch.cat(all_scores, -1), torch.cat(all_index, -1)
        if self.numerics == "official":
            affinity, pos = keep_ties(torch.cat(all_affinity, -1), self.topk)
            values = torch.where(affinity > 0, scores.gather(-1, pos), float("-inf"))
            index = index.gather(-1, pos)
        else:
            values, index = merge_topk(scores, index, self.topk)

        def crop(t: torch.Tensor) -> torch.Tensor:
            # (S, h, strip, k) → (h, S·strip, k) → crop the padded columns.
            return t.permute(1, 0, 2, 3).reshape(h, width, -1)[:, :w].contiguous()

        if self.numerics == "official":
            return Neighbours(crop(values), crop(index), crop(affinity))
        return Neighbours(crop(values), crop(index))


# Scratch for a group of contexts (float32): the GEMM scores (18 strips x 84 rows x 150 x
# 30 cells, 27 MB per context) and the windows (6480 queries x 625 candidates, 16 MB per
# context) of the 8 contexts at the DAVIS default (350 MB) fit in one group.
_WINDOW_BUFFER_BYTES = 512 * 2**20

_BMM_OUT_DTYPE_OK: bool | None = None

# float32 scores of one chunk of queries against every context cell (official global search).
_GLOBAL_CHUNK_BYTES = 256 * 2**20


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
    """Exact top-k over every cell of every context frame (no window), via k-NN search.

    ``numerics="official"`` keeps ties on bfloat16 affinities (module docstring); it scores
    chunks of queries against every context cell with torch (no FAISS: ties need every score).
    """

    def __init__(
        self,
        topk: int,
        *,
        backend: KnnBackend = "auto",
        numerics: Numerics = "exact",
        temperature: float = 0.1,
    ) -> None:
        PropagationParams(radius=None, topk=topk, temperature=temperature, numerics=numerics)
        resolve_knn_backend(backend, torch.device("cpu"))  # validates the name
        self.topk = topk
        self.backend: KnnBackend = backend
        self.numerics = numerics
        self.temperature = temperature

    def prepare(self, features: torch.Tensor) -> PreparedContext:
        """``(C, h, w)`` → ``(h·w, C)`` row-major cells."""
        _check_features(features, "context features")
        c, h, w = (int(s) for s in features.shape)
        if self.numerics == "official":
            features = features.to(torch.bfloat16)
        cells = features.to(_compute_dtype(features)).reshape(c, h * w).t().contiguous()
        return PreparedContext(cells, (h, w), c)

    def _search_official(
        self, cells: torch.Tensor, contexts: Sequence[PreparedContext]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tie-keeping search of ``cells (Q, C)`` over all context cells, chunked over queries."""
        database = torch.cat([ctx.data for ctx in contexts]).t()
        n_db = int(database.shape[1])
        chunk = max(1, _GLOBAL_CHUNK_BYTES // (4 * n_db))
        parts = []
        for start in range(0, int(cells.shape[0]), chunk):
            cosines = matmul_f32(cells[start : start + chunk], database)
            affinity, pos = keep_ties(official_affinity(cosines, self.temperature), self.topk)
            kept = torch.where(affinity > 0, cosines.gather(-1, pos), float("-inf"))
            parts.append((kept.to(torch.bfloat16).float(), pos, affinity))
        width = max(int(p[0].shape[-1]) for p in parts)

        def padded(i: int, fill: float) -> torch.Tensor:
            return torch.cat([F.pad(p[i], (0, width - p[i].shape[-1]), value=fill) for p in parts])

        return padded(0, float("-inf")), padded(1, 0).long(), padded(2, 0.0)

    @torch.inference_mode()
    def search(self, query: torch.Tensor, contexts: Sequence[PreparedContext]) -> Neighbours:
        """Top-k neighbours of every cell of ``query`` ``(C, h, w)`` among all context cells."""
        h, w = _check_contexts(query, contexts)
        c = int(query.shape[0])
        if self.numerics == "official":
            query = query.to(torch.bfloat16)
        cells = query.to(contexts[0].data.dtype).reshape(c, h * w).t()
        if self.numerics == "official":
            values, index, affinity = self._search_official(cells, contexts)
            return Neighbours(
                values.reshape(h, w, -1), index.reshape(h, w, -1), affinity.reshape(h, w, -1)
            )
        all_scores, all_index = [], []
        for m, ctx in enumerate(contexts):
            values, index = knn_search(cells, ctx.data, self.topk, backend=self.backend)
            all_scores.append(values)
            all_index.append(index + m * h * w)
        values, index = merge_topk(torch.cat(all_scores, -1), torch.cat(all_index, -1), self.topk)
        return Neighbours(values.reshape(h, w, -1), index.reshape(h, w, -1))
