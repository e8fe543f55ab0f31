"""Label propagation through video on DiTF (or any) dense features: the algorithmic core.

``params`` (the protocol's n, r, k, τ) → ``search`` (top-k context cells per query cell,
windowed or global) → ``labels`` (average the context labels, drive a sequence, write masks);
``points`` tracks query points by matching, or as Gaussian heat maps through ``labels``.
Everything here is a pure function of tensors; the tracker adds extraction and caching.
"""

from .knn import KnnBackend, knn_search, matmul_f32
from .labels import (
    aggregate_labels,
    normalize_soft_labels,
    propagate_labels,
    propagate_sequence,
    soft_labels_to_mask,
)
from .params import PropagationParams
from .points import (
    PointEstimate,
    PointParams,
    gaussian_label_maps,
    heatmap_peaks,
    locate,
    sample_descriptors,
    track_heatmaps,
    track_query_points,
)
from .search import (
    DEFAULT_STRIP_WIDTH,
    GlobalSearch,
    Neighbours,
    NeighbourSearch,
    PreparedContext,
    WindowSearch,
    make_search,
    merge_topk,
)

__all__ = [
    "DEFAULT_STRIP_WIDTH",
    "GlobalSearch",
    "KnnBackend",
    "NeighbourSearch",
    "Neighbours",
    "PointEstimate",
    "PointParams",
    "PreparedContext",
    "PropagationParams",
    "WindowSearch",
    "aggregate_labels",
    "gaussian_label_maps",
    "heatmap_peaks",
    "knn_search",
    "locate",
    "make_search",
    "matmul_f32",
    "merge_topk",
    "normalize_soft_labels",
    "propagate_labels",
    "propagate_sequence",
    "sample_descriptors",
    "soft_labels_to_mask",
    "track_heatmaps",
    "track_query_points",
]
