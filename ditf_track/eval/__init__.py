"""Evaluators for the standard benchmarks, each with the official protocol and metric names.

``davis``: DAVIS semi-supervised video object segmentation, J&F (:func:`evaluate_davis`).
"""

from .davis import (
    BOUND_TH,
    DavisResult,
    SequenceResult,
    boundary_f_measure,
    boundary_map,
    evaluate_davis,
    evaluate_sequence,
    jf_statistics,
    region_similarity,
    write_davis_csvs,
    write_davis_json,
)

__all__ = [
    "BOUND_TH",
    "DavisResult",
    "SequenceResult",
    "boundary_f_measure",
    "boundary_map",
    "evaluate_davis",
    "evaluate_sequence",
    "jf_statistics",
    "region_similarity",
    "write_davis_csvs",
    "write_davis_json",
]
