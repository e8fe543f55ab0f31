"""Shared test fixtures: the real data in ../shared/data and the test tiers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DITF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
DAVIS = SHARED_DATA / "davis"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, read in place (never copied into the project)."""
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.fail(f"shared test data not found at {SHARED_DATA}; set DITF_SHARED_DATA")
    return SHARED_DATA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    no_display = pytest.mark.skip(reason="needs a display: run under xvfb-run -a")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "gui" in item.keywords and not os.environ.get("DISPLAY"):
            item.add_marker(no_display)
