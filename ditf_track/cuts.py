"""Scene cuts: the frames where a video changes shot, so labels are not carried across them.

Propagation assumes that consecutive frames show the same scene; after a cut its nearest
neighbours are meaningless and every later mask is silently wrong. The rule follows the
content detectors of PySceneDetect (Castellano, https://www.scenedetect.com,
``ContentDetector`` and ``AdaptiveDetector``), reimplemented here on OpenCV because the
``scenedetect`` package requires ``opencv-python``, which clashes with
``opencv-python-headless``:

1. **content score** of frame ``t``: each frame is shrunk (area averaging) so that its long
   side is :data:`ANALYSIS_SIZE` pixels and converted to HSV (OpenCV's 0–255 "full" hue); the
   score is the weighted mean, over hue, saturation and value, of the mean absolute difference
   between frames ``t - 1`` and ``t`` (hue on the colour circle, at most 128). Scale 0–255.
2. **adaptive ratio**: the score divided by the mean score of the ``window`` frames on either
   side. Fast motion gives high scores for many frames in a row (DAVIS ``motocross-jump``
   reaches 43, more than a real cut in ``bikes.mp4``), a cut gives one isolated peak, so a
   fixed threshold alone cannot separate them.
3. frame ``t`` starts a new shot when its score is at least ``threshold``, its ratio at least
   ``adaptive_ratio``, and it lies at least ``min_scene_len`` frames after the previous cut
   found (the first frame read is not counted as one: a range may start mid-shot).

Frames are read one at a time through :func:`ditf_track.video.open_video` (video files and
frame folders alike), every frame of the range, never a strided selection; only two shrunken
frames are held, plus one score per frame.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ConfigError
from .progress import Progress, ProgressEvent
from .video import VideoSource, open_video

__all__ = ["ANALYSIS_SIZE", "CutParams", "CutScores", "cut_scores", "detect_cuts", "select_cuts"]

#: Long side, in pixels, of the frames the scores are computed on (never enlarged); the shared
#: test clips give the same cuts at 64 and at 256 pixels.
ANALYSIS_SIZE = 128


@dataclass(frozen=True)
class CutParams:
    """How a frame is judged to start a new shot (see the module docstring).

    ``threshold``: least content score (0–255) at a cut; ``adaptive_ratio``: least ratio of
    that score to its neighbours' mean (0 turns the adaptive rule off, leaving PySceneDetect's
    plain content rule); ``min_scene_len``: least number of frames between two cuts;
    ``weights``: weights of (hue, saturation, value) in the score; ``window``: neighbours on
    each side in the ratio.
    """

    threshold: float = 20.0
    adaptive_ratio: float = 2.5
    min_scene_len: int = 15
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    window: int = 2

    def __post_init__(self) -> None:
        for name in ("threshold", "adaptive_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"cut {name}={value!r} must be a number, e.g. {name}=20")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"cut {name}={value} must be a finite number >= 0")
        for name in ("min_scene_len", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"cut {name}={value!r} must be a whole number >= 1")
        w = self.weights
        if (
            not isinstance(w, tuple)
            or len(w) != 3
            or not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in w)
            or sum(w) <= 0
        ):
            raise ConfigError(
                f"cut weights={w!r} must be 3 finite numbers >= 0 for (hue, saturation, value), "
                f"not all 0, e.g. (1.0, 1.0, 1.0)"
            )


@dataclass(frozen=True)
class CutScores:
    """Per-frame evidence of a cut, for a range of ``T`` consecutive frames.

    ``frame_indices``: ``(T,) int64`` index of each frame in the video file or folder;
    ``content``: ``(T,) float64`` content score of frame ``t`` against frame ``t - 1``
    (0 for the first frame); ``ratio``: ``(T,) float64`` adaptive ratio (``inf`` where the
    neighbours do not change at all, 0 for the first frame).
    """

    frame_indices: np.ndarray
    content: np.ndarray
    ratio: np.ndarray


def _analysis_hsv(frame: np.ndarray) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB → ``(h, w, 3) int16`` HSV at :data:`ANALYSIS_SIZE`."""
    height, width = frame.shape[:2]
    scale = ANALYSIS_SIZE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2: (w, h)
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2HSV_FULL).astype(np.int16)


def _adaptive_ratio(content: np.ndarray, window: int) -> np.ndarray:
    """Each score over the mean of the up to ``2 * window`` scores beside it (frames >= 1)."""
    ratio = np.zeros_like(content)
    for t in range(1, len(content)):
        lo, hi = max(1, t - window), min(len(content), t + window + 1)
        beside = np.concatenate([content[lo:t], content[t + 1 : hi]])
        if beside.size == 0 or beside.mean() <= 0:
            ratio[t] = math.inf if content[t] > 0 else 0.0
        else:
            ratio[t] = content[t] / beside.mean()
    return ratio


def _consecutive(video: str | os.PathLike[str] | VideoSource) -> tuple[VideoSource, bool]:
    """The source to read every frame of ``video``'s range from; True if opened here."""
    if not isinstance(video, VideoSource):
        return open_video(Path(video)), True
    if video.stride == 1:
        return video, False
    # A strided selection skips frames, and a cut may lie between two selected ones.
    return open_video(video.path, video.start, video.stop), True


def cut_scores(
    video: str | os.PathLike[str] | VideoSource,
    *,
    weights: tuple[float, float, float] = CutParams.weights,
    window: int = CutParams.window,
    progress: Progress | None = None,
) -> CutScores:
    """Content scores and adaptive ratios of every frame of ``video`` (see :class:`CutScores`).

    ``video`` is a video file, a frame folder, or an open :class:`VideoSource`; for a source
    selected with a stride, every frame of its ``start:stop`` range is read (reopened here).
    ``progress`` gets ``ProgressEvent("cuts", done, total)`` after each frame.

    Raises:
        InputError: a missing, unreadable or damaged video (from :func:`open_video`).
        ConfigError: bad ``weights`` or ``window``.
    """
    params = CutParams(weights=weights, window=window)
    w = np.asarray(params.weights, np.float64) / sum(params.weights)
    source, opened = _consecutive(video)
    try:
        total = len(source)
        content = np.zeros(total, np.float64)
        previous: np.ndarray | None = None
        for t, frame in enumerate(source):
            current = _analysis_hsv(frame)
            if previous is not None:
                diff = np.abs(current - previous)
                diff[..., 0] = np.minimum(diff[..., 0], 256 - diff[..., 0])
                content[t] = float(diff.reshape(-1, 3).mean(axis=0) @ w)
            previous = current
            if progress is not None:
                progress(ProgressEvent("cuts", t + 1, total))
        frame_indices = source.frame_indices.copy()
    finally:
        if opened:
            source.close()
    return CutScores(frame_indices, content, _adaptive_ratio(content, params.window))


def select_cuts(scores: CutScores, params: CutParams | None = None) -> list[int]:
    """The frame indices (in the video's numbering) that start a new shot, increasing."""
    params = params or CutParams()
    cuts: list[int] = []
    last: int | None = None
    for t in range(1, len(scores.content)):
        if (
            scores.content[t] >= params.threshold
            and scores.ratio[t] >= params.adaptive_ratio
            and (last is None or t - last >= params.min_scene_len)
        ):
            cuts.append(int(scores.frame_indices[t]))
            last = t
    return cuts


def detect_cuts(
    video: str | os.PathLike[str] | VideoSource,
    *,
    threshold: float = CutParams.threshold,
    adaptive_ratio: float = CutParams.adaptive_ratio,
    min_scene_len: int = CutParams.min_scene_len,
    progress: Progress | None = None,
) -> list[int]:
    """Shot boundaries of ``video``: the index of each frame that starts a new shot.

    Indices are 0-based in the video file's (or folder's) own frame numbering, increasing;
    the first frame is never listed, so ``[]`` means one shot. ``video`` is read as in
    :func:`cut_scores`; parameters are those of :class:`CutParams`, checked before any frame
    is read.

    Raises:
        ConfigError: a parameter out of range.
        InputError: a missing, unreadable or damaged video.
    """
    params = CutParams(threshold, adaptive_ratio, min_scene_len)
    scores = cut_scores(video, weights=params.weights, window=params.window, progress=progress)
    return select_cuts(scores, params)
