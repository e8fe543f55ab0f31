"""Atomic file writes: write under a temporary name in the target folder, then rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], what: str = "file") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it over ``final``.

    The caller (or the library it calls: PIL, OpenCV, ffmpeg) creates the temporary file, so
    it gets the usual permissions (umask), unlike ``tempfile.mkstemp``'s 0600. ``os.replace``
    is atomic within one file system, so readers see the old file or the whole new one. On any
    error the temporary file is removed and ``final`` is left untouched.

    Raises:
        OutputError: the folder cannot be created or the file cannot be moved into place.
    """
    out = Path(final)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create folder {out.parent} ({exc}); pick a writable one"
        ) from exc
    # Keep the extension last: ffmpeg and OpenCV pick the container from it.
    tmp = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:12]}.tmp{out.suffix}")
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {what} {out} ({exc}); pick a writable folder") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
