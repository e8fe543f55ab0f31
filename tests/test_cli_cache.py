"""`ditf-track cache info|clear`. The cache's own command-line cases are in test_cache.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ditf_track import cli


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
