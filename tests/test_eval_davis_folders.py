"""DAVIS folders of PNGs scored (eval/davis_folders.py): the official tool's numbers on real data,
the process pool, the CSV/JSON files, the CLI and the errors.

The OFFICIAL_* constants were produced by the official davisvideochallenge/davis2017-evaluation at
commit ac7c43fca936f9722837b7fbd337d284ba37004b (``DAVISEvaluation(task="semi-supervised")
.evaluate`` for the per-object numbers, ``evaluation_method.py`` for the CSV text), run from a
checkout outside this repository by ``PYTHONPATH=. python benchmarks/eval_davis.py --record``. For
the binary case the official tool was given the same masks as ids {0, 1} (ground truth > 0,
prediction > 0), since it reads palette ids only. The official tool is not needed to run these
tests.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditf_track.errors import InputError, OutputError
from ditf_track.eval.davis import (
    METRIC_KEYS,
    DavisResult,
    evaluate_sequence,
)
from ditf_track.eval.davis_folders import (
    evaluate_davis,
    read_label_png,
    write_davis_csvs,
    write_davis_json,
)
from ditf_track.progress import ProgressEvent
from ditf_track.testing.davis import save_palette_png, write_multi_object_case

STATS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")

# Official numbers: the five shared OSVOS clips against their DAVIS-2016 ground truth.
OFFICIAL_BINARY = {
    "blackswan_1": {
        "J-Mean": 0.9430200107249278,
        "J-Recall": 1.0,
        "J-Decay": 0.0014083923122019115,
        "F-Mean": 0.9740964785153858,
        "F-Recall": 1.0,
        "F-Decay": -0.00041640925587305144,
    },
    "bmx-trees_1": {
        "J-Mean": 0.6228896186983836,
        "J-Recall": 0.8157894736842105,
        "J-Decay": 0.16859916313621182,
        "F-Mean": 0.8347227265157163,
        "F-Recall": 1.0,
        "F-Decay": 0.030703915806629678,
    },
    "car-shadow_1": {
        "J-Mean": 0.9284015952829885,
        "J-Recall": 1.0,
        "J-Decay": 0.11028022983041497,
        "F-Mean": 0.9174071827386898,
        "F-Recall": 1.0,
        "F-Decay": 0.1697486757837553,
    },
    "dog_1": {
        "J-Mean": 0.7107922794984851,
        "J-Recall": 0.7241379310344828,
        "J-Decay": 0.1481500201345477,
        "F-Mean": 0.6911087718213588,
        "F-Recall": 0.7931034482758621,
        "F-Decay": 0.1314403978227967,
    },
    "motocross-jump_1": {
        "J-Mean": 0.8155920551613985,
        "J-Recall": 1.0,
        "J-Decay": 0.004324980574219595,
        "F-Mean": 0.620658109602114,
        "F-Recall": 0.8157894736842105,
        "F-Decay": 0.052316231108353595,
    },
}
OFFICIAL_BINARY_CSV = (
    "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
    "0.806,0.804,0.908,0.087,0.808,0.922,0.077\n",
    "Sequence,J-Mean,F-Mean\nblackswan_1,0.943,0.974\nbmx-trees_1,0.623,0.835\n"
    "car-shadow_1,0.928,0.917\ndog_1,0.711,0.691\nmotocross-jump_1,0.816,0.621\n",
)
# Official numbers: the two-object palette case of ditf_track/testing/davis.py.
OFFICIAL_MULTI = {
    "bmx-trees_1": {
        "J-Mean": 0.5806191794531932,
        "J-Recall": 0.8421052631578947,
        "J-Decay": 0.07132463182084581,
        "F-Mean": 0.9796088410255483,
        "F-Recall": 1.0,
        "F-Decay": 0.002702639127981854,
    },
    "bmx-trees_2": {
        "J-Mean": 0.0,
        "J-Recall": 0.0,
        "J-Decay": 0.0,
        "F-Mean": 0.0,
        "F-Recall": 0.0,
        "F-Decay": 0.0,
    },
    "motocross-jump_1": {
        "J-Mean": 0.7836763631292617,
        "J-Recall": 0.9473684210526315,
        "J-Decay": 0.002304529865467697,
        "F-Mean": 0.9702328613057813,
        "F-Recall": 1.0,
        "F-Decay": -0.0029311678630887794,
    },
    "motocross-jump_2": {
        "J-Mean": 0.7834484429473342,
        "J-Recall": 0.868421052631579,
        "J-Decay": 0.12704665595718423,
        "F-Mean": 0.8646950261775097,
        "F-Recall": 0.868421052631579,
        "F-Decay": 0.09753074946578322,
    },
}
OFFICIAL_MULTI_CSV = (
    "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
    "0.620,0.537,0.664,0.050,0.704,0.717,0.024\n",
    "Sequence,J-Mean,F-Mean\nbmx-trees_1,0.581,0.980\nbmx-trees_2,0.000,0.000\n"
    "motocross-jump_1,0.784,0.970\nmotocross-jump_2,0.783,0.865\n",
)
EXACT = 1e-12


def official_global(objects: dict[str, dict[str, float]]) -> dict[str, float]:
    """evaluation_method.py's global row: np.mean of the per-object lists."""
    out = {k: float(np.mean([o[k] for o in objects.values()])) for k in STATS}
    return {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2.0, **out}


def _assert_objects(result: DavisResult, expected: dict[str, dict[str, float]]) -> None:
    got = dict(result.object_statistics())
    assert list(got) == list(expected)
    for name, stats in expected.items():
        for key, value in stats.items():
            assert got[name][key] == pytest.approx(value, abs=EXACT), (name, key)


# ----------------------------------------------------------------------------- official numbers


@pytest.fixture(scope="module")
def osvos_binary(shared_data: Path) -> DavisResult:
    davis = shared_data / "davis"
    return evaluate_davis(
        davis / "Predictions" / "osvos" / "480p", davis / "Annotations" / "480p", workers=1
    )


def test_osvos_binary_matches_official(osvos_binary: DavisResult) -> None:
    assert osvos_binary.mode == "binary"  # picked from the {0, 255} ground truth
    _assert_objects(osvos_binary, OFFICIAL_BINARY)
    expected = official_global(OFFICIAL_BINARY)
    got = osvos_binary.metrics()
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(expected[key], abs=EXACT), key


def test_osvos_binary_csv_equals_official(osvos_binary: DavisResult, tmp_path: Path) -> None:
    global_csv, per_seq_csv = write_davis_csvs(osvos_binary, tmp_path)
    assert global_csv.name == "global_results-val.csv"
    assert per_seq_csv.name == "per-sequence_results-val.csv"
    assert (global_csv.read_text(), per_seq_csv.read_text()) == OFFICIAL_BINARY_CSV


@pytest.mark.faults
def test_davis_files_written_atomically_with_the_usual_permissions(
    osvos_binary: DavisResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The package's one atomic write: umask permissions (not mkstemp's 0600), nothing left
    behind, and a failed rename a one-line OutputError that leaves the old file."""
    out = tmp_path / "scores"
    old_umask = os.umask(0o022)
    try:
        written = [
            *write_davis_csvs(osvos_binary, out),
            write_davis_json(osvos_binary, out / "m.json"),
        ]
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}

    def full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ditf_track._atomic.os.replace", full)
    before = written[2].read_bytes()
    with pytest.raises(OutputError, match=r"cannot write DAVIS metrics .*m\.json.*No space"):
        write_davis_json(osvos_binary, out / "m.json")
    assert written[2].read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)


@pytest.fixture(scope="module")
def multi_case(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_multi_object_case(shared_data / "davis", tmp_path_factory.mktemp("multi"))


def test_multi_object_matches_official(multi_case: tuple[Path, Path], tmp_path: Path) -> None:
    pred, gt = multi_case
    events: list[ProgressEvent] = []
    result = evaluate_davis(pred, gt, workers=1, progress=events.append)
    names = [s.name for s in result.sequences]
    assert events == [ProgressEvent("score", i + 1, len(names), n) for i, n in enumerate(names)]
    assert result.mode == "multi"
    _assert_objects(result, OFFICIAL_MULTI)
    paths = write_davis_csvs(result, tmp_path)
    assert (paths[0].read_text(), paths[1].read_text()) == OFFICIAL_MULTI_CSV


def test_process_pool_gives_the_same_numbers(multi_case: tuple[Path, Path]) -> None:
    pred, gt = multi_case
    one = evaluate_davis(pred, gt, workers=1)
    two = evaluate_davis(pred, gt, workers=2)
    for a, b in zip(one.sequences, two.sequences):
        assert a.frames == b.frames
        assert np.array_equal(a.j, b.j)
        assert np.array_equal(a.f, b.f)


def test_in_memory_sequence_equals_files(multi_case: tuple[Path, Path]) -> None:
    pred_root, gt_root = multi_case
    names = sorted(p.stem for p in (gt_root / "motocross-jump").glob("*.png"))
    gt = np.stack([read_label_png(gt_root / "motocross-jump" / f"{n}.png") for n in names])
    pred = np.stack([read_label_png(pred_root / "motocross-jump" / f"{n}.png") for n in names])
    in_memory = evaluate_sequence(pred, gt, name="motocross-jump", frame_names=names)
    from_files = evaluate_davis(pred_root, gt_root, sequences=["motocross-jump"], workers=1)
    assert in_memory.frames == from_files.sequences[0].frames
    assert np.array_equal(in_memory.j, from_files.sequences[0].j)
    assert np.array_equal(in_memory.f, from_files.sequences[0].f)


def test_read_label_png_equals_pil_values(shared_data: Path, tmp_path: Path) -> None:
    davis = shared_data / "davis"
    pngs = sorted((davis / "Annotations" / "480p" / "dog").glob("*.png"))[:5]
    pngs += sorted((davis / "Predictions" / "osvos" / "480p" / "bmx-trees").glob("*.png"))[:5]
    odd = np.arange(7 * 13, dtype=np.uint8).reshape(7, 13)
    save_palette_png(odd, tmp_path / "odd.png")
    Image.fromarray(odd > 40).save(tmp_path / "bits.png")  # mode "1"
    for png in [*pngs, tmp_path / "odd.png", tmp_path / "bits.png"]:
        with Image.open(png) as image:
            expected = np.asarray(image).astype(np.uint8)
        got = read_label_png(png)
        assert got.dtype == np.uint8
        assert np.array_equal(got, expected), png
    assert np.array_equal(read_label_png(tmp_path / "odd.png"), odd)


# ----------------------------------------------------------------------------- CLI


# ----------------------------------------------------------------------------- errors


def _write_sequence(root: Path, name: str, frames: list[np.ndarray]) -> Path:
    for t, labels in enumerate(frames):
        save_palette_png(labels, root / name / f"{t:05d}.png")
    return root


def tiny_case(tmp_path: Path, n_frames: int = 5) -> tuple[Path, Path]:
    gt_frame = np.zeros((12, 16), dtype=np.uint8)
    gt_frame[3:8, 4:10] = 1
    gt = _write_sequence(tmp_path / "gt", "seq", [gt_frame] * n_frames)
    pred = _write_sequence(tmp_path / "pred", "seq", [gt_frame] * n_frames)
    return pred, gt


def test_tiny_case_scores_one(tmp_path: Path) -> None:
    pred, gt = tiny_case(tmp_path)
    result = evaluate_davis(pred, gt, workers=1)
    assert result.mode == "multi"
    assert result.sequences[0].frames == ("00001", "00002", "00003")
    assert result.metrics()["J&F-Mean"] == 1.0


def test_missing_prediction_frame(tmp_path: Path) -> None:
    pred, gt = tiny_case(tmp_path)
    (pred / "seq" / "00003.png").unlink()
    with pytest.raises(InputError, match=r"00003\.png is missing"):
        evaluate_davis(pred, gt)
    (pred / "seq" / "00004.png").unlink()  # the last frame is never read
    (pred / "seq" / "00000.png").unlink()  # nor the first
    save_palette_png(np.zeros((12, 16), np.uint8), pred / "seq" / "00003.png")
    assert evaluate_davis(pred, gt, workers=1).sequences[0].n_objects == 1


def test_size_mismatch(tmp_path: Path) -> None:
    pred, gt = tiny_case(tmp_path)
    save_palette_png(np.zeros((12, 15), np.uint8), pred / "seq" / "00001.png")
    with pytest.raises(InputError, match=r"00001\.png is 15x12 but its ground truth is 16x12"):
        evaluate_davis(pred, gt, workers=1)


def test_unknown_or_missing_sequence(tmp_path: Path) -> None:
    pred, gt = tiny_case(tmp_path)
    with pytest.raises(InputError, match=r"'cat' is not in the ground truth.*seq"):
        evaluate_davis(pred, gt, sequences=["seq", "cat"])
    _write_sequence(gt, "other", [np.ones((4, 4), np.uint8)] * 3)
    with pytest.raises(InputError, match=r"prediction folder .*other does not exist"):
        evaluate_davis(pred, gt)


def test_unreadable_mask_kinds(tmp_path: Path) -> None:
    pred, gt = tiny_case(tmp_path)
    Image.new("RGB", (16, 12)).save(pred / "seq" / "00001.png")
    with pytest.raises(InputError, match="is a RGB image"):
        evaluate_davis(pred, gt, workers=1)
    (pred / "seq" / "00001.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read mask"):
        evaluate_davis(pred, gt, workers=1)


def test_too_few_frames(tmp_path: Path) -> None:
    pred, gt = tiny_case(tmp_path, n_frames=2)
    with pytest.raises(InputError, match="at least 3"):
        evaluate_davis(pred, gt)


def test_binary_mode_and_mixed_styles(tmp_path: Path) -> None:
    frame = np.zeros((12, 16), dtype=np.uint8)
    frame[2:9, 3:12] = 255
    gt = _write_sequence(tmp_path / "gt", "b", [frame] * 4)
    pred = _write_sequence(tmp_path / "pred", "b", [(frame > 0).astype(np.uint8) * 7] * 4)
    result = evaluate_davis(pred, gt, workers=1)
    assert result.mode == "binary"  # prediction > 0 against ground truth > 0, any id
    assert result.metrics()["J&F-Mean"] == 1.0
    with pytest.raises(InputError, match="--mode binary"):
        evaluate_davis(pred, gt, mode="multi")

    palette = np.zeros((12, 16), dtype=np.uint8)
    palette[2:9, 3:12] = 1
    _write_sequence(gt, "p", [palette] * 4)
    _write_sequence(pred, "p", [palette] * 4)
    with pytest.raises(InputError, match="mixes DAVIS-2016 binary"):
        evaluate_davis(pred, gt)
    assert evaluate_davis(pred, gt, mode="binary", workers=1).metrics()["J&F-Mean"] == 1.0
