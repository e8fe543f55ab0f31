"""The real test data (``../shared/data``), read in place and never copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA_ENV = "DITF_SHARED_DATA"


def shared_data_root(repo_root: Path) -> Path:
    """Where the real test data is: ``$DITF_SHARED_DATA``, else ``shared/data`` beside the repo.

    The folder (DAVIS clips, mp4s, BADJA, VSPW; described by its ``SOURCES.md``) is read in place
    and never copied into the project.
    """
    value = os.environ.get(SHARED_DATA_ENV)
    return Path(value).expanduser() if value else repo_root.parent / "shared" / "data"


def ci_run() -> bool:
    """``CI=true`` (as GitHub Actions, GitLab and most CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_shared_data(root: Path) -> Path:
    """``root`` when it holds the shared test data (its ``SOURCES.md``), else skip the test —
    or fail it under ``CI=true``, so that CI can never go green on skipped tests."""
    if (root / "SOURCES.md").is_file():
        return root
    import pytest

    reason = (
        f"shared test data not found: {root} has no SOURCES.md; set {SHARED_DATA_ENV} to the "
        "folder that holds it (README, Tests)"
    )
    if ci_run():
        pytest.fail(
            f"{reason} [CI=true: missing test data is a failure, not a skip]", pytrace=False
        )
    pytest.skip(reason)
