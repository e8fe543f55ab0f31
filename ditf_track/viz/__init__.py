"""Drawing for a quick look: overlay videos (:mod:`.overlay`) and pair matches (:mod:`.matches`).

Below the readers and the matcher: nothing here imports a model, a tracker or an evaluator.
"""

from __future__ import annotations

from .matches import draw_matches
from .overlay import FramePoints, write_overlay_video

__all__ = ["FramePoints", "draw_matches", "write_overlay_video"]
