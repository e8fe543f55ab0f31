"""ditf_track.batch: the job list (CSV, JSONL, DAVIS layout), its row checks and the worker-memory
bound; the Ray pool itself runs in tests/test_cli_batch.py."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from ditf_track import batch
from ditf_track.errors import ConfigError, InputError


def test_csv_rows_resolve_against_the_jobs_file(tmp_path: Path) -> None:
    jobs = tmp_path / "sub" / "jobs.csv"
    jobs.parent.mkdir()
    jobs.write_text(
        "video,masks,points,out\n"
        "clips/a.mp4,a0.png;12:later/a12.png,,out/a\n"
        "frames/b,b.png,b.csv,/abs/b\n"
    )
    a, b = batch.read_jobs(jobs)
    base = jobs.parent.resolve()
    assert a.video == base / "clips/a.mp4"
    assert a.name == "a"
    assert a.masks == (str(base / "a0.png"), f"12:{base / 'later/a12.png'}")
    assert a.points is None
    assert a.out == base / "out/a"
    assert a.where == "jobs.csv line 2"
    assert (b.name, b.points, b.out, b.where) == (
        "b",
        base / "b.csv",
        Path("/abs/b"),
        "jobs.csv line 3",
    )


def test_jsonl_rows_take_one_mask_or_a_list(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    rows = [
        {"video": "a", "mask": "a.png", "out": "oa"},
        {"video": "b", "masks": ["b.png", "3:b3.png"], "points": "p.csv", "out": "ob"},
    ]
    jobs.write_text("\n".join(map(json.dumps, rows)) + "\n\n")
    a, b = batch.read_jobs(jobs)
    base = tmp_path.resolve()
    assert a.masks == (str(base / "a.png"),)
    assert b.masks == (str(base / "b.png"), f"3:{base / 'b3.png'}")
    assert b.where == "jobs.jsonl line 2"


@pytest.mark.faults
@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("jobs.csv", "clip,mask,out\nx,y,z\n", "has the header 'clip,mask,out'"),
        ("jobs.csv", "video,mask,points,out\n", "names no clip"),
        ("jobs.csv", "video,mask,points,out\na.mp4,a.png,,\n", "jobs.csv line 2 gives no video"),
        ("jobs.jsonl", '{"video": "a", "out": "o"}\n{"video": \n', "jobs.jsonl line 2 is not JSON"),
        ("jobs.jsonl", '{"video": "a", "out": "o", "fps": 3}\n', "line 1 is not an object of"),
    ],
)
def test_bad_jobs_files_are_one_line(tmp_path: Path, name: str, text: str, expected: str) -> None:
    jobs = tmp_path / name
    jobs.write_text(text)
    with pytest.raises(InputError, match=expected) as info:
        batch.read_jobs(jobs)
    assert "\n" not in str(info.value)


def test_davis_clips_from_a_split_file_or_name(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "davis"
    split = tmp_path / "three.txt"
    split.write_text("dog\ncar-shadow\n\ndog\nblackswan\n")
    clips = batch.davis_clips(root, str(split), tmp_path / "out")
    assert [c.name for c in clips] == ["dog", "car-shadow", "blackswan"]  # a repeat runs once
    dog = clips[0]
    assert dog.video == root / "JPEGImages/480p/dog"
    assert dog.masks == (str(root / "Annotations/480p/dog/00000.png"),)
    assert dog.out == tmp_path / "out" / "dog"
    assert dog.where == "sequence dog"
    fake = tmp_path / "davis"
    (fake / "ImageSets" / "2017").mkdir(parents=True)
    (fake / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    assert [c.name for c in batch.davis_clips(fake, "val", tmp_path)] == ["bear"]
    with pytest.raises(InputError, match="--split test-dev is neither a file nor a split"):
        batch.davis_clips(fake, "test-dev", tmp_path)


def test_duplicate_outs_name_the_first_row(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("video,mask,points,out\na,,,o\nb,,,x/../o\nc,,,p\n")
    clips = batch.read_jobs(jobs)
    assert batch.duplicate_outs(clips) == {
        1: f"out {tmp_path.resolve() / 'x/../o'} is also the out of jobs.csv line 2; give each "
        "clip its own out"
    }


@pytest.mark.faults
def test_more_workers_than_memory_are_refused() -> None:
    gb = 1 << 30
    batch.check_worker_memory(2, 18 * gb, 40 * gb)
    batch.check_worker_memory(8, 0, 1)  # unknown need: Ray schedules
    with pytest.raises(ConfigError) as info:
        batch.check_worker_memory(3, 18 * gb, 40 * gb)
    assert str(info.value) == (
        "--workers 3 need 54.0 GB (18.0 GB each, --worker-memory) but the Ray cluster offers "
        "40.0 GB; give --workers 2 or fewer, or add nodes"
    )


@pytest.mark.faults
def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError) as info:
        batch.import_ray()
    assert str(info.value) == (
        "--ray needs Ray, which is not installed: pip install 'ditf-track[ray]'"
    )


@pytest.mark.faults
def test_an_address_nothing_listens_at_fails_in_one_line() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError) as info:
        batch.check_reachable(f"ray://127.0.0.1:{port}")
    assert str(info.value) == (
        f"cannot reach a Ray cluster at --ray ray://127.0.0.1:{port} (Connection refused); "
        "start one with `ray start --head` there, or use --ray local"
    )
    with pytest.raises(ConfigError, match="--ray head-node is not auto, local or an address"):
        batch.check_reachable("head-node")
