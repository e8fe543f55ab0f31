"""The one progress callback shape: ``progress(ProgressEvent)`` after each unit of work.

The tracker, feature export and the DAVIS folder scorer all report this way, so a front end
(CLI bar, napari status, log line) handles every long run with one function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Phase", "Progress", "ProgressEvent"]

#: ``extract``: feature maps (tracker, export); ``propagate``: masks and points (tracker);
#: ``score``: DAVIS sequences scored (``evaluate_davis``); ``cuts``: frames scanned for scene
#: cuts (``cuts.detect_cuts``).
Phase = Literal["extract", "propagate", "score", "cuts"]


@dataclass(frozen=True)
class ProgressEvent:
    """``done`` of ``total`` units (frames, or sequences for ``score``) of one phase;
    ``item`` names the unit just finished where that helps (the sequence), else ``""``."""

    phase: Phase
    done: int
    total: int
    item: str = ""


Progress = Callable[[ProgressEvent], None]
