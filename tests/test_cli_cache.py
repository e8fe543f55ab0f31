"""`ditf-track cache info|clear`. The cache's own command-line cases are in test_cache.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from cache_helpers import feature_files, populate

from ditf_track import cli
from ditf_track.cache import (
    cache_info,
    format_size,
)


@pytest.mark.faults
@pytest.mark.parametrize("action", [["info"], ["clear"], ["clear", "--text"]])
def test_cache_command_with_a_file_as_cache_dir(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], action: list[str]
) -> None:
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("keep me")
    code = cli.main(["cache", *action, "--cache-dir", str(not_a_folder)])
    out = capfd.readouterr()
    assert code == 1
    assert out.err.strip().splitlines() == [
        f"ditf-track: error: cache folder {not_a_folder} is a file, not a folder; pass "
        "--cache-dir (or set DITF_TRACK_CACHE to) a folder, or remove that file"
    ]
    assert not_a_folder.read_text() == "keep me"


def test_cli_cache_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feature_bytes, text_bytes = populate(tmp_path)
    assert cli.main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split("  ")[0]: line.split("  ", 1)[1].strip() for line in out.splitlines()}
    assert lines["cache directory"] == str(tmp_path)
    assert lines["feature files"] == f"3 ({format_size(feature_bytes)})"
    assert lines["clip metadata files"] == "1"
    assert lines["text embedding files"] == f"1 ({format_size(text_bytes)})"
    assert lines["disk budget (features)"] == "50.0 GB"


def test_cli_cache_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feature_bytes, text_bytes = populate(tmp_path)
    assert cli.main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == (
        f"freed {format_size(feature_bytes)}: 3 feature files ({format_size(feature_bytes)}), "
        "1 clip metadata files"
    )
    assert feature_files(tmp_path) == []
    assert cli.main(["cache", "clear", "--cache-dir", str(tmp_path), "--text"]) == 0
    out = capsys.readouterr().out
    assert f"1 text embedding files ({format_size(text_bytes)})" in out
    assert cache_info(tmp_path).text_files == 0


def test_cli_cache_default_dir_and_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DITF_TRACK_CACHE", str(tmp_path))
    assert cli.main(["cache", "info"]) == 0
    assert str(tmp_path) in capsys.readouterr().out
    assert cli.main(["cache"]) == 2
    assert "info" in capsys.readouterr().out
