"""The run-folder protocol (:class:`ditf_track.outputs.RunDir`): refusals, lock, state, publish."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from filelock import FileLock

from ditf_track import outputs
from ditf_track.errors import ConfigError, OutputError
from ditf_track.outputs import LOCK_FILE, OWNER_FILE, RunDir, discard_run, input_digest


def finished_run(out: Path, files: dict[str, bytes], **kwargs: object) -> None:
    run = RunDir(out, "track", patterns=("*.png",), **kwargs).open()  # type: ignore[arg-type]
    run.write_state({"fingerprint": {"inputs": {"mask": "a"}}})
    for name, data in files.items():
        (run.work / name).write_bytes(data)
    run.publish({"fingerprint": {"inputs": {"mask": "a"}}})


def test_publish_writes_config_with_marker_and_file_list(tmp_path: Path) -> None:
    out = tmp_path / "masks"
    finished_run(out, {"00000.png": b"x", "00001.png": b"y"})
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "config.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["tool"] == "ditf-track"
    assert config["files"] == ["00000.png", "00001.png"]
    assert not (tmp_path / "masks.incomplete").exists()


def test_folder_not_written_by_ditf_track_is_never_touched(tmp_path: Path) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("chapter 1")
    for flags in ({"resume": True}, {"overwrite": True}, {}):
        with pytest.raises(OutputError) as err:
            RunDir(out, "track", patterns=("*",), **flags).open()  # type: ignore[arg-type]
        assert "\n" not in str(err.value)
    assert (out / "thesis.tex").read_text() == "chapter 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]


def test_out_that_is_or_holds_an_input_is_refused(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "00000.jpg").write_bytes(b"jpeg")
    mask = tmp_path / "first.png"
    mask.write_bytes(b"png")
    inputs = [("video", frames), ("mask", mask)]
    for out, what in ((frames, "video"), (tmp_path, "video"), (mask, "mask")):
        with pytest.raises(OutputError, match=f"is or holds the {what}"):
            RunDir(out, "track", inputs=inputs, overwrite=True).open()
    assert mask.read_bytes() == b"png"
    # beside or inside the input is fine
    RunDir(tmp_path / "masks", "track", inputs=[("video", frames)]).open().close()


def test_overwrite_deletes_only_the_files_the_previous_run_wrote(tmp_path: Path) -> None:
    out = tmp_path / "masks"
    finished_run(out, {"00000.png": b"old", "00001.png": b"old"})
    (out / "notes.txt").write_text("mine")
    finished_run(out, {"00000.png": b"new"}, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "00000.png").read_bytes() == b"new"
    assert not (out / "00001.png").exists()
    assert json.loads((out / "config.json").read_text())["files"] == ["00000.png"]


def test_second_writer_is_refused_naming_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "masks"
    refusals: list[str] = []

    def second_run(first: RunDir) -> None:
        monkeypatch.setattr(outputs, "after_lock", None)
        with pytest.raises(OutputError) as err:
            RunDir(out, "track", resume=True).open()
        refusals.append(str(err.value))

    monkeypatch.setattr(outputs, "after_lock", second_run)
    run = RunDir(out, "track").open()
    assert refusals == [
        f"another ditf-track run (pid {os.getpid()}) is writing {out}; wait for it to finish "
        "or pick another --out"
    ]
    run.close()
    assert not (tmp_path / "masks.incomplete").exists()  # made by this run, left empty


def test_a_lock_held_elsewhere_refuses_and_a_stale_lock_file_does_not(tmp_path: Path) -> None:
    out = tmp_path / "masks"
    work = tmp_path / "masks.incomplete"
    work.mkdir()
    holder = FileLock(str(work / LOCK_FILE))
    holder.acquire()
    with pytest.raises(OutputError, match="another ditf-track run is writing"):
        RunDir(out, "track", resume=True).open()
    holder.release()
    # a killed run leaves its lock file and owner note; the kernel dropped the lock itself
    (work / LOCK_FILE).touch()
    (work / OWNER_FILE).write_text('{"pid": 1}')
    run = RunDir(out, "track", resume=True).open()
    assert run.held
    run.close()


def test_torn_state_is_one_line(tmp_path: Path) -> None:
    work = tmp_path / "masks.incomplete"
    work.mkdir()
    (work / "run.json").write_bytes(b"")
    with pytest.raises(OutputError) as err:
        RunDir(tmp_path / "masks", "track", resume=True).open()
    assert "torn run state" in str(err.value)
    assert "pass --overwrite" in str(err.value)


def test_fingerprint_mismatch_names_the_changed_input(tmp_path: Path) -> None:
    out = tmp_path / "masks"
    run = RunDir(out, "track").open()
    run.write_state({"fingerprint": {"inputs": {"mask 0": "aaa"}, "radius": 12}})
    run.close()
    again = RunDir(out, "track", resume=True).open()
    again.check_fingerprint({"inputs": {"mask 0": "aaa"}, "radius": 12})
    with pytest.raises(ConfigError, match=r"\(the mask 0 changed\)"):
        again.check_fingerprint({"inputs": {"mask 0": "bbb"}, "radius": 12})
    with pytest.raises(ConfigError, match=r"\(radius: 12 there, 3 now\)"):
        again.check_fingerprint({"inputs": {"mask 0": "aaa"}, "radius": 3})
    again.close()


def test_resume_of_a_finished_run_compares_its_fingerprint(tmp_path: Path) -> None:
    out = tmp_path / "masks"
    finished_run(out, {"00000.png": b"x"})
    run = RunDir(out, "track", resume=True).open()
    assert run.complete
    run.check_fingerprint({"inputs": {"mask": "a"}})
    with pytest.raises(ConfigError, match="the mask changed"):
        run.check_fingerprint({"inputs": {"mask": "b"}})
    run.close()


def test_full_disk_on_the_state_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = RunDir(tmp_path / "masks", "track").open()

    def full(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OutputError, match="No space left on device"):
        run.write_state({"fingerprint": {}})
    monkeypatch.undo()
    assert not (run.work / "run.json").exists()  # no zero-length state is left behind
    run.close()


def test_in_place_overwrite_deletes_only_its_patterns(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    run = RunDir(out, "eval spair", patterns=("pairs.jsonl",), in_place=True).open()
    run.write_state({"fingerprint": {}})
    (out / "pairs.jsonl").write_text("{}\n")
    run.close()
    (out / "notes.txt").write_text("mine")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt", "pairs.jsonl"]
    again = RunDir(out, "eval spair", patterns=("pairs.jsonl",), in_place=True, overwrite=True)
    again.open().close()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]


def test_input_digest_follows_content_not_names(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "00000.jpg").write_bytes(b"frame")
    assert input_digest(a) == input_digest(b)
    (b / "00000.jpg").write_bytes(b"other")
    assert input_digest(a) != input_digest(b)
    assert input_digest(a / "00000.jpg") != input_digest(b / "00000.jpg")


def test_discard_run_deletes_only_what_the_run_writes(tmp_path: Path) -> None:
    """An abandoned run folder: its listed files, its pattern's files, a stale lock, a temporary
    file and its record go, and the folder with them; a file it does not write keeps the folder;
    a folder without a ditf-track record is left alone."""
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "sub" / "a.png").write_bytes(b"a")
    (run / "00000.png").write_bytes(b"0")
    (run / LOCK_FILE).write_text("")
    (run / ".x.tmp123").write_text("")
    (run / "run.json").write_text('{"tool": "ditf-track", "files": ["sub/a.png", "../out.txt"]}')
    (tmp_path / "out.txt").write_text("outside: never")
    assert discard_run(run, ["*.png"])
    assert not run.exists()
    assert (tmp_path / "out.txt").read_text() == "outside: never"

    run.mkdir()
    (run / "00000.png").write_bytes(b"0")
    (run / "notes.txt").write_text("mine")
    (run / "config.json").write_text('{"tool": "ditf-track", "files": []}')
    assert not discard_run(run, ["*.png"])
    assert [p.name for p in run.iterdir()] == ["notes.txt"]

    (run / "config.json").write_text('{"tool": "someone-else"}')
    (run / "00000.png").write_bytes(b"0")
    assert not discard_run(run, ["*.png"])
    assert sorted(p.name for p in run.iterdir()) == ["00000.png", "config.json", "notes.txt"]
    assert discard_run(tmp_path / "missing", ["*.png"])
