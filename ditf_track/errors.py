"""The project's error hierarchy.

Every error a user can cause is a :class:`DitfError` whose message is one line that names the
problem and the fix. The CLI prints that line to stderr and exits non-zero; the napari plugin
shows it as a notification. Programming errors stay ordinary Python exceptions.
"""

from __future__ import annotations


class DitfError(Exception):
    """Base class: a user-facing problem with a one-line, actionable message."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ConfigError(DitfError):
    """An unknown preset, an out-of-range parameter, or options that do not go together."""


class ModelLoadError(DitfError):
    """A model id or folder that cannot be loaded (missing, gated, incomplete, offline)."""


class DeviceError(DitfError):
    """A device that is not available, or that ran out of memory."""


class InputError(DitfError):
    """A video, image, mask, points file or dataset that cannot be used as given."""


class OutputError(DitfError):
    """An output location that cannot be written (e.g. a non-empty folder without --overwrite)."""


class CancelledError(DitfError):
    """A run stopped by the user before it finished."""

    exit_code = 130
