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


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine over the last dim, written out (float64 in these tests)."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def test_profiles_order_of_operations_on_a_planted_3072_channel_feature() -> None:
    """``official`` is the authors' order, ``paper`` the paper's, and they differ.

    A Flux-wide block feature (3,072 channels) with massive values planted at 154 and 1446 on
    every token; an ensemble of 3 draws whose raw features *and* modulations differ, so the
    order of the ensemble mean matters. Tolerances: the library computes in float32 against
    float64 hand computations; with |z| up to 800 in a 3,072-channel LayerNorm, atol 1e-5
    (observed error ≤ 1e-6 on outputs up to ~7), rtol 0.
    """
    from ditf_track.features import modulate_and_discard, resolve_settings
    from ditf_track.presets import load_preset

    g = torch.Generator().manual_seed(0)
    draws, n, length, c = 3, 2, 24, 3072
    z_draws = torch.randn(draws, n, length, c, generator=g, dtype=torch.float64)
    z_draws[..., 154] += 800.0
    z_draws[..., 1446] -= 600.0
    gamma_draws = 0.5 * torch.randn(draws, n, c, generator=g, dtype=torch.float64)
    beta_draws = 0.5 * torch.randn(draws, n, c, generator=g, dtype=torch.float64)
    eps = 1e-6
    flux = load_preset("flux")
    official, _ = resolve_settings(flux, "correspondence", "official")
    paper, _ = resolve_settings(flux, "correspondence", "paper")
    assert (official.discard_stage, official.discard_channels) == ("pre_norm", (154, 1446))
    assert (paper.discard_stage, paper.discard_channels) == ("post_adaln", None)

    # The authors' order: ensemble means of the raw feature and of the modulation, zero the
    # fixed channels, LayerNorm without affine (eps 1e-6), then (1 + scale) · x + shift.
    z, gamma, beta = z_draws.mean(0), gamma_draws.mean(0), beta_draws.mean(0)
    zeroed = z.clone()
    zeroed[..., [154, 1446]] = 0.0
    hand_official = _layer_norm(zeroed, eps) * (1 + gamma[:, None]) + beta[:, None]
    # The paper's order: the same means, LayerNorm and modulation, then zero the channels the
    # rule finds on z.
    found = find_massive_channels(z.float(), paper.discard_rule)
    assert found == (154, 1446)
    hand_paper = _layer_norm(z, eps) * (1 + gamma[:, None]) + beta[:, None]
    hand_paper[..., [154, 1446]] = 0.0

    def run(s: DiTFSettings, channels: tuple[int, ...]) -> torch.Tensor:
        out = modulate_and_discard(
            z.float(),
            gamma.float(),
            beta.float(),
            channels,
            feature_mode=s.feature_mode,
            discard_stage=s.discard_stage,
            eps=eps,
        )
        return out.double()

    ours_official = run(official, official.discard_channels or ())
    ours_paper = run(paper, found)
    torch.testing.assert_close(ours_official, hand_official, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours_paper, hand_paper, rtol=0, atol=1e-5)
    # The two orders differ by far more than the tolerance: with the massive channels in the
    # LayerNorm's variance, every other channel is scaled down ~18x.
    assert (hand_official - hand_paper).abs().max() > 1.0
    # Averaging after the modulation (per draw) is another computation again.
    per_draw = _layer_norm(z_draws.clone().index_fill_(-1, torch.tensor([154, 1446]), 0.0), eps)
    per_draw = (per_draw * (1 + gamma_draws[:, :, None]) + beta_draws[:, :, None]).mean(0)
    assert (per_draw - hand_official).abs().max() > 1e-2


def test_discard_channels_setting_is_parsed_and_checked() -> None:
    assert DiTFSettings(t=1, k=1, discard_channels=[1446, 154, 154]).discard_channels == (154, 1446)  # type: ignore[arg-type]
    assert DiTFSettings(t=1, k=1, discard_channels="auto").discard_channels is None  # type: ignore[arg-type]
    assert DiTFSettings(t=1, k=1, discard_channels="3, 11").discard_channels == (3, 11)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"'x' is not a channel index; give comma-separated"):
        DiTFSettings(t=1, k=1, discard_channels="3,x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"-2 is not a channel index"):
        DiTFSettings(t=1, k=1, discard_channels=(-2,))
    with pytest.raises(ConfigError, match="the list is empty"):
        DiTFSettings(t=1, k=1, discard_channels=())
