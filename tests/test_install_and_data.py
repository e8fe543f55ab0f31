"""The README's install line, the extras it declares, the shared test data and track → eval davis.

The README's test install must bring every module the tests import (it once missed pytest,
hypothesis, scikit-learn and the plugin: 16 collection errors), `.ci/run` must run that line
verbatim, faiss-cpu and faiss-gpu (both install the module ``faiss``) must never be pulled
together, and a missing ../shared/data must skip the tests that read it — or fail them under
``CI=true``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ditf_track.testing import require_shared_data, shared_data_root

tomllib = pytest.importorskip("tomllib")

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_ROOT = REPO_ROOT / "plugins" / "napari"
TEST_DIRS = (REPO_ROOT / "tests", PLUGIN_ROOT / "tests")
FAISS_DISTS = {"faiss-cpu", "faiss-gpu"}


def _pyproject(root: Path) -> dict[str, Any]:
    return dict(tomllib.loads((root / "pyproject.toml").read_text())["project"])


def _readme_block(section: str) -> list[str]:
    """The lines of the first ```bash block under README.md's ``## section``."""
    text = (REPO_ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)```", body, re.S)
    assert match is not None, f"README's {section} section has no bash block"
    return match.group(1).splitlines()


def test_ci_runs_the_readme_install_line_verbatim() -> None:
    install, command = _readme_block("Tests")
    assert install == 'pip install -e ".[test]" -e "plugins/napari[test]"'
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci
    assert command in ci
    torch_line = ci.index("python -m pip install -q torch==2.13.0")
    assert torch_line < ci.index(install) < ci.index("export CI=true") < ci.index(command)


class _Closure:
    """The distributions an install of root requirements brings, read from the project's own
    pyproject files and the installed distributions' metadata (markers evaluated here)."""

    def __init__(self) -> None:
        self.local: dict[str, dict[str, Any]] = {
            canonicalize_name(p["name"]): p for p in map(_pyproject, (REPO_ROOT, PLUGIN_ROOT))
        }
        self.dists: set[str] = set()
        self._done: set[tuple[str, str]] = set()

    def _requires(self, name: str, extra: str) -> list[str]:
        """What ``name`` (``extra == ""``) or only its ``extra`` adds, markers evaluated here."""
        if name in self.local:
            project = self.local[name]
            if extra:
                return list(project["optional-dependencies"][extra])
            lines = project["dependencies"]
        else:
            try:
                lines = importlib.metadata.requires(name) or []
            except importlib.metadata.PackageNotFoundError:
                return []
        wanted = []
        for line in lines:
            marker = Requirement(line).marker
            base = marker is None or marker.evaluate({"extra": ""})
            if (not extra and base) or (
                extra and marker is not None and not base and marker.evaluate({"extra": extra})
            ):
                wanted.append(line)
        return wanted

    def add(self, line: str) -> None:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        self.dists.add(name)
        for extra in ("", *sorted(requirement.extras)):
            if (name, extra) not in self._done:
                self._done.add((name, extra))
                for child in self._requires(name, extra):
                    self.add(child)


def closure(*lines: str) -> set[str]:
    c = _Closure()
    for line in lines:
        c.add(line)
    return c.dists


def test_faiss_extras_exclude_each_other() -> None:
    project = _pyproject(REPO_ROOT)
    core = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert not core & FAISS_DISTS, "a core faiss would make the gpu extra install both"
    pulled = {
        extra: closure(f"ditf-track[{extra}]") & FAISS_DISTS
        for extra in project["optional-dependencies"]
    }
    assert pulled["faiss"] == {"faiss-cpu"}
    assert pulled["gpu"] == {"faiss-gpu"}
    assert pulled["test"] == {"faiss-cpu"}  # the tests compare the torch and faiss searches
    assert all(len(dists) <= 1 for dists in pulled.values()), pulled
    assert "faiss-gpu" not in closure("napari-ditf-track[test]")
    # uv refuses the pairs (pip has no way to)
    conflicts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["uv"]
    declared = {frozenset(item["extra"] for item in group) for group in conflicts["conflicts"]}
    for a, dists_a in pulled.items():
        for b, dists_b in pulled.items():
            if a < b and dists_a and dists_b and dists_a != dists_b:
                assert frozenset((a, b)) in declared, (a, b)


def _imported_modules(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_the_test_install_brings_every_module_the_tests_import() -> None:
    install = 'pip install -e ".[test]" -e "plugins/napari[test]"'
    assert install in _readme_block("Tests")
    installed = closure("ditf-track[test]", "napari-ditf-track[test]")
    local = {p.stem for d in (*TEST_DIRS, REPO_ROOT / "benchmarks") for p in d.glob("*.py")}
    local |= {"tests", "ditf_track", "napari_ditf_track"}
    owners = importlib.metadata.packages_distributions()
    missing = {}
    for module in set().union(*map(_imported_modules, TEST_DIRS)):
        if module in sys.stdlib_module_names or module in local:
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        if not dists & installed:
            missing[module] = sorted(dists) or "not installed"
    assert not missing, f"imported by the tests but not brought by {install}: {missing}"


# --- shared test data --------------------------------------------------------------------------


def test_shared_data_root_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DITF_SHARED_DATA", raising=False)
    assert shared_data_root(Path("/repo/ditf-track")) == Path("/repo/shared/data")
    monkeypatch.setenv("DITF_SHARED_DATA", "/elsewhere/data")
    assert shared_data_root(Path("/repo/ditf-track")) == Path("/elsewhere/data")


@pytest.mark.faults
def test_missing_shared_data_skips_and_fails_under_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"data has no SOURCES\.md; set DITF_SHARED"):
        require_shared_data(empty)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI=true: missing test data is a failure"):
        require_shared_data(empty)
    (empty / "SOURCES.md").write_text("# shared/data\n")
    assert require_shared_data(empty) == empty


def _pytest_without_data(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    """The five tests that once read ../shared/data past the fixture, with the data missing."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["DITF_SHARED_DATA"] = str(tmp_path / "no-data")
    if ci:
        env["CI"] = "true"
    args = ["tests/test_extractor.py", "-k", "planted", "-q", "-p", "no:cacheprovider"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.faults
@pytest.mark.slow
def test_tests_that_read_shared_data_skip_without_it(tmp_path: Path) -> None:
    run = _pytest_without_data(tmp_path, ci=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"\b5 skipped\b", run.stdout), run.stdout
    assert "no-data has no SOURCES.md; set DITF_SHARED_DATA" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr
    ci = _pytest_without_data(tmp_path, ci=True)
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert re.search(r"\b5 errors?\b", ci.stdout), ci.stdout
    assert not re.search(r"\d+ skipped", ci.stdout)
    assert "def require_shared_data" not in ci.stdout  # the message alone, no code
    assert "CI=true: missing test data is a failure" in ci.stdout
