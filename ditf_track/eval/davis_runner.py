"""Old path of :mod:`ditf_track.eval.runs.davis`, kept while ``cli.py`` imports it."""

from .runs.davis import DavisRun, davis_sequences, open_davis_dir

__all__ = ["DavisRun", "davis_sequences", "open_davis_dir"]
