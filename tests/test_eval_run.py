"""The resumable run every evaluator shares (``ditf_track.eval._run``), on a toy benchmark.

A toy runner squares numbers: each item's record is computed once, appended to the log, and
replayed on resume; the five real runners are checked to be built on the same base, and the
layering of ``eval/`` (no private imports between modules, the DAVIS metric apart from its
folder runner and process pool) is checked statically.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ditf_track.eval
from ditf_track.errors import ConfigError
from ditf_track.eval._run import ResumableRun, clip_queries
from ditf_track.eval.runs.davis import DavisRun
from ditf_track.eval.runs.pairs import HPatchesEvaluation, PCKEvaluation
from ditf_track.eval.runs.points import KeypointEvaluation, TapVidEvaluation

EVAL_DIR = Path(ditf_track.eval.__file__).parent


class Squares(ResumableRun[int, tuple[int, int, bool]]):
    owned = ("config.json", "items.jsonl", "metrics.json")
    log_file = "items.jsonl"
    model_attr = "power"  # what a worker copy is given (the toy's "model")

    def __init__(
        self, items: Sequence[int], out: Path, power: int = 2, *, resume: bool = False
    ) -> None:
        self.items = list(items)
        self.power = power
        self.computed: list[int] = []
        self._start(
            out,
            "squares",
            {"power": power},
            {"note": "toy"},
            resume=resume,
            overwrite=False,
        )

    def _items(self) -> list[int]:
        return self.items

    def _key(self, item: int) -> str:
        return str(item)

    def _compute(self, item: int) -> dict[str, Any]:
        self.computed.append(item)
        return {"key": str(item), "value": item**self.power}

    def _score(self, item: int, record: Mapping[str, Any], resumed: bool) -> tuple[int, int, bool]:
        return item, int(record["value"]), resumed


def test_records_are_computed_once_and_replayed_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = Squares([3, 1, 2], out)
    assert list(first) == [(3, 9, False), (1, 1, False), (2, 4, False)]
    assert first.computed == [3, 1, 2]
    with pytest.raises(RuntimeError, match="only once"):
        list(first)
    config = json.loads((out / "config.json").read_text())
    assert config["fingerprint"] == {"power": 2}
    assert config["note"] == "toy"
    lines = (out / "items.jsonl").read_text().splitlines()
    assert [json.loads(line)["value"] for line in lines] == [9, 1, 4]

    # An interrupted write leaves a torn last line: that item is computed again, nothing else.
    (out / "items.jsonl").write_text("\n".join(lines[:2]) + '\n{"key": "2", "va')
    again = Squares([3, 1, 2, 5], out, resume=True)
    assert again.is_resumable("3")
    assert not again.is_resumable("2")
    assert again.num_resumable == 2
    assert list(again) == [(3, 9, True), (1, 1, True), (2, 4, False), (5, 25, False)]
    assert again.computed == [2, 5]
    values = [json.loads(line)["value"] for line in (out / "items.jsonl").read_text().splitlines()]
    assert values == [9, 1, 4, 25]

    with pytest.raises(ConfigError, match="power"):
        Squares([3], out, power=3, resume=True)  # other settings: the fingerprint refuses


class LastInFirstOut:
    """A toy :class:`~ditf_track.eval._run.ItemEngine`: ``slots`` items at once, computed by a
    worker copy, each result given back newest first (the worst order for the driver)."""

    def __init__(self, worker: Squares, slots: int) -> None:
        self.worker, self.slots = worker, slots
        self.inflight: list[tuple[int, int]] = []
        self.submitted: list[int] = []
        self.closed = False

    def has_room(self) -> bool:
        return len(self.inflight) < self.slots

    def submit(self, position: int, item: Any) -> None:
        assert self.has_room()
        self.submitted.append(item)
        self.inflight.append((position, item))

    def next_result(self) -> tuple[int, dict[str, Any]]:
        position, item = self.inflight.pop()
        return position, self.worker.compute(item)

    def close(self) -> None:
        self.closed = True


def test_items_computed_elsewhere_in_any_order_are_recorded_in_item_order(
    tmp_path: Path,
) -> None:
    """iterate_with (the Ray path): a worker copy without run state computes the items not
    replayed; they come back newest first and are committed and scored in item order."""
    in_process = Squares([3, 1, 2, 5, 7, 4], tmp_path / "a")
    expected = list(in_process)
    out = tmp_path / "b"
    first = Squares([3, 1], out)
    list(first)
    run = Squares([3, 1, 2, 5, 7, 4], out, resume=True)
    worker = run.worker_copy()
    assert not hasattr(worker, "_run_dir")
    assert vars(worker)["power"] is None
    engine = LastInFirstOut(worker.with_model(2), slots=2)
    assert [o[:2] for o in run.iterate_with(engine, window=3)] == [o[:2] for o in expected]
    assert engine.submitted == [2, 5, 7, 4]
    assert engine.closed
    assert (out / "items.jsonl").read_bytes() == (tmp_path / "a" / "items.jsonl").read_bytes()


class Counted(Squares):
    """Squares whose items are read lazily, counting how many were read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.read = 0
        super().__init__(*args, **kwargs)

    def _items(self) -> Iterator[int]:  # type: ignore[override]
        for item in self.items:
            self.read += 1
            yield item


@pytest.mark.parametrize("window", [1, 2, 5])
def test_iterate_with_reads_at_most_window_items_ahead_of_the_scoring(
    tmp_path: Path, window: int
) -> None:
    """Items may hold whole videos (TAP-Vid): however the engine orders its results and however
    many items a resumed run replays, no more than ``window`` are read and not yet scored."""
    items = list(range(40))
    out = tmp_path / "run"
    list(Squares(items[:15], out))  # a resumed run: 15 replayed, 25 to compute
    run = Counted(items, out, resume=True)
    engine = LastInFirstOut(run.worker_copy().with_model(2), slots=4)  # type: ignore[arg-type]
    scored = 0
    for _, value, resumed in run.iterate_with(engine, window=window):
        scored += 1
        assert run.read - scored <= window - 1  # the one just scored is no longer held
        assert len(engine.inflight) <= window
        assert resumed == (value < 15**2)
    assert scored == 40
    assert run.read == 40
    assert engine.submitted == items[15:]
    lines = (out / "items.jsonl").read_text().splitlines()
    assert [json.loads(line)["value"] for line in lines] == [i * i for i in items]


def test_iterate_with_closes_the_engine_when_the_caller_stops(tmp_path: Path) -> None:
    run = Squares([1, 2, 3, 4], tmp_path / "run")
    engine = LastInFirstOut(run.worker_copy().with_model(2), slots=2)
    outcomes = run.iterate_with(engine, window=2)
    assert next(outcomes) == (1, 1, False)
    outcomes.close()
    assert engine.closed
    lines = (tmp_path / "run" / "items.jsonl").read_text().splitlines()
    assert [json.loads(line)["value"] for line in lines] == [1]  # only what was committed


def test_every_runner_is_a_resumable_run() -> None:
    runners = (PCKEvaluation, HPatchesEvaluation, TapVidEvaluation, KeypointEvaluation, DavisRun)
    assert [r.__name__ for r in runners if not issubclass(r, ResumableRun)] == []
    assert DavisRun.log_file is None  # its state is the sequence folders
    assert {r.log_file for r in runners[:4]} == {"pairs.jsonl", "videos.jsonl"}


def _imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of each ``from module import name`` in a file; ``import m`` is (m, "")."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.extend((module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((a.name, "") for a in node.names)
    return found


def _resolve(path: Path, module: str) -> str:
    """The absolute name of a relative ``module`` imported in ``path`` (under ``ditf_track``)."""
    level = len(module) - len(module.lstrip("."))
    if not level:
        return module
    package = path.parent.relative_to(EVAL_DIR.parents[1]).parts
    return ".".join([*package[: len(package) - level + 1], module[level:]]).rstrip(".")


def test_eval_modules_import_no_private_names_of_each_other() -> None:
    private = [
        f"{path.relative_to(EVAL_DIR)}: {module}.{name}"
        for path in sorted(EVAL_DIR.rglob("*.py"))
        for module, name in _imports(path)
        if _resolve(path, module).startswith("ditf_track.eval") and name.startswith("_")
    ]
    assert private == []
    assert _resolve(EVAL_DIR / "runs" / "pairs.py", "..hpatches") == "ditf_track.eval.hpatches"


def test_clip_queries_closed_for_the_matcher_half_open_for_the_tracker() -> None:
    points = np.array([[-3.0, 5.0], [10.0, 19.0], [9.5, 19.5], [4.0, 4.0]])
    inside, moved = clip_queries(points, (10, 20))
    np.testing.assert_array_equal(inside, [[-0.5, 5.0], [9.5, 19.0], [9.5, 19.5], [4.0, 4.0]])
    assert moved == 2  # the point on the edge is inside the closed extent
    inside, moved = clip_queries(points, (10, 20), below_edge=1e-6)
    assert inside[2].tolist() == [9.5 - 1e-6, 19.5 - 1e-6]
    assert moved == 3


def test_davis_metric_has_no_files_or_process_pool() -> None:
    modules = {module.split(".")[0] for module, _ in _imports(EVAL_DIR / "davis.py")}
    assert not modules & {"multiprocessing", "concurrent", "PIL", "tempfile", "csv", "json"}
    assert ".davis_folders" not in modules
