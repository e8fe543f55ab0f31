"""A plain (non-editable) install carries every package and every preset.

The presets live in the top-level ``configs/`` folder and install as ``ditf_track.configs``
through pyproject's ``package-dir``; package discovery cannot see a mapped folder, so the
package list is explicit and a new subpackage left out of it would be missing from the wheel.
``.ci/run`` does the same check with an isolated build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ditf_track import presets
from ditf_track.eval.reproduce import load_rows

REPO_ROOT = Path(__file__).resolve().parents[1]

# Run from a temp dir with only the unpacked wheel on PYTHONPATH: nothing from the checkout.
_LOAD_EVERY_PRESET = """
import sys
from pathlib import Path
import ditf_track, ditf_track.configs
from ditf_track.presets import available_presets, load_preset
from ditf_track.eval.reproduce import load_rows
site = Path(sys.argv[1]).resolve()
for module in (ditf_track, ditf_track.configs):
    assert Path(module.__file__).resolve().is_relative_to(site), module.__file__
names = available_presets()
for name in names:
    load_preset(name)
print(" ".join(names))
print(len(load_rows()), file=sys.stderr)
"""


def _source_packages() -> set[str]:
    packages = {"ditf_track.configs"}
    for init in (REPO_ROOT / "ditf_track").rglob("__init__.py"):
        packages.add(".".join(init.parent.relative_to(REPO_ROOT).parts))
    return packages


@pytest.mark.slow
def test_wheel_holds_every_package_and_loads_every_preset(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy, so the build leaves no build/ in the checkout
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO_ROOT / "ditf_track", source / "ditf_track", ignore=skip)
    shutil.copytree(REPO_ROOT / "configs", source / "configs", ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    build = ["pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run(
        [sys.executable, "-m", *build, str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
        in_wheel = {
            name.removesuffix("/__init__.py").replace("/", ".")
            for name in archive.namelist()
            if name.endswith("/__init__.py")
        }
    assert in_wheel == _source_packages()

    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", _LOAD_EVERY_PRESET, str(site)],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    shipped = {p.stem for p in (REPO_ROOT / "configs").glob("*.yaml")}
    assert set(run.stdout.split()) == shipped
    assert int(run.stderr) == len(load_rows())  # the paper's rows ship too
    assert {"lab", "pixart-alpha", "flux"} <= shipped


@pytest.mark.parametrize("leftover", ["unmapped", "empty namespace"])
def test_presets_load_where_an_old_editable_install_does_not_map_configs(
    leftover: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editable install made before configs/ left ditf_track/ maps only ``ditf_track``:
    ``ditf_track.configs`` is missing, or a leftover ``__pycache__`` makes it an empty folder."""

    def files(package: str) -> Path:
        if leftover == "unmapped":
            raise ModuleNotFoundError(f"No module named {package!r}")
        (tmp_path / "__pycache__").mkdir(exist_ok=True)
        return tmp_path

    monkeypatch.setattr(presets.resources, "files", files)
    presets.load_preset.cache_clear()
    try:
        names = presets.available_presets()
        assert names == sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.yaml"))
        assert presets.load_preset("lab").family == "lab"
    finally:
        presets.load_preset.cache_clear()
