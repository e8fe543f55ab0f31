"""How well the weight-free ``lab`` features propagate DAVIS masks, per lightness offset.

For each clip of ../shared/data/davis (DAVIS-2016 480p, one object): frames resized as the
official DiTF DAVIS script does (short side 960, long side floored to a multiple of 32, cv2
bilinear → 1696x960, a 60x106 grid at stride 16), lab features, the first GT mask as
reference, DINO's propagation (n 7, r 12, k 5, τ 0.1), masks written DINO's way, and the
plain IoU (J) with the GT averaged over frames 1..T-1. Prints a table and appends it to
RESULTS.md.

    python benchmarks/lab_variants.py --offsets -50,0,50,100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import append_results

from ditf_track.lab import LabExtractor
from ditf_track.propagate import PropagationParams, propagate_sequence, soft_labels_to_mask

DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis"
SEQUENCES = ("blackswan", "car-shadow", "dog", "motocross-jump", "bmx-trees")


def load(seq: str) -> tuple[np.ndarray, list[np.ndarray]]:
    jpgs = sorted((DAVIS / "JPEGImages" / "480p" / seq).glob("*.jpg"))
    pngs = sorted((DAVIS / "Annotations" / "480p" / seq).glob("*.png"))
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in jpgs])
    masks = [np.asarray(Image.open(p).convert("L")) > 127 for p in pngs]
    return frames, masks


def model_input(frames: np.ndarray, short: int = 960) -> np.ndarray:
    """DiTF's DAVIS resize: short side ``short``, long side floored to a multiple of 32."""
    height, width = frames.shape[1:3]
    if height <= width:
        size = (int(width * short / height) // 32 * 32, short)
    else:
        size = (short, int(height * short / width) // 32 * 32)
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames])


def clip_j(extractor: LabExtractor, frames: np.ndarray, masks: list[np.ndarray]) -> float:
    height, width = masks[0].shape
    feats = extractor.extract(model_input(frames)).features
    h, w = feats.shape[-2:]
    first = Image.fromarray(masks[0].astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST)
    ref = F.one_hot(torch.from_numpy(np.array(first)).long(), 2).permute(2, 0, 1).float()
    scores = []
    outs = propagate_sequence(feats[0], ref, iter(feats[1:]), PropagationParams.dino())
    for soft, gt in zip(outs, masks[1:]):
        pred = soft_labels_to_mask(soft, [1], (height, width), extractor.stride) > 0
        union = np.logical_or(pred, gt).sum()
        scores.append(1.0 if union == 0 else np.logical_and(pred, gt).sum() / union)
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--offsets", default="-50,0,50,100")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    data = {seq: load(seq) for seq in SEQUENCES}
    lines = [
        "| lightness offset | " + " | ".join(SEQUENCES) + " | mean (first 3) | mean | s |",
        "|---|" + "---|" * (len(SEQUENCES) + 3),
    ]
    print("\n".join(lines), flush=True)
    for offset in (float(o) for o in args.offsets.split(",")):
        start = time.perf_counter()
        extractor = LabExtractor(lightness_offset=offset)
        js = [clip_j(extractor, *data[seq]) for seq in SEQUENCES]
        line = (
            f"| {offset:g} | "
            + " | ".join(f"{j:.3f}" for j in js)
            + f" | {np.mean(js[:3]):.3f} | {np.mean(js):.3f} | {time.perf_counter() - start:.0f} |"
        )
        print(line, flush=True)
        lines.append(line)
    if not args.no_append:
        append_results(
            "lab_variants.py: lab features, DINO propagation, J (frames 1..T-1)", "\n".join(lines)
        )


if __name__ == "__main__":
    main()
