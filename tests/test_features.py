"""DiTF math: massive-activation statistics, AdaLN modulation, channel discard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ditf_track.errors import ConfigError
from ditf_track.features import (
    DiscardRule,
    DiTFSettings,
    adaln_modulate,
    discard_channels,
    find_massive_channels,
    massive_activation_stats,
)
from ditf_track.presets import TaskSettings, check_t_k


def test_massive_activation_stats_by_hand() -> None:
    z = torch.ones(1, 4, 3)
    z[0, :, 1] = 500.0  # every token
    z[0, 0, 2] = 500.0  # one token only
    stats = massive_activation_stats(z, ratio=100)
    assert stats.median_abs == 1.0
    np.testing.assert_allclose(stats.mean, [1.0, 500.0, 125.75])
    np.testing.assert_allclose(stats.max_ratio, [1.0, 500.0, 500.0])
    np.testing.assert_allclose(stats.massive_fraction, [0.0, 1.0, 0.25])
    assert find_massive_channels(stats) == (1,)  # the single-token outlier is not a channel
    assert find_massive_channels(z, DiscardRule(min_token_fraction=0.2)) == (1, 2)
    with pytest.raises(ConfigError, match="ratio"):
        DiscardRule(ratio=0.5)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(2, 9), st.integers(2, 17), st.floats(1e-6, 1e-3))
def test_adaln_modulate_properties(n: int, length: int, c: int, eps: float) -> None:
    g = torch.Generator().manual_seed(n * 100 + length * 10 + c)
    z = torch.randn(n, length, c, generator=g) * 5 + 3
    zero = torch.zeros(n, c)
    normed = adaln_modulate(z, zero, zero, eps)
    torch.testing.assert_close(normed.mean(-1), torch.zeros(n, length), atol=1e-4, rtol=0)
    gamma, beta = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g)
    out = adaln_modulate(z, gamma, beta, eps)
    torch.testing.assert_close(out, normed * (1 + gamma[:, None]) + beta[:, None])
    # shift invariance of the LayerNorm: adding a constant to every channel changes nothing
    torch.testing.assert_close(adaln_modulate(z + 7.0, gamma, beta, eps), out, atol=1e-4, rtol=1e-4)


def test_discard_channels_copies() -> None:
    x = torch.ones(2, 3, 5)
    out = discard_channels(x, (0, 4))
    assert out[..., 0].abs().sum() == 0
    assert out[..., 4].abs().sum() == 0
    assert x.sum() == 30
    assert discard_channels(x, ()) is x


@pytest.mark.parametrize(
    ("t", "k", "ensemble", "message"),
    [
        (1000, 1, 1, "timestep t=1000 is outside [0, 1000); pick t in 0..999"),
        (-1, 1, 1, "timestep t=-1 is outside [0, 1000); pick t in 0..999"),
        (10, -1, 1, "block index k=-1 is negative; pick k >= 0"),
        (10, 1, 0, "ensemble=0 must be at least 1"),
    ],
)
def test_t_k_and_ensemble_are_checked_once_for_presets_and_settings(
    t: int, k: int, ensemble: int, message: str
) -> None:
    """A preset's task settings and the extractor's settings refuse the same values with the
    same line: one check (:func:`~ditf_track.presets.check_t_k`) behind both."""
    for make in (check_t_k, TaskSettings, DiTFSettings):
        with pytest.raises(ConfigError) as caught:
            make(t=t, k=k, ensemble=ensemble)
        assert str(caught.value) == message, make
    assert TaskSettings(t=999, k=0).t == DiTFSettings(t=999, k=0).t == 999  # bounds are valid
