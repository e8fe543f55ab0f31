"""Look inside a DiT's block-k feature: massive activations, the AdaLN gate, PCA maps.

``inspect_features`` reads one image's pre-AdaLN feature z, the block's modulation (γ, β) and
gate α, and writes what the paper shows in its Figs. 2–5: the activation magnitude per channel
across tokens before and after AdaLN, the gate per channel against the massive channels, and
PCA-RGB maps of the feature before and after AdaLN (and after the discard), plus the per-channel
statistics as CSV and the massive channels found as JSON.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._atomic import atomic_path
from .extractor import DiTFExtractor
from .features import (
    ActivationStats,
    adaln_modulate,
    discard_channels,
    find_massive_channels,
    massive_activation_stats,
)

#: The files :func:`inspect_features` writes into its folder.
INSPECT_FILES = ("stats.csv", "massive_channels.json", "activations.png", "gate.png", "pca.png")


@dataclass
class InspectReport:
    """What ``inspect`` found: channel statistics of z and ẑ, massive channels, written files."""

    stats_z: ActivationStats
    stats_modulated: ActivationStats
    massive_channels: tuple[int, ...]
    files: list[Path]


def pca_rgb(tokens: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """The first three principal components of ``tokens`` ``(L, C)`` as ``(h, w, 3)`` in [0, 1].

    Each component is min-max scaled on its own, so the colours show the structure that the
    feature separates, not its magnitude.
    """
    x = tokens.float()
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = x @ v[:3].T
    lo, hi = proj.amin(0), proj.amax(0)
    proj = (proj - lo) / (hi - lo).clamp_min(1e-12)
    return proj.reshape(*grid, proj.shape[1]).cpu().numpy()


@torch.inference_mode()
def inspect_features(
    extractor: DiTFExtractor, image: np.ndarray, out_dir: str | Path
) -> InspectReport:
    """Write ``stats.csv``, ``massive_channels.json`` and three figures for ``image``.

    ``image`` is ``(H, W, 3) uint8`` with sides multiples of 16 (already resized).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = extractor.settings
    cap = extractor.capture(image[None])
    z = cap.z.float()
    modulated = adaln_modulate(z, cap.gamma.float(), cap.beta.float(), cap.eps)
    rule = settings.discard_rule
    stats_z = massive_activation_stats(z, rule.ratio)
    stats_mod = massive_activation_stats(modulated, rule.ratio)
    channels = find_massive_channels(stats_z, rule)
    files: list[Path] = []

    csv_path = out / "stats.csv"
    with atomic_path(csv_path, "statistics table") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "channel",
                "mean",
                "std",
                "max_abs",
                "max_over_median",
                "massive_fraction",
                "adaln_mean",
                "adaln_std",
                "adaln_max_abs",
                "adaln_max_over_median",
                "gate",
                "scale_gamma",
                "shift_beta",
                "massive",
            ]
        )
        gate = cap.gate[0].float().cpu().numpy()
        gamma = cap.gamma[0].float().cpu().numpy()
        beta = cap.beta[0].float().cpu().numpy()
        for c in range(stats_z.num_channels):
            writer.writerow(
                [
                    c,
                    f"{stats_z.mean[c]:.6g}",
                    f"{stats_z.std[c]:.6g}",
                    f"{stats_z.max_abs[c]:.6g}",
                    f"{stats_z.max_ratio[c]:.6g}",
                    f"{stats_z.massive_fraction[c]:.6g}",
                    f"{stats_mod.mean[c]:.6g}",
                    f"{stats_mod.std[c]:.6g}",
                    f"{stats_mod.max_abs[c]:.6g}",
                    f"{stats_mod.max_ratio[c]:.6g}",
                    f"{gate[c]:.6g}",
                    f"{gamma[c]:.6g}",
                    f"{beta[c]:.6g}",
                    int(c in channels),
                ]
            )
    files.append(csv_path)

    summary: dict[str, Any] = {
        "massive_channels": list(channels),
        "rule": {"ratio": rule.ratio, "min_token_fraction": rule.min_token_fraction},
        "median_abs": stats_z.median_abs,
        "top_channels": [
            {"channel": int(c), "max_over_median": float(stats_z.max_ratio[c])}
            for c in np.argsort(-stats_z.max_ratio)[:10]
        ],
        **extractor.identity(),
    }
    json_path = out / "massive_channels.json"
    with atomic_path(json_path, "massive channels file") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    files.append(json_path)

    # Fig. 2: activation magnitude per channel across tokens, before and after AdaLN.
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for ax, stats, title in (
        (axes[0], stats_z, "pre-AdaLN feature z (block input)"),
        (axes[1], stats_mod, "after the block's AdaLN: (1+γ)·LN(z)+β"),
    ):
        channel = np.arange(stats.num_channels)
        ax.plot(channel, stats.max_abs, lw=0.8, label="max |v| over tokens")
        ax.plot(channel, np.abs(stats.mean), lw=0.8, label="|mean| over tokens")
        ax.axhline(
            stats.ratio * stats.median_abs,
            color="gray",
            ls="--",
            lw=0.8,
            label=f"{stats.ratio:g}× median |v|",
        )
        for c in channels:
            ax.annotate(str(c), (c, stats.max_abs[c]), color="crimson", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
    axes[1].set_xlabel("channel")
    fig.suptitle(f"{extractor.backbone.model_id}  t={settings.t}  k={settings.k}", fontsize=10)
    fig.tight_layout()
    files.append(_save(fig, out / "activations.png"))

    # Fig. 3: the residual gate α of block k per channel, with the massive channels marked.
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(np.arange(gate.shape[0]), np.abs(gate), lw=0.8)
    for c in channels:
        ax.axvline(c, color="crimson", lw=0.8, alpha=0.7)
    ax.set_xlabel("channel")
    ax.set_ylabel("|gate α|")
    ax.set_title("AdaLN gate per channel (red: massive channels of z)", fontsize=10)
    fig.tight_layout()
    files.append(_save(fig, out / "gate.png"))

    # Figs. 4-5: PCA-RGB maps before and after AdaLN, and after the discard.
    panels = [
        ("image", image.astype(np.float32) / 255.0),
        ("z (original)", pca_rgb(z[0], cap.grid)),
        ("AdaLN", pca_rgb(modulated[0], cap.grid)),
        ("AdaLN + discard", pca_rgb(discard_channels(modulated, channels)[0], cap.grid)),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    files.append(_save(fig, out / "pca.png"))
    return InspectReport(stats_z, stats_mod, channels, files)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, "figure") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
