"""The `ditf-track` command as a whole: the parser and its help, the entry points, one-line
errors and log lines, and what every command that writes refuses."""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import cli_helpers
import pytest
from cli_helpers import davis_args, davis_root, one_line_error, run, snapshot
from PIL import Image

import ditf_track
from ditf_track import cli


def _walk(
    parser: argparse.ArgumentParser, path: str = "ditf-track"
) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _walk(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            found.append((path, action))
    return found


def test_every_option_has_help() -> None:
    missing = [
        f"{path} {'/'.join(a.option_strings) or a.dest}"
        for path, a in _walk(cli.build_parser())
        if not a.help or a.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_every_command_with_a_model_takes_a_profile() -> None:
    """extract, inspect, track, match and every eval runner: --profile (default official) and
    --discard-channels sit in the model options wherever --preset does."""
    by_command: dict[str, dict[str, argparse.Action]] = {}
    for path, action in _walk(cli.build_parser()):
        for option in action.option_strings:
            by_command.setdefault(path, {})[option] = action
    with_model = sorted(path for path, options in by_command.items() if "--preset" in options)
    assert {"ditf-track track", "ditf-track match", "ditf-track extract"} <= set(with_model)
    assert sum(path.startswith("ditf-track eval ") for path in with_model) >= 5
    for path in with_model:
        options = by_command[path]
        assert options["--profile"].default == "official", path
        assert options["--profile"].choices == ("official", "paper"), path
        assert "--discard-channels" in options, path


@pytest.mark.parametrize("command", [[], ["extract"], ["inspect"]])
def test_help_texts(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: ditf-track")
    for option in ("--preset", "--model", "--device", "--t", "--k") if command else ("--version",):
        assert option in text


@pytest.mark.faults
@pytest.mark.parametrize("value", ["0", "-4"])
@pytest.mark.parametrize("command", ["track", "extract", "eval davis", "eval tapvid"])
def test_short_side_below_one_refused_at_parse_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, value: str
) -> None:
    args = [*command.split(), "--short-side", value]
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, str(tmp_path / "video.mp4"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"ditf-track {command}: error: argument --short-side: {value} must be at least 1 "
        f"(see ditf-track {command} --help)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"ditf-track {ditf_track.__version__}"


def test_console_script_installed() -> None:
    exe = shutil.which("ditf-track")
    if exe is None:
        pytest.skip("package not installed (pip install -e .)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"ditf-track {ditf_track.__version__}"


def test_module_entry() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ditf_track.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "ditf-track" in out.stdout


# -- log lines -----------------------------------------------------------------------------


@pytest.mark.faults
def test_library_warnings_print_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A huggingface_hub warning (own handler, propagating) and a library Python warning."""

    from huggingface_hub.utils import logging as hub_logging

    from ditf_track.cli import cache as cli_cache

    hub_logger = hub_logging.get_logger("huggingface_hub.file_download")
    # the hub's own handler (what a user sees) kept the stderr of the test that imported it
    for handler in logging.getLogger("huggingface_hub").handlers:
        monkeypatch.setattr(handler, "stream", sys.stderr)
    real_info = cli_cache.cache_info

    def noisy_info(*args: Any, **kwargs: Any) -> Any:
        hub_logger.warning("Retrying in 1s [Retry 1/5].")
        warnings.warn("`foo` is deprecated\nand will go", FutureWarning, stacklevel=1)
        return real_info(*args, **kwargs)

    monkeypatch.setattr(cli_cache, "cache_info", noisy_info)
    code = cli.main(["cache", "info", "--cache-dir", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == 0
    assert err.count("Retrying in 1s") == 1, err
    assert "ditf-track: WARNING: FutureWarning: `foo` is deprecated and will go\n" in err
    assert len(err.splitlines()) == 2, err


@pytest.mark.faults
def test_python_warnings_are_one_log_line(
    shared_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    palette_mask = shared_data / "davis/Annotations/480p/dog/00000.png"
    rgb_mask = tmp_path / "rgb.png"
    with Image.open(palette_mask) as img:
        img.convert("RGB").save(rgb_mask)
    args = davis_args(shared_data, tmp_path / "out", end=3)
    args[args.index("--mask") + 1] = str(rgb_mask)
    code = cli.main([*args, "--preset", "lab", "--short-side", "64", "--quiet"])
    err = capfd.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ditf-track: WARNING: RGB mask {rgb_mask} was converted")
    assert "UserWarning" not in err
    assert "warnings.warn" not in err


# -- what every command that writes refuses --------------------------------------------------
clip = cli_helpers.clip
no_model = cli_helpers.no_model


@pytest.mark.faults
@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_other_commands_out_that_is_or_holds_an_input(
    flag: str,
    clip: tuple[Path, Path],
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_model: None,
) -> None:
    frames, _ = clip
    image = frames / "00000.jpg"
    before = snapshot(tmp_path)
    overwrite = ["--overwrite"] if flag == "--overwrite" else []
    cases = [
        ["match", str(image), str(frames / "00001.jpg"), "--out", str(frames), *overwrite],
        ["inspect", str(image), "--out", str(frames), *overwrite, "--preset", "sd3"],
        ["extract", str(image), "--out", str(image), *overwrite],
        ["eval", "tapvid", "--data", str(image), "--out", str(frames), flag],
    ]
    for args in cases:
        preset = [] if "--preset" in args else ["--preset", "lab"]
        code, _, err = run([*args, *preset], capsys)
        assert "is or holds the " in one_line_error(code, err), args
    # a DAVIS root as --out of its own evaluation (eval davis --overwrite deleted sequences)
    root = davis_root(shared_data, tmp_path / "DAVIS", ["dog"])
    for out in (root, root / "JPEGImages" / "480p"):
        args = ["eval", "davis", "--data", str(root), "--out", str(out), flag, "--preset", "lab"]
        code, _, err = run(args, capsys)
        line = one_line_error(code, err)
        assert "is or holds the DAVIS root" in line or "not a ditf-track run folder" in line
    assert (root / "JPEGImages" / "480p" / "dog").is_symlink()
    assert snapshot(tmp_path / "dog") == {k[4:]: v for k, v in before.items() if k[:4] == "dog/"}
