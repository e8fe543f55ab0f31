"""A multi-object DAVIS case built from the shared real data, for tests and the benchmark.

The shared ground truth is DAVIS-2016 (one binary object), so a DAVIS-2017-style multi-object case
is made from the real OSVOS 2-object predictions of motocross-jump and bmx-trees: they become the
palette *ground truth* (cropped to 400×600, so the boundary radius is 6 px, with a 255 void ring
around the objects, an object that leaves for a few frames and a late id 3 that is never scored),
and a deterministic perturbation of them becomes the *prediction* (object 1 shifted, object 2
eroded and sometimes dropped, a spurious blob; bmx-trees predicts object 1 only). Every step is
integer numpy/OpenCV on fixed inputs, so the PNGs are identical on every run; the official tool's
numbers for them are recorded in ``tests/test_eval_davis.py``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

MULTI_SEQUENCES = ("motocross-jump", "bmx-trees")
_CROP = (slice(40, 440), slice(100, 700))
_KERNEL = np.ones((3, 3), np.uint8)


def davis_palette() -> list[int]:
    """The PASCAL-VOC colour map DAVIS uses, flat [r0, g0, b0, r1, ...] for 256 ids."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def save_palette_png(labels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(davis_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _multi_frame(seq: str, t: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, prediction) labels of one frame, both (400, 600) uint8."""
    lab = np.ascontiguousarray(labels[_CROP])
    if seq == "motocross-jump" and 10 <= t <= 12:
        lab[lab == 2] = 0  # object 2 absent from both: J = F = 1 by convention
    gt = lab.copy()
    fg = (lab > 0).astype(np.uint8)
    ring = (cv2.dilate(fg, _KERNEL, iterations=2) > 0) & (fg == 0)
    gt[ring] = 255
    if seq == "motocross-jump" and t >= 30:
        gt[10:40, 10:40] = 3  # an id above the first frame's count: never scored

    pred = np.zeros_like(lab)
    pred[np.roll(lab == 1, (3, -2), axis=(0, 1))] = 1
    if seq != "bmx-trees":
        obj2 = cv2.erode((lab == 2).astype(np.uint8), _KERNEL, iterations=2) > 0
        if t % 7 != 3:
            pred[obj2 & (pred == 0)] = 2
    if t % 5 == 0:
        pred[350:380, 500:560] = 1  # a spurious blob
    return gt, pred


def write_multi_object_case(davis: Path, out: Path) -> tuple[Path, Path]:
    """Write ``out/gt/<seq>/<frame>.png`` and ``out/pred/<seq>/<frame>.png``; return both roots."""
    source = davis / "Predictions" / "osvos" / "480p"
    for seq in MULTI_SEQUENCES:
        for t, png in enumerate(sorted((source / seq).glob("*.png"))):
            labels = np.asarray(Image.open(png))
            gt, pred = _multi_frame(seq, t, labels)
            save_palette_png(gt, out / "gt" / seq / png.name)
            save_palette_png(pred, out / "pred" / seq / png.name)
    return out / "pred", out / "gt"
