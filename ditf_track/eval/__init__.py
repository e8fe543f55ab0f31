"""The standard evaluators, each with the official protocol and the benchmark's metric names.

``davis`` (DAVIS J&F; ``davis_folders`` scores folders of PNGs), ``tapvid`` (TAP-Vid AJ,
δ_avg, OA), ``keypoints`` (BADJA/JHMDB PCK), ``correspondence`` (SPair-71k / PF-PASCAL /
AP-10K PCK), ``hpatches`` (homography accuracy). The runs that own an output folder
(``runs.pairs``, ``runs.points``, ``runs.davis``) share the resumable run of ``_run``.
"""

from .davis import (
    BOUND_TH,
    DavisResult,
    SequenceResult,
    boundary_f_measure,
    boundary_map,
    evaluate_sequence,
    jf_statistics,
    region_similarity,
)
from .davis_folders import evaluate_davis, write_davis_csvs, write_davis_json

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
