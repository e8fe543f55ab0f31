"""`ditf-track extract` and `ditf-track inspect` on tiny models, and their one-line errors."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import cli_helpers
import numpy as np
import pytest
import torch
from cli_helpers import one_line_error, run
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from ditf_track.extractor import DiTFExtractor
from ditf_track.testing import build_tiny_pipeline, plant_massive_channels

DAVIS_DOG = "davis/JPEGImages/480p/dog"


def metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["ditf_track"])


def test_extract_image(
    tiny_model: Callable[..., Path],
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tiny_model("flux")
    image = shared_data / DAVIS_DOG / "00000.jpg"
    out = tmp_path / "dog.safetensors"
    common = ["--model", str(folder), "--family", "flux", "--t", "90", "--k", "3"]
    code, stdout, _ = run(
        ["extract", str(image), "--size", "64", "--out", str(out), *common], capsys
    )
    assert code == 0
    assert "1 frame(s) at 64x64" in stdout
    features = load_file(str(out))["features"]
    assert features.shape == (1, 32, 4, 4)
    meta = metadata(out)
    assert meta["frame_names"] == ["image"]
    assert meta["original_size"] == [480, 854]
    assert meta["input_size"] == [64, 64]
    assert meta["extractor"]["t"] == 90
    # the same numbers as the library on the same resized image
    from ditf_track.images import read_image, resize_image

    direct = DiTFExtractor.from_pretrained(folder, family="flux", t=90, k=3)
    expected = direct.extract(resize_image(read_image(image), (64, 64))[None]).features
    torch.testing.assert_close(features, expected)
    # an existing output is not overwritten silently
    code, _, err = run(["extract", str(image), "--size", "64", "--out", str(out), *common], capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert "--overwrite" in err


def test_extract_frame_folder_and_video(
    tiny_model: Callable[..., Path],
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tiny_model("pixart")
    common = ["--model", str(folder), "--family", "pixart", "--t", "141", "--k", "2"]
    out = tmp_path / "dog.safetensors"
    args = ["extract", str(shared_data / DAVIS_DOG), "--end", "3", "--short-side", "64"]
    code, _, _ = run([*args, "--out", str(out), "--batch-size", "2", *common], capsys)
    assert code == 0
    features = load_file(str(out))["features"]
    assert features.shape == (3, 24, 4, 7)  # 854x480 at short side 64 -> 112x64
    meta = metadata(out)
    assert meta["frame_names"] == ["00000", "00001", "00002"]
    assert meta["input_size"] == [64, 112]
    norms = features.float().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert meta["massive_channels"] == []  # none on a clean tiny model: selections compare
    assert meta["extractor"]["vae_sample"] is True
    # a frame's noise comes from its index in the file: frames 1, 2 of --start 1 (one batch
    # of 2) are frames 1, 2 of --end 3 (batches of 2 then 1); tolerance 1e-5
    later = tmp_path / "later.safetensors"
    args_later = [*args[:2], "--start", "1", *args[2:]]
    code, _, _ = run([*args_later, "--out", str(later), *common], capsys)
    assert code == 0
    torch.testing.assert_close(
        load_file(str(later))["features"], features[1:], rtol=1e-5, atol=1e-5
    )
    mean = tmp_path / "mean.safetensors"
    code, _, _ = run([*args, "--vae-sample", "off", "--out", str(mean), *common], capsys)
    assert code == 0
    assert metadata(mean)["extractor"]["vae_sample"] is False
    assert (load_file(str(mean))["features"].float() - features.float()).abs().max() > 1e-3
    video = tmp_path / "bikes.safetensors"
    args = ["extract", str(shared_data / "videos/bikes.mp4"), "--end", "4", "--stride", "2"]
    code, _, _ = run([*args, "--short-side", "48", "--out", str(video), *common], capsys)
    assert code == 0
    assert load_file(str(video))["features"].shape[0] == 2
    assert metadata(video)["frame_names"] == ["00000", "00002"]


def test_inspect_finds_planted_channels(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = plant_massive_channels(build_tiny_pipeline("sd3", tmp_path / "m"), (3, 11), 400.0)
    out = tmp_path / "inspect"
    image = shared_data / DAVIS_DOG / "00010.jpg"
    args = ["inspect", str(image), "--model", str(folder), "--family", "sd3", "--t", "300"]
    code, stdout, _ = run([*args, "--k", "2", "--size", "64", "--out", str(out)], capsys)
    assert code == 0
    assert "massive channels (>= 100x median |z|): 3, 11" in stdout
    summary = json.loads((out / "massive_channels.json").read_text())
    assert summary["massive_channels"] == [3, 11]
    assert summary["top_channels"][0]["channel"] in (3, 11)
    rows = list(csv.DictReader((out / "stats.csv").open()))
    assert len(rows) == 16
    assert [int(r["channel"]) for r in rows if r["massive"] == "1"] == [3, 11]
    assert float(rows[3]["max_over_median"]) > 100
    for name in ("activations.png", "gate.png", "pca.png"):
        with Image.open(out / name) as img:
            assert img.width > 300
            assert np.asarray(img).std() > 5  # something was drawn
    assert not any(p.name.endswith(".incomplete") for p in tmp_path.iterdir())


def test_cli_errors_are_one_line(
    tiny_model: Callable[..., Path],
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = str(shared_data / DAVIS_DOG / "00000.jpg")
    out = str(tmp_path / "x.safetensors")
    folder = str(tiny_model("pixart"))
    cases = [
        (["extract", image, "--out", out, "--preset", "nope"], "unknown preset 'nope'"),
        (["extract", str(tmp_path / "missing.mp4"), "--out", out], "missing.mp4"),
        (
            [
                "extract",
                image,
                "--out",
                out,
                "--model",
                folder,
                "--family",
                "pixart",
                "--t",
                "1",
                "--k",
                "40",
            ],
            "k=40 is out of range",
        ),
        (["extract", image, "--out", out, "--model", folder], "needs --family"),
        (
            ["inspect", image, "--out", str(tmp_path / "i"), "--preset", "lab"],
            "inspect needs a DiT",
        ),
    ]
    if not torch.cuda.is_available():
        cases.append(
            (
                [
                    "extract",
                    image,
                    "--out",
                    out,
                    "--model",
                    folder,
                    "--family",
                    "pixart",
                    "--t",
                    "1",
                    "--k",
                    "1",
                    "--device",
                    "cuda",
                ],
                "CUDA is not available",
            )
        )
    for args, expected in cases:
        code, _, err = run(args, capsys)
        assert code == 1, args
        assert err.startswith("ditf-track: error: ")
        assert expected in err
        assert err.count("\n") == 1
    assert not (tmp_path / "x.safetensors").exists()


no_model = cli_helpers.no_model


@pytest.mark.faults
def test_inspect_refuses_lab_before_any_model_or_folder(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    """One check, on the config (the lab preset has no block features), before --out opens."""
    image = shared_data / DAVIS_DOG / "00000.jpg"
    args = ["inspect", str(image), "--out", str(tmp_path / "i"), "--preset", "lab"]
    code, _, err = run(args, capsys)
    assert one_line_error(code, err) == (
        "ditf-track: error: inspect needs a DiT (the lab preset has no block features)"
    )
    assert list(tmp_path.iterdir()) == []


def test_extract_records_the_profile_and_the_channels_used(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--profile and --discard-channels reach the extractor; the file's metadata records the
    profile asked for and used, every resolved setting, and the channels discarded. A video's
    channels are fixed on frame 0 of the selection and compared with the rule once there."""
    folder = plant_massive_channels(build_tiny_pipeline("flux", tmp_path / "m"), (3, 11), 400.0)
    args = ["extract", str(shared_data / DAVIS_DOG), "--start", "2", "--end", "5"]
    args += ["--short-side", "64", "--preset", "flux", "--model", str(folder), "--k", "3"]
    fixed = tmp_path / "fixed.safetensors"
    code, _, err = run(
        [*args, "--out", str(fixed), "--discard-channels", "5,3", "--discard-stage", "pre_norm"],
        capsys,
    )
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 2, err
    assert "this model has 32, so the paper's profile is used" in warnings[0]
    assert "the fixed discard channels [3, 5] differ" in warnings[1]
    assert "first image or frame ([3, 11])" in warnings[1]
    meta = metadata(fixed)
    assert (meta["massive_channels"], meta["discarded_channels"]) == ([3, 5], [3, 5])
    extractor = meta["extractor"]
    assert extractor["profile"] == {"requested": "official", "used": "paper"}
    assert (extractor["discard_stage"], extractor["discard_channels"]) == ("pre_norm", [3, 5])
    rule = tmp_path / "rule.safetensors"
    code, _, err = run([*args, "--out", str(rule), "--profile", "paper"], capsys)
    assert code == 0, err
    assert "WARNING" not in err  # the rule finds the planted channels: nothing to say
    meta = metadata(rule)
    assert (meta["massive_channels"], meta["discarded_channels"]) == ([3, 11], [3, 11])
    assert meta["extractor"]["profile"] == {"requested": "paper", "used": "paper"}
    assert (meta["extractor"]["discard_stage"], meta["extractor"]["discard_channels"]) == (
        "post_adaln",
        None,
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--discard-channels", "3,x"],
            "argument --discard-channels: discard channels '3,x': 'x' is not a channel index; "
            "give comma-separated whole numbers >= 0 (e.g. 154,1446) or 'auto'",
        ),
        (
            ["--profile", "authors"],
            "argument --profile: invalid choice: 'authors' (choose from ",
        ),
    ],
)
def test_profile_options_are_checked_at_parse_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_helpers.cli.main(
            ["extract", str(tmp_path / "x.jpg"), "--out", str(tmp_path / "o"), *option]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "o").exists()
