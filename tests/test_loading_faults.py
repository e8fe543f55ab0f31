"""Model loading with a cache folder that is a file: one line, before anything heavy is loaded.

The other loading faults live with their module: an unreachable Hub and damaged downloads in
test_hub.py, the text-embedding cache in test_backbones.py, the command line's in
test_cli_track.py and test_cli_cache.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_backbones import load_flux

from ditf_track.errors import ConfigError

pytestmark = pytest.mark.faults


def test_cache_dir_that_is_a_file_fails_before_loading(
    tiny_model: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers

    def no_pipeline(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", no_pipeline)
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("my notes")
    with pytest.raises(ConfigError, match=r"cache folder .*cache is a file, not a folder"):
        load_flux(tiny_model("flux"), not_a_folder)
    assert not_a_folder.read_text() == "my notes"


# -- log output ---------------------------------------------------------------------------------
