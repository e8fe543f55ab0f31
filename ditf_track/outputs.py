"""Run records shared by the commands that write result folders: versions, JSON, CSV, resume logs.

Every file is written atomically (temporary name, then rename, via :mod:`ditf_track._atomic`);
the per-item log that makes evaluations resumable is an append-only JSON-lines file whose last
line may be cut short by an interruption (it is then ignored and recomputed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ._atomic import atomic_path
from ._version import __version__
from .errors import ConfigError, OutputError

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


def prepare_run_dir(
    out: str | os.PathLike[str],
    *,
    owned: Sequence[str],
    resume: bool,
    overwrite: bool,
) -> Path:
    """Make ``out`` ready for a run that writes the files named in ``owned``.

    A non-empty folder is refused unless ``resume`` (keep what is there and continue) or
    ``overwrite`` (delete the ``owned`` files first; other files are left alone).
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path} is a file; pass a folder")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one")
    if path.is_dir() and any(path.iterdir()) and not (resume or overwrite):
        raise OutputError(
            f"output folder {path} is not empty; pass --resume to continue the run in it, "
            "--overwrite to start again, or another --out"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in owned:
                (path / name).unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot prepare output folder {path} ({exc}); pick a writable one"
        ) from exc
    return path


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


def check_resume_config(path: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> None:
    """Refuse to resume a run whose ``config.json`` fingerprint differs from this one."""
    p = Path(path)
    if not p.is_file():
        return
    try:
        old = json.loads(p.read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"cannot read {p} ({exc}); pass --overwrite to start again") from exc
    new = to_json_safe(fingerprint)
    if old is None or old == new:
        return
    diffs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    key = diffs[0]
    raise ConfigError(
        f"{p.parent} holds a run with other settings ({key}: {old.get(key)!r} there, "
        f"{new.get(key)!r} now); resume with the same options, use another --out, or --overwrite"
    )
