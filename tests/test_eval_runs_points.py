"""Point-tracking runners end to end: TAP-Vid on tiny pickles, BADJA on the real dog, JHMDB."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from ditf_track import cli
from ditf_track.cli import _options as cli_options
from ditf_track.eval.keypoints import jhmdb_pck
from ditf_track.eval.runs.points import TAPVID_KEYS, TapVidEvaluation
from ditf_track.eval.tapvid import compute_tapvid_metrics
from ditf_track.lab import LabExtractor
from ditf_track.propagate import PointParams
from ditf_track.tracker import Tracker

CELL = 16


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def block_video(n_frames: int, seed: int, size: int = 256) -> tuple[np.ndarray, int]:
    """Random colour blocks of one token cell, moving one cell right per frame (wrapping)."""
    rng = np.random.default_rng(seed)
    cells = size // CELL
    colours = rng.permutation(
        np.stack(np.meshgrid(*[np.arange(8) * 32 + 16] * 3), -1).reshape(-1, 3)
    )
    base = colours[: cells * cells].reshape(cells, cells, 3).astype(np.uint8)
    base = np.repeat(np.repeat(base, CELL, axis=0), CELL, axis=1)
    return np.stack([np.roll(base, CELL * k, axis=1) for k in range(n_frames)]), cells


def tapvid_pickle(
    path: Path, videos: tuple[str, ...] = ("blocks", "other")
) -> dict[str, dict[str, np.ndarray]]:
    """256x256 videos (two by default); tracks at cell centres moving one cell right a frame."""
    data = {}
    for seed, name in enumerate(videos):
        video, cells = block_video(6, seed)
        rng = np.random.default_rng(seed + 10)
        start = rng.integers(0, [cells, cells - 6], size=(5, 2))  # (row, col), never wrapping
        t = np.arange(6)
        x = (start[:, 1:2] + t) * CELL + (CELL - 1) / 2  # pixel centres of the cells
        y = np.broadcast_to(start[:, :1] * CELL + (CELL - 1) / 2, x.shape)
        points = np.stack([x, y], axis=-1) / 256.0  # (x, y) in [0, 1]
        occluded = np.zeros((5, 6), bool)
        occluded[1, :2] = True  # first visible at frame 2
        occluded[3, 4] = True  # GT says hidden where it is in fact visible
        data[name] = {"video": video, "points": points.astype(np.float32), "occluded": occluded}
    path.write_bytes(pickle.dumps(data))
    return data


@pytest.mark.parametrize("query_mode", ["first", "strided"])
def test_tapvid_runner_on_a_tiny_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], query_mode: str
) -> None:
    data = tapvid_pickle(tmp_path / "tapvid_davis.pkl")
    out = tmp_path / "run"
    args = ["eval", "tapvid", "--data", str(tmp_path / "tapvid_davis.pkl"), "--preset", "lab"]
    args += ["--query-mode", query_mode, "--short-side", "256", "--no-disk-cache"]
    code, stdout, _ = run([*args, "--out", str(out)], capsys)
    assert code == 0, stdout
    assert f"TAP-Vid ({query_mode}): 2 videos" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    # the resume log is the one the docs name and --overwrite owns (it was pairs.jsonl)
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["videos.jsonl"]
    for key in TAPVID_KEYS:
        assert 0 <= metrics[key] <= 1
    # every point is found within one cell (16 px at 256x256) of where it moved to
    assert metrics["pts_within_16"] == 1.0
    rows = (out / "per_video.csv").read_text().splitlines()
    assert rows[0].startswith("video,average_jaccard,average_pts_within_thresh,occlusion_accuracy")
    assert [r.split(",")[0] for r in rows[1:]] == ["blocks", "other"]
    # the stored predictions score as the runner says, against GT computed from the pickle here
    per_video = []
    for name, example in data.items():
        with np.load(out / "tracks" / f"{name}.npz") as npz:
            q, pred, occ = npz["query_points"], npz["tracks"], npz["occluded"]
            np.testing.assert_allclose(npz["gt_tracks"], gt_tracks(example, q), rtol=1e-6)
        if query_mode == "first":
            assert q[:, 0].tolist() == [0, 2, 0, 0, 0]
        result = compute_tapvid_metrics(
            q[None],
            npz_gt_occ(example, q)[None],
            gt_tracks(example, q)[None],
            occ[None],
            pred[None],
            query_mode,
        )
        per_video.append(result["average_jaccard"][0])
    assert metrics["average_jaccard"] == pytest.approx(np.mean(per_video))
    # a resumed run replays every video and recomputes nothing
    tracker = Tracker(LabExtractor(), short_side=256)
    resumed = TapVidEvaluation(
        tmp_path / "tapvid_davis.pkl",
        tracker,
        out,
        query_mode=query_mode,  # type: ignore[arg-type]
        options={"data": str((tmp_path / "tapvid_davis.pkl").resolve())},
        resume=True,
    )
    outcomes = list(resumed)
    assert all(o.resumed for o in outcomes)
    assert tracker.extracted_frames == 0
    assert resumed.finish()["average_jaccard"] == pytest.approx(metrics["average_jaccard"])


def npz_gt_occ(example: dict[str, np.ndarray], q: np.ndarray) -> np.ndarray:
    return example["occluded"][_tracks_of(example, q)]


def gt_tracks(example: dict[str, np.ndarray], q: np.ndarray) -> np.ndarray:
    return example["points"][_tracks_of(example, q)] * 256.0


def _tracks_of(example: dict[str, np.ndarray], q: np.ndarray) -> np.ndarray:
    """Which track each query came from, found from its position (tracks never cross here)."""
    points = example["points"] * 256.0
    t = q[:, 0].astype(int)
    yx = points[:, t][:, :, ::-1]  # (N, Q, 2) (y, x) of every track at each query's frame
    return np.argmin(np.abs(yx - q[None, :, 1:]).sum(-1), axis=0)


@pytest.mark.slow
def test_keypoints_runner_on_badja_dog(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    davis = shared_data / "davis"
    args = ["eval", "keypoints", "--data", str(shared_data / "points/badja/dog.json")]
    args += ["--frames", str(davis / "JPEGImages/480p/dog")]
    args += ["--masks", str(davis / "Annotations/480p/dog")]
    args += [
        "--preset",
        "lab",
        "--short-side",
        "480",
        "--no-disk-cache",
        "--out",
        str(tmp_path / "b"),
    ]
    code, stdout, _ = run(args, capsys)
    assert code == 0
    assert "badja (query points): 1 videos, 17 queried keypoints" in stdout
    metrics = json.loads((tmp_path / "b/metrics.json").read_text())
    # the same tracks as tests/test_tracker.py's lab run: 17 of 174 joints
    assert metrics["PCK@0.2"] == pytest.approx(12 / 174)  # as test_tracker measures with lab
    assert metrics["num_videos"] == 1
    # the TAP-Vid protocol's whole-frame search, not track's window (PointParams.motion)
    recorded = json.loads((tmp_path / "b/config.json").read_text())["tracker"]["point_params"]
    assert (recorded["radius"], recorded["redetect"]) == (None, None)
    with np.load(tmp_path / "b/tracks/dog.npz") as npz:
        assert npz["tracks"].shape == (53, 17, 2)  # frames 00003 … 00055
        assert npz["annotated_frames"].tolist() == [3, 8, 13, 18, 19, 24, 29, 34, 40, 45, 50, 55]
    code, stdout, _ = run([*args, "--resume"], capsys)
    assert code == 0
    assert "resuming: 1 of 1 videos already done" in stdout
    code, _, err = run([*args[:4], "--preset", "lab", "--out", str(tmp_path / "c")], capsys)
    assert code == 1
    assert "BADJA needs --frames and --masks" in err


def test_point_runners_keep_the_whole_frame_search(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """eval tapvid and eval keypoints search every frame whole (the benchmark protocols), unlike
    track; a re-detection needs the window it falls back from."""
    parser = cli.build_parser()
    badja = ["--data", str(shared_data / "points/badja/dog.json")]
    badja += ["--frames", str(shared_data / "davis/JPEGImages/480p/dog")]
    badja += ["--masks", str(shared_data / "davis/Annotations/480p/dog")]
    for command in (["eval", "tapvid", "--data", "x.pkl"], ["eval", "keypoints", *badja]):
        args = parser.parse_args([*command, "--out", str(tmp_path / "o")])
        assert cli_options.tracker_config(args, "query").point_params == PointParams()
        args = parser.parse_args([*command, "--out", str(tmp_path / "o"), "--point-window", "3"])
        assert cli_options.tracker_config(args, "query").point_params == PointParams(radius=3)
    lab = ["--preset", "lab", "--no-disk-cache", "--out", str(tmp_path / "r")]
    code, _, err = run(["eval", "keypoints", *badja, *lab, "--redetect", "0.5"], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        "ditf-track: error: --redetect 0.5 needs --point-window CELLS: without a window every "
        "frame is searched whole"
    ]


def test_keypoints_runner_on_a_jhmdb_layout(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two still videos in JHMDB's layout, tracked with heat maps."""
    frame = np.asarray(
        Image.open(shared_data / "davis/JPEGImages/480p/dog/00000.jpg").resize((320, 240))
    )
    rng = np.random.default_rng(0)
    for name in ("pour/a", "walk/b"):
        folder = tmp_path / "jhmdb/Rename_Images" / name
        folder.mkdir(parents=True)
        for k in range(4):
            Image.fromarray(frame).save(folder / f"{k + 1:05d}.png")
        joints = rng.uniform([30, 30], [290, 210], size=(15, 2))  # (x, y) 0-based
        pos_img = np.repeat((joints.T + 1)[:, :, None], 4, axis=2)  # 1-based, (2, 15, T)
        mat = tmp_path / "jhmdb/joint_positions" / name / "joint_positions.mat"
        mat.parent.mkdir(parents=True)
        scipy.io.savemat(mat, {"pos_img": pos_img})
    out = tmp_path / "j"
    args = ["eval", "keypoints", "--data", str(tmp_path / "jhmdb"), "--preset", "lab"]
    args += ["--short-side", "240", "--no-disk-cache", "--out", str(out)]
    code, stdout, err = run(args, capsys)
    assert code == 0
    assert "\r" not in err  # no progress bar when stderr is not a terminal (a log file)
    assert "jhmdb (heatmap points): 2 videos, 30 queried keypoints" in stdout
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["videos.jsonl"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"PCK@0.1", "PCK@0.2"}
    preds, gts = [], []
    for name in ("pour__a", "walk__b"):
        with np.load(out / "tracks" / f"{name}.npz") as npz:
            preds.append(npz["tracks"])
    for name in ("pour/a", "walk/b"):
        pos = scipy.io.loadmat(tmp_path / "jhmdb/joint_positions" / name / "joint_positions.mat")
        gts.append(np.transpose(pos["pos_img"][::-1], (2, 1, 0)) - 1.0)
    assert metrics["PCK@0.1"] == pytest.approx(jhmdb_pck(preds, gts)["PCK@0.1"])
    # frame 0 holds the queries; in a still video the heat maps of lab colour features spread
    # over look-alike cells but mostly stay (measured PCK@0.2 0.800 over frames 1-3 with the
    # (L+100, a, b) lab features; standing still would score 1.0)
    for pred, gt in zip(preds, gts):
        np.testing.assert_allclose(pred[0], gt[0])
    assert metrics["PCK@0.2"] >= 0.75
