"""napari's reader preference for video files: this plugin's reader, or napari's choice.

A plugin cannot force napari to use its reader. Without a preference napari asks which
reader to use ("Choose reader"), and ``viewer.open(path)`` picks napari's builtin reader, which
decodes the whole video into memory. ``napari --plugin napari-ditf-track video.mp4`` chooses
this reader once; :func:`set_reader_preference` makes it napari's choice for every video
(``settings.plugins.extension2reader``, the table of Preferences → Plugins), and
:func:`reset_reader_preference` undoes it.
"""

from __future__ import annotations

from collections.abc import Mapping

from napari.settings import get_settings

from ditf_track.video import VIDEO_EXTENSIONS

__all__ = [
    "PLUGIN_NAME",
    "VIDEO_PATTERNS",
    "reader_preference_set",
    "reset_reader_preference",
    "set_reader_preference",
]

PLUGIN_NAME = "napari-ditf-track"
#: napari matches these fnmatch patterns case-sensitively on Linux, so both cases are set.
VIDEO_PATTERNS: tuple[str, ...] = tuple(
    f"*{ext}" for base in VIDEO_EXTENSIONS for ext in (base, base.upper())
)


def _table() -> dict[str, str]:
    return dict(get_settings().plugins.extension2reader)


def reader_preference_set() -> bool:
    """Whether napari opens every video extension with this plugin's reader."""
    table = _table()
    return all(table.get(pattern) == PLUGIN_NAME for pattern in VIDEO_PATTERNS)


def set_reader_preference() -> dict[str, str | None]:
    """Make this plugin napari's reader for ``.mp4 .avi .mov .mkv`` files (saved in napari's
    settings, like ticking "remember" in napari's reader dialog).

    Returns the preferences it replaced, pattern → reader (``None``: there was none), for
    :func:`reset_reader_preference`.
    """
    table = _table()
    previous = {pattern: table.get(pattern) for pattern in VIDEO_PATTERNS}
    table.update(dict.fromkeys(VIDEO_PATTERNS, PLUGIN_NAME))
    get_settings().plugins.extension2reader = table
    return previous


def reset_reader_preference(previous: Mapping[str, str | None] | None = None) -> None:
    """Undo :func:`set_reader_preference`: restore the ``previous`` preferences it returned, or
    without them drop the video patterns that name this plugin (others' stay)."""
    table = _table()
    if previous is None:
        previous = {p: None for p in VIDEO_PATTERNS if table.get(p) == PLUGIN_NAME}
    for pattern, reader in previous.items():
        if reader is None:
            table.pop(pattern, None)
        else:
            table[pattern] = reader
    get_settings().plugins.extension2reader = table
