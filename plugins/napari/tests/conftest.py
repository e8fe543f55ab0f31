"""The plugin's own fixture: its manifest registered with npe2.

The fixtures it shares with ditf-track's tests (``shared_data``, ``tiny_model``, the isolated
caches, the gui skip) come from :mod:`ditf_track.testing.fixtures` through the repository's
root ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

MANIFEST = Path(__file__).resolve().parents[1] / "src" / "napari_ditf_track" / "napari.yaml"


@pytest.fixture(scope="session")
def plugin_registered() -> str:
    """The plugin's manifest in npe2's plugin manager (from its entry point when installed,
    else from the source tree), so napari's open/save/sample menus find it."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    pm.discover()
    manifest = PluginManifest.from_file(MANIFEST)
    if manifest.name not in pm:
        pm.register(manifest)
    return manifest.name
