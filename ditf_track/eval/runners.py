"""Old path of :mod:`ditf_track.eval.runs.pairs`, kept while ``cli.py`` imports it."""

from .runs.pairs import DETECTORS, HPatchesEvaluation, PCKEvaluation, open_eval_dir

__all__ = ["DETECTORS", "HPatchesEvaluation", "PCKEvaluation", "open_eval_dir"]
