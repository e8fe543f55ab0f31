"""Fault cases of the run-folder protocol, per command: a run never deletes what it did not write,
refuses an --out that is or holds an input, locks its folder against a second writer, resumes only
the same inputs and settings, and checks every cheap input before it resolves a model."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditf_track import cli, outputs
from ditf_track.cli import track as cli_track
from ditf_track.masks import read_mask, write_mask

pytestmark = pytest.mark.faults

DOG = "davis/JPEGImages/480p/dog"
DOG_MASK = "davis/Annotations/480p/dog/00000.png"
LAB = ["--preset", "lab", "--short-side", "64", "--no-disk-cache", "--quiet"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ditf-track: error: "), err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def clip(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """8 dog frames and the first mask, copied: these inputs may be at risk in a test."""
    frames = tmp_path / "dog"
    frames.mkdir()
    for i in range(8):
        shutil.copy(shared_data / DOG / f"{i:05d}.jpg", frames)
    mask = tmp_path / "first.png"
    shutil.copy(shared_data / DOG_MASK, mask)
    return frames, mask


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model (or the lab extractor) is resolved at all."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was resolved before the inputs were checked")

    monkeypatch.setattr("ditf_track.extractor.build_extractor", forbidden)


def test_resume_or_overwrite_never_touch_a_folder_ditf_track_did_not_write(
    clip: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    frames, mask = clip
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\chapter{One}")
    for flag in ("--resume", "--overwrite"):
        code, _, err = run(
            ["track", str(frames), "--mask", str(mask), "--out", str(thesis), flag, *LAB], capsys
        )
        line = one_line_error(code, err)
        assert f"{thesis} is not a ditf-track run folder" in line
    assert snapshot(thesis) == {"thesis.tex": b"\\chapter{One}"}
    assert not (tmp_path / "thesis.incomplete").exists()


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_track_out_that_is_or_holds_an_input(
    flag: str,
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_model: None,
) -> None:
    frames, mask = clip
    before = snapshot(tmp_path)
    for out, what in ((frames, "video"), (tmp_path, "video"), (mask, "mask 0")):
        code, _, err = run(
            ["track", str(frames), "--mask", str(mask), "--out", str(out), flag, *LAB], capsys
        )
        assert f"is or holds the {what} " in one_line_error(code, err)
    points = tmp_path / "p" / "points.csv"
    points.parent.mkdir()
    points.write_text("frame,x,y\n0,400,200\n")
    code, _, err = run(
        ["track", str(frames), "--points", str(points), "--out", str(points.parent), flag, *LAB],
        capsys,
    )
    assert "is or holds the points file" in one_line_error(code, err)
    points.unlink()
    points.parent.rmdir()
    assert snapshot(tmp_path) == before


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
    root = tmp_path / "DAVIS"
    for kind in ("JPEGImages", "Annotations"):
        (root / kind / "480p").mkdir(parents=True)
        (root / kind / "480p" / "dog").symlink_to(shared_data / "davis" / kind / "480p" / "dog")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("dog\n")
    for out in (root, root / "JPEGImages" / "480p"):
        args = ["eval", "davis", "--data", str(root), "--out", str(out), flag, "--preset", "lab"]
        code, _, err = run(args, capsys)
        line = one_line_error(code, err)
        assert "is or holds the DAVIS root" in line or "not a ditf-track run folder" in line
    assert (root / "JPEGImages" / "480p" / "dog").is_symlink()
    assert snapshot(tmp_path / "dog") == {k[4:]: v for k, v in before.items() if k[:4] == "dog/"}


def test_second_run_into_the_same_out_is_refused_naming_the_first(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frames, mask = clip
    out = tmp_path / "masks"
    args = ["track", str(frames), "--mask", str(mask), "--out", str(out), *LAB]
    second: list[tuple[int, str]] = []

    def start_second_run(first: outputs.RunDir) -> None:
        monkeypatch.setattr(outputs, "after_lock", None)
        code = cli.main([*args, "--radius", "3"])
        second.append((code, capsys.readouterr().err))

    monkeypatch.setattr(outputs, "after_lock", start_second_run)
    code, stdout, _ = run(args, capsys)
    assert code == 0, stdout
    (code2, err2) = second[0]
    line = one_line_error(code2, err2)
    assert line == (
        f"ditf-track: error: another ditf-track run (pid {os.getpid()}) is writing {out}; wait "
        "for it to finish or pick another --out"
    )
    config = json.loads((out / "config.json").read_text())
    assert config["propagation"]["radius"] == 12  # only the first run's masks, its settings
    assert sorted(p.name for p in out.iterdir()) == [
        *(f"{i:05d}.png" for i in range(8)),
        "config.json",
    ]


class Interrupt(BaseException):
    """Stands for SIGKILL: nothing after it runs (no cleanup in except/finally of ours)."""


def interrupt_after(monkeypatch: pytest.MonkeyPatch, frames: int) -> None:
    written = []
    original = cli_track.write_mask

    def write_then_die(*args: object, **kwargs: object) -> Path:
        if len(written) == frames:
            raise Interrupt
        written.append(args[0])
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cli_track, "write_mask", write_then_die)


def test_killed_run_resumes_byte_identical_and_a_stray_temp_file_is_not_published(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frames, mask = clip
    fresh = tmp_path / "fresh"
    base = ["track", str(frames), "--mask", str(mask), *LAB]
    assert run([*base, "--out", str(fresh)], capsys)[0] == 0
    out = tmp_path / "masks"
    with monkeypatch.context() as m:
        interrupt_after(m, 4)
        with pytest.raises(Interrupt):
            cli.main([*base, "--out", str(out)])
    work = tmp_path / "masks.incomplete"
    assert sorted(p.name for p in work.glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert not out.exists()
    (work / ".00004.0123456789ab.tmp.png").write_bytes(b"half a png")  # killed mid-write
    code, _, err = run([*base, "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert snapshot(out).keys() == snapshot(fresh).keys()
    for name, data in snapshot(fresh).items():
        if name.endswith(".png"):
            assert snapshot(out)[name] == data, name
    assert not work.exists()


def test_resume_refuses_an_edited_mask_and_changed_settings(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frames, mask = clip
    out = tmp_path / "masks"
    base = ["track", str(frames), "--mask", str(mask), "--out", str(out), *LAB]
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        with pytest.raises(Interrupt):
            cli.main(base)
    labels = read_mask(mask).labels.copy()
    labels[:40, :40] = 1
    write_mask(mask, labels)
    code, _, err = run([*base, "--resume"], capsys)
    assert "holds a run with other settings or inputs (the mask 0 changed)" in one_line_error(
        code, err
    )
    # the finished run: "already complete" only for the same inputs and settings
    code, _, err = run([*base, "--overwrite"], capsys)
    assert code == 0, err
    code, stdout, _ = run([*base, "--resume"], capsys)
    assert code == 0
    assert "already complete" in stdout
    code, _, err = run([*base, "--resume", "--radius", "3"], capsys)
    assert "(settings.radius: None there, 3 now)" in one_line_error(code, err)


def test_torn_run_json_is_one_line(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_model: None,
) -> None:
    frames, mask = clip
    out = tmp_path / "masks"
    work = tmp_path / "masks.incomplete"
    work.mkdir()
    (work / "run.json").write_bytes(b"")  # what a full disk left before run.json was atomic
    (work / "00000.png").write_bytes(b"")
    code, _, err = run(
        ["track", str(frames), "--mask", str(mask), "--out", str(out), "--resume", *LAB], capsys
    )
    assert "run.json is unreadable (JSONDecodeError): a torn run state" in one_line_error(code, err)


def test_mask_named_like_a_frame_outside_the_selection_is_refused(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    args = ["track", str(shared_data / DOG), "--mask", str(shared_data / DOG_MASK)]
    args += ["--start", "30", "--end", "36", "--out", str(tmp_path / "o"), *LAB]
    code, _, err = run(args, capsys)
    line = one_line_error(code, err)
    assert "is named like frame 00000" in line
    assert "not among the selected frames" in line


def test_wrong_size_mask_with_a_dit_preset_fails_before_any_model(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    small = tmp_path / "small.png"
    write_mask(small, np.ones((20, 30), np.uint8))
    args = ["track", str(shared_data / DOG), "--mask", str(small), "--end", "4", "--preset", "sd3"]
    code, _, err = run([*args, "--out", str(tmp_path / "o")], capsys)
    assert "is 30x20 but the video frames are 854x480" in one_line_error(code, err)
    assert not (tmp_path / "o.incomplete").exists()


def test_bad_outputs_are_one_line_before_any_model(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_model: None,
) -> None:
    frames, mask = clip
    base = ["track", str(frames), "--mask", str(mask), *LAB]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = run([*base, "--out", str(a_file)], capsys)
    assert f"--out {a_file} is a file; pass a folder" in one_line_error(code, err)
    # --out . in a folder holding the video
    monkeypatch.chdir(tmp_path)
    code, _, err = run([*base, "--out", "."], capsys)
    assert "--out . is or holds the video" in one_line_error(code, err)
    # an --out under a file (like a read-only parent: the folder cannot be made)
    code, _, err = run([*base, "--out", str(a_file / "masks")], capsys)
    assert "cannot create output folder" in one_line_error(code, err)
    # a read-only parent (root ignores chmod, so the refusal is simulated)
    with monkeypatch.context() as m:

        def read_only(self: Path, *args: object, **kwargs: object) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))

        m.setattr(Path, "mkdir", read_only)
        code, _, err = run([*base, "--out", str(tmp_path / "ro" / "masks")], capsys)
    assert "cannot create output folder" in one_line_error(code, err)
    assert "Permission denied" in err
    # the overlay path too
    code, _, err = run(
        [*base, "--out", str(tmp_path / "m"), "--overlay", str(a_file / "o.mp4")], capsys
    )
    assert "cannot write --overlay" in one_line_error(code, err)
    code, _, err = run(
        [*base, "--out", str(tmp_path / "m"), "--overlay", str(frames / "00000.jpg")], capsys
    )
    assert "--overlay" in one_line_error(code, err)
    assert "would replace a file of the video" in err
    # extract: an unwritable --out is found before extracting
    code, _, err = run(["extract", str(frames), "--out", str(a_file / "f.safetensors")], capsys)
    assert "cannot write --out" in one_line_error(code, err)
    assert a_file.read_text() == "x"


def test_full_disk_at_the_start_is_one_line(
    clip: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_model: None,
) -> None:
    frames, mask = clip

    def full(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "masks"
    code, _, err = run(["track", str(frames), "--mask", str(mask), "--out", str(out), *LAB], capsys)
    assert "No space left on device" in one_line_error(code, err)
    assert not (tmp_path / "masks.incomplete").exists()


def test_overwrite_keeps_files_the_previous_run_did_not_write(
    clip: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames, mask = clip
    out = tmp_path / "masks"
    base = ["track", str(frames), "--mask", str(mask), "--out", str(out), *LAB]
    assert run([*base, "--end", "6"], capsys)[0] == 0
    (out / "notes.txt").write_text("mine")
    Image.new("L", (4, 4)).save(out / "sketch.png")
    (out / "empty-folder-of-mine").mkdir()
    assert run([*base, "--end", "4", "--overwrite"], capsys)[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "empty-folder-of-mine").is_dir()
    assert (out / "sketch.png").is_file()
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert json.loads((out / "config.json").read_text())["frames"] == 4


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


def test_eval_davis_overwrite_keeps_a_sequence_folder_it_did_not_write(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "DAVIS"
    for kind in ("JPEGImages", "Annotations"):
        (root / kind / "480p").mkdir(parents=True)
        (root / kind / "480p" / "dog").symlink_to(shared_data / "davis" / kind / "480p" / "dog")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("dog\n")
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


def test_sigkilled_run_resumes_byte_identical(
    clip: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real SIGKILL (after 3 masks): the lock file and owner note it leaves block nothing."""
    import signal
    import subprocess
    import sys

    frames, mask = clip
    base = ["track", str(frames), "--mask", str(mask), *LAB]
    out = tmp_path / "masks"
    driver = (
        "import os, signal, sys\n"
        "from ditf_track import cli\n"
        "from ditf_track.cli import track\n"
        "real, n = track.write_mask, [0]\n"
        "def write(*a, **k):\n"
        "    if n[0] == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    n[0] += 1\n"
        "    return real(*a, **k)\n"
        "track.write_mask = write\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run(
        [sys.executable, "-c", driver, *base, "--out", str(out)], env=env, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    work = tmp_path / "masks.incomplete"
    assert (work / ".ditf-track.lock").exists()
    assert len(list(work.glob("0*.png"))) == 3
    code, _, err = run([*base, "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    fresh = tmp_path / "fresh"
    assert run([*base, "--out", str(fresh)], capsys)[0] == 0
    assert {k: v for k, v in snapshot(out).items() if k.endswith(".png")} == {
        k: v for k, v in snapshot(fresh).items() if k.endswith(".png")
    }
    assert sorted(snapshot(out)) == sorted(snapshot(fresh))
