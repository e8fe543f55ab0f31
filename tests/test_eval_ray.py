"""`eval spair|pf-pascal|ap-10k|hpatches|keypoints|tapvid --ray`: the pairs or videos computed
on Ray workers (each with its own matcher or tracker), recorded and scored by the driver in item
order, so the run folder is byte-identical to the in-process run's; a worker that dies is
replaced and its item sent again. Lab preset on tiny fixtures; torch threads pinned to 1 in every
process."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_eval_correspondence
import test_eval_hpatches
import test_eval_runs_points
from cli_helpers import DOG, one_line_error, run, snapshot
from PIL import Image

import ditf_track.backbones.base as backbones_base
from ditf_track.cli._ray import EXIT_AFTER_FRAMES_ENV

spair_root = test_eval_correspondence.spair_root

LAB = ["--preset", "lab", "--long-side", "64"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the threads of a Ray worker


def spair(root: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "spair", "--data", str(root), "--out", str(out), *LAB, *extra]


@pytest.mark.ray
@pytest.mark.faults
def test_eval_spair_on_ray_workers_equals_the_in_process_run_and_survives_worker_deaths(
    spair_root: tuple[Path, list[dict[str, object]]],
    tmp_path: Path,
    ray_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = spair_root
    code, _, err = run(spair(root, tmp_path / "local"), capsys)
    assert code == 0, err
    local = snapshot(tmp_path / "local")
    assert sorted(local) == ["config.json", "metrics.json", "pairs.jsonl", "per_category.csv"]
    ray_args = ["--ray", "local", "--ray-workers", "2"]
    code, stdout, err = run(spair(root, tmp_path / "ray", *ray_args), capsys)
    assert code == 0, err
    assert re.search(r"^Ray: 4 pair\(s\) computed; 2 worker\(s\), 0 replaced$", stdout, re.M)
    assert snapshot(tmp_path / "ray") == local
    # every worker exits on the first attempt at its second pair: pairs 2 and 3 are retried
    monkeypatch.setenv(EXIT_AFTER_FRAMES_ENV, "1")
    code, stdout, err = run(spair(root, tmp_path / "dies", *ray_args), capsys)
    assert code == 0, err
    assert re.search(r"^Ray: 4 pair\(s\) computed; 4 worker\(s\), 2 replaced$", stdout, re.M)
    assert snapshot(tmp_path / "dies") == local
    # with no retries left: one line, the pairs before it recorded, and --resume completes it
    ray_args = ["--ray", "local", "--ray-workers", "1", "--max-retries", "0"]
    code, _, err = run(spair(root, tmp_path / "fails", *ray_args), capsys)
    assert code == 1
    # (Ray itself may log to stderr, e.g. of its metrics agent, before the one line)
    [message] = [line for line in err.splitlines() if line.startswith("ditf-track:")]
    assert re.fullmatch(
        r"ditf-track: error: pair \S+ failed on a Ray worker: its worker died 1 time\(s\) \(the "
        r"partial output is discarded\); see the Ray logs, then run again \(the items before it "
        r"are recorded: run again with --resume\)",
        message,
    ), message
    assert not (tmp_path / "fails" / "metrics.json").exists()
    assert len((tmp_path / "fails" / "pairs.jsonl").read_text().splitlines()) == 1
    monkeypatch.delenv(EXIT_AFTER_FRAMES_ENV)
    code, _, err = run(spair(root, tmp_path / "fails", "--resume", "--ray", "local"), capsys)
    assert code == 0, err
    assert snapshot(tmp_path / "fails") == local


@pytest.mark.ray
@pytest.mark.faults
def test_workers_no_node_can_place_are_refused_in_one_line_before_any_starts(
    spair_root: tuple[Path, list[dict[str, object]]],
    tmp_path: Path,
    ray_cluster: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ray would leave such workers pending for ever: a GPU on a cluster without one, more
    CPU workers than the 2 CPUs of the test cluster's one node."""
    root, _ = spair_root
    started = time.monotonic()
    code, _, err = run(
        spair(root, tmp_path / "gpu", "--ray", "local", "--gpus-per-worker", "1"), capsys
    )
    assert one_line_error(code, err) == (
        "ditf-track: error: --gpus-per-worker 1 but no node of the Ray cluster has a GPU; add a "
        "GPU node (ray start --num-gpus N) or drop --gpus-per-worker"
    )
    code, _, err = run(
        spair(root, tmp_path / "cpus", "--ray", "local", "--ray-workers", "3"), capsys
    )
    assert one_line_error(code, err) == (
        "ditf-track: error: --ray-workers 3 need 1 CPU (--cpus-per-worker) each but the nodes of "
        "the Ray cluster hold 2 such worker(s), each on one node; give --ray-workers 2 or fewer, "
        "or add nodes"
    )
    assert time.monotonic() - started < 60
    # refused before the run folder is opened: the same command with fixed options just runs
    assert not (tmp_path / "gpu").exists()
    assert not (tmp_path / "cpus").exists()


@pytest.mark.faults
def test_eval_pairs_without_ray_is_one_line(
    spair_root: tuple[Path, list[dict[str, object]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = spair_root
    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = run(spair(root, tmp_path / "o", "--ray", "auto"), capsys)
    assert one_line_error(code, err).endswith("pip install 'ditf-track[ray]'")
    assert not (tmp_path / "o").exists()


def jhmdb_videos(shared_data: Path, root: Path, count: int) -> Path:
    """``count`` still 3-frame videos in JHMDB's layout, each with its own joints."""
    import scipy.io

    frame = Image.open(shared_data / DOG / "00000.jpg").resize((160, 120))
    rng = np.random.default_rng(0)
    for name in "abc"[:count]:
        folder = root / "Rename_Images" / "walk" / name
        folder.mkdir(parents=True)
        for k in range(3):
            frame.save(folder / f"{k + 1:05d}.png")
        joints = rng.uniform([20, 20], [140, 100], size=(15, 2))
        mat = root / "joint_positions" / "walk" / name / "joint_positions.mat"
        mat.parent.mkdir(parents=True)
        scipy.io.savemat(mat, {"pos_img": np.repeat((joints.T + 1)[:, :, None], 3, axis=2)})
    return root


@pytest.mark.ray
@pytest.mark.faults
def test_eval_keypoints_on_ray_workers_equals_the_in_process_run_even_when_a_worker_dies(
    shared_data: Path,
    tmp_path: Path,
    ray_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = jhmdb_videos(shared_data, tmp_path / "jhmdb", 3)
    base = ["eval", "keypoints", "--data", str(data), "--preset", "lab", "--short-side", "64"]
    base.append("--no-disk-cache")
    code, _, err = run([*base, "--out", str(tmp_path / "local")], capsys)
    assert code == 0, err
    local = snapshot(tmp_path / "local")
    assert sum(name.endswith(".npz") for name in local) == 3
    monkeypatch.setenv(EXIT_AFTER_FRAMES_ENV, "1")  # the third video is retried
    ray_args = ["--ray", "local", "--ray-workers", "2"]
    code, stdout, err = run([*base, "--out", str(tmp_path / "ray"), *ray_args], capsys)
    assert code == 0, err
    # the retry goes to the other worker when it is idle by then, else to a new one
    assert re.search(r"^Ray: 3 video\(s\) computed; [23] worker\(s\), 1 replaced$", stdout, re.M)
    assert snapshot(tmp_path / "ray") == local  # tracks/*.npz written by the driver too


hpatches_root = test_eval_hpatches.hpatches_root


@pytest.mark.ray
@pytest.mark.filterwarnings("ignore:.*high-resolution:UserWarning")
def test_eval_hpatches_on_ray_workers_equals_the_in_process_run(
    hpatches_root: tuple[Path, dict[str, list[np.ndarray]]],
    tmp_path: Path,
    ray_cluster: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Image 1's features are computed once per sequence per worker: the same bytes."""
    root, _ = hpatches_root
    base = ["eval", "hpatches", "--data", str(root), *LAB, "--limit", "1"]
    code, _, err = run([*base, "--out", str(tmp_path / "local")], capsys)
    assert code == 0, err
    ray_args = ["--ray", "local", "--ray-workers", "2"]
    code, stdout, err = run([*base, "--out", str(tmp_path / "ray"), *ray_args], capsys)
    assert code == 0, err
    assert re.search(r"^Ray: 5 pair\(s\) computed; 2 worker\(s\), 0 replaced$", stdout, re.M)
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")


@pytest.mark.ray
@pytest.mark.faults
def test_eval_tapvid_on_ray_workers_equals_the_in_process_run_even_when_a_worker_dies(
    tmp_path: Path,
    ray_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The videos travel to the workers as the pickle stores them, the tracks come back to the
    driver; two workers write one disk feature cache side by side."""
    data = tmp_path / "tapvid_davis.pkl"
    test_eval_runs_points.tapvid_pickle(data, ("blocks", "other", "third"))
    base = ["eval", "tapvid", "--data", str(data), "--preset", "lab", "--short-side", "128"]
    base += ["--query-mode", "strided"]
    local_args = [*base, "--out", str(tmp_path / "local"), "--cache-dir", str(tmp_path / "c1")]
    code, _, err = run(local_args, capsys)
    assert code == 0, err
    local = snapshot(tmp_path / "local")
    assert sorted(n for n in local if n.endswith(".npz")) == [
        "tracks/blocks.npz",
        "tracks/other.npz",
        "tracks/third.npz",
    ]
    monkeypatch.setenv(EXIT_AFTER_FRAMES_ENV, "1")  # the third video is retried
    ray_args = ["--ray", "local", "--ray-workers", "2", "--cache-dir", str(tmp_path / "c2")]
    code, stdout, err = run([*base, "--out", str(tmp_path / "ray"), *ray_args], capsys)
    assert code == 0, err
    # the retry goes to the other worker when it is idle by then, else to a new one
    assert re.search(r"^Ray: 3 video\(s\) computed; [23] worker\(s\), 1 replaced$", stdout, re.M)
    assert snapshot(tmp_path / "ray") == local  # tracks/*.npz written by the driver
    assert cached_features(tmp_path / "c2") == cached_features(tmp_path / "c1")
    # a re-run with everything done starts no worker
    monkeypatch.delenv(EXIT_AFTER_FRAMES_ENV)
    code, stdout, err = run([*base, "--out", str(tmp_path / "ray"), "--resume", *ray_args], capsys)
    assert code == 0, err
    assert "Ray:" not in stdout
    assert snapshot(tmp_path / "ray") == local


def cached_features(cache: Path) -> dict[str, tuple[dict[str, str], bytes]]:
    """Each feature file's metadata and tensor bytes (the header's key order is the writing
    process's hash order, so the files' bytes are not compared)."""
    from safetensors import safe_open

    found = {}
    for path in sorted((cache / "features").glob("*.safetensors")):
        with safe_open(path, "numpy") as f:
            found[path.name] = (f.metadata(), f.get_tensor("features").tobytes())
    return found


def test_eval_tapvid_without_ray_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "tapvid_davis.pkl"
    test_eval_runs_points.tapvid_pickle(data)
    monkeypatch.setitem(sys.modules, "ray", None)
    args = ["eval", "tapvid", "--data", str(data), "--preset", "lab", "--ray", "auto"]
    code, _, err = run([*args, "--out", str(tmp_path / "o")], capsys)
    assert one_line_error(code, err).endswith("pip install 'ditf-track[ray]'")
    assert not (tmp_path / "o").exists()


@pytest.mark.ray
def test_eval_on_ray_loads_no_model_on_the_driver(
    tmp_path: Path,
    tiny_model: Callable[..., Path],
    ray_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The driver needs the tracker's identity only (run fingerprint, config.json): its DiT is
    planned from the config, never loaded; the workers load theirs. Same folder as in-process."""
    data = tmp_path / "tapvid_davis.pkl"
    test_eval_runs_points.tapvid_pickle(data)
    model = ["--model", str(tiny_model("flux")), "--family", "flux", "--t", "90", "--k", "3"]
    base = ["eval", "tapvid", "--data", str(data), *model, "--short-side", "64"]
    base.append("--no-disk-cache")
    code, _, err = run([*base, "--out", str(tmp_path / "local")], capsys)
    assert code == 0, err

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the driver loaded a model")

    monkeypatch.setattr(backbones_base, "load_truncated_weights", refuse)  # this process only
    ray_args = ["--ray", "local", "--ray-workers", "2"]
    code, stdout, err = run([*base, "--out", str(tmp_path / "ray"), *ray_args], capsys)
    assert code == 0, err
    assert re.search(r"^Ray: 2 video\(s\) computed; 2 worker\(s\), 0 replaced$", stdout, re.M)
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")
