"""Moved to :mod:`ditf_track.tracker.clip_features`; this name stays until ``cli`` imports it
from :mod:`ditf_track.tracker`."""

from .tracker.clip_features import ClipFeatures

__all__ = ["ClipFeatures"]
