"""The command line's log output: one line per message, each printed once.

Why: ``logging.basicConfig`` puts a handler on the root logger, and libraries that add their
own handler without turning propagation off (huggingface_hub does) then print every message
twice; Python warnings print their file, line number and source line. The CLI instead logs
each record once, as ``ditf-track: LEVEL: message``, and turns warnings into such records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

FORMAT = "ditf-track: %(levelname)s: %(message)s"
#: The ditf_track/ folder (this module is in ditf_track/cli/): its warnings print as messages alone.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _NotPrintedElsewhere(logging.Filter):
    """Drop records that a handler below the root (a library's own) already prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: Any = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if logger.handlers:
                return False
            if not logger.propagate:
                return True
            logger = logger.parent
        return True


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` replacement: the message alone, as a log record."""
    text = " ".join(str(message).split())
    own = filename.startswith(_PACKAGE_DIR) and issubclass(category, UserWarning)
    if not own:  # a library's warning: say what kind, so it is not read as ours
        text = f"{category.__name__}: {text}"
    logging.getLogger("py.warnings").warning("%s", text)


@contextlib.contextmanager
def cli_logging(verbose: bool = False, stream: TextIO | None = None) -> Iterator[None]:
    """Route log records and warnings to ``stream`` (stderr) for one CLI call, then restore.

    Restoring matters for in-process callers (tests, notebooks) that call ``main`` repeatedly.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_NotPrintedElsewhere())
    saved_level = root.level
    saved_show = warnings.showwarning
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    warnings.showwarning = _show_warning
    try:
        yield
    finally:
        warnings.showwarning = saved_show
        root.removeHandler(handler)
        root.setLevel(saved_level)
