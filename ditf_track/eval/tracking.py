"""Old path of :mod:`ditf_track.eval.runs.points`, kept while ``cli.py`` imports it."""

from .runs.points import KeypointEvaluation, TapVidEvaluation, badja_videos, jhmdb_videos

__all__ = ["KeypointEvaluation", "TapVidEvaluation", "badja_videos", "jhmdb_videos"]
