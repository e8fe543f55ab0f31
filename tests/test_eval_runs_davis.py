"""`ditf-track eval davis --data ...`: propagate a split, score it, resume it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import davis_root

from ditf_track import cli


@pytest.mark.slow
def test_davis_runner_lab_end_to_end_and_resume(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = davis_root(shared_data, tmp_path / "DAVIS", ["blackswan", "car-shadow"])
    out = tmp_path / "run"
    args = [
        "eval",
        "davis",
        "--data",
        str(root),
        "--preset",
        "lab",
        "--out",
        str(out),
        "--short-side",
        "240",
        "--no-disk-cache",
    ]
    assert cli.main(args) == 0
    stdout = capsys.readouterr().out
    assert "J&F-Mean" in stdout
    assert sorted(p.name for p in (out / "blackswan").glob("*.png")) == [
        f"{i:05d}.png" for i in range(50)
    ]
    assert len(list((out / "car-shadow").glob("*.png"))) == 40
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sequences"]) == {"blackswan", "car-shadow"}
    for key in ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"):
        assert key in metrics
    assert 0.3 < metrics["sequences"]["blackswan"]["J-Mean"] <= 1.0
    assert (out / "global_results-val.csv").is_file()
    assert (out / "per-sequence_results-val.csv").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["fingerprint"]["split"] == ["blackswan", "car-shadow"]
    assert config["fingerprint"]["sizing"] == [240, 32, "floor"]
    # without --resume a non-empty --out is refused
    assert cli.main(args) == 1
    assert "--resume" in capsys.readouterr().err
    # resume after losing one sequence: the other is not recomputed
    kept = (out / "blackswan" / "00010.png").stat().st_mtime_ns
    for f in (out / "car-shadow").iterdir():
        f.unlink()
    (out / "car-shadow").rmdir()
    assert cli.main([*args, "--resume"]) == 0
    capsys.readouterr()
    assert (out / "blackswan" / "00010.png").stat().st_mtime_ns == kept
    assert len(list((out / "car-shadow").glob("*.png"))) == 40
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["J&F-Mean"] == pytest.approx(metrics["J&F-Mean"])
    # other settings cannot resume this run
    assert cli.main([*args, "--resume", "--topk", "7"]) == 1
    assert "other settings" in capsys.readouterr().err


def test_davis_runner_errors(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = davis_root(shared_data, tmp_path / "DAVIS", ["dog"])
    cases = [
        (["--data", str(tmp_path / "nowhere")], "does not exist"),
        (["--data", str(root), "--split", "train"], "no split file"),
        (["--data", str(root)], "--out"),
    ]
    for extra, expected in cases:
        out = [] if extra[-1] == str(root) and len(extra) == 2 else ["--out", str(tmp_path / "o")]
        code = cli.main(["eval", "davis", *extra, *out, "--preset", "lab", "--no-disk-cache"])
        err = capsys.readouterr().err
        assert code == 1, (extra, err)
        assert expected in err
