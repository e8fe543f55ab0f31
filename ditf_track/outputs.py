"""Run records shared by the commands that write result folders: versions, JSON, CSV, resume
logs, and :class:`RunDir`, the one run-folder protocol (refusals, lock, fingerprints, publish).

Every file is written atomically (temporary name, then rename, via :mod:`ditf_track._atomic`);
the per-item log that makes evaluations resumable is an append-only JSON-lines file whose last
line may be cut short by an interruption (it is then ignored and recomputed).
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import hashlib
import io
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ._atomic import atomic_path
from ._version import __version__
from .errors import ConfigError, InputError, OutputError

_PACKAGES = ("torch", "diffusers", "transformers", "numpy", "opencv-python-headless", "pillow")


def environment_versions() -> dict[str, Any]:
    """Versions that can change results: Python, ditf-track, the numeric stack, CUDA."""
    out: dict[str, Any] = {"python": platform.python_version(), "ditf_track": __version__}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # a broken CUDA setup must not stop a result from being written
        out["cuda"] = None
    return out


def to_json_safe(value: Any) -> Any:
    """NaN/inf → None, tuples → lists, numpy scalars → Python numbers (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            value = value.item()
        except (ValueError, TypeError):
            value = value.tolist()
            return to_json_safe(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: str | os.PathLike[str], data: Any, what: str = "JSON file") -> Path:
    """Write ``data`` as indented strict JSON, atomically."""
    out = Path(path)
    text = json.dumps(to_json_safe(data), indent=2, allow_nan=False) + "\n"
    with atomic_path(out, what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def write_csv(
    path: str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    what: str = "CSV file",
) -> Path:
    """Write dict rows under ``columns`` (missing keys empty; floats as repr), atomically."""
    out = Path(path)
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    with atomic_path(out, what) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return out


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "" if math.isnan(value) else str(value)
    return value


# -- the run-folder protocol ------------------------------------------------------------------
#: The marker in ``config.json`` / ``run.json`` that makes a folder a ditf-track run folder; only
#: such folders are ever resumed, replaced or cleaned.
TOOL = "ditf-track"
CONFIG_FILE = "config.json"
STATE_FILE = "run.json"
LOCK_FILE = ".ditf-track.lock"
OWNER_FILE = ".ditf-track.owner"
#: :func:`~ditf_track._atomic.atomic_path`'s temporaries (``.<stem>.<hex>.tmp<suffix>``).
TEMP_PATTERN = ".*.tmp*"
_BOOKKEEPING = frozenset({LOCK_FILE, OWNER_FILE})

#: Called with the :class:`RunDir` right after it takes its lock, before it touches a file.
#: Tests set it to start a second run at exactly that moment (a race without sleeps).
after_lock: Callable[[RunDir], None] | None = None


def file_digest(path: str | os.PathLike[str]) -> str:
    """BLAKE2b of a file's bytes (hex): an input fingerprint that a rename does not change."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or exc}); check the path") from exc
    return h.hexdigest()


def input_digest(path: str | os.PathLike[str]) -> str:
    """:func:`file_digest` of a file; of a folder, BLAKE2b over the names and digests of its
    files (sorted, hidden files left out), so a frame folder's fingerprint follows its frames."""
    p = Path(path)
    if not p.is_dir():
        return file_digest(p)
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")):
        h.update(f.name.encode() + b"\0" + file_digest(f).encode() + b"\n")
    return h.hexdigest()


def listing_digest(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> str:
    """BLAKE2b of the names, sizes and modification times of a dataset's files.

    ``paths`` are files or folders (walked, links followed). A benchmark's data is too large
    to hash by content on every start; a listing catches a dataset that was replaced,
    re-extracted or edited (at the price of refusing a resume after a mere ``touch``, which
    ``--overwrite`` answers).
    """
    roots = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    h = hashlib.blake2b(digest_size=16)
    for root in map(Path, roots):
        for folder, _, files in sorted(os.walk(root, followlinks=True)) or [
            (str(root.parent), [], [root.name])
        ]:
            for name in sorted(files):
                try:
                    st = os.stat(os.path.join(folder, name))
                except OSError:
                    continue
                h.update(f"{folder}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A run's state file (``run.json`` / ``config.json``); unreadable → one-line torn state."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputError(
            f"{p} is unreadable ({type(exc).__name__}): a torn run state; pass --overwrite to "
            "start again or pick another --out"
        ) from exc
    if not isinstance(data, dict):
        raise OutputError(
            f"{p} is not a run record: a torn run state; pass --overwrite to start again or "
            "pick another --out"
        )
    return data


def is_run_record(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a readable JSON object carrying the ditf-track marker."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("tool") == TOOL


def refuse_input_overlap(
    out: str | os.PathLike[str],
    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
    option: str = "--out",
) -> None:
    """Refuse an output that is, or is a folder holding, one of ``inputs`` (label, path), or
    an existing file inside an input folder.

    An output there could be replaced or cleaned, taking the input with it.
    """
    target = Path(out).resolve()
    for label, inp in inputs:
        if inp is None:
            continue
        source = Path(inp).resolve()
        if target == source or target in source.parents:
            raise OutputError(
                f"{option} {out} is or holds the {label} {inp}; writing there could destroy "
                f"it: pick another {option}"
            )
        if source.is_dir() and source in target.parents and target.is_file():
            raise OutputError(
                f"{option} {out} would replace a file of the {label} {inp}; pick another {option}"
            )


def check_writable_file(path: str | os.PathLike[str], option: str) -> None:
    """Fail now, not after an hour of work, if ``path`` cannot be written.

    Creates the parent folder (as the final write would) and a probe file in it.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{option} {p} is a folder; pass a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p.parent, prefix=f".{p.stem}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise OutputError(
            f"cannot write {option} {p} ({exc.strerror or exc}); pick a writable folder"
        ) from exc


def _entries(folder: Path) -> list[Path]:
    """What ``folder`` holds besides a lock's bookkeeping files ([] for a missing folder)."""
    try:
        return [p for p in folder.iterdir() if p.name not in _BOOKKEEPING]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def discard_run(folder: str | os.PathLike[str], patterns: Sequence[str]) -> bool:
    """Delete what an abandoned ditf-track run left in ``folder`` (a worker's staging folder):
    the files its record (``config.json`` or ``run.json``) lists, those matching ``patterns``
    (what the command writes), its lock and temporary files, the record last; then the
    subfolders and ``folder`` where that emptied them. A folder without a ditf-track record is
    left as it is unless empty, and any other file stays (with its folders). Returns whether
    ``folder`` is gone."""
    root = Path(folder)
    if not root.is_dir():
        return not root.exists()
    records = [root / CONFIG_FILE, root / STATE_FILE]
    ours = [r for r in records if is_run_record(r)]
    if ours:
        inside = root.resolve()
        listed = {str(n) for r in ours for n in read_state(r).get("files") or []}
        doomed = {root / n for n in (*listed, *_BOOKKEEPING)}
        doomed.update(p for pattern in (*patterns, TEMP_PATTERN) for p in root.glob(pattern))
        for path in [*sorted(doomed - set(records)), *records]:
            if path.is_file() and inside in path.resolve().parents:
                path.unlink()
        for sub in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
    if not any(root.iterdir()):
        root.rmdir()
    return not root.exists()


class RunDir:
    """The output folder of one run: refusal rules, a lock, atomic state, input fingerprints.

    Every command that writes a folder goes through this class:

    * ``--out`` may not be, or hold, an input (video, frame folder, mask, points file, data);
    * a non-empty ``--out`` needs ``resume`` or ``overwrite``, and then must be a ditf-track run
      folder (``config.json`` with ``"tool": "ditf-track"``); nothing else is ever deleted,
      and on ``overwrite`` only the files that run recorded (or the command's ``patterns``);
    * one writer at a time: a :mod:`filelock` lock in the work folder, with the holder's pid
      in a note beside it, so a second run is refused at its start naming the first. The
      kernel drops the lock of a killed process, so a stale lock file never blocks ``resume``;
    * state files are written atomically; an unreadable one is a torn state, one line;
    * :meth:`check_fingerprint` compares content hashes of the inputs and the settings with
      the run being resumed (or the finished run), so a resume never mixes two inputs.

    ``in_place=False`` (track, match, inspect) writes into ``OUT.incomplete/`` beside ``OUT``
    and :meth:`publish` renames it to ``OUT``; ``in_place=True`` (the evaluations) writes into
    ``OUT`` itself and resumes there (their append-only per-item logs are the resume state).
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        command: str,
        *,
        inputs: Sequence[tuple[str, str | os.PathLike[str] | None]] = (),
        patterns: Sequence[str] = (),
        resume: bool = False,
        overwrite: bool = False,
        in_place: bool = False,
    ) -> None:
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pass one")
        self.given = Path(out)
        self.out = self.given.resolve()
        if self.out.parent == self.out:
            raise OutputError(f"--out {out} is the file-system root; pick a folder of its own")
        self.command = command
        self.inputs = list(inputs)
        self.patterns = tuple(patterns)
        self.resume = resume
        self.overwrite = overwrite
        self.in_place = in_place
        self.work = self.out if in_place else self.out.with_name(f"{self.out.name}.incomplete")
        #: The state of the run being continued: ``run.json`` of an interrupted run, or
        #: ``config.json`` (in place, or a finished run resumed with nothing left to do).
        self.previous: dict[str, Any] | None = None
        #: True when ``resume`` found a finished, published run and nothing to continue.
        self.complete = False
        self._lock: FileLock | None = None
        self._created_work = False

    # -- opening ---------------------------------------------------------------------------
    def open(self) -> RunDir:
        """Check the folder, take the lock, clean what a fresh start replaces.

        Raises:
            OutputError: ``--out`` is a file, an input, non-empty without resume/overwrite, not
                a ditf-track run folder, not writable, locked by another run, or torn.
            ConfigError: resume together with overwrite.
        """
        refuse_input_overlap(self.given, self.inputs)
        if not self.in_place:
            refuse_input_overlap(self.work, self.inputs)
        for folder in {self.out, self.work}:
            if folder.exists() and not folder.is_dir():
                raise OutputError(f"--out {folder} is a file; pass a folder")
        published = _entries(self.out)
        if published:
            if not (self.resume or self.overwrite):
                raise OutputError(
                    f"output folder {self.out} exists and is not empty; pass --overwrite to "
                    "replace it, --resume to continue, or another --out"
                )
            config = self.out / CONFIG_FILE
            if self.in_place and config.is_file():
                self.previous = read_state(config)
            if not is_run_record(config):
                raise OutputError(
                    f"{self.out} is not a ditf-track run folder (no ditf-track config.json) and "
                    "ditf-track never replaces or resumes into a folder it did not write: pick "
                    "another --out"
                )
        self.acquire()
        try:
            if self.in_place:
                self._open_in_place()
            else:
                self._open_work(bool(published))
        except BaseException:
            self.close()
            raise
        return self

    def _open_in_place(self) -> None:
        if self.overwrite:
            self.previous = None
            self._delete_matching(self.out)
        elif not self.resume:
            self.previous = None
        self._delete_temporaries(self.out)

    def _open_work(self, published: bool) -> None:
        state = self.work / STATE_FILE
        config = self.work / CONFIG_FILE
        held = _entries(self.work)
        if state.exists():
            recorded = read_state(state)
        elif config.exists():
            recorded = read_state(config)  # killed between its config.json and the rename
        else:
            recorded = None
        if held and (recorded is None or recorded.get("tool") != TOOL):
            raise OutputError(
                f"{self.work} holds files ditf-track did not write (no ditf-track run.json); "
                "move them away or pick another --out"
            )
        if self.resume:
            self._delete_temporaries(self.work)
            if recorded is not None:
                self.previous = recorded
            elif published:
                self.previous = read_state(self.out / CONFIG_FILE)
                self.complete = True
            return
        self._delete_matching(self.work)
        for name in (STATE_FILE, CONFIG_FILE):
            (self.work / name).unlink(missing_ok=True)
        left = _entries(self.work)
        if left:
            raise OutputError(
                f"{self.work} holds {left[0].name}, which this command does not write; move "
                "it away or pick another --out"
            )

    def _delete_matching(self, folder: Path) -> None:
        try:
            for pattern in self.patterns:
                for path in folder.glob(pattern):
                    if path.is_file() and path.name not in _BOOKKEEPING:
                        path.unlink()
        except OSError as exc:
            raise OutputError(f"cannot clean {folder} ({exc}); pick a writable --out") from exc
        self._delete_temporaries(folder)

    @staticmethod
    def _delete_temporaries(folder: Path) -> None:
        for path in folder.glob(TEMP_PATTERN):
            if path.is_file():
                path.unlink(missing_ok=True)

    # -- the lock --------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self) -> None:
        """Create the work folder and take its lock; refuse if another run holds it."""
        if self._lock is not None:
            return
        existed = self.work.exists()
        try:
            self.work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot create output folder {self.work} ({exc.strerror or exc}); pick a "
                "writable --out"
            ) from exc
        self._created_work = self._created_work or not existed
        lock = FileLock(str(self.work / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise OutputError(
                f"another ditf-track run{self._holder()} is writing {self.out}; wait for it to "
                "finish or pick another --out"
            ) from None
        except OSError as exc:
            raise OutputError(
                f"cannot lock output folder {self.work} ({exc.strerror or exc}); pick a "
                "writable --out"
            ) from exc
        self._lock = lock
        try:
            write_json(
                self.work / OWNER_FILE,
                {"pid": os.getpid(), "host": platform.node(), "command": self.command},
                "run owner note",
            )
        except BaseException:
            self.close()
            raise
        if after_lock is not None:
            after_lock(self)

    def _holder(self) -> str:
        try:
            pid = json.loads((self.work / OWNER_FILE).read_text(encoding="utf-8"))["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        return f" (pid {pid})"

    def release(self) -> None:
        """Drop the lock and its bookkeeping files (a killed run leaves them; harmless)."""
        if self._lock is None:
            return
        for name in (OWNER_FILE, LOCK_FILE):
            (self.work / name).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunDir]:
        """Hold the lock for a block (a no-op when it is already held)."""
        if self.held:
            yield self
            return
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def close(self) -> None:
        """Release the lock; remove the work folder if this run made it and left it empty."""
        self.release()
        created = self._created_work and not self.in_place and self.work.is_dir()
        if created and not any(self.work.iterdir()):
            self.work.rmdir()

    def __enter__(self) -> RunDir:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state and fingerprints ------------------------------------------------------------
    def write_state(self, data: Mapping[str, Any]) -> None:
        """Write the resume state (``run.json`` in the work folder), atomically."""
        name = CONFIG_FILE if self.in_place else STATE_FILE
        write_json(self.work / name, {"tool": TOOL, "command": self.command, **data}, "run state")

    def check_fingerprint(self, fingerprint: Mapping[str, Any]) -> None:
        """Refuse to continue (or call finished) a run of other inputs or settings.

        ``fingerprint`` maps names to settings and to input digests (:func:`input_digest`);
        it is compared with the ``fingerprint`` recorded by the run being resumed.
        """
        if self.previous is None:
            return
        old = self.previous.get("fingerprint")
        where = self.work if self.work.exists() and not self.complete else self.out
        if not isinstance(old, Mapping):
            raise OutputError(
                f"{where} records no fingerprint of its inputs, so it cannot be resumed safely; "
                "pass --overwrite to start again or pick another --out"
            )
        flat_old, flat_new = _flatten(old), _flatten(to_json_safe(fingerprint))
        diffs = sorted(
            k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k)
        )
        if not diffs:
            return
        key = diffs[0]
        if key.startswith("inputs.") or key.endswith("_digest"):
            change = f"the {key.removeprefix('inputs.').removesuffix('_digest')} changed"
        else:
            change = f"{key}: {flat_old.get(key)!r} there, {flat_new.get(key)!r} now"
        raise ConfigError(
            f"{where} holds a run with other settings or inputs ({change}); resume with the same "
            "ones, pass --overwrite to start again, or pick another --out"
        )

    # -- publication -----------------------------------------------------------------------
    def publish(self, config: Mapping[str, Any]) -> Path:
        """Write ``config.json`` (listing the files written) and move the work folder to OUT.

        A previous run in OUT (``overwrite``) loses only the files its ``config.json`` lists;
        if anything else is there, the new files are moved in one by one, ``config.json`` last.
        """
        if self.in_place:
            raise RuntimeError("an in-place run has nothing to publish")
        written = sorted(
            p.relative_to(self.work).as_posix()
            for p in self.work.rglob("*")
            if p.is_file()
            and p.name not in _BOOKKEEPING
            and p.name not in (STATE_FILE, CONFIG_FILE)
            and not fnmatch.fnmatch(p.name, TEMP_PATTERN)
        )
        record = {"tool": TOOL, "command": self.command, **config, "files": written}
        write_json(self.work / CONFIG_FILE, record, "run configuration")
        (self.work / STATE_FILE).unlink(missing_ok=True)
        try:
            if _entries(self.out):
                self._remove_previous()
            if self.out.is_dir() and not _entries(self.out):
                self.out.rmdir()
            if not self.out.exists():
                os.rename(self.work, self.out)
                self.work = self.out
                self._created_work = False
            else:
                for name in [*written, CONFIG_FILE]:
                    target = self.out / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self.work / name, target)
        except OSError as exc:
            raise OutputError(
                f"cannot move the finished run into {self.out} ({exc}); it is complete in "
                f"{self.work}"
            ) from exc
        self.close()
        if self.work != self.out and self.work.is_dir():
            with contextlib.suppress(OSError):
                for sub in sorted(self.work.rglob("*"), reverse=True):
                    sub.rmdir()
                self.work.rmdir()
        return self.out

    def _remove_previous(self) -> None:
        config = self.out / CONFIG_FILE
        if not is_run_record(config):
            raise OutputError(
                f"{self.out} was filled by something else while this run was writing; the "
                f"finished run is in {self.work}: move it yourself or run again with another --out"
            )
        listed = json.loads(config.read_text(encoding="utf-8")).get("files") or []
        config.unlink()
        emptied: set[Path] = set()
        for name in listed:
            path = (self.out / str(name)).resolve()
            if self.out in path.parents and path.is_file():
                path.unlink()
                emptied.update(p for p in path.parents if self.out in p.parents)
        # Only folders that held the listed files, never an empty folder the user made.
        for sub in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()


class RecordLog:
    """An append-only JSON-lines log of finished items, keyed by ``key``: the resume state."""

    def __init__(self, path: str | os.PathLike[str], key: str) -> None:
        self.path = Path(path)
        self.key = key

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished records by key; a torn last line (an interrupted write) is dropped."""
        if not self.path.is_file():
            return {}
        records: dict[str, dict[str, Any]] = {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                if n == len(lines) - 1:
                    break  # interrupted mid-write: recompute that item
                raise OutputError(
                    f"{self.path} line {n + 1} is not JSON ({exc}); delete the folder or pass "
                    "--overwrite"
                ) from exc
            records[str(rec[self.key])] = rec
        return records

    def rewrite(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Replace the log with ``records`` (drops a torn last line before appending)."""
        text = "".join(json.dumps(to_json_safe(r), allow_nan=False) + "\n" for r in records)
        with atomic_path(self.path, "record log") as tmp:
            tmp.write_text(text, encoding="utf-8")

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record and flush it to disk before returning."""
        line = json.dumps(to_json_safe(record), allow_nan=False) + "\n"
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise OutputError(
                f"cannot append to {self.path} ({exc}); pick a writable --out"
            ) from exc
