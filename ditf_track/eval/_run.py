"""The resumable run every evaluator is: a locked output folder, one record per item, a summary.

An evaluation is a list of items (image pairs, HPatches pairs, videos, DAVIS sequences), each
with a ``key``. :class:`ResumableRun` holds the protocol they share, on top of
:class:`~ditf_track.outputs.RunDir` (lock, fingerprint, atomic state, in-place resume):

1. **start** — open ``out`` (unless the caller opened it, as the CLI does before it builds a
   model), check a resumed run's fingerprint, write ``config.json``, load the finished records;
   a folder the run opened itself is unlocked again and re-locked while it is iterated and
   finished, so a library user may drop a run half-way and resume it;
2. **iterate** — under the lock, for each item: the finished record when there is one
   (*replayed*, nothing recomputed), else :meth:`~ResumableRun._compute` it and commit it
   (appended and flushed to the record log before the next item starts); then
   :meth:`~ResumableRun._score` the record into the outcome the caller sees;
3. **finish** — the subclass scores the whole run and writes its summary files under the lock
   (:meth:`~ResumableRun._write_locked`).

:meth:`~ResumableRun.iterate_with` runs step 2 with the items to compute handed to an
:class:`ItemEngine` (Ray workers, each holding a :meth:`~ResumableRun.worker_copy` of the
runner): items are read lazily with a bound on how many are read and not yet scored, the
records come back in any order and are committed and scored in item order, so the record log
and the summary are those of the in-process run; only the driver writes run state.

The record log (``log_file``, JSON lines keyed by ``"key"``) is the resume state of the pair and
video runners; the DAVIS runner keeps its state in the sequence folders instead and overrides
the replay and commit steps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

from ..outputs import RecordLog, RunDir, environment_versions, write_csv, write_json

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"

ItemT = TypeVar("ItemT")
OutcomeT = TypeVar("OutcomeT")
Record = dict[str, Any]
_END: Any = object()


class ItemEngine(Protocol):
    """Computes a run's items elsewhere (Ray workers, each with its own model) for
    :meth:`ResumableRun.iterate_with`, which submits items while the engine has room and
    collects the records, in whatever order they finish."""

    def has_room(self) -> bool:
        """Whether a submitted item would start at once."""
        ...

    def submit(self, position: int, item: Any) -> None:
        """Start computing ``item``; its record comes back under ``position``."""
        ...

    def next_result(self) -> tuple[int, Record]:
        """The next finished ``(position, record)``; raises when an item cannot be computed."""
        ...

    def close(self) -> None:
        """Stop (also when the run stops early) and report."""
        ...


#: A summary CSV: file name in the run folder, rows, columns, and what it is (for errors).
Table = tuple[str, Sequence[Mapping[str, Any]], Sequence[str], str]


def open_eval_dir(
    out: str | Path,
    benchmark: str,
    owned: Sequence[str],
    *,
    inputs: Sequence[tuple[str, str | Path | None]] = (),
    resume: bool = False,
    overwrite: bool = False,
) -> RunDir:
    """Open (check, lock, clean on ``overwrite``) an evaluation's folder, resumed in place.

    The CLI calls this before it builds a model, so a bad ``--out`` fails first, and passes
    the open folder to the runner.
    """
    return RunDir(
        out,
        f"eval {benchmark}",
        inputs=inputs,
        patterns=owned,
        resume=resume,
        overwrite=overwrite,
        in_place=True,
    ).open()


class ResumableRun(Generic[ItemT, OutcomeT]):
    """Base of the evaluation runners: subclasses say what an item's key, record and outcome are.

    Subclasses set ``owned`` (the run-level files :meth:`open_eval_dir` may clean) and
    ``log_file`` (None: no record log, the subclass overrides :meth:`_replay` and
    :meth:`_commit`), call :meth:`_start` from ``__init__`` and implement :meth:`_items`,
    :meth:`_key`, :meth:`_compute` and :meth:`_score`.
    """

    owned: ClassVar[tuple[str, ...]]
    log_file: ClassVar[str | None] = None
    #: Whether a second iteration is refused (the runners that accumulate scores while iterated).
    iterate_once: ClassVar[bool] = True
    #: The attribute holding the loaded model (a worker copy gets its own; "": not shardable).
    model_attr: ClassVar[str] = ""
    #: Attributes a worker copy leaves behind: the run folder and its state are the driver's.
    _driver_only: ClassVar[tuple[str, ...]] = ("_run_dir", "_log", "_done")

    out: Path
    _run_dir: RunDir
    _log: RecordLog | None
    _done: dict[str, Record]
    _consumed: bool

    def _start(
        self,
        out: str | Path | RunDir,
        benchmark: str,
        fingerprint: Mapping[str, Any],
        state: Mapping[str, Any],
        *,
        resume: bool,
        overwrite: bool,
        open_dir: Callable[[], RunDir] | None = None,
        prepare: Callable[[RunDir], None] | None = None,
    ) -> None:
        """Open ``out`` (``open_dir``, default :func:`open_eval_dir`) unless it is open, run
        ``prepare`` on it, check the fingerprint, write config.json (``{"fingerprint", **state,
        "versions"}``) and load the finished records."""
        own = not isinstance(out, RunDir)
        if isinstance(out, RunDir):
            run_dir = out
        elif open_dir is not None:
            run_dir = open_dir()
        else:
            run_dir = open_eval_dir(out, benchmark, self.owned, resume=resume, overwrite=overwrite)
        try:
            if prepare is not None:
                prepare(run_dir)
            run_dir.check_fingerprint(fingerprint)
            log = None if self.log_file is None else RecordLog(run_dir.out / self.log_file, "key")
            done = log.load() if log is not None and run_dir.previous is not None else {}
            if log is not None and done:
                log.rewrite(done.values())  # drop a torn last line before appending to the log
            run_dir.write_state(
                {"fingerprint": dict(fingerprint), **state, "versions": environment_versions()}
            )
        except BaseException:
            if own:
                run_dir.close()
            raise
        if own:
            run_dir.release()
        self._run_dir, self.out, self._log, self._done = run_dir, run_dir.out, log, done
        self._consumed = False

    # The steps a runner defines

    def _items(self) -> Iterable[ItemT]:
        raise NotImplementedError

    def _key(self, item: ItemT) -> str:
        raise NotImplementedError

    def _compute(self, item: ItemT) -> Record:
        """Run the model on one item; the record must hold ``"key"`` and be JSON-serialisable."""
        raise NotImplementedError

    def _score(self, item: ItemT, record: Mapping[str, Any], resumed: bool) -> OutcomeT:
        raise NotImplementedError

    def _replay(self, item: ItemT, key: str) -> Record | None:
        """The finished record of an item, or None when it has to be computed."""
        return self._done.get(key)

    def _commit(self, record: Record) -> None:
        """Make a computed record durable before the next item starts."""
        assert self._log is not None
        self._log.append(record)

    # The loop

    def is_resumable(self, key: str) -> bool:
        """Whether the item ``key`` is finished in the record log (replayed, not recomputed)."""
        return key in self._done

    @property
    def num_resumable(self) -> int:
        """Items already finished (replayed, not recomputed), for the CLI's resume line."""
        return sum(1 for item in self._items() if self.is_resumable(self._key(item)))

    def _iterate(self) -> Iterator[OutcomeT]:
        if self.iterate_once and self._consumed:
            raise RuntimeError(f"{type(self).__name__} can be iterated only once")
        self._consumed = True
        with self._run_dir.locked():
            for item in self._items():
                key = self._key(item)
                record = self._replay(item, key)
                resumed = record is not None
                if record is None:
                    record = self._compute(item)
                    self._commit(record)
                yield self._score(item, record, resumed)
        self._check_iterated()

    def __iter__(self) -> Iterator[OutcomeT]:
        return self._iterate()

    def iterate_with(self, engine: ItemEngine, window: int) -> Iterator[OutcomeT]:
        """Iterate as :meth:`__iter__` does, the items to compute handed to ``engine`` in item
        order; their records, in any order, are committed and scored in item order (results that
        come early wait on the driver), so every file equals the in-process run's.

        Items are read lazily, at most ``window`` of them read and not yet scored: that bounds
        what the driver holds (items that carry whole videos, records that came early) however
        long the run is and however the engine orders its results. The engine is closed at the
        end, also when the caller stops early.
        """
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if self.iterate_once and self._consumed:
            raise RuntimeError(f"{type(self).__name__} can be iterated only once")
        self._consumed = True
        items = iter(self._items())
        # read and not yet scored: (item, its replayed record or None, its position among the
        # items to compute); of those to compute, the ones not yet submitted; records come early
        ahead: deque[tuple[ItemT, Record | None, int]] = deque()
        unsent: deque[tuple[int, ItemT]] = deque()
        early: dict[int, Record] = {}
        exhausted = False
        to_compute = 0
        try:
            with self._run_dir.locked():
                while True:
                    while not exhausted and len(ahead) < window:
                        item = next(items, _END)
                        if item is _END:
                            exhausted = True
                            break
                        record = self._replay(item, self._key(item))
                        ahead.append((item, record, -1 if record is not None else to_compute))
                        if record is None:
                            unsent.append((to_compute, item))
                            to_compute += 1
                    while unsent and engine.has_room():
                        engine.submit(*unsent.popleft())
                    if not ahead:
                        break
                    item, record, position = ahead[0]
                    resumed = record is not None
                    if record is None:
                        if position not in early:
                            done, computed = engine.next_result()
                            early[done] = computed
                            continue  # send what now has room, then look again
                        record = early.pop(position)
                        self._commit(record)
                    ahead.popleft()
                    yield self._score(item, record, resumed)
        finally:
            engine.close()
        self._check_iterated()

    def _check_iterated(self) -> None:
        """Called after a complete iteration (either loop): a runner's check of the whole run."""

    def worker_copy(self) -> ResumableRun[ItemT, OutcomeT]:
        """This runner without its run state or model, for a worker to :meth:`_compute` items
        with the model it loads itself (:meth:`with_model`)."""
        if not self.model_attr:
            raise TypeError(f"{type(self).__name__} cannot compute its items on workers")
        copy = object.__new__(type(self))
        state = {k: v for k, v in vars(self).items() if k not in self._driver_only}
        copy.__dict__.update(state)
        setattr(copy, self.model_attr, None)
        return copy

    def with_model(self, model: Any) -> ResumableRun[ItemT, OutcomeT]:
        """A worker copy given the model its worker loaded."""
        setattr(self, self.model_attr, model)
        return self

    def compute(self, item: ItemT) -> Record:
        """One item's record (on a worker: :meth:`worker_copy` with :meth:`with_model`)."""
        return self._compute(item)

    def _write_locked(self, write: Callable[[], None]) -> None:
        """Write the summary files with the folder locked."""
        with self._run_dir.locked():
            write()

    def _write_results(self, metrics: Mapping[str, Any], *tables: Table) -> None:
        """Write ``metrics.json`` and the CSV ``tables``, with the folder locked."""

        def write() -> None:
            write_json(self.out / METRICS_FILE, metrics, "metrics")
            for name, rows, columns, what in tables:
                write_csv(self.out / name, rows, columns, what)

        self._write_locked(write)


def clip_queries(
    points_yx: np.ndarray, hw: tuple[int, int], below_edge: float = 0.0
) -> tuple[np.ndarray, int]:
    """Query points ``(N, 2)`` ``(y, x)`` clipped into the frame, and how many had to move.

    Annotations may lie on or beyond the border. The frame spans ``[-0.5, size - 0.5]``; the
    matcher takes that closed extent, the tracker's ``add_points`` the half-open one
    ``[-0.5, size - 0.5)``, hence ``below_edge`` (the point runners pass ``1e-6``).
    """
    upper = np.array(hw, dtype=np.float64) - 0.5 - below_edge
    inside = np.clip(points_yx, -0.5, upper)
    return inside, int(np.count_nonzero(np.any(inside != points_yx, axis=1)))
