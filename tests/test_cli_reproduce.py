"""`ditf-track reproduce`: the rows' commands, a row run end to end on a tiny model (SPair-71k
and DAVIS layouts made in the test), and its refusals."""

from __future__ import annotations

import errno
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cli_helpers
import pytest
import test_eval_correspondence
from cli_helpers import davis_root, one_line_error, run, snapshot

from ditf_track import cli
from ditf_track.cli import reproduce as reproduce_cli
from ditf_track.eval.reproduce import command_text, load_rows

spair_root = test_eval_correspondence.spair_root
no_model = cli_helpers.no_model

#: Point a Flux row at the tiny Flux on the CPU, at a small size (k 3: its one single block).
TINY_PAIRS = ["--t", "260", "--k", "3", "--long-side", "64", "--device", "cpu"]
TINY_PAIRS += ["--dtype", "float32", "--limit", "2"]


def test_list_prints_every_row_and_every_command_parses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["reproduce", "--list"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:7] == ["id", "table", "dataset", "model", "metric", "paper", "command"]
    rows = load_rows()
    assert len(lines) == len(rows) + 1
    parser = cli.build_parser()
    for row, line in zip(rows, lines[1:]):
        assert line.startswith(row.id + " ")
        assert line.endswith(command_text(row))
        assert row.paper_text() in line
        # the real eval parser accepts the command as registered (parse only, nothing runs)
        args = parser.parse_args(row.argv("DATA", "OUT"))
        assert args.command == "eval", row.id
        assert args.preset == row.preset, row.id
        assert args.profile == "official", row.id
        assert str(args.out) == "OUT", row.id
        assert str(args.data) == "DATA", row.id
        assert shlex.split(command_text(row))[1:] == row.argv("DATA", "OUT")
    assert "table9-davis-flux" in out
    assert "72.2" in out


def test_flags_after_double_dash_reach_the_eval_command() -> None:
    args = cli.build_parser().parse_args(
        ["reproduce", "table2-spair-flux", "--data", "D", "--out", "O", "--", "--limit", "3"]
    )
    assert args.row == "table2-spair-flux"
    assert args.eval_args == ["--limit", "3"]
    args = cli.build_parser().parse_args(["reproduce", "--list"])
    assert args.eval_args == []


def test_reproduce_spair_row_end_to_end_on_a_tiny_flux(
    spair_root: tuple[Path, list[dict[str, object]]],
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The paper's number beside the measured one, the measured one exactly what `eval spair`
    writes for the same command."""
    root, _ = spair_root
    model = ["--model", str(tiny_model("flux")), *TINY_PAIRS]
    out = tmp_path / "reproduced"
    args = ["reproduce", "table2-spair-flux", "--data", str(root), "--out", str(out)]
    code, stdout, _ = run([*args, "--", *model], capsys)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["reproduce"]
    assert block["row"] == "table2-spair-flux"
    [value] = block["values"]
    assert value["metric"] == "pck_per_point@0.10"
    assert value["paper"] == 67.1
    assert value["measured"] == pytest.approx(100 * metrics["pck_per_point@0.10"], abs=0)
    assert value["difference"] == pytest.approx(value["measured"] - 67.1)
    assert block["as_registered"] is False
    assert block["extra_args"] == model
    # the tiny model is not FLUX.1-dev: the official profile's channels do not apply to it
    assert block["profile"] == {"requested": "official", "used": "paper"}
    assert any("per-image captions" in text for text in block["assumed"])
    assert "67.1" in stdout
    assert "not the row as registered" in stdout
    # the same command through `eval spair` itself writes the same measurement
    direct = tmp_path / "direct"
    eval_args = ["eval", "spair", "--data", str(root), "--out", str(direct)]
    assert cli.main([*eval_args, "--preset", "flux", "--profile", "official", *model]) == 0
    capsys.readouterr()
    expected = json.loads((direct / "metrics.json").read_text())
    assert "reproduce" not in expected
    assert {k: v for k, v in metrics.items() if k != "reproduce"} == expected


def test_reproduce_davis_row_end_to_end_names_profile_and_numerics(
    shared_data: Path,
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = davis_root(shared_data, tmp_path / "DAVIS", ["dog"], frames=4)
    tiny = ["--model", str(tiny_model("flux")), "--k", "3", "--short-side", "64"]
    tiny += ["--device", "cpu", "--dtype", "float32", "--no-disk-cache", "--workers", "1"]
    out = tmp_path / "t9"
    args = ["reproduce", "table9-davis-flux", "--data", str(root), "--out", str(out), "--", *tiny]
    code, stdout, _ = run(args, capsys)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the DAVIS runner's metrics.json names the computation: the authors' numerics (the flux
    # preset under the official profile), the profile as resolved for the tiny model
    assert metrics["numerics"] == "official"
    assert metrics["profile"] == {"requested": "official", "used": "paper"}
    block = metrics["reproduce"]
    assert block["numerics"] == "official"
    values = {v["metric"]: v for v in block["values"]}
    assert [values[k]["paper"] for k in ("J&F-Mean", "J-Mean", "F-Mean")] == [72.2, 69.2, 75.1]
    for key in ("J&F-Mean", "J-Mean", "F-Mean"):
        assert values[key]["measured"] == pytest.approx(100 * metrics[key], abs=0)
    assert "numerics official" in stdout
    # `eval davis` itself, same command: the same masks' scores (and no reproduce block)
    direct = tmp_path / "direct"
    eval_args = ["eval", "davis", "--data", str(root), "--out", str(direct), "--split", "val"]
    assert cli.main([*eval_args, "--preset", "flux", "--profile", "official", *tiny]) == 0
    capsys.readouterr()
    expected = json.loads((direct / "metrics.json").read_text())
    assert {k: v for k, v in metrics.items() if k != "reproduce"} == expected


@pytest.mark.faults
def test_reproduce_unknown_row_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["reproduce", "table9-davis", "--data", "D", "--out", "O"], capsys)
    line = one_line_error(code, err)
    assert line == (
        "ditf-track: error: unknown row 'table9-davis'; close ids: table9-davis-flux; "
        "`ditf-track reproduce --list` shows every row"
    )


@pytest.mark.faults
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--out", "OUT"],
            "reproduce table9-davis-flux needs --data PATH, the DAVIS-2017 val root",
        ),
        (["--data", "DATA"], "reproduce table9-davis-flux needs --out DIR for the run's folder"),
        (
            ["--data", "DATA", "--out", "OUT", "--captions", "nowhere.json"],
            "row table9-davis-flux takes no captions file (only the SPair-71k rows do); drop "
            "--captions",
        ),
    ],
)
def test_reproduce_missing_or_wrong_options_are_one_line(
    options: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["reproduce", "table9-davis-flux", *options], capsys)
    assert one_line_error(code, err) == f"ditf-track: error: {message}"
    assert not any(tmp_path.iterdir())


@pytest.mark.faults
def test_reproduce_missing_captions_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    missing = tmp_path / "captions.json"
    args = ["reproduce", "table2-spair-flux", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    code, _, err = run([*args, "--captions", str(missing)], capsys)
    assert one_line_error(code, err) == (
        f"ditf-track: error: --captions {missing} is not a file; pass the authors' "
        "spair_detailed_captions.json, or leave --captions out for the runner's prompt"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.faults
def test_reproduce_full_disk_keeps_the_evaluations_metrics(
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write that fails while the paper's numbers are added leaves metrics.json as the
    evaluation wrote it, no temporary file, and the folder unlocked (the weight-free lab
    baseline replaces the row's model after --, an 8-frame clip)."""
    root = davis_root(shared_data, tmp_path / "DAVIS", ["dog"], frames=8)
    out = tmp_path / "run"
    args = ["reproduce", "table9-davis-flux", "--data", str(root), "--out", str(out), "--"]
    args += ["--preset", "lab", "--short-side", "64", "--no-disk-cache", "--workers", "1"]
    armed = []
    real_comparison = reproduce_cli.comparison
    real_write_text = Path.write_text

    def comparison(*a: Any, **k: Any) -> dict[str, Any]:
        armed.append(True)  # the evaluation is finished: fail the writes from here on
        return real_comparison(*a, **k)

    def write_text(self: Path, *a: Any, **k: Any) -> int:
        if armed and self.name.startswith(".metrics."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *a, **k)

    monkeypatch.setattr(reproduce_cli, "comparison", comparison)
    monkeypatch.setattr(Path, "write_text", write_text)
    code, _, err = run(args, capsys)
    assert one_line_error(code, err) == (
        f"ditf-track: error: cannot write metrics {out / 'metrics.json'} ([Errno 28] No space "
        "left on device); pick a writable folder"
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert "reproduce" not in metrics
    assert metrics["numerics"] == "exact"  # lab: no authors' code, so the exact numerics
    assert metrics["profile"] is None  # lab is no DiT: no profile
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    # the run is intact: resumed, the block is written
    assert cli.main([*args, "--resume"]) == 0
    capsys.readouterr()
    assert json.loads((out / "metrics.json").read_text())["reproduce"]["as_registered"] is False


@pytest.mark.faults
def test_reproduce_refuses_an_out_that_holds_the_input(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    """The eval command's own refusal, before any model is resolved; the data is untouched."""
    root = davis_root(shared_data, tmp_path / "DAVIS", ["dog"], frames=2)
    before = snapshot(tmp_path)
    args = ["reproduce", "table9-davis-flux", "--data", str(root), "--out", str(tmp_path)]
    code, _, err = run(args, capsys)
    assert one_line_error(code, err) == (
        f"ditf-track: error: --out {tmp_path} is or holds the DAVIS root {root}; writing there "
        "could destroy it: pick another --out"
    )
    assert snapshot(tmp_path) == before
