"""Many clips in one job: the job list (a CSV/JSONL file or a DAVIS-layout root) and the Ray
worker pool that spreads clips over a cluster.

The pool knows nothing of tracking: each worker holds what ``setup`` returns (one loaded
extractor) and runs ``work(state, payload, attempt)`` on the clips it is given. A worker that
dies is replaced and its clip retried ``max_retries`` times; anything a clip raises (a one-line
:class:`~ditf_track.errors.DitfError`) comes back as that clip's failure and is not retried.
Workers only compute: the caller (the driver) hears every result and writes the run state.

Ray is optional (``pip install 'ditf-track[ray]'``): nothing here imports it until a pool starts.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ConfigError, DitfError, InputError

#: The extra that brings Ray; named by the one-line error when it is missing.
RAY_EXTRA = "pip install 'ditf-track[ray]'"
#: Column names of a JOBS file (``mask`` and ``masks`` are the same column).
JOB_COLUMNS = ("video", "mask", "masks", "points", "out")


@dataclass(frozen=True)
class Clip:
    """One row of a job: a video, its annotations and its output folder (absolute paths).

    ``masks`` are ``[N:]FILE`` values as ``track --mask`` takes them; ``where`` names the row
    in messages (``jobs.csv line 3``, ``sequence dog``).
    """

    name: str
    video: Path
    masks: tuple[str, ...]
    points: Path | None
    out: Path
    where: str


# -- the job list ------------------------------------------------------------------------------
def read_jobs(path: str | os.PathLike[str]) -> list[Clip]:
    """The clips of a CSV (header ``video,mask,points,out``; several masks joined by ``;``) or
    JSON-lines file (``{"video": ..., "masks": [...], ...}``); paths relative to the file."""
    jobs = Path(path)
    try:
        text = jobs.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the jobs file {jobs} ({exc}); check the path") from exc
    if jobs.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = _jsonl_rows(jobs, text)
    else:
        rows = _csv_rows(jobs, text)
    if not rows:
        raise InputError(f"the jobs file {jobs} names no clip; add rows video,mask,points,out")
    base = jobs.resolve().parent
    return [_clip(base, line, f"{jobs.name} line {line}", row) for line, row in rows]


def _csv_rows(jobs: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    header = [c.strip() for c in reader.fieldnames or []]
    unknown = [c for c in header if c not in JOB_COLUMNS]
    if "video" not in header or "out" not in header or unknown:
        raise InputError(
            f"the jobs file {jobs} has the header {','.join(header)!r}; give the columns "
            "video,mask,points,out (mask and points may be empty; several masks joined by ';')"
        )
    rows = []
    for n, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        masks = row.get("masks") or row.get("mask") or ""
        rows.append((n, {**row, "masks": [m for m in masks.split(";") if m.strip()]}))
    return rows


def _jsonl_rows(jobs: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{jobs.name} line {n} is not JSON ({exc.msg}); fix the row") from exc
        if not isinstance(row, dict) or set(row) - set(JOB_COLUMNS):
            raise InputError(
                f"{jobs.name} line {n} is not an object of {', '.join(JOB_COLUMNS)}; fix the row"
            )
        masks = row.get("masks", row.get("mask")) or []
        rows.append((n, {**row, "masks": [masks] if isinstance(masks, str) else list(masks)}))
    return rows


def _clip(base: Path, line: int, where: str, row: dict[str, Any]) -> Clip:
    if not row.get("video") or not row.get("out"):
        raise InputError(f"{where} gives no video or no out; every row needs both")
    video = base / str(row["video"])
    return Clip(
        name=video.stem if video.suffix else video.name,
        video=video,
        masks=tuple(_mask_path(base, str(m).strip()) for m in row["masks"]),
        points=base / str(row["points"]) if row.get("points") else None,
        out=base / str(row["out"]),
        where=where,
    )


def _mask_path(base: Path, value: str) -> str:
    """``[N:]FILE`` with FILE made absolute against the jobs file's folder."""
    head, sep, tail = value.partition(":")
    if sep and head.isdigit():
        return f"{head}:{base / tail}"
    return str(base / value)


def davis_clips(
    root: str | os.PathLike[str], split: str, out: str | os.PathLike[str]
) -> list[Clip]:
    """The sequences of a DAVIS-layout root (``JPEGImages/480p/SEQ`` and
    ``Annotations/480p/SEQ/00000.png``) named by ``split``: a text file of sequence names, or
    the name of one under ``ImageSets/`` (``val`` → ``ImageSets/2017/val.txt``)."""
    data = Path(root)
    names = _split_names(data, split)
    return [
        Clip(
            name=seq,
            video=data / "JPEGImages" / "480p" / seq,
            masks=(str(data / "Annotations" / "480p" / seq / "00000.png"),),
            points=None,
            out=Path(out) / seq,
            where=f"sequence {seq}",
        )
        for seq in names
    ]


def _split_names(root: Path, split: str) -> list[str]:
    candidates = [Path(split), *(root / "ImageSets" / y / f"{split}.txt" for y in ("2017", "2016"))]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise InputError(
            f"--split {split} is neither a file nor a split under {root / 'ImageSets'}; give a "
            "text file of sequence names (one a line) or a split name such as val"
        )
    names = [
        line.split()[0] for line in found.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    if not names:
        raise InputError(f"the split file {found} names no sequence; one sequence name a line")
    return list(dict.fromkeys(names))


def duplicate_outs(clips: Sequence[Clip]) -> dict[int, str]:
    """Rows whose ``out`` another row already uses (index → one-line message)."""
    seen: dict[Path, Clip] = {}
    errors = {}
    for i, clip in enumerate(clips):
        key = clip.out.resolve()
        if key in seen:
            errors[i] = (
                f"out {clip.out} is also the out of {seen[key].where}; give each clip its own out"
            )
        else:
            seen[key] = clip
    return errors


# -- the Ray pool --------------------------------------------------------------------------------
def import_ray() -> ModuleType:
    """Ray, or one line naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--ray needs Ray, which is not installed: {RAY_EXTRA}") from exc
    return ray


def connect(ray: ModuleType, address: str) -> bool:
    """Join (``auto``, an address) or start (``local``) a Ray cluster; True if this call
    started one (the caller shuts it down). A session already connected is reused."""
    if ray.is_initialized():
        return False
    if address not in ("auto", "local"):
        check_reachable(address)
    try:
        with warnings.catch_warnings():
            # Ray's notice of a future change for num_gpus=0 (CPU workers keep seeing no GPU)
            warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
            if address == "local":
                ray.init(include_dashboard=False, logging_level="WARNING")
            else:
                ray.init(address=address, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach a Ray cluster at --ray {address} ({str(exc).splitlines()[0]}); start "
            "one with `ray start --head` or use --ray local"
        ) from exc
    return True


def check_reachable(address: str) -> None:
    """Fail in seconds on a cluster address nothing listens at (Ray itself retries for
    minutes): ``HOST:PORT`` or ``ray://HOST:PORT``."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            f"--ray {address} is not auto, local or an address HOST:PORT (ray://HOST:PORT); "
            "give the address `ray start --head` printed"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach a Ray cluster at --ray {address} ({exc.strerror or exc}); start one "
            "with `ray start --head` there, or use --ray local"
        ) from exc


@dataclass(frozen=True)
class WorkerPool:
    """The Ray actors a pool runs on: how many, what each holds (CPU cores, GPUs, memory in
    bytes; 0: unknown), and how often a key is sent again after its worker died."""

    workers: int
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    memory_per_worker: int = 0
    max_retries: int = 2


@dataclass
class PoolStats:
    """What the pool reports as it goes (for one progress bar)."""

    alive: int = 0
    started: int = 0
    died: int = 0


class _Worker:
    """The state one Ray actor holds (``setup()``, e.g. a loaded extractor) and the work it runs.

    A ``setup`` that fails with a :class:`DitfError` is kept as the answer to every clip (the
    model cannot load: retrying on another worker would fail the same way).
    """

    def __init__(self, setup: Callable[[], Any]) -> None:
        self.state: Any = None
        self.error: str | None = None
        try:
            self.state = setup()
        except DitfError as exc:
            self.error = str(exc)

    def run(
        self, work: Callable[[Any, Any, int], Any], payload: Any, attempt: int
    ) -> tuple[bool, Any]:
        if self.error is not None:
            return False, self.error
        try:
            return True, work(self.state, payload, attempt)
        except DitfError as exc:
            return False, str(exc)


@dataclass
class _Task:
    key: int
    payload: Any
    attempt: int = 0


def run_pool(
    ray: ModuleType,
    keys: Sequence[int],
    *,
    setup: Callable[[], Any],
    work: Callable[[Any, Any, int], Any],
    prepare: Callable[[int], Any],
    finish: Callable[[int, Any], None],
    fail: Callable[[int, str], None],
    pool: WorkerPool,
    on_change: Callable[[PoolStats], None] | None = None,
) -> PoolStats:
    """Run ``work`` on every key over the ``pool``'s Ray actors.

    ``prepare(key)`` runs on the driver right before a key is sent (returns its payload, or None
    to skip it); ``finish(key, result)`` or ``fail(key, message)`` on the driver when it comes
    back. A worker that dies (a crash, a killed process, a lost node) is replaced and its clip
    sent again, at most ``max_retries`` times; then the clip fails.
    """
    stats = PoolStats()
    for key, ok, value in pool_results(
        ray,
        keys,
        setup=setup,
        work=work,
        prepare=prepare,
        pool=pool,
        on_change=on_change,
        stats=stats,
    ):
        if ok:
            finish(key, value)
        else:
            fail(key, value)
        if on_change is not None:
            on_change(stats)
    return stats


def pool_results(
    ray: ModuleType,
    keys: Iterable[int],
    *,
    setup: Callable[[], Any],
    work: Callable[[Any, Any, int], Any],
    prepare: Callable[[int], Any],
    pool: WorkerPool,
    on_change: Callable[[PoolStats], None] | None = None,
    stats: PoolStats | None = None,
) -> Iterator[tuple[int, bool, Any]]:
    """The pool of :func:`run_pool` as a generator: ``(key, True, result)`` or ``(key, False,
    message)`` as each key comes back, in the order they finish; ``keys`` are read (and
    prepared) only when a worker is free, so at most ``pool.workers`` keys are out at once.
    Closing it kills the workers."""
    with contextlib.closing(RayPool(ray, setup, work, pool, on_change, stats)) as workers:
        source = iter(keys)
        while True:
            while workers.has_room():
                key = next(source, None)
                if key is None:
                    break
                payload = prepare(key)
                if payload is not None:
                    workers.submit(key, payload)
            if not workers.busy:
                return
            yield workers.next_result()


class RayPool:
    """Ray actors, each holding ``setup()``, that run ``work(state, payload, attempt)`` on the
    payloads submitted to them, one at a time each: the caller submits while :meth:`has_room`
    and hears each result from :meth:`next_result`, so it decides how far ahead it reads.

    Actors start with the first payload that needs one (a run with nothing to compute loads no
    model). A worker that dies is replaced and its payload sent again first, at most
    ``pool.max_retries`` times; after that the key comes back as failed.
    """

    def __init__(
        self,
        ray: ModuleType,
        setup: Callable[[], Any],
        work: Callable[[Any, Any, int], Any],
        pool: WorkerPool,
        on_change: Callable[[PoolStats], None] | None = None,
        stats: PoolStats | None = None,
    ) -> None:
        self._ray = ray
        self._actor_cls = ray.remote(_Worker).options(
            num_cpus=pool.cpus_per_worker,
            num_gpus=pool.gpus_per_worker,
            memory=pool.memory_per_worker or None,
            max_restarts=0,
        )
        self._setup, self._work, self.pool = setup, work, pool
        self._on_change = on_change
        self.stats = stats if stats is not None else PoolStats()
        self._idle: list[Any] = []
        self._inflight: dict[Any, tuple[Any, _Task]] = {}
        self._retry: deque[_Task] = deque()

    def has_room(self) -> bool:
        """Whether a new payload would start at once (a worker idle or still to start, and no
        payload of a dead worker waiting to be sent again)."""
        return not self._retry and (bool(self._idle) or self.stats.alive < self.pool.workers)

    @property
    def busy(self) -> int:
        """Payloads submitted whose result has not come back yet."""
        return len(self._inflight) + len(self._retry)

    def submit(self, key: int, payload: Any) -> None:
        """Send ``payload`` to a free worker (starting one if the pool is not full)."""
        self._send(_Task(key, payload))

    def _send(self, task: _Task) -> None:
        if not self._idle:
            if self.stats.alive >= self.pool.workers:
                raise RuntimeError("RayPool.submit without room; call next_result first")
            self.stats.started += 1
            self.stats.alive += 1
            self._idle.append(self._actor_cls.remote(self._setup))
            self._changed()
        actor = self._idle.pop()
        self._inflight[actor.run.remote(self._work, task.payload, task.attempt)] = (actor, task)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.stats)

    def next_result(self) -> tuple[int, bool, Any]:
        """The next payload to finish: ``(key, True, result)`` or ``(key, False, message)``."""
        ray = self._ray
        while True:
            while self._retry and (self._idle or self.stats.alive < self.pool.workers):
                self._send(self._retry.popleft())
            if not self._inflight:
                raise RuntimeError("RayPool.next_result with nothing submitted")
            ready, _ = ray.wait(list(self._inflight), num_returns=1)
            actor, task = self._inflight.pop(ready[0])
            try:
                ok, value = ray.get(ready[0])
            except ray.exceptions.RayActorError:
                self.stats.alive -= 1
                self.stats.died += 1
                ray.kill(actor)
                task.attempt += 1
                self._changed()
                if task.attempt > self.pool.max_retries:
                    return (
                        task.key,
                        False,
                        f"its worker died {task.attempt} time(s) (the partial output is "
                        "discarded); see the Ray logs, then run again",
                    )
                self._retry.appendleft(task)
                continue
            self._idle.append(actor)
            return task.key, ok, value

    def close(self) -> None:
        """Kill every worker (payloads still out are abandoned)."""
        for actor, _ in self._inflight.values():
            self._ray.kill(actor)
        for actor in self._idle:
            self._ray.kill(actor)
        self._inflight.clear()
        self._idle.clear()
        self._retry.clear()
        self.stats.alive = 0


#: Ray counts CPUs and GPUs in units of 1/10000 (ten workers of 0.1 GPU fill one GPU).
_RAY_UNITS = {"CPU": 10_000, "GPU": 10_000, "memory": 1}
#: Each resource a worker asks for: the option that sets it.
_WORKER_OPTIONS = {
    "GPU": "--gpus-per-worker",
    "CPU": "--cpus-per-worker",
    "memory": "--worker-memory",
}


def _worker_needs(pool: WorkerPool) -> dict[str, float]:
    """What one worker asks Ray for, by Ray's resource names (memory in bytes; 0: unknown)."""
    needs = {
        "GPU": pool.gpus_per_worker,
        "CPU": pool.cpus_per_worker,
        "memory": float(pool.memory_per_worker),
    }
    return {name: amount for name, amount in needs.items() if amount > 0}


def _fit(has: float, need: float, name: str) -> int:
    """Workers needing ``need`` of resource ``name`` that ``has`` of it places (Ray's units)."""
    unit = _RAY_UNITS[name]
    return round(has * unit) // max(round(need * unit), 1)


def _amount(name: str, amount: float) -> str:
    if name == "memory":
        return f"{amount / (1 << 30):.1f} GB"
    return f"{amount:g} {name}{'s' if amount > 1 else ''}"


def check_nodes_fit(
    nodes: Sequence[Mapping[str, Any]], pool: WorkerPool, workers_option: str = "--workers"
) -> None:
    """Refuse a pool whose workers the cluster cannot all place, instead of Ray leaving the
    actors pending for ever. ``nodes``: :func:`ray.nodes` (``Alive``, ``Resources`` with
    ``CPU``, ``GPU``, ``memory`` in bytes; a resource a node lacks is absent). A worker is
    placed on one node, so a node holds the fewest of its resources' ``floor(has / need)``,
    and the cluster the sum over its alive nodes. ``workers_option``: the option naming the
    worker count in the message."""
    alive = [node.get("Resources") or {} for node in nodes if node.get("Alive")]
    if not alive:
        raise ConfigError("the Ray cluster has no alive node; start one with `ray start --head`")
    needs = _worker_needs(pool)
    if not any("memory" in node for node in alive):
        needs.pop("memory", None)  # the cluster does not say: Ray decides
    fits = sum(
        min((_fit(node.get(name, 0.0), need, name) for name, need in needs.items()), default=0)
        if needs
        else pool.workers
        for node in alive
    )
    if fits >= pool.workers:
        return
    if fits == 0:
        for name, need in needs.items():
            largest = max(node.get(name, 0.0) for node in alive)
            if _fit(largest, need, name) > 0:
                continue
            option = _WORKER_OPTIONS[name]
            if name == "GPU" and largest == 0:
                raise ConfigError(
                    f"{option} {need:g} but no node of the Ray cluster has a GPU; add a GPU "
                    f"node (ray start --num-gpus N) or drop {option}"
                )
            raise ConfigError(
                f"one worker needs {_amount(name, need)} ({option}) but the largest node of the "
                f"Ray cluster offers {_amount(name, largest)}; lower {option} or add a larger node"
            )
        # each resource is on some node, but no node has them all: name those some lack
        lacking = {
            name: need
            for name, need in needs.items()
            if any(_fit(node.get(name, 0.0), need, name) == 0 for node in alive)
        }
        asked = ", ".join(f"{_amount(n, a)} ({_WORKER_OPTIONS[n]})" for n, a in lacking.items())
        lower = " or ".join(_WORKER_OPTIONS[name] for name in lacking)
        raise ConfigError(
            f"one worker needs {asked} but no node of the Ray cluster has all of them; add a "
            f"node that has, or lower {lower}"
        )
    short = {
        name: need
        for name, need in needs.items()
        if sum(_fit(node.get(name, 0.0), need, name) for node in alive) < pool.workers
    } or needs
    each = ", ".join(f"{_amount(n, a)} ({_WORKER_OPTIONS[n]})" for n, a in short.items())
    raise ConfigError(
        f"{workers_option} {pool.workers} need {each} each but the nodes of the Ray cluster "
        f"hold {fits} such worker(s), each on one node; give {workers_option} {fits} or fewer, "
        "or add nodes"
    )


def check_cluster_fits(
    ray: ModuleType, pool: WorkerPool, workers_option: str = "--workers"
) -> None:
    """:func:`check_nodes_fit` on the cluster ``ray`` is connected to (before any worker starts)."""
    check_nodes_fit(ray.nodes(), pool, workers_option)


class Throughput:
    """Clips done and frames per second since the start (the batch progress bar's postfix)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.frames = 0

    def fps(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.frames / elapsed if elapsed > 0 else 0.0


__all__ = [
    "JOB_COLUMNS",
    "RAY_EXTRA",
    "Clip",
    "PoolStats",
    "RayPool",
    "Throughput",
    "WorkerPool",
    "check_cluster_fits",
    "check_nodes_fit",
    "check_reachable",
    "connect",
    "davis_clips",
    "duplicate_outs",
    "import_ray",
    "pool_results",
    "read_jobs",
    "run_pool",
]
