"""Shared test fixtures: the real data in ../shared/data, tiny DiT pipelines, the test tiers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from ditf_track.testing import isolated_caches, tiny_model_factory

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DITF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
DAVIS = SHARED_DATA / "davis"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, read in place (never copied into the project)."""
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.fail(f"shared test data not found at {SHARED_DATA}; set DITF_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never touch ~/.cache nor the network: a private feature cache and an offline hub."""
    with isolated_caches(tmp_path_factory.mktemp):
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_model("flux", **options)``: a tiny pipeline folder in the hub's layout, built once."""
    return tiny_model_factory(tmp_path_factory.mktemp)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    no_display = pytest.mark.skip(reason="needs a display: run under xvfb-run -a")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "gui" in item.keywords and not os.environ.get("DISPLAY"):
            item.add_marker(no_display)
