"""PropagationParams: the defaults (DINO's, DIFT's) and the checks."""

from __future__ import annotations

import pytest

from ditf_track.errors import ConfigError
from ditf_track.propagate import (
    PropagationParams,
    WindowSearch,
)


def test_params_defaults_and_validation() -> None:
    assert PropagationParams() == PropagationParams.dino() == PropagationParams(7, 12, 5, 0.1)
    assert PropagationParams(28, 15, 15, 0.2) == PropagationParams.dift()
    assert PropagationParams(radius=None).radius is None
    with pytest.raises(ConfigError, match="radius=None"):
        PropagationParams(radius=0)
    with pytest.raises(ConfigError, match="n_context"):
        PropagationParams(n_context=-1)
    with pytest.raises(ConfigError, match="topk"):
        PropagationParams(topk=0)
    with pytest.raises(ConfigError, match="temperature"):
        PropagationParams(temperature=0.0)
    with pytest.raises(ConfigError, match="strip_width"):
        WindowSearch(3, 5, strip_width=0)
