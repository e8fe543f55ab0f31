"""Fixtures for the plugin's tests: real data in place, tiny models, the plugin registered.

The plugin is its own package, so its tests do not rely on ``tests/conftest.py`` of ditf-track;
the few fixtures they share (``shared_data``, isolated caches, ``tiny_model``) are rebuilt here
from the same public helpers (:mod:`ditf_track.testing`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ditf_track.testing import (
    isolated_caches,
    require_shared_data,
    shared_data_root,
    tiny_model_factory,
)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
MANIFEST = HERE.parent / "src" / "napari_ditf_track" / "napari.yaml"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $DITF_SHARED_DATA), read in place; skipped without it, failed under
    ``CI=true``."""
    return require_shared_data(shared_data_root(REPO_ROOT))


@pytest.fixture(scope="session", autouse=True)
def _plugin_isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never touch ~/.cache nor the network: a private feature cache and an offline hub."""
    with isolated_caches(tmp_path_factory.mktemp):
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_model("flux", **options)``: a tiny pipeline folder in the hub's layout, built once."""
    return tiny_model_factory(tmp_path_factory.mktemp)


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_display = pytest.mark.skip(reason="needs a display: run under xvfb-run -a")
    for item in items:
        if (
            item.path.is_relative_to(HERE)
            and "gui" in item.keywords
            and not os.environ.get("DISPLAY")
        ):
            item.add_marker(no_display)
