"""``matches.png``: two images side by side with one coloured line per match.

Match rows are ``(ya, xa, yb, xb)`` pixels of the original images (as
:meth:`ditf_track.match.Matcher.match_dense` returns them); matplotlib is imported on first
use, so the CLI's other commands never load it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._atomic import atomic_path

__all__ = ["MAX_DRAWN_LINES", "draw_matches"]

#: Above this many matches an evenly spaced subset is drawn (the CSV has them all).
MAX_DRAWN_LINES = 500


def draw_matches(
    path: str | os.PathLike[str],
    image_a: np.ndarray,
    image_b: np.ndarray,
    matches_yx: np.ndarray,
    max_lines: int = MAX_DRAWN_LINES,
) -> Path:
    """The two images side by side (top-aligned) with one coloured line per match; a PNG.

    The PNG is ``max(Ha, Hb)`` × ``Wa + Wb`` pixels. Above ``max_lines`` matches an evenly
    spaced subset is drawn (the CSV has them all). Matplotlib's Agg canvas, no pyplot state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    a, b = np.asarray(image_a), np.asarray(image_b)
    ha, wa = a.shape[:2]
    hb, wb = b.shape[:2]
    height, width = max(ha, hb), wa + wb
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    canvas[:ha, :wa] = a
    canvas[:hb, wa:] = b
    m = np.asarray(matches_yx, dtype=np.float64).reshape(-1, 4)
    if len(m) > max_lines:
        m = m[np.linspace(0, len(m) - 1, max_lines).round().astype(int)]
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    if len(m):
        segments = np.stack([m[:, [1, 0]], m[:, [3, 2]] + [wa, 0]], axis=1)  # (K, 2, 2) x, y
        import matplotlib

        colours = matplotlib.colormaps["hsv"](np.linspace(0, 0.9, len(m)))
        linewidth = max(0.6, min(2.0, width / 800))
        ax.add_collection(LineCollection(list(segments), colors=colours, linewidths=linewidth))
        ax.scatter(segments[:, 0, 0], segments[:, 0, 1], s=4 * linewidth, c=colours)
        ax.scatter(segments[:, 1, 0], segments[:, 1, 1], s=4 * linewidth, c=colours)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.axis("off")
    out = Path(path)
    with atomic_path(out, "matches image") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return out
