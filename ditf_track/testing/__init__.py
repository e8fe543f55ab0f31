"""Test helpers: tiny DiT pipelines, the real shared data, a DAVIS multi-object case.

``models`` builds tiny pipelines with the real diffusers/transformers classes (no weights can be
downloaded in CI); ``data`` finds the shared test data, read in place; ``davis`` builds the
two-object DAVIS case; ``fixtures`` holds the pytest fixtures every test directory shares
(``shared_data``, ``tiny_model``, the isolated caches, the gpu/gui skips), loaded by the root
``conftest.py``. Importing this package does not import pytest.
"""

from .data import SHARED_DATA_ENV, ci_run, require_shared_data, shared_data_root
from .models import (
    TINY_FAMILIES,
    TinyFamily,
    build_tiny_pipeline,
    isolated_caches,
    plant_massive_channels,
    tiny_model_factory,
)

__all__ = [
    "SHARED_DATA_ENV",
    "TINY_FAMILIES",
    "TinyFamily",
    "build_tiny_pipeline",
    "ci_run",
    "isolated_caches",
    "plant_massive_channels",
    "require_shared_data",
    "shared_data_root",
    "tiny_model_factory",
]
