"""The registry of paper rows (configs/reproduce/rows.yaml): its content, each row's command,
and the comparison that puts the paper's numbers beside a run's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ditf_track.errors import ConfigError
from ditf_track.eval.reproduce import (
    comparison,
    find_row,
    load_rows,
    markdown_table,
    metric_value,
    rows_from_dict,
)
from ditf_track.presets import available_presets

README = Path(__file__).resolve().parents[1] / "README.md"

#: Every paper number the registry may hold, with its source: METHOD.md sec. 3 (the paper's
#: reported results) and the authors' README (Table 4). A number not here is invented.
SOURCED = {
    ("table2-spair-sd3.5", "pck_per_point@0.10"): 64.6,
    ("table2-spair-flux", "pck_per_point@0.10"): 67.1,
    ("table2-spair-sd3.5-dinov2", "pck_per_point@0.10"): 72.2,
    ("table3-ap10k-cs-sd3.5-dinov2", "pck_per_image@0.10"): 69.4,
    ("table3-pfpascal-flux", "pck_per_image@0.10"): 95.8,
    ("table4-spair-flux-original", "pck_per_point@0.10"): 29.9,
    ("table4-spair-flux-adaln", "pck_per_point@0.10"): 65.3,
    ("table4-spair-flux-discard", "pck_per_point@0.10"): 67.1,
    ("table8-hpatches-flux", "all/1"): 41.9,
    ("table8-hpatches-flux", "all/3"): 70.7,
    ("table8-hpatches-flux", "all/5"): 79.5,
    ("table9-davis-flux", "J&F-Mean"): 72.2,
    ("table9-davis-flux", "J-Mean"): 69.2,
    ("table9-davis-flux", "F-Mean"): 75.1,
}


def test_registry_holds_only_sourced_numbers_and_every_table() -> None:
    rows = load_rows()
    known = {
        (row.id, key): value
        for row in rows
        for key, value in row.paper.items()
        if value is not None
    }
    assert known == SOURCED
    assert {row.table for row in rows} == {2, 3, 4, 5, 8, 9}
    assert len({row.id for row in rows}) == len(rows)
    presets = set(available_presets())
    for row in rows:
        assert row.preset in presets, row.id
        assert row.command[:1] == ("eval",), row.id
        assert "--profile" in row.command, row.id
        assert row.command[row.command.index("--preset") + 1] == row.preset, row.id
        assert row.assumed, row.id  # every row says what it assumes
        if all(v is None for v in row.paper.values()):
            assert "unknown" in (row.note or ""), row.id
    # the SPair-style rows run without the captions file and say what that assumes
    spair = [row for row in rows if row.command[1] == "spair"]
    assert spair
    assert all(row.captions is not None for row in spair)


def test_row_argv_fills_placeholders_and_adds_captions_only_when_given() -> None:
    row = find_row("table2-spair-flux")
    argv = row.argv("/d/SPair-71k", "/runs/a")
    assert argv[:6] == ["eval", "spair", "--data", "/d/SPair-71k", "--out", "/runs/a"]
    assert "--captions" not in argv
    assert any("per-image captions" in text for text in row.assumed_for(False))
    assert row.assumed_for(True) == list(row.assumed)
    with_captions = row.argv("/d", "/o", "/c/captions.json")
    assert with_captions[-2:] == ["--captions", "/c/captions.json"]
    davis = find_row("table9-davis-flux")
    with pytest.raises(ConfigError, match="takes no captions file"):
        davis.argv("/d", "/o", "/c.json")
    assert davis.assumed_for(False) == list(davis.assumed)


@pytest.mark.faults
def test_unknown_row_names_close_ids() -> None:
    with pytest.raises(ConfigError) as info:
        find_row("table9-davis")
    message = str(info.value)
    assert "\n" not in message
    assert "unknown row 'table9-davis'; close ids: table9-davis-flux;" in message
    with pytest.raises(ConfigError, match="close ids: table2-spair-flux"):
        find_row("table2-spair-flx")
    with pytest.raises(ConfigError, match=r"unknown row 'zzz'; `ditf-track reproduce --list`"):
        find_row("zzz")


def test_metric_value_reads_flat_keys_and_nested_paths() -> None:
    metrics = {"pck_per_point@0.10": 0.5, "all": {"1": 0.25, "3": float("nan")}, "n": True}
    assert metric_value(metrics, "pck_per_point@0.10") == 0.5  # a dot is not a path separator
    assert metric_value(metrics, "all/1") == 0.25
    assert metric_value(metrics, "all/3") is None
    assert metric_value(metrics, "all/5") is None
    assert metric_value(metrics, "n") is None


def test_comparison_puts_the_measured_value_beside_the_paper_never_in_its_place() -> None:
    row = find_row("table9-davis-flux")
    metrics = {
        "J&F-Mean": 0.70,
        "J-Mean": 0.675,
        "profile": {"requested": "official", "used": "official"},
        "numerics": "official",
    }
    block = comparison(row, metrics, ["eval", "davis"], ["--limit", "2"])
    values = {v["metric"]: v for v in block["values"]}
    assert values["J&F-Mean"]["paper"] == 72.2
    assert values["J&F-Mean"]["measured"] == pytest.approx(70.0)
    assert values["J&F-Mean"]["difference"] == pytest.approx(-2.2)
    assert values["J-Mean"]["measured"] == pytest.approx(67.5)
    # F-Mean was not measured: the paper's 75.1 stays the paper's, nothing is filled in
    assert values["F-Mean"] == {
        "metric": "F-Mean",
        "paper": 75.1,
        "measured": None,
        "difference": None,
    }
    assert block["numerics"] == "official"
    assert block["profile"]["used"] == "official"
    assert block["as_registered"] is False
    assert block["command"][:3] == ["ditf-track", "eval", "davis"]
    # a PCK run records its profile in the matcher's extractor identity
    pck = find_row("table5-spair-flux-t")
    metrics = {"pck_per_point@0.10": 0.6, "matcher": {"extractor": {"profile": {"used": "paper"}}}}
    block = comparison(pck, metrics, ["eval", "spair"])
    assert block["values"] == [
        {"metric": "pck_per_point@0.10", "paper": None, "measured": 60.0, "difference": None}
    ]
    assert block["profile"] == {"used": "paper"}
    assert block["numerics"] is None
    assert block["as_registered"] is True


@pytest.mark.faults
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"command": ["eval", "spair", "--data", "{data}"]}, "must hold {data} and {out}"),
        ({"command": ["eval", "spair", "{data}", "{out}", "{x}"]}, "no placeholder but"),
        ({"metric": "pck@0.1"}, "is not in its paper"),
        ({"paper": None}, "invalid row"),
    ],
)
def test_rows_from_dict_refuses_a_bad_row(change: dict[str, object], message: str) -> None:
    row = {
        "id": "r",
        "table": 2,
        "dataset": "d",
        "model": "m",
        "preset": "flux",
        "metric": "pck_per_point@0.10",
        "paper": {"pck_per_point@0.10": None},
        "command": ["eval", "spair", "--data", "{data}", "--out", "{out}"],
        "assumed": ["x"],
    }
    assert rows_from_dict({"rows": [row]})[0].id == "r"
    with pytest.raises(ConfigError, match=re.escape(message)):
        rows_from_dict({"rows": [{**row, **change}]})
    with pytest.raises(ConfigError, match="appears twice"):
        rows_from_dict({"rows": [row, row]})


def test_readme_table_is_the_registry() -> None:
    text = README.read_text(encoding="utf-8")
    start = "<!-- reproduce-rows: generated from configs/reproduce/rows.yaml -->\n"
    end = "<!-- /reproduce-rows -->"
    assert start in text
    assert end in text
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table == markdown_table(), (
        "README's table differs from the registry; paste "
        "ditf_track.eval.reproduce.markdown_table() between the markers"
    )
