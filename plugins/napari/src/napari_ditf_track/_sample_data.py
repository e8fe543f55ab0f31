"""Sample data: a small generated clip, so the plugin can be tried with nothing downloaded.

Two textured objects (an orange striped disk, id 1, and a blue checkered square, id 2) move
across a static textured background. The generator knows every object's position, so it also
gives the true masks and keypoint tracks of every frame; napari's sample menu hands out only
frame 0's labels and keypoints, the rest is what the tracker should find (the tests score it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["SETTINGS_KEY", "ShapesClip", "make_sample_data", "make_shapes_clip"]

#: Layer metadata naming widget settings for a video layer (``{"preset": "lab", "short_side":
#: 192}``), which the widget applies when that layer becomes its video.
SETTINGS_KEY = "ditf_track_settings"


class ShapesClip(NamedTuple):
    """``frames (T, H, W, 3) uint8`` RGB, ``labels (T, H, W) uint8`` (0, 1 disk, 2 square),
    ``tracks (T, N, 2)`` keypoints as ``(y, x)`` pixels, ``point_ids (N,)``, ``frame_names``."""

    frames: np.ndarray
    labels: np.ndarray
    tracks: np.ndarray
    point_ids: np.ndarray
    frame_names: list[str]


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.array([96.0, 120.0, 88.0])  # grey-green
    waves = 22 * np.sin(x / 9.0 + y / 13.0)[..., None] * np.array([1.0, 0.8, 0.6])
    blotches = 18 * np.sin(y / 23.0)[..., None] * np.cos(x / 17.0)[..., None]
    grain = rng.normal(0, 7, (height, width, 3))
    return base + waves + blotches + grain


def make_shapes_clip(
    num_frames: int = 16, height: int = 192, width: int = 256, seed: int = 0
) -> ShapesClip:
    """The clip, its true masks and its true keypoint tracks (deterministic for a seed).

    The disk (radius 26) moves right along the upper half at 7 px/frame, the square (side 44)
    left and up along the lower half at 6 and 1 px/frame; they never overlap. Keypoints, in
    order: disk centre, disk rim (right), square centre, square top-left corner, and a fixed
    background point.
    """
    rng = np.random.default_rng(seed)
    background = _background(height, width, rng)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    labels = np.zeros((num_frames, height, width), np.uint8)
    tracks = np.empty((num_frames, 5, 2), np.float64)
    radius, half = 26.0, 22.0
    for t in range(num_frames):
        canvas = background.copy()
        dy, dx = 0.28 * height, 0.2 * width + 7.0 * t  # disk centre (y, x)
        disk = (y - dy) ** 2 + (x - dx) ** 2 <= radius**2
        stripes = 40 * np.sin((x - dx) / 3.0)  # texture moves with the object
        canvas[disk] = np.stack([225 + 0.5 * stripes, 120 + stripes, 40 + 0.3 * stripes], axis=-1)[
            disk
        ]
        sy, sx = 0.72 * height - 1.0 * t, 0.8 * width - 6.0 * t  # square centre (y, x)
        square = (np.abs(y - sy) <= half) & (np.abs(x - sx) <= half)
        checker = ((np.floor((y - sy) / 8) + np.floor((x - sx) / 8)) % 2) * 60 - 30
        canvas[square] = np.stack([50 + 0.3 * checker, 80 + checker, 200 + 0.5 * checker], -1)[
            square
        ]
        frames[t] = np.clip(canvas, 0, 255).astype(np.uint8)
        labels[t][disk] = 1
        labels[t][square] = 2
        tracks[t] = [
            (dy, dx),
            (dy, dx + radius - 4),
            (sy, sx),
            (sy - half + 3, sx - half + 3),
            (0.5 * height, 0.5 * width),
        ]
    names = [f"{t:05d}" for t in range(num_frames)]
    return ShapesClip(frames, labels, tracks, np.arange(5, dtype=np.int64), names)


def make_sample_data() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample: the clip, frame 0's labels (as a full-length layer to paint
    corrections into) and frame 0's keypoints as a ``(t, y, x)`` Points layer."""
    clip = make_shapes_clip()
    annotations = np.zeros_like(clip.labels)
    annotations[0] = clip.labels[0]
    t0 = np.zeros((len(clip.point_ids), 1))
    points = np.hstack([t0, clip.tracks[0]])  # (N, 3) as (t, y, x)
    meta: dict[str, Any] = {"frame_names": clip.frame_names}
    # The widget chooses the weight-free lab preset for this clip (it runs with nothing
    # downloaded) at the clip's own short side (not the preset's 960: 25x the pixels, no more
    # detail); the annotations and keypoints name their frames, so the widget pairs them.
    settings = {"preset": "lab", "short_side": min(clip.frames.shape[1:3])}
    video_meta = {**meta, SETTINGS_KEY: settings}
    return [
        (clip.frames, {"name": "shapes", "rgb": True, "metadata": video_meta}, "image"),
        (annotations, {"name": "shapes annotations", "metadata": meta}, "labels"),
        (
            points,
            {
                "name": "shapes keypoints",
                "features": {"id": clip.point_ids, "visible": np.ones(len(points), bool)},
                "face_color": "yellow",
                "size": 7,
                "metadata": meta,
            },
            "points",
        ),
    ]
