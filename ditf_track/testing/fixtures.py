"""The shared pytest fixtures, loaded by the repository's root ``conftest.py``.

``pytest_plugins = ["ditf_track.testing.fixtures"]`` there, not an installed ``pytest11`` entry
point, which would change every pytest session of every user. Only a test session imports this
module (it imports pytest); ``ditf_track`` never does.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from .data import require_shared_data, shared_data_root
from .models import isolated_caches, tiny_model_factory


@pytest.fixture(scope="session")
def shared_data(pytestconfig: pytest.Config) -> Path:
    """../shared/data (or $DITF_SHARED_DATA), read in place (never copied into the project).

    Every test that reads real data takes it through this fixture: without the folder such a
    test is skipped with the reason, and fails under ``CI=true``.
    """
    return require_shared_data(shared_data_root(pytestconfig.rootpath))


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never touch ~/.cache nor the network: a private feature cache and an offline hub."""
    with isolated_caches(tmp_path_factory.mktemp):
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_model("flux", **options)``: a tiny pipeline folder in the hub's layout, built once."""
    return tiny_model_factory(tmp_path_factory.mktemp)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """One local Ray cluster per test module (2 CPUs, no dashboard); the tests that take it are
    marked ``ray``."""
    import ray  # the ray extra: only the tests that take this fixture need it

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The torch thread count of a Ray worker (``--cpus-per-worker 1``) in this process, so an
    in-process run and a Ray run compute with the same threads (byte-equal outputs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests without CUDA and ``gui`` tests without a display, saying why."""
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    no_display = pytest.mark.skip(reason="needs a display: run under xvfb-run -a")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "gui" in item.keywords and not os.environ.get("DISPLAY"):
            item.add_marker(no_display)
