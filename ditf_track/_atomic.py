"""Atomic file writes: write under a temporary name in the target folder, then rename.

One scheme for every file the package writes: :func:`atomic_path` for a file written in one
go, :func:`temporary_path` and :func:`move_into_place` for a writer that stays open while the
file grows (the streaming safetensors writer). The temporaries are named
``.<stem>.<12 hex>.tmp<suffix>``, which :data:`ditf_track.outputs.TEMP_PATTERN` recognises.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError


def temporary_path(final: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``final``, after creating ``final``'s folder.

    The caller (or the library it calls: PIL, OpenCV, ffmpeg) creates the file, so it gets the
    usual permissions (umask), unlike ``tempfile.mkstemp``'s 0600.

    Raises:
        OutputError: the folder cannot be created.
    """
    out = Path(final)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create folder {out.parent} ({exc}); pick a writable one"
        ) from exc
    # Keep the extension last: ffmpeg and OpenCV pick the container from it.
    return out.with_name(f".{out.stem}.{uuid.uuid4().hex[:12]}.tmp{out.suffix}")


def move_into_place(tmp: Path, final: str | os.PathLike[str], what: str = "file") -> Path:
    """Rename the finished temporary ``tmp`` over ``final``; on failure remove ``tmp``.

    ``os.replace`` is atomic within one file system, so readers see the old file or the whole
    new one.

    Raises:
        OutputError: the file cannot be moved into place.
    """
    out = Path(final)
    try:
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {what} {out} ({exc}); pick a writable folder") from exc
    return out


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], what: str = "file") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it over ``final``.

    On any error the temporary file is removed and ``final`` is left untouched.

    Raises:
        OutputError: the folder cannot be created or the file cannot be written or moved into
            place.
    """
    out = Path(final)
    tmp = temporary_path(out)
    try:
        yield tmp
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {what} {out} ({exc}); pick a writable folder") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    move_into_place(tmp, out, what)
