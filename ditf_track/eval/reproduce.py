"""The paper's table rows ``ditf-track reproduce`` runs, and a run's numbers beside the paper's.

The rows are data, ``configs/reproduce/rows.yaml`` (installed with the presets as
``ditf_track.configs``): each names its table, dataset, model, preset, the metrics.json key it
compares, the paper's numbers (percent; ``None`` where they are not known here), the
``ditf-track eval ...`` command with ``{data}`` and ``{out}`` placeholders, and the settings
that are assumed rather than taken from the authors' code.

A run's measured value is only ever read from the metrics.json the evaluation wrote;
:func:`comparison` puts it beside the paper's number and never the other way round.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..presets import _preset_folder

#: Where the registry lives inside the presets' folder (not a preset: a subfolder).
REGISTRY_PATH = ("reproduce", "rows.yaml")
#: The placeholders a row's command may hold; ``data`` and ``out`` are required.
PLACEHOLDERS = ("data", "out", "captions")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
#: metrics.json holds fractions, the paper percent.
UNIT = "percent (measured = 100 x the fraction metrics.json holds)"


@dataclass(frozen=True)
class Captions:
    """A row's optional per-image captions: the argv fragment that passes the file, and what the
    row assumes when it is not given."""

    args: tuple[str, ...]
    without: str


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table that an ``eval`` command can run.

    ``paper`` maps metrics.json keys (``a/b`` is ``metrics["a"]["b"]``) to the paper's number in
    percent, ``None`` where it is not known here; ``metric`` is the one compared first.
    """

    id: str
    table: int
    dataset: str
    model: str
    preset: str
    metric: str
    paper: Mapping[str, float | None]
    command: tuple[str, ...]
    assumed: tuple[str, ...]
    captions: Captions | None = None
    note: str | None = None

    def argv(
        self, data: str | Path, out: str | Path, captions: str | Path | None = None
    ) -> list[str]:
        """The row's ``ditf-track`` argv with ``data``/``out`` filled in, plus the captions
        fragment when a captions file is given."""
        if captions is not None and self.captions is None:
            raise ConfigError(
                f"row {self.id} takes no captions file (only the SPair-71k rows do); drop "
                "--captions"
            )
        values = {"data": str(data), "out": str(out), "captions": str(captions)}
        words = list(self.command)
        if captions is not None and self.captions is not None:
            words += self.captions.args
        return [_fill(word, values) for word in words]

    def assumed_for(self, captions_given: bool) -> list[str]:
        """What this run assumes: the row's list, plus the prompt when no captions were given."""
        extra = [self.captions.without] if self.captions and not captions_given else []
        return [*self.assumed, *extra]

    def paper_text(self) -> str:
        """The paper's known numbers, e.g. ``J&F-Mean 72.2, J-Mean 69.2``, or ``unknown``."""
        known = [f"{key} {value:g}" for key, value in self.paper.items() if value is not None]
        return ", ".join(known) if known else "unknown"


def _fill(word: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], word)


def _flatten(items: Any) -> list[str]:
    """The ``assumed`` list: strings, or lists of them (YAML anchors of shared entries)."""
    if isinstance(items, str):
        return [items]
    return [text for item in items or [] for text in _flatten(item)]


def rows_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> tuple[PaperRow, ...]:
    """Validate the registry mapping (as read from YAML) into rows."""
    rows: list[PaperRow] = []
    seen: set[str] = set()
    for entry in raw.get("rows") or []:
        try:
            data = dict(entry)
            row_id = str(data["id"])
            paper = {str(k): (None if v is None else float(v)) for k, v in data["paper"].items()}
            captions = data.get("captions")
            row = PaperRow(
                id=row_id,
                table=int(data["table"]),
                dataset=str(data["dataset"]),
                model=str(data["model"]),
                preset=str(data["preset"]),
                metric=str(data["metric"]),
                paper=paper,
                command=tuple(str(word) for word in data["command"]),
                assumed=tuple(_flatten(data.get("assumed"))),
                captions=None
                if captions is None
                else Captions(tuple(str(w) for w in captions["args"]), str(captions["without"])),
                note=data.get("note"),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: invalid row {entry!r} ({exc})") from exc
        if row.id in seen:
            raise ConfigError(f"{source}: row id {row.id} appears twice")
        seen.add(row.id)
        if row.metric not in row.paper:
            raise ConfigError(f"{source}: row {row.id}'s metric {row.metric} is not in its paper")
        words = [*row.command, *(row.captions.args if row.captions else ())]
        used = {name for word in words for name in _PLACEHOLDER.findall(word)}
        if not used <= set(PLACEHOLDERS) or not {"data", "out"} <= used:
            raise ConfigError(
                f"{source}: row {row.id}'s command must hold {{data}} and {{out}} and no "
                f"placeholder but {', '.join(PLACEHOLDERS)}"
            )
        rows.append(row)
    if not rows:
        raise ConfigError(f"{source}: no rows")
    return tuple(rows)


@cache
def load_rows() -> tuple[PaperRow, ...]:
    """The bundled registry's rows, in table order."""
    folder, name = REGISTRY_PATH
    path = _preset_folder().joinpath(folder).joinpath(name)
    return rows_from_dict(yaml.safe_load(path.read_text("utf-8")), "/".join(REGISTRY_PATH))


def find_row(row_id: str, rows: Sequence[PaperRow] | None = None) -> PaperRow:
    """The row ``row_id``; an unknown id is one line naming the closest ids."""
    rows = load_rows() if rows is None else rows
    by_id = {row.id: row for row in rows}
    if row_id in by_id:
        return by_id[row_id]
    containing = [i for i in by_id if row_id and row_id in i]
    close = containing[:3] or difflib.get_close_matches(row_id, list(by_id), n=3, cutoff=0.5)
    hint = f"close ids: {', '.join(close)}; " if close else ""
    raise ConfigError(
        f"unknown row {row_id!r}; {hint}`ditf-track reproduce --list` shows every row"
    )


def metric_value(metrics: Mapping[str, Any], key: str) -> float | None:
    """``metrics[key]``, or ``metrics[a][b]`` for ``a/b``; None when absent or not finite."""
    value: Any = metrics
    for part in key.split("/"):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _recorded(metrics: Mapping[str, Any], name: str) -> Any:
    """A setting the run recorded: top-level (DAVIS), else in the matcher's extractor identity."""
    if name in metrics:
        return metrics[name]
    matcher = metrics.get("matcher")
    extractor = matcher.get("extractor") if isinstance(matcher, Mapping) else None
    return extractor.get(name) if isinstance(extractor, Mapping) else None


def comparison(
    row: PaperRow,
    metrics: Mapping[str, Any],
    argv: Sequence[str],
    extra_args: Sequence[str] = (),
    captions_given: bool = False,
) -> dict[str, Any]:
    """The ``reproduce`` block of metrics.json: the paper's numbers beside the measured ones
    (read from ``metrics``, the run's own metrics.json), in percent, and how the run was made."""
    values = []
    for key, paper in row.paper.items():
        fraction = metric_value(metrics, key)
        measured = None if fraction is None else 100.0 * fraction
        difference = None if measured is None or paper is None else measured - paper
        values.append(
            {"metric": key, "paper": paper, "measured": measured, "difference": difference}
        )
    return {
        "row": row.id,
        "table": row.table,
        "dataset": row.dataset,
        "model": row.model,
        "preset": row.preset,
        "command": ["ditf-track", *argv],
        "extra_args": list(extra_args),
        "as_registered": not extra_args,
        "unit": UNIT,
        "values": values,
        "profile": _recorded(metrics, "profile"),
        "numerics": _recorded(metrics, "numerics"),
        "assumed": row.assumed_for(captions_given),
        "note": row.note,
    }


def command_text(row: PaperRow) -> str:
    """The row's command as a user types it (placeholders as DATA and OUT)."""
    words = row.argv("DATA", "OUT")
    return " ".join(["ditf-track", *(w if " " not in w else repr(w) for w in words)])


def markdown_table(rows: Sequence[PaperRow] | None = None) -> str:
    """The README's table of rows (``reproduce --list`` prints the same columns)."""
    rows = load_rows() if rows is None else rows
    lines = [
        "| row | table | dataset | model | metric | paper | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row.id, str(row.table), row.dataset, row.model, row.metric, row.paper_text()]
        cells = [c.replace("|", "\\|") for c in cells]
        lines.append("| " + " | ".join([*cells, f"`{command_text(row)}`"]) + " |")
    return "\n".join(lines) + "\n"
