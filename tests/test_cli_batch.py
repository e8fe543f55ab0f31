"""`ditf-track batch`: many clips as `track` runs with the model loaded once, in-process and on a
local Ray cluster (2 workers); byte-identical to `track` per clip; its faults (bad rows, a driver
stopped after a clip, a worker that dies mid-clip, Ray missing). Clips: the first 6 frames of 3
shared DAVIS sequences with the lab preset; torch threads pinned to 1 in every process."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import LAB, clip, no_model, one_line_error, run, snapshot
from PIL import Image

from ditf_track import extractor as extractor_module
from ditf_track.cli import batch as cli_batch
from ditf_track.cli import track as cli_track
from ditf_track.cli._ray import EXIT_AFTER_FRAMES_ENV

__all__ = ["clip", "no_model"]  # fixtures taken from cli_helpers

SEQUENCES = ("dog", "car-shadow", "blackswan")
SETTINGS = [*LAB, "--end", "6"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the threads of a Ray worker


def write_jobs(shared_data: Path, folder: Path, out: str = "out") -> Path:
    """A CSV of the 3 clips (absolute inputs, outs relative to the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    davis = shared_data / "davis"
    lines = ["video,mask,points,out"]
    for seq in SEQUENCES:
        frames = davis / "JPEGImages/480p" / seq
        mask = davis / "Annotations/480p" / seq / "00000.png"
        lines.append(f"{frames},{mask},,{out}/{seq}")
    jobs = folder / "jobs.csv"
    jobs.write_text("\n".join(lines) + "\n")
    return jobs


@pytest.fixture(scope="module")
def reference(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`ditf-track track` run on each clip alone: the outputs batch must reproduce."""
    from ditf_track import cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("track")
    davis = shared_data / "davis"
    try:
        for seq in SEQUENCES:
            frames = davis / "JPEGImages/480p" / seq
            mask = davis / "Annotations/480p" / seq / "00000.png"
            args = ["track", str(frames), "--mask", str(mask), "--out", str(root / seq)]
            assert cli.main([*args, *SETTINGS]) == 0
    finally:
        torch.set_num_threads(threads)
    return {seq: snapshot(root / seq) for seq in SEQUENCES}


def outputs(folder: Path) -> dict[str, Any]:
    return {seq: snapshot(folder / seq) for seq in SEQUENCES}


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many extractors are built and how many clips are propagated."""
    calls = {"extractors": 0, "clips": 0}
    build, run_clip = extractor_module.build_extractor, cli_track.run

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        calls["extractors"] += 1
        return build(*args, **kwargs)

    def counting_run(*args: Any, **kwargs: Any) -> Any:
        calls["clips"] += 1
        return run_clip(*args, **kwargs)

    monkeypatch.setattr(extractor_module, "build_extractor", counting_build)
    monkeypatch.setattr(cli_track, "run", counting_run)
    return calls


# -- in-process ----------------------------------------------------------------------------------
def test_batch_of_a_davis_root_equals_track_per_clip_and_loads_the_model_once(
    shared_data: Path,
    tmp_path: Path,
    reference: dict[str, Any],
    counted: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    split = tmp_path / "three.txt"
    split.write_text("\n".join(SEQUENCES) + "\n")
    out = tmp_path / "out"
    args = ["batch", str(shared_data / "davis"), "--split", str(split), "--out", str(out)]
    code, stdout, err = run([*args, *SETTINGS], capsys)
    assert code == 0, err
    assert stdout.strip() == "batch: 3 clip(s) computed, 0 already complete, 0 failed"
    assert outputs(out) == reference
    assert counted == {"extractors": 1, "clips": 3}
    code, stdout, _ = run([*args, *SETTINGS], capsys)
    assert code == 0
    assert stdout.strip() == "batch: 0 clip(s) computed, 3 already complete, 0 failed"
    assert counted["clips"] == 3


@pytest.mark.faults
def test_a_rerun_after_the_driver_stopped_does_only_what_is_missing(
    shared_data: Path,
    tmp_path: Path,
    reference: dict[str, Any],
    counted: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = write_jobs(shared_data, tmp_path)

    def stop(_clip: Any) -> None:
        raise KeyboardInterrupt  # the driver killed right after its first clip

    monkeypatch.setattr(cli_batch, "after_clip", stop)
    code, _, err = run(["batch", str(jobs), *SETTINGS], capsys)
    assert code == 130, err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["dog"]  # nothing else looks complete
    monkeypatch.setattr(cli_batch, "after_clip", None)
    code, stdout, err = run(["batch", str(jobs), *SETTINGS], capsys)
    assert code == 0, err
    assert stdout.strip() == "batch: 2 clip(s) computed, 1 already complete, 0 failed"
    assert counted["clips"] == 3  # 1 before the stop, the 2 missing after it
    assert outputs(out) == reference
    # other settings: the finished clips are not taken as done
    code, _, err = run(["batch", str(jobs), *LAB, "--end", "5"], capsys)
    assert code == 1
    assert "out/dog holds a run with other settings or inputs (settings.end: 6 there, 5 now)" in err


@pytest.mark.faults
def test_bad_rows_are_one_line_each_and_the_good_ones_run(
    shared_data: Path,
    tmp_path: Path,
    clip: tuple[Path, Path],
    reference: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    frames, mask = clip
    dog = shared_data / "davis/JPEGImages/480p/dog"
    dog_mask = shared_data / "davis/Annotations/480p/dog/00000.png"
    small = tmp_path / "small.png"
    Image.fromarray(np.ones((10, 12), np.uint8)).save(small)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(
        "video,mask,points,out\n"
        f"{dog},{dog_mask},,out/dog\n"
        f"missing,{dog_mask},,out/missing\n"
        f"{dog},{small},,out/small\n"
        f"{frames},{mask},,{frames}\n"
        f"{dog},{dog_mask},,out/dog\n"
    )
    before = snapshot(frames)
    code, stdout, err = run(["batch", str(jobs), *SETTINGS], capsys)
    assert code == 1
    assert err.splitlines() == [
        f"ditf-track: error: jobs.csv line 3: video {tmp_path}/missing does not exist; check "
        "the path",
        f"ditf-track: error: jobs.csv line 4: {small} is 12x10 but the video frames are 854x480; "
        "give a mask of the frame size",
        f"ditf-track: error: jobs.csv line 5: --out {frames} is or holds the video {frames}; "
        "writing there could destroy it: pick another --out",
        f"ditf-track: error: jobs.csv line 6: out {tmp_path}/out/dog is also the out of jobs.csv "
        "line 2; give each clip its own out",
        "ditf-track: error: 4 of 5 clips failed (jobs.csv line 3, jobs.csv line 4, jobs.csv "
        "line 5, jobs.csv line 6); fix them and run batch again: finished clips are skipped",
    ]
    assert stdout.strip() == "batch: 1 clip(s) computed, 0 already complete, 4 failed"
    assert snapshot(tmp_path / "out/dog") == reference["dog"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dog"]
    assert snapshot(frames) == before


@pytest.mark.faults
def test_rows_are_checked_before_any_model_loads(
    tmp_path: Path, no_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("video,mask,points,out\nmissing,m.png,,o\n")
    code, _, err = run(["batch", str(jobs), *SETTINGS], capsys)
    assert code == 1
    assert len(err.splitlines()) == 2, err
    assert not (tmp_path / "o").exists()


@pytest.mark.faults
def test_without_ray_the_option_is_one_line_and_in_process_works(
    shared_data: Path,
    tmp_path: Path,
    reference: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    jobs = write_jobs(shared_data, tmp_path)
    code, _, err = run(["batch", str(jobs), "--ray", "local", *SETTINGS], capsys)
    line = one_line_error(code, err)
    assert line == (
        "ditf-track: error: --ray needs Ray, which is not installed: pip install 'ditf-track[ray]'"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.csv"]
    code, _, err = run(["batch", str(jobs), *SETTINGS], capsys)
    assert code == 0, err
    assert outputs(tmp_path / "out") == reference


# -- on a local Ray cluster (the shared `ray_cluster` fixture) -------------------------------------


def staging_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.ray
def test_ray_workers_give_the_same_bytes_as_track(
    shared_data: Path,
    tmp_path: Path,
    reference: dict[str, Any],
    ray_cluster: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = write_jobs(shared_data, tmp_path)
    code, stdout, err = run(["batch", str(jobs), "--ray", "local", *SETTINGS], capsys)
    assert code == 0, err
    assert stdout.strip() == (
        "batch: 3 clip(s) computed, 0 already complete, 0 failed; 2 worker(s), 0 replaced"
    )
    assert outputs(tmp_path / "out") == reference
    assert staging_left(tmp_path / "out") == []
    code, stdout, err = run(["batch", str(jobs), "--ray", "local", *SETTINGS], capsys)
    assert code == 0, err
    # nothing to do: no worker started, no model loaded
    assert stdout.splitlines()[-1] == (
        "batch: 0 clip(s) computed, 3 already complete, 0 failed; 0 worker(s), 0 replaced"
    )


@pytest.mark.ray
@pytest.mark.faults
def test_a_worker_that_dies_mid_clip_is_replaced_and_the_clip_retried(
    shared_data: Path,
    tmp_path: Path,
    reference: dict[str, Any],
    ray_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(EXIT_AFTER_FRAMES_ENV, "3")  # every clip's first worker dies
    jobs = write_jobs(shared_data, tmp_path)
    code, stdout, err = run(["batch", str(jobs), "--ray", "local", *SETTINGS], capsys)
    assert code == 0, err
    # (Ray itself tells of each death, on stdout and stderr, before the summary)
    # 2 workers, 3 deaths: 3 or 2 replacements started (a retry may find a worker idle)
    assert re.fullmatch(
        r"batch: 3 clip\(s\) computed, 0 already complete, 0 failed; [45] worker\(s\), 3 replaced",
        stdout.splitlines()[-1],
    )
    assert outputs(tmp_path / "out") == reference
    assert staging_left(tmp_path / "out") == []


@pytest.mark.ray
@pytest.mark.faults
def test_a_clip_whose_workers_keep_dying_fails_and_leaves_nothing(
    shared_data: Path,
    tmp_path: Path,
    ray_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(EXIT_AFTER_FRAMES_ENV, "2")
    jobs = write_jobs(shared_data, tmp_path)
    args = ["batch", str(jobs), "--ray", "local", "--max-retries", "0", *SETTINGS]
    code, _, err = run(args, capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("ditf-track:")]
    assert sorted(lines[:3]) == [
        f"ditf-track: error: jobs.csv line {n}: its worker died 1 time(s) (the partial output "
        "is discarded); see the Ray logs, then run again"
        for n in (2, 3, 4)
    ]
    assert lines[3].startswith("ditf-track: error: 3 of 3 clips failed (jobs.csv line 2")
    assert list((tmp_path / "out").iterdir()) == []  # no OUT, no OUT.incomplete, no staging


@pytest.mark.ray
@pytest.mark.faults
def test_more_cpu_workers_than_memory_holds_are_refused(
    shared_data: Path,
    tmp_path: Path,
    ray_cluster: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = write_jobs(shared_data, tmp_path)
    args = ["batch", str(jobs), "--ray", "local", "--workers", "3", "--worker-memory", "1e6"]
    code, _, err = run([*args, *SETTINGS], capsys)
    line = one_line_error(code, err)
    assert line.startswith("ditf-track: error: one worker needs 1000000.0 GB (--worker-memory) but")
    assert line.endswith("GB; lower --worker-memory or add a larger node")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.csv"]


# -- eval davis --data --ray ----------------------------------------------------------------------
DAVIS_SEQUENCES = ("car-shadow", "bmx-trees", "motocross-jump")  # 40 frames each


@pytest.mark.ray
@pytest.mark.faults
def test_eval_davis_on_ray_workers_equals_the_in_process_run_even_when_a_worker_dies(
    shared_data: Path,
    tmp_path: Path,
    ray_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    split = tmp_path / "three.txt"
    split.write_text("\n".join(DAVIS_SEQUENCES) + "\n")
    base = ["eval", "davis", "--data", str(shared_data / "davis"), "--split", str(split)]
    settings = ["--preset", "lab", "--short-side", "64", "--no-disk-cache", "--workers", "1"]
    code, _, err = run([*base, "--out", str(tmp_path / "local"), *settings], capsys)
    assert code == 0, err
    monkeypatch.setenv(EXIT_AFTER_FRAMES_ENV, "5")  # each sequence's first worker dies
    ray_args = ["--ray", "local", "--ray-workers", "2"]
    code, stdout, err = run([*base, "--out", str(tmp_path / "ray"), *settings, *ray_args], capsys)
    assert code == 0, err
    assert re.search(
        r"^Ray: 3 sequence\(s\) propagated; [45] worker\(s\), 3 replaced$", stdout, re.M
    )
    local, on_ray = snapshot(tmp_path / "local"), snapshot(tmp_path / "ray")
    assert sorted(local) == sorted(on_ray)
    assert len([name for name in local if name.endswith(".png")]) == 120
    assert on_ray == local  # masks, run.json of each sequence, config.json, metrics and CSVs


@pytest.mark.faults
def test_eval_davis_without_ray_is_one_line(
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    args = ["eval", "davis", "--data", str(shared_data / "davis"), "--out", str(tmp_path / "o")]
    code, _, err = run([*args, "--preset", "lab", "--ray", "auto"], capsys)
    assert one_line_error(code, err).endswith("pip install 'ditf-track[ray]'")
    assert not (tmp_path / "o").exists()


@pytest.mark.faults
def test_remove_staging_deletes_only_ditf_track_run_folders(tmp_path: Path) -> None:
    """A folder named like a clip's staging folder that is not a ditf-track run (a user's)
    is left as it is; a staging run folder and an empty one are removed."""
    staged = cli_batch.staging_path(tmp_path / "out")
    assert staged == tmp_path / ".out.staging"
    staged.mkdir()
    (staged / "notes.txt").write_text("mine")
    (staged / "config.json").write_text('{"tool": "someone-else"}')
    incomplete = staged.with_name(f"{staged.name}.incomplete")
    incomplete.mkdir()  # empty: nothing of anyone's to lose
    cli_batch.remove_staging(staged)
    assert sorted(p.name for p in staged.iterdir()) == ["config.json", "notes.txt"]
    assert not incomplete.exists()
    (staged / "notes.txt").unlink()
    (staged / "config.json").write_text('{"tool": "ditf-track", "files": []}')
    (staged / "00000.png").write_bytes(b"png")
    cli_batch.remove_staging(staged)
    assert not staged.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    # a staging run folder the user put a file in: the run's files go, theirs stays
    staged.mkdir()
    (staged / "config.json").write_text('{"tool": "ditf-track", "files": ["00000.png"]}')
    (staged / "00000.png").write_bytes(b"png")
    (staged / "00001.png").write_bytes(b"png")  # a frame written before the worker died
    (staged / "mine.txt").write_text("mine")
    cli_batch.remove_staging(staged)
    assert [p.name for p in staged.iterdir()] == ["mine.txt"]
