"""`ditf-track eval`: the evaluations' run folders, the DAVIS scorer's outputs, and the main
job's output scored as it is. Each evaluator's own command-line cases are in its test_eval_*.py."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import test_eval_correspondence
from cli_helpers import DOG, davis_root, one_line_error, run, snapshot
from PIL import Image
from test_eval_davis_folders import EXACT, OFFICIAL_BINARY, STATS, official_global, tiny_case

from ditf_track import cli, outputs
from ditf_track.cli._options import profile_numerics
from ditf_track.errors import InputError
from ditf_track.eval.davis import (
    METRIC_KEYS,
    PER_SEQUENCE_COLUMNS,
)
from ditf_track.eval.davis_folders import (
    evaluate_davis,
)
from ditf_track.masks import read_mask
from ditf_track.testing.davis import save_palette_png


@pytest.mark.faults
def test_eval_help_names_what_the_runs_write(capsys: pytest.CaptureFixture[str]) -> None:
    for benchmark, items, log in (
        ("tapvid", "videos", "videos.jsonl"),
        ("keypoints", "videos", "videos.jsonl"),
        ("spair", "pairs", "pairs.jsonl"),
        ("hpatches", "pairs", "pairs.jsonl"),
    ):
        with pytest.raises(SystemExit):
            cli.main(["eval", benchmark, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"finished {items} are not recomputed" in text, benchmark
        assert f"only the first N {items}" in text, benchmark
        assert log in text, benchmark


spair_root = test_eval_correspondence.spair_root
pf_pascal_root = test_eval_correspondence.pf_pascal_root


def jhmdb_layout(shared_data: Path, root: Path) -> Path:
    """One still 3-frame video in JHMDB's layout (Rename_Images/, joint_positions/)."""
    import scipy.io

    frame = Image.open(shared_data / DOG / "00000.jpg").resize((160, 120))
    folder = root / "Rename_Images" / "walk" / "a"
    folder.mkdir(parents=True)
    for k in range(3):
        frame.save(folder / f"{k + 1:05d}.png")
    joints = np.random.default_rng(0).uniform([20, 20], [140, 100], size=(15, 2))
    mat = root / "joint_positions" / "walk" / "a" / "joint_positions.mat"
    mat.parent.mkdir(parents=True)
    scipy.io.savemat(mat, {"pos_img": np.repeat((joints.T + 1)[:, :, None], 3, axis=2)})
    return root


@pytest.mark.faults
def test_eval_run_folder_refusals(
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = jhmdb_layout(shared_data, tmp_path / "jhmdb")
    out = tmp_path / "run"
    args = ["eval", "keypoints", "--data", str(data), "--preset", "lab", "--short-side", "64"]
    args += ["--no-disk-cache", "--out", str(out)]
    # a second evaluation into the same --out while the first runs
    second: list[tuple[int, str]] = []

    def start_second_run(first: outputs.RunDir) -> None:
        monkeypatch.setattr(outputs, "after_lock", None)
        code = cli.main([*args, "--resume"])
        second.append((code, capsys.readouterr().err))

    monkeypatch.setattr(outputs, "after_lock", start_second_run)
    assert cli.main(args) == 0
    assert f"another ditf-track run (pid {os.getpid()}) is writing {out}" in one_line_error(
        *second[0]
    )
    assert not (out / ".ditf-track.lock").exists()
    assert json.loads((out / "config.json").read_text())["tool"] == "ditf-track"
    # --overwrite deletes what the run wrote, never a file of the user's
    (out / "notes.txt").write_text("mine")
    assert run([*args, "--overwrite"], capsys)[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "tracks" / "walk__a.npz").is_file()
    # the data changed since: resuming would mix two datasets
    Image.new("RGB", (160, 120)).save(data / "Rename_Images" / "walk" / "a" / "00002.png")
    code, _, err = run([*args, "--resume"], capsys)
    assert "holds a run with other settings or inputs (the data changed)" in one_line_error(
        code, err
    )
    # a torn config.json is one line, not a JSONDecodeError
    (out / "config.json").write_bytes(b"")
    code, _, err = run([*args, "--resume"], capsys)
    assert "config.json is unreadable (JSONDecodeError): a torn run state" in one_line_error(
        code, err
    )


@pytest.mark.faults
def test_eval_davis_overwrite_keeps_a_sequence_folder_it_did_not_write(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = davis_root(shared_data, tmp_path / "DAVIS", ["dog"])
    out = tmp_path / "run"
    args = ["eval", "davis", "--data", str(root), "--preset", "lab", "--short-side", "64"]
    args += ["--no-disk-cache", "--out", str(out)]
    # an earlier ditf-track run in --out, and the user's own folder named like a sequence
    run_dir = outputs.RunDir(out, "eval davis", in_place=True).open()
    run_dir.write_state({"fingerprint": {}})
    run_dir.close()
    (out / "dog").mkdir()
    (out / "dog" / "00000.png").write_bytes(b"my drawing")
    (out / "dog" / "notes.txt").write_text("mine")
    code, _, err = run([*args, "--overwrite"], capsys)
    assert f"{out / 'dog'} holds files ditf-track did not write" in one_line_error(code, err)
    assert snapshot(out / "dog") == {"00000.png": b"my drawing", "notes.txt": b"mine"}


def test_eval_davis_numerics_official_runs_and_is_recorded(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two 4-frame sequences (links to the shared clips' first frames) with the authors' bf16,
    tie-keeping propagation; the lab preset has no authors' code, so its default is exact."""
    root = davis_root(shared_data, tmp_path / "DAVIS", ["blackswan", "dog"], frames=4)
    args = ["eval", "davis", "--data", str(root), "--preset", "lab", "--short-side", "64"]
    args += ["--no-disk-cache", "--workers", "1"]
    numerics = {}
    for choice in ("official", None):
        out = tmp_path / f"run-{choice}"
        extra = [] if choice is None else ["--numerics", choice]
        assert cli.main([*args, "--out", str(out), *extra]) == 0
        assert len(list((out / "dog").glob("*.png"))) == 4
        metrics = json.loads((out / "metrics.json").read_text())
        assert set(metrics["sequences"]) == {"blackswan", "dog"}
        config = json.loads((out / "config.json").read_text())
        numerics[choice] = config["fingerprint"]["numerics"]
    capsys.readouterr()
    assert numerics == {"official": "official", None: "exact"}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--preset", "flux"], "official"),  # the authors' code exists: FLUX.1-dev on DAVIS
        (["--preset", "flux", "--profile", "paper"], "exact"),
        (["--preset", "flux-schnell"], "exact"),  # official is the paper's there
        (["--preset", "flux", "--numerics", "exact"], "exact"),
        (["--preset", "lab", "--numerics", "official"], "official"),
    ],
)
def test_eval_davis_numerics_follow_the_profile(options: list[str], expected: str) -> None:
    args = cli.build_parser().parse_args(["eval", "davis", "--data", "d", "--out", "o", *options])
    assert profile_numerics(args) == expected


@pytest.mark.faults
def test_eval_runs_check_their_settings_before_opening_out(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A benchmark never picks a model silently, and a bad setting leaves no --out behind."""
    root = davis_root(shared_data, tmp_path / "DAVIS", ["dog"])
    out = tmp_path / "run"
    davis = ["eval", "davis", "--data", str(root), "--out", str(out)]
    code, _, err = run(davis, capsys)
    assert "eval davis --data needs --preset NAME" in one_line_error(code, err)
    assert not out.exists()
    code, _, err = run([*davis, "--preset", "lab", "--radius", "-1"], capsys)
    assert "radius" in one_line_error(code, err)
    assert not out.exists()
    badja = shared_data / "points" / "badja" / "dog.json"
    keypoints = ["eval", "keypoints", "--data", str(badja), "--out", str(out)]
    keypoints += ["--frames", str(shared_data / "davis" / "JPEGImages" / "480p" / "dog")]
    keypoints += ["--masks", str(shared_data / "davis" / "Annotations" / "480p" / "dog")]
    code, _, err = run([*keypoints, "--preset", "lab", "--radius", "0"], capsys)
    assert "radius=0 is not a window" in one_line_error(code, err)
    assert not out.exists()


@pytest.mark.faults
def test_eval_davis_scoring_outputs_are_checked_before_scoring(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = tmp_path / "gt"
    (gt / "dog").mkdir(parents=True)
    for i in range(3):
        shutil.copy(shared_data / "davis/Annotations/480p/dog" / f"{i:05d}.png", gt / "dog")
    before = snapshot(gt)
    base = ["eval", "davis", "--pred", str(gt), "--gt", str(gt)]
    code, _, err = run([*base, "--json", str(gt / "dog" / "00001.png")], capsys)
    assert "--json" in one_line_error(code, err)
    assert "would replace a file of the ground truth" in err
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = run([*base, "--csv", str(a_file / "tables")], capsys)
    assert "cannot write --csv" in one_line_error(code, err)
    assert snapshot(gt) == before


def test_track_output_scores_with_eval_davis(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ditf-track VIDEO --out preds/<seq>`` then ``eval davis --pred preds``, no renaming."""
    davis = shared_data / "davis"
    gt = tmp_path / "gt" / "dog"
    gt.mkdir(parents=True)
    for i in range(8):  # the first 8 ground-truth frames, linked (read in place)
        (gt / f"{i:05d}.png").symlink_to(davis / "Annotations/480p/dog" / f"{i:05d}.png")
    preds = tmp_path / "preds"
    track = [str(davis / "JPEGImages/480p/dog"), "--mask", str(gt / "00000.png"), "--end", "8"]
    options = ["--preset", "lab", "--short-side", "240", "--out", str(preds / "dog")]
    assert cli.main([*track, *options]) == 0
    metrics = tmp_path / "metrics.json"
    args = ["eval", "davis", "--pred", str(preds), "--gt", str(gt.parent), "--workers", "1"]
    assert cli.main([*args, "--json", str(metrics)]) == 0
    scores = json.loads(metrics.read_text())
    assert list(scores["sequences"]) == ["dog"]
    # J of frames 1..6 (the first and last are not scored), recomputed from the PNGs
    ious = []
    for i in range(1, 7):
        pred = read_mask(preds / "dog" / f"{i:05d}.png").labels > 0
        truth = read_mask(gt / f"{i:05d}.png").labels > 0
        ious.append(np.count_nonzero(pred & truth) / np.count_nonzero(pred | truth))
    assert scores["J-Mean"] == pytest.approx(np.mean(ious))
    assert 0.3 < scores["J-Mean"] < 1.0
    capsys.readouterr()
    # the track output folder itself as --pred: one line naming the fix
    assert cli.main(["eval", "davis", "--pred", str(preds / "dog"), "--gt", str(gt.parent)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert "holds frame PNGs itself" in err
    assert err.endswith(f"pass --pred {preds}")


def test_eval_cli(
    spair_root: tuple[Path, list[dict[str, object]]],
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = spair_root
    out = tmp_path / "cli"
    base = ["eval", "spair", "--data", str(root), "--out", str(out), "--long-side", "64"]
    model = ["--model", str(tiny_model("flux")), "--family", "flux", "--t", "260", "--k", "3"]
    ablation = ["--feature-mode", "original", "--device", "cpu", "--dtype", "float32"]
    assert cli.main([*base, *model, *ablation, "--limit", "2"]) == 0
    stdout = capsys.readouterr().out
    assert "pck_per_point" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["fingerprint"]["matcher"]["extractor"]["feature_mode"] == "original"
    assert json.loads((out / "metrics.json").read_text())["num_pairs"] == 2
    # the rest of the pairs, resumed
    assert cli.main([*base, *model, *ablation, "--resume"]) == 0
    assert "resuming: 2 of 4 pairs already done" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["num_pairs"] == 4
    # a non-empty --out without --resume is one line on stderr
    assert cli.main([*base, *model, *ablation]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--resume" in err


def test_eval_cli_lab_baseline(
    pf_pascal_root: tuple[Path, list[list[str]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("ditf_track.lab", reason="the lab baseline is not merged yet")
    root, _ = pf_pascal_root
    out = tmp_path / "lab"
    args = ["eval", "pf-pascal", "--data", str(root), "--out", str(out), "--preset", "lab"]
    assert cli.main([*args, "--long-side", "128", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_pairs"] == 3
    assert 0.0 <= metrics["pck_per_point@0.10"] <= 1.0
    assert "pck_per_point" in capsys.readouterr().out


def test_cli_json_and_csv(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    davis = shared_data / "davis"
    out_json = tmp_path / "metrics.json"
    rc = cli.main(
        [
            "eval",
            "davis",
            "--pred",
            str(davis / "Predictions" / "osvos" / "480p"),
            "--gt",
            str(davis / "Annotations" / "480p"),
            "--sequences",
            "dog,blackswan",
            "--json",
            str(out_json),
            "--csv",
            str(tmp_path / "csv"),
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Global results for val" in printed
    assert "Per sequence results for val" in printed
    assert "dog_1" in printed

    expected_objects = {k: OFFICIAL_BINARY[k] for k in ("dog_1", "blackswan_1")}
    metrics = json.loads(out_json.read_text())
    assert list(metrics) == [*METRIC_KEYS, "sequences"]
    for key, value in official_global(expected_objects).items():
        assert metrics[key] == pytest.approx(value, abs=EXACT)
    assert list(metrics["sequences"]) == ["dog", "blackswan"]
    for seq, stats in metrics["sequences"].items():
        official = OFFICIAL_BINARY[f"{seq}_1"]
        assert list(stats) == list(METRIC_KEYS)
        for key in STATS:
            assert stats[key] == pytest.approx(official[key], abs=EXACT)
        expected_jf = (official["J-Mean"] + official["F-Mean"]) / 2
        assert stats["J&F-Mean"] == pytest.approx(expected_jf, abs=EXACT)

    with (tmp_path / "csv" / "global_results-val.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == list(METRIC_KEYS)
    assert len(rows) == 2
    assert float(rows[1][0]) == pytest.approx(metrics["J&F-Mean"], abs=5e-4)
    with (tmp_path / "csv" / "per-sequence_results-val.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == list(PER_SEQUENCE_COLUMNS)
    assert [r[0] for r in rows[1:]] == ["dog_1", "blackswan_1"]
    assert rows[1][1:] == [f"{OFFICIAL_BINARY['dog_1'][k]:.3f}" for k in ("J-Mean", "F-Mean")]


def test_cli_help_describes_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["eval", "davis", "--help"])
    text = capsys.readouterr().out
    for option in ("--pred", "--gt", "--sequences", "--mode", "--json", "--csv", "--workers"):
        assert option in text


def test_id_above_object_count_names_the_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred, gt = tiny_case(tmp_path)
    bad = np.zeros((12, 16), dtype=np.uint8)
    bad[0, 0] = 2
    save_palette_png(bad, pred / "seq" / "00002.png")
    with pytest.raises(InputError, match=r"seq/00002\.png.*id 2.*1 object"):
        evaluate_davis(pred, gt, workers=1)
    rc = cli.main(["eval", "davis", "--pred", str(pred), "--gt", str(gt), "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "00002.png" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_set_names_the_csvs_and_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred, gt = tiny_case(tmp_path)
    args = ["eval", "davis", "--pred", str(pred), "--gt", str(gt), "--workers", "1"]
    assert cli.main([*args, "--set", "train", "--csv", str(tmp_path / "out")]) == 0
    assert "Global results for train" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "global_results-train.csv",
        "per-sequence_results-train.csv",
    ]
    (tmp_path / "val.txt").write_text("seq\n\n")
    assert cli.main([*args, "--sequences", str(tmp_path / "val.txt")]) == 0
    assert "seq_1" in capsys.readouterr().out
    assert cli.main(["eval", "davis", "--pred", str(pred)]) == 1
    assert "--pred needs --gt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--workers", "0"])
    assert exc.value.code == 2


def test_pck_runner_records_the_pair_protocol(
    spair_root: tuple[Path, list[dict[str, object]]],
    pf_pascal_root: tuple[Path, list[list[str]]],
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 18: `eval spair --preset flux` (official) runs the authors' SPair protocol (PIL
    bicubic, 8 draws, the unnormalised map upsampled; --long-side given replaces 640 here, to
    keep the tiny run small), and config.json / metrics.json record every resolved setting;
    PF-PASCAL reuses them as a labelled assumption."""
    root, _ = spair_root
    out = tmp_path / "spair"
    model = ["--preset", "flux", "--model", str(tiny_model("flux")), "--k", "3"]
    rest = ["--long-side", "64", "--device", "cpu", "--dtype", "float32", "--limit", "1"]
    assert cli.main(["eval", "spair", "--data", str(root), "--out", str(out), *model, *rest]) == 0
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    for record in (config["pair_protocol"], metrics["pair_protocol"]):
        assert record["long_side"] == 64
        assert record["square"] is None
        assert record["resize"] == "pil-bicubic"
        assert record["ensemble"] == 8
        assert record["upsample_from"] == "raw"
        assert record["dinov2_pca"] is None  # no --dinov2
        profile = record["profile"]
        assert (profile["requested"], profile["used"], profile["benchmark"]) == (
            "official",
            "official",
            "spair",
        )
        assert profile["assumption"] is None
        assert profile["overridden"] == ["long_side"]
    assert metrics["prompts"] == {"rule": "template", "template": "a photo of a {category}"}
    matcher = config["fingerprint"]["matcher"]
    assert (matcher["long_side"], matcher["resize"], matcher["upsample_from"]) == (
        64,
        "pil-bicubic",
        "raw",
    )
    assert matcher["extractor"]["ensemble"] == 8
    # the paper's profile with explicit flags: each flag replaces its setting
    paper = tmp_path / "paper"
    flags = ["--profile", "paper", "--ensemble", "2", "--upsample-from", "unit"]
    argv = ["eval", "spair", "--data", str(root), "--out", str(paper), *model, *rest, *flags]
    assert cli.main(argv) == 0
    record = json.loads((paper / "metrics.json").read_text())["pair_protocol"]
    assert (record["long_side"], record["resize"], record["ensemble"]) == (64, "auto", 2)
    assert record["upsample_from"] == "unit"
    assert record["profile"]["overridden"] == ["ensemble", "long_side", "upsample_from"]
    assert json.loads((paper / "metrics.json").read_text())["prompts"]["rule"] == "preset"
    # PF-PASCAL: the authors' code evaluates SPair only, so its settings are an assumption
    pf_root, _ = pf_pascal_root
    pf = tmp_path / "pf"
    assert (
        cli.main(["eval", "pf-pascal", "--data", str(pf_root), "--out", str(pf), *model, *rest])
        == 0
    )
    record = json.loads((pf / "metrics.json").read_text())["pair_protocol"]
    assert "the authors' code evaluates SPair-71k only" in record["profile"]["assumption"]
    assert (record["resize"], record["ensemble"]) == ("pil-bicubic", 8)
    capsys.readouterr()
    # --long-side and --square together: argparse refuses, one line
    both = ["eval", "spair", "--data", str(root), "--out", str(tmp_path / "x"), "--square", "64"]
    with pytest.raises(SystemExit):
        cli.main([*both, "--long-side", "64", "--preset", "lab"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.faults
def test_eval_pck_prompt_options_are_checked_before_any_model(
    spair_root: tuple[Path, list[dict[str, object]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad template, captions file or missing caption is one line; no model, no --out."""
    root, _ = spair_root
    out = tmp_path / "run"
    base = ["eval", "spair", "--data", str(root), "--out", str(out), "--family", "flux"]
    base += ["--model", str(tmp_path / "no-model-here")]  # loading it would fail otherwise
    code, _, err = run([*base, "--prompt-template", "a photo of a {cat}"], capsys)
    assert "has the unknown placeholder {cat}" in one_line_error(code, err)
    code, _, err = run([*base, "--prompt-template", "a photo"], capsys)
    assert "has no placeholder" in one_line_error(code, err)
    captions = tmp_path / "captions.json"
    code, _, err = run([*base, "--captions", str(captions)], capsys)
    assert f"captions file {captions} does not exist" in one_line_error(code, err)
    captions.write_text('{"dogdog_00003.jpg": "a dog"')
    code, _, err = run([*base, "--captions", str(captions)], capsys)
    assert "is not valid UTF-8 JSON" in one_line_error(code, err)
    captions.write_text(json.dumps({"dogdog_00003.jpg": "a dog", "dogdog_00008.jpg": "a dog"}))
    code, _, err = run([*base, "--captions", str(captions)], capsys)
    line = one_line_error(code, err)
    assert "has no caption for '" in line
    assert "' and 3 other image(s) of the pairs to run; add them" in line
    assert not out.exists()
    # a run folder holding the captions file could delete it: refused
    out.mkdir()
    inside = out / "captions.json"
    images = sorted((root / "JPEGImages").glob("*/*.jpg"))
    inside.write_text(json.dumps({p.parent.name + p.name: "a photo" for p in images}))
    code, _, err = run([*base, "--captions", str(inside), "--overwrite"], capsys)
    assert f"--out {out} is or holds the captions file {inside}" in one_line_error(code, err)
    assert inside.exists()


def test_eval_spair_with_captions_records_the_rule(
    spair_root: tuple[Path, list[dict[str, object]]],
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ditf_track.eval.correspondence import load_spair_pairs
    from ditf_track.prompts import caption_key

    root, _ = spair_root
    first = load_spair_pairs(root)[0]
    captions = tmp_path / "captions.json"
    table = {
        caption_key(first.category, first.source_image): "a dog on the grass",
        caption_key(first.category, first.target_image): "the dog jumps",
    }
    captions.write_text(json.dumps(table))
    out = tmp_path / "run"
    args = ["eval", "spair", "--data", str(root), "--out", str(out), "--long-side", "64"]
    args += ["--model", str(tiny_model("flux")), "--family", "flux", "--t", "260", "--k", "3"]
    args += ["--device", "cpu", "--dtype", "float32", "--limit", "1", "--cache-dir", str(tmp_path)]
    args += ["--captions", str(captions), "--prompt-template", "a photo of a {category}"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert "--prompt-template is not used: --captions gives every image its prompt" in err
    config = json.loads((out / "config.json").read_text())
    assert config["fingerprint"]["prompts"]["rule"] == "captions"
    assert config["fingerprint"]["prompts"]["captions_file"] == str(captions.resolve())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prompts"] == config["prompts"]
    # both captions (and the preset's prompt) were encoded before the transformer, and cached
    assert len(list((tmp_path / "text").glob("*.safetensors"))) == 3


def test_eval_pf_pascal_template_on_the_lab_baseline_is_recorded_and_unused(
    pf_pascal_root: tuple[Path, list[list[str]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = pf_pascal_root
    out = tmp_path / "lab"
    args = ["eval", "pf-pascal", "--data", str(root), "--out", str(out), "--preset", "lab"]
    args += ["--long-side", "128", "--device", "cpu", "--prompt-template", "a {category}"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert "the prompts are unused: this extractor takes no text condition" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prompts"] == {"rule": "template", "template": "a {category}"}
