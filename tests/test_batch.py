"""ditf_track.batch: the job list (CSV, JSONL, DAVIS layout), its row checks and the check that
every worker fits on a node; the Ray pool itself runs in tests/test_cli_batch.py."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

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


GB = 1 << 30


def node(cpus: float = 4, gpus: float = 0, memory_gb: float = 10, alive: bool = True) -> dict:
    """One entry of ``ray.nodes()`` (Ray leaves out a resource a node has none of)."""
    resources = {"CPU": cpus, "GPU": gpus, "memory": memory_gb * GB, "node:10.0.0.1": 1.0}
    return {"Alive": alive, "Resources": {k: v for k, v in resources.items() if v}}


def refusal(nodes: list[dict], option: str = "--workers", **pool: Any) -> str | None:
    """The one line :func:`batch.check_nodes_fit` refuses the pool with (None: it fits)."""
    try:
        batch.check_nodes_fit(nodes, batch.WorkerPool(**pool), option)
    except ConfigError as exc:
        return str(exc)
    return None


@pytest.mark.faults
def test_a_worker_is_placed_on_one_node_not_on_the_cluster_memory() -> None:
    two_small = [node(memory_gb=10), node(memory_gb=10)]  # 20 GB in all
    assert refusal(two_small, workers=2, memory_per_worker=18 * GB) == (
        "one worker needs 18.0 GB (--worker-memory) but the largest node of the Ray cluster "
        "offers 10.0 GB; lower --worker-memory or add a larger node"
    )
    assert refusal(two_small, workers=2, memory_per_worker=9 * GB) is None
    # 10 // 4 = 2 per node: 4 fit although 20 GB would hold 5
    assert refusal(two_small, workers=5, memory_per_worker=4 * GB) == (
        "--workers 5 need 4.0 GB (--worker-memory) each but the nodes of the Ray cluster hold "
        "4 such worker(s), each on one node; give --workers 4 or fewer, or add nodes"
    )
    assert refusal(two_small, workers=8, memory_per_worker=0) is None  # unknown need: Ray decides


@pytest.mark.faults
def test_gpu_workers_on_a_cluster_without_gpu_are_refused() -> None:
    assert refusal([node(), node()], workers=1, gpus_per_worker=1) == (
        "--gpus-per-worker 1 but no node of the Ray cluster has a GPU; add a GPU node (ray "
        "start --num-gpus N) or drop --gpus-per-worker"
    )
    assert refusal([node(gpus=1)], workers=1, gpus_per_worker=2) == (
        "one worker needs 2 GPUs (--gpus-per-worker) but the largest node of the Ray cluster "
        "offers 1 GPU; lower --gpus-per-worker or add a larger node"
    )
    # four workers of 0.25 GPU share one GPU exactly; a fifth has none
    assert refusal([node(gpus=1)], workers=4, gpus_per_worker=0.25) is None
    assert refusal([node(gpus=1, cpus=8)], "--ray-workers", workers=5, gpus_per_worker=0.25) == (
        "--ray-workers 5 need 0.25 GPU (--gpus-per-worker) each but the nodes of the Ray "
        "cluster hold 4 such worker(s), each on one node; give --ray-workers 4 or fewer, or add "
        "nodes"
    )


@pytest.mark.faults
def test_cpus_are_counted_per_node() -> None:
    four_cores = [node(cpus=4), node(cpus=4)]
    assert refusal(four_cores, workers=1, cpus_per_worker=8) == (
        "one worker needs 8 CPUs (--cpus-per-worker) but the largest node of the Ray cluster "
        "offers 4 CPUs; lower --cpus-per-worker or add a larger node"
    )
    assert refusal(four_cores, workers=2, cpus_per_worker=3) is None
    assert refusal(four_cores, workers=3, cpus_per_worker=3) == (
        "--workers 3 need 3 CPUs (--cpus-per-worker) each but the nodes of the Ray cluster hold "
        "2 such worker(s), each on one node; give --workers 2 or fewer, or add nodes"
    )


@pytest.mark.faults
def test_mixed_nodes_hold_the_sum_of_their_fewest_resource() -> None:
    nodes = [
        node(cpus=16, gpus=2, memory_gb=50),  # min(16, 2, 2) = 2
        node(cpus=2, gpus=0, memory_gb=10),  # no GPU, too little memory: 0
        node(cpus=8, gpus=4, memory_gb=40),  # min(8, 4, 2) = 2
        node(cpus=64, gpus=8, memory_gb=512, alive=False),  # dead: not counted
    ]
    pool = {"cpus_per_worker": 1, "gpus_per_worker": 1, "memory_per_worker": 20 * GB}
    assert refusal(nodes, workers=4, **pool) is None
    # GPUs alone would hold 6 and CPUs 26: memory (2 + 0 + 2) is the short one
    assert refusal(nodes, workers=5, **pool) == (
        "--workers 5 need 20.0 GB (--worker-memory) each but the nodes of the Ray cluster hold "
        "4 such worker(s), each on one node; give --workers 4 or fewer, or add nodes"
    )
    # with 200 GB on the GPU-less node no resource alone is short: all are named
    nodes[1] = node(cpus=2, gpus=0, memory_gb=200)
    assert refusal(nodes, workers=5, **pool) == (
        "--workers 5 need 1 GPU (--gpus-per-worker), 1 CPU (--cpus-per-worker), 20.0 GB "
        "(--worker-memory) each but the nodes of the Ray cluster hold 4 such worker(s), each on "
        "one node; give --workers 4 or fewer, or add nodes"
    )
    # no resource alone is short: the one node with a GPU has too little memory
    apart = [node(cpus=4, gpus=1, memory_gb=4), node(cpus=4, memory_gb=64)]
    assert refusal(apart, workers=1, **pool) == (
        "one worker needs 1 GPU (--gpus-per-worker), 20.0 GB (--worker-memory) but no node of "
        "the Ray cluster has all of them; add a node that has, or lower --gpus-per-worker or "
        "--worker-memory"
    )
    assert refusal([node(alive=False)], workers=1) == (
        "the Ray cluster has no alive node; start one with `ray start --head`"
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
