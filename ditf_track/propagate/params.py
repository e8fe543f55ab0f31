"""The parameters of the DAVIS label-propagation protocol (METHOD.md §4).

Each new frame takes its labels from the first (annotated) frame and the ``n_context`` last
propagated frames: cosine affinity of every query cell to the context cells within a square
window of ``radius`` feature cells, ``exp(affinity / temperature)``, the ``topk`` largest kept
jointly over all context frames, normalised to sum to 1, and the context labels averaged with
those weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

Numerics = Literal["exact", "official"]
NUMERICS: tuple[str, ...] = ("exact", "official")

# exp(cos/τ) exceeds bfloat16's largest value (3.39e38, e^88.7) at cos = 1.0078 (the bf16 value
# after 1) for τ below 1.0078/88.7: the affinities would be inf and the weights NaN.
OFFICIAL_MIN_TEMPERATURE = 0.0114


@dataclass(frozen=True)
class PropagationParams:
    """``n_context`` last frames (plus the reference), window ``radius`` in cells, ``topk``, τ.

    The defaults are DINO's ``eval_video_segmentation.py`` (``--n_last_frames 7``,
    ``--size_mask_neighborhood 12``, ``--topk 5``, temperature hard-coded 0.1), which the
    official DiTF DAVIS script uses unchanged. :meth:`dift` gives DIFT's tuned SD-2-1 set.

    ``radius=None`` searches the whole frame (no window). DINO reads
    ``--size_mask_neighborhood 0`` as "no window"; here 0 is refused rather than silently
    meaning "global", because a window of radius 0 (the same cell only) is also a legitimate
    reading. The window is square: context cell (y', x') is a candidate for query (y, x) when
    ``|y' - y| <= radius`` and ``|x' - x| <= radius`` (DINO's ``restrict_neighborhood``); at the
    grid border it is clipped, never shifted.

    ``numerics`` is how the affinities are computed and kept. ``"exact"`` (default): cosines
    accumulated in float32, exactly ``topk`` cells kept (``torch.topk``; which of several cells
    tied at the k-th place is kept is arbitrary), weights ``softmax(cos/τ)`` in float32.
    ``"official"``: the authors' DiTF DAVIS script: features and cosines rounded to bfloat16,
    ``cos/τ`` and ``exp`` in bfloat16, and every cell whose affinity equals or exceeds the
    k-th largest kept (often more than ``topk``: bfloat16 has 8 mantissa bits), the kept
    affinities normalised to sum to 1; see :mod:`~ditf_track.propagate.search`.
    """

    n_context: int = 7
    radius: int | None = 12
    topk: int = 5
    temperature: float = 0.1
    numerics: Numerics = "exact"

    def __post_init__(self) -> None:
        if isinstance(self.n_context, bool) or not isinstance(self.n_context, int):
            raise ConfigError(f"n_context={self.n_context!r} must be an integer >= 0 (DINO: 7)")
        if self.n_context < 0:
            raise ConfigError(f"n_context={self.n_context} is negative; use 0 or more (DINO: 7)")
        if self.radius is not None:
            if isinstance(self.radius, bool) or not isinstance(self.radius, int):
                raise ConfigError(
                    f"radius={self.radius!r} must be an integer >= 1, or None for global search"
                )
            if self.radius < 1:
                raise ConfigError(
                    f"radius={self.radius} is not a window; use radius >= 1 (DINO: 12), or "
                    "radius=None to search the whole frame (DINO's --size_mask_neighborhood 0)"
                )
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1:
            raise ConfigError(f"topk={self.topk!r} must be an integer >= 1 (DINO: 5)")
        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and self.temperature > 0
        ):
            raise ConfigError(
                f"temperature={self.temperature!r} must be a finite number > 0 (DINO: 0.1)"
            )
        if self.numerics not in NUMERICS:
            raise ConfigError(f"unknown numerics {self.numerics!r}; use one of {NUMERICS}")
        if self.numerics == "official" and self.temperature < OFFICIAL_MIN_TEMPERATURE:
            raise ConfigError(
                f"temperature={self.temperature} overflows bfloat16 in exp(cos/temperature) "
                f"with the official numerics; use temperature >= {OFFICIAL_MIN_TEMPERATURE} "
                "or numerics 'exact'"
            )

    @classmethod
    def dino(cls) -> PropagationParams:
        """DINO's and the official DiTF DAVIS defaults: n = 7, r = 12, k = 5, τ = 0.1."""
        return cls(n_context=7, radius=12, topk=5, temperature=0.1)

    @classmethod
    def dift(cls) -> PropagationParams:
        """DIFT's README setting for SD-2-1 on DAVIS: n = 28, r = 15, k = 15, τ = 0.2."""
        return cls(n_context=28, radius=15, topk=15, temperature=0.2)
