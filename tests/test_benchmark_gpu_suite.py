"""benchmarks/gpu_suite.py --smoke: the GPU suite's code paths on the CPU with tiny models."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _results
import gpu_suite
from architectures import build_random_backbone, dit_flops, transformer_config

from ditf_track.presets import load_preset

# (title prefix, body rows, columns) of every table a full smoke run fills.
SHAPES = {
    "DiTF extraction": (10, 15),  # 5 models x (batch 1, best batch)
    "Propagation": (4, 6),  # 2 C x 2 dtypes
    "Query-point tracking": (8, 5),  # 2 dtypes x 2 C x 2 point counts
    "DAVIS-2017 val projection": (2, 5),  # batch 1, best batch
}


def tables(markdown: str) -> dict[str, list[list[str]]]:
    """``### title`` → the table's rows (header first, separator dropped) as cells."""
    out: dict[str, list[list[str]]] = {}
    title = ""
    for line in markdown.splitlines():
        if line.startswith("### "):
            title = line[4:]
            out[title] = []
        elif line.startswith("|") and not line.startswith("|---"):
            out[title].append([c.strip() for c in line.strip("|").split("|")])
    return out


def rows_of(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One whole smoke run; what the output folder held when the last part began."""
    out = tmp_path_factory.mktemp("gpu-suite")
    results_before = _results.RESULTS.read_bytes()
    seen: dict[str, Any] = {}
    measure_points = gpu_suite.measure_points

    def spy(*args: Any) -> None:
        seen["rows"] = rows_of(out)
        seen["table"] = (out / "table.md").read_text()
        measure_points(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpu_suite, "measure_points", spy)
        gpu_suite.main(["--smoke", "--out", str(out)])
    return {
        "out": out,
        "seen": seen,
        "results_unchanged": _results.RESULTS.read_bytes() == results_before,
    }


def test_smoke_fills_every_table(smoke: dict[str, Any]) -> None:
    text = (smoke["out"] / "table.md").read_text()
    found = tables(text)
    for prefix, (n_rows, n_cols) in SHAPES.items():
        (title,) = [t for t in found if t.startswith(prefix)]
        header, *body = found[title]
        assert len(header) == n_cols, title
        assert len(body) == n_rows, title
        assert all(len(cells) == n_cols for cells in body), title
    extraction = found[next(t for t in found if t.startswith("DiTF extraction"))][1:]
    assert [r[0] for r in extraction] == [m for m in gpu_suite.EXTRACTIONS for _ in range(2)]
    assert [r[6].startswith("best: ") for r in extraction] == [False, True] * 5
    # flux-video has the video k at a DAVIS frame's shape, flux-correspondence k = 28, square.
    assert [extraction[0][3], extraction[2][3]] == ["24", "28"]
    assert [extraction[0][4], extraction[2][4]] == ["64x32", "32x32"]
    assert "error" not in text
    assert "budget" not in text


def test_smoke_rows_reach_the_folder_as_they_are_measured(smoke: dict[str, Any]) -> None:
    """When points (the last part) began, every earlier row was already on disk."""
    parts = [r["part"] for r in smoke["seen"]["rows"]]
    assert parts[:2] == ["run", "matmul"]
    assert "points" not in parts
    assert parts.count("propagate") == 4
    assert parts.count("flux-video") == 2
    assert "| sd3.5 |" in smoke["seen"]["table"]
    final = [r["part"] for r in rows_of(smoke["out"])]
    assert final.count("points") == 8
    assert final[-1] == "done"


def test_smoke_never_appends_to_results(smoke: dict[str, Any]) -> None:
    assert smoke["results_unchanged"]
    assert all(r["smoke"] for r in rows_of(smoke["out"]) if r["part"] == "run")


def test_only_reruns_a_part_and_keeps_the_others(tmp_path: Path) -> None:
    gpu_suite.main(["--smoke", "--only", "propagate", "--out", str(tmp_path)])
    parts = [r["part"] for r in rows_of(tmp_path)]
    assert parts == ["run", *["propagate"] * 4, "done"]
    first = tables((tmp_path / "table.md").read_text())
    gpu_suite.main(["--smoke", "--only", "points", "--budget", "0", "--out", str(tmp_path)])
    text = (tmp_path / "table.md").read_text()
    again = tables(text)
    (prop,) = [t for t in again if t.startswith("Propagation")]
    assert again[prop] == first[prop]  # the earlier run's rows stay
    assert "- points: budget 0 s spent" in text


def test_unknown_part_and_missing_gpu_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gpu_suite.main(["--smoke", "--only", "propagation"])
    assert "unknown part(s) propagation" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_suite.main([])
        assert "no CUDA GPU" in capsys.readouterr().err


def test_record_appends_a_measured_run_with_its_date(
    smoke: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(_results, "RESULTS", results)
    with pytest.raises(SystemExit, match="no measured"):
        gpu_suite.main(["--record", str(smoke["out"])])
    assert not results.exists()
    measured = tmp_path / "fetched"
    measured.mkdir()
    rows = rows_of(smoke["out"])
    for r in rows:
        if r["part"] == "run":
            r.update(smoke=False, date="2030-01-02 03:04 UTC")
    (measured / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gpu_suite.main(["--record", str(measured)])
    text = results.read_text()
    assert f"## {gpu_suite.TITLE}\n\n2030-01-02 03:04 UTC · commit " in text
    assert "(measured source" not in text  # the same code was measured
    assert "### DAVIS-2017 val projection" in text


@pytest.mark.parametrize(
    ("preset", "k"), [("pixart-alpha", 3), ("sd3.5", 3), ("flux", 2), ("flux", 19), ("flux", 21)]
)
def test_dit_flops_match_the_counted_operations(preset: str, k: int) -> None:
    """The formula against torch's FLOP counter on the real forward (tiny widths): it leaves
    out only embedders and per-image AdaLN linears, so it is at most a few % below."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only wait for each other
    try:
        _check_flops(preset, k)
    finally:
        torch.set_num_threads(threads)


def _check_flops(preset: str, k: int) -> None:
    backbone = build_random_backbone(preset, k, torch.device("cpu"), torch.float32, tiny=True)
    latents = torch.randn(1, backbone.vae.config.latent_channels, 16, 24)
    condition = backbone.condition("")
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as c:
        backbone.capture(latents, 100, condition, k)
    family = load_preset(preset).family
    formula = dit_flops(
        family, transformer_config(preset, tiny=True), k, 8 * 12, condition.embeds.shape[1]
    )
    assert 1.0 <= c.get_total_flops() / formula < 1.06


def test_out_of_memory_ends_the_batch_search_and_a_broken_part_the_part_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch 2 out of memory: batch 1 is the best that fits; a part that raises leaves an
    error row and the suite goes on."""
    time_extraction = gpu_suite.extract.time_extraction

    def out_of_memory_at_2(extractor: Any, images: torch.Tensor, repeats: int) -> Any:
        if len(images) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return time_extraction(extractor, images, repeats)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("window search failed")

    monkeypatch.setattr(gpu_suite.extract, "time_extraction", out_of_memory_at_2)
    monkeypatch.setattr(gpu_suite.propagate, "bench_one", broken)
    gpu_suite.main(["--smoke", "--only", "propagate,sd3", "--out", str(tmp_path)])
    rows = rows_of(tmp_path)
    assert [r["part"] for r in rows] == ["run", "matmul", "propagate", "sd3", "sd3", "done"]
    assert rows[2]["error"] == "ValueError: window search failed"
    assert (rows[4]["best"], rows[4]["batch"], rows[4]["oom_at"]) == (True, 1, 2)
    text = (tmp_path / "table.md").read_text()
    assert "| best: 1 (2 OOM) |" in text
    assert "- propagate: ValueError: window search failed" in text
