"""One long video's features extracted by Ray workers ahead of propagation (`track --ray`):
the hand-over gate, then on a local Ray cluster (2 workers) the same bytes as the in-process run
with lab and a tiny DiT (massive channels fixed on frame 0), a worker that dies mid-chunk, and the
refusals. Torch threads pinned to 1 in every process."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import DOG, DOG_MASK, one_line_error, run, snapshot

from ditf_track.cli._ray import EXIT_AFTER_FRAMES_ENV
from ditf_track.errors import DitfError
from ditf_track.tracker.prefetch import ChunkGate

LAB_ON_DISK = ["--preset", "lab", "--short-side", "64", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the threads of a Ray worker


# -- the gate ------------------------------------------------------------------------------------
def test_the_gate_holds_chunks_beyond_the_lookahead_until_propagation_reads_or_waits() -> None:
    gate = ChunkGate([["a"], ["b"], ["c"], ["d"]], lookahead=1)
    assert gate.admit(0)
    assert gate.admit(1)
    admitted: list[bool] = []
    sender = threading.Thread(target=lambda: admitted.append(gate.admit(2)))
    sender.start()
    time.sleep(0.05)
    assert admitted == []  # chunk 2 is 2 ahead of chunk 0, which propagation reads
    gate.done(0)
    gate.wait("a")  # done: returns at once, propagation still reads chunk 0
    assert admitted == []
    waiter = threading.Thread(target=gate.wait, args=("b",))
    waiter.start()  # propagation reads chunk 1 (not done): chunk 2 may go
    sender.join(5)
    assert admitted == [True]
    gate.done(1)
    waiter.join(5)
    assert not waiter.is_alive()
    gate.fail("frames 3..3 failed")
    with pytest.raises(DitfError, match="frames 3..3 failed"):
        gate.wait("d")
    assert not gate.admit(3)
    gate.wait("elsewhere")  # a key no chunk brings: never waits


# -- on a local Ray cluster (the shared `ray_cluster` fixture) -------------------------------------


def track_args(shared_data: Path, out: Path, cache: Path, end: int) -> list[str]:
    clip, mask = shared_data / DOG, shared_data / DOG_MASK
    return [
        "track",
        str(clip),
        "--mask",
        str(mask),
        "--end",
        str(end),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
    ]


def pngs(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(folder).items() if k.endswith(".png")}


def compare(
    shared_data: Path,
    tmp_path: Path,
    settings: list[str],
    capsys: pytest.CaptureFixture[str],
    end: int,
) -> tuple[str, dict[str, Any]]:
    """The in-process run and the Ray run (each with its own cache): same masks; returns the
    Ray run's stdout and config.json."""
    local = tmp_path / "local"
    code, _, err = run([*track_args(shared_data, local, tmp_path / "c1", end), *settings], capsys)
    assert code == 0, err
    on_ray = tmp_path / "ray"
    ray_args = ["--ray", "local", "--workers", "2"]
    args = [*track_args(shared_data, on_ray, tmp_path / "c2", end), *settings, *ray_args]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    assert len(pngs(on_ray)) == end
    assert pngs(on_ray) == pngs(local)
    config = json.loads((on_ray / "config.json").read_text())
    assert config == {
        **json.loads((local / "config.json").read_text()),
        "config": config["config"],  # runtime.cache_dir
    }
    assert len(list((tmp_path / "c2" / "features").glob("*.safetensors"))) == end
    return stdout, config


@pytest.mark.ray
def test_track_on_ray_workers_gives_the_same_bytes_as_in_process(
    shared_data: Path, tmp_path: Path, ray_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    stdout, config = compare(shared_data, tmp_path, LAB_ON_DISK, capsys, 12)
    lines = stdout.splitlines()
    # frame 0 on the driver, 11 frames in chunks of the batch size by the workers
    assert re.fullmatch(
        r"Ray: 11 frame\(s\) extracted in \d+ chunk\(s\) by 2 worker\(s\), "
        r"0 replaced",
        lines[-2],
    ), stdout
    assert lines[-1].endswith("(features: 12 extracted, 0 from the cache)")
    assert config["features"] == {"extracted": 12}


@pytest.mark.ray
def test_track_on_ray_with_a_tiny_dit_holds_frame_0s_massive_channels(
    shared_data: Path,
    tmp_path: Path,
    tiny_model: Callable[..., Path],
    ray_cluster: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = ["--model", str(tiny_model("flux")), "--family", "flux", "--t", "90", "--k", "3"]
    # a ratio at which the tiny model has massive channels to discard
    settings = ["--short-side", "64", "--quiet", "--discard-ratio", "3", *model]
    _, config = compare(shared_data, tmp_path, settings, capsys, 5)
    # one clip's channels, found on frame 0 by the driver, in every frame's cache key
    metas = list((tmp_path / "c2" / "clips").iterdir())
    assert len(metas) == 1
    assert config["massive_channels"]
    meta = json.loads(metas[0].read_text())["meta"]
    assert config["massive_channels"] == meta["massive_channels"]


@pytest.mark.ray
@pytest.mark.faults
def test_a_worker_that_dies_mid_chunk_is_replaced_and_the_outputs_are_the_same(
    shared_data: Path,
    tmp_path: Path,
    ray_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(EXIT_AFTER_FRAMES_ENV, "5")  # the worker on frame 5 dies once
    stdout, _ = compare(shared_data, tmp_path, LAB_ON_DISK, capsys, 8)
    assert re.search(
        r"^Ray: 7 frame\(s\) extracted .* by [23] worker\(s\), 1 replaced$", stdout, re.M
    ), stdout


@pytest.mark.faults
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--no-disk-cache"],
            "--ray hands the features to the driver through the on-disk feature cache; drop "
            "--no-disk-cache (and give --cache-dir on a file system every node shares)",
        ),
        (
            ["--features", "feats.safetensors"],
            "--features reads precomputed features: there is nothing for --ray workers to "
            "extract; drop --ray",
        ),
    ],
)
def test_track_on_ray_refuses_what_it_cannot_hand_over(
    shared_data: Path,
    tmp_path: Path,
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [*track_args(shared_data, tmp_path / "out", tmp_path / "c", 4), *LAB_ON_DISK, *extra]
    code, _, err = run([*args, "--ray", "local"], capsys)
    assert one_line_error(code, err) == f"ditf-track: error: {message}"
    assert not (tmp_path / "out").exists()


@pytest.mark.faults
def test_track_on_ray_without_ray_is_one_line(
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    args = [*track_args(shared_data, tmp_path / "out", tmp_path / "c", 4), *LAB_ON_DISK]
    code, _, err = run([*args, "--ray", "local"], capsys)
    assert one_line_error(code, err) == (
        "ditf-track: error: --ray needs Ray, which is not installed: pip install 'ditf-track[ray]'"
    )


@pytest.mark.ray
@pytest.mark.faults
def test_a_chunk_whose_worker_keeps_dying_stops_the_run_and_resume_finishes_it(
    shared_data: Path,
    tmp_path: Path,
    ray_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    args = [*track_args(shared_data, out, tmp_path / "c", 8), *LAB_ON_DISK, "--ray", "local"]
    monkeypatch.setenv(EXIT_AFTER_FRAMES_ENV, "5")
    code, _, err = run([*args, "--max-retries", "0"], capsys)
    assert code == 1
    # (Ray itself tells of the death on stderr before the error)
    assert re.fullmatch(
        r"ditf-track: error: the features of frames \d+\.\.\d+ failed: its worker died 1 "
        r"time\(s\) \(the partial output is discarded\); see the Ray logs, then run again",
        err.strip().splitlines()[-1],
    ), err
    assert not out.exists()
    assert (tmp_path / "out.incomplete").is_dir()
    monkeypatch.delenv(EXIT_AFTER_FRAMES_ENV)
    code, stdout, err = run([*args, "--resume"], capsys)
    assert code == 0, err
    assert len(pngs(out)) == 8
    # the frames extracted before the failure come from the cache
    assert re.search(r"\(features: [1-7] extracted, [1-7] from the cache\)$", stdout), stdout
    local = tmp_path / "local"
    code, _, err = run([*track_args(shared_data, local, tmp_path / "c1", 8), *LAB_ON_DISK], capsys)
    assert code == 0, err
    assert pngs(out) == pngs(local)


@pytest.mark.ray
@pytest.mark.faults
def test_a_worker_larger_than_the_cluster_memory_is_refused_before_the_run(
    shared_data: Path, tmp_path: Path, ray_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*track_args(shared_data, tmp_path / "out", tmp_path / "c", 4), *LAB_ON_DISK]
    ray_args = ["--ray", "local", "--worker-memory", "1e6"]
    code, _, err = run([*args, *ray_args], capsys)
    assert re.fullmatch(
        r"ditf-track: error: one worker needs 1000000\.0 GB \(--worker-memory\) but the largest "
        r"node of the Ray cluster offers [\d.]+ GB; lower --worker-memory or add a larger node",
        one_line_error(code, err),
    )
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.incomplete").exists()
