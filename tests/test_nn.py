"""Nearest-neighbour pieces shared by the trackers, the pair matcher and the evaluators, by hand.

Also checks the layering that :mod:`ditf_track.nn` exists for: the video core never imports the
pair matcher or an evaluator.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ditf_track
from ditf_track.errors import ConfigError
from ditf_track.nn import (
    SoftArgmax,
    mutual_nearest_neighbours,
    mutual_nearest_neighbours_np,
    sample_descriptors,
    sample_grid_descriptors,
    soft_argmax_window,
)

# ---------------------------------------------------------------------------------------------
# Sampling


def test_sample_descriptors_alignment() -> None:
    # Feature map of a 40x80 image at stride 10: channel 0 holds the column index, 1 the row.
    hh, ww = 4, 8
    ys, xs = torch.meshgrid(torch.arange(float(hh)), torch.arange(float(ww)), indexing="ij")
    feat = torch.stack([xs, ys])
    pts = np.array([[15.0, 25.0], [5.0, 44.0]])  # (y, x)
    got = sample_descriptors(feat, pts, (40, 80))
    # Pixel x maps to feature coordinate (x + 0.5) / 10 - 0.5 (cell j centred on pixel 10j + 4.5).
    np.testing.assert_allclose(got.numpy(), [[2.05, 1.05], [3.95, 0.05]], atol=1e-5)
    dift = sample_descriptors(feat, pts, (40, 80), align="dift")
    # DIFT: g = (x - 39.5) / 39.5, then grid_sample (align_corners=False): ((g + 1) * 8 - 1) / 2.
    gx = (np.array([25.0, 44.0]) - 39.5) / 39.5
    gy = (np.array([15.0, 5.0]) - 19.5) / 19.5
    expect = np.stack([((gx + 1) * ww - 1) / 2, ((gy + 1) * hh - 1) / 2], axis=1)
    assert np.all(expect > 0)  # inside the map, so zero padding plays no part
    np.testing.assert_allclose(dift.numpy(), expect, atol=1e-5)


def test_sample_grid_descriptors_at_cells_and_between() -> None:
    feats = torch.nn.functional.normalize(torch.randn(8, 5, 7), dim=0)
    at_cells = sample_grid_descriptors(feats, np.array([[0.0, 0.0], [4.0, 6.0], [2.0, 3.0]]))
    torch.testing.assert_close(at_cells, feats[:, [0, 4, 2], [0, 6, 3]].T)
    half = sample_grid_descriptors(feats, np.array([[2.0, 3.5]]))
    blend = torch.nn.functional.normalize(feats[:, 2, 3] + feats[:, 2, 4], dim=0)
    torch.testing.assert_close(half[0], blend)


# ---------------------------------------------------------------------------------------------
# Soft-argmax and mutual nearest neighbours


def test_soft_argmax_window_by_hand() -> None:
    sims = torch.full((1, 5 * 5), -1.0)
    sims[0, 2 * 5 + 2] = 1.0  # argmax at cell (2, 2)
    sims[0, 2 * 5 + 3] = 1.0 - 0.02 * math.log(3.0)  # weight 1/3 of the peak's at (2, 3)
    sims[0, 0] = 1.0 - 1e-4  # near-peak, but outside a radius-1 window
    out = soft_argmax_window(sims, (5, 5), SoftArgmax(radius=1, temperature=0.02))
    # weights: (2,2) 1, (2,3) 1/3, others exp(-100) ~ 0 -> x = (2 + 3/3) / (4/3) = 2.25
    torch.testing.assert_close(
        out, torch.tensor([[2.0, 2.25]], dtype=torch.float64), atol=1e-6, rtol=0
    )
    # Cells outside the grid are excluded, not clamped (a corner argmax stays in the corner).
    corner = torch.full((1, 9), -1.0)
    corner[0, 0] = 1.0
    out = soft_argmax_window(corner, (3, 3), SoftArgmax(radius=2, temperature=0.02))
    torch.testing.assert_close(out, torch.zeros(1, 2, dtype=torch.float64), atol=1e-9, rtol=0)
    with pytest.raises(ConfigError, match="temperature"):
        SoftArgmax(temperature=0)


def test_mutual_nearest_neighbours_by_hand() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    b = torch.tensor([[0.0, 1.0], [1.0, 0.05], [-1.0, 0.0]])
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    idx, scores = mutual_nearest_neighbours(a, b, chunk=2)  # chunks must not change the result
    # a0 -> b1 and b1 -> a0; a1 <-> b0; a2 -> b1 but b1 prefers a0: dropped.
    np.testing.assert_array_equal(idx, [[0, 1], [1, 0]])
    np.testing.assert_allclose(scores, [float(a[0] @ b[1]), 1.0], atol=1e-6)
    same, _ = mutual_nearest_neighbours(a, b, chunk=1000)
    np.testing.assert_array_equal(same, idx)
    empty, _ = mutual_nearest_neighbours(a[:0], b)
    assert empty.shape == (0, 2)


def test_mutual_nearest_neighbours_np_by_hand() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [3.0, 0.1]])
    # cos: a0→b1 0.999, a1→b0 1.0, a2→b1 0.731 > a2→b0 0.707; b0→a1, b1→a0.
    np.testing.assert_array_equal(mutual_nearest_neighbours_np(a, b), [[0, 1], [1, 0]])
    # Cosine ignores descriptor length.
    np.testing.assert_array_equal(mutual_nearest_neighbours_np(a * 7.0, b * 0.01), [[0, 1], [1, 0]])
    assert mutual_nearest_neighbours_np(a, np.zeros((0, 2))).shape == (0, 2)
    with pytest.raises(ValueError, match="descriptors"):
        mutual_nearest_neighbours_np(a, np.zeros((3, 5)))


# ---------------------------------------------------------------------------------------------
# Layers


ROOT = Path(ditf_track.__file__).parent


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for path in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(name: str) -> set[str]:
    """ditf_track modules that ``name`` imports (anywhere in the file), resolved statically."""
    path = _module_file(name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ditf_track."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("ditf_track"):
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if _module_file(sub) else module)
    return {m for m in found if m != "ditf_track" and _module_file(m)}


@pytest.mark.parametrize("start", ["ditf_track.propagate", "ditf_track.tracker", "ditf_track.nn"])
def test_video_core_never_imports_matcher_or_evaluators(start: str) -> None:
    # Static and transitive (package __init__ files included, the top-level one excepted, since
    # it re-exports every layer): the video core sits below the pair matcher and the evaluators.
    seen, todo = {start}, [start]
    while todo:
        for module in _imports(todo.pop()) - seen:
            seen.add(module)
            todo.append(module)
    above = sorted(m for m in seen if m == "ditf_track.match" or m.startswith("ditf_track.eval"))
    assert above == [], f"{start} imports {above}"
