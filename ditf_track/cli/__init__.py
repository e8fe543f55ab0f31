"""The ``ditf-track`` command line. The only package that prints.

``ditf-track VIDEO --mask FIRST.png`` is shorthand for ``ditf-track track VIDEO ...``: a first
argument that is not a subcommand means ``track``. Every :class:`~ditf_track.errors.DitfError`
becomes one line on stderr and a non-zero exit.

One module per command (``track``, ``features`` for extract and inspect, ``match``, ``cache``,
``eval``); ``_options`` holds the option groups they share and the one builder of each extractor,
tracker and matcher they describe.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .._version import __version__
from ..errors import DitfError
from ._logging import cli_logging
from ._options import Handler
from ._options import tracker_config as _tracker_config  # noqa: F401  (the plugin's tests)
from .batch import add_batch
from .cache import add_cache
from .eval import add_eval
from .features import add_extract, add_inspect
from .match import add_match
from .reproduce import add_reproduce
from .track import add_track

_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_track,
    add_extract,
    add_inspect,
    add_cache,
    add_match,
    add_eval,
    add_reproduce,
    add_batch,
]


class _OneLineParser(argparse.ArgumentParser):
    """argparse without its usage block on errors: a wrong option is one line, like every error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="ditf-track",
        description=(
            "Diffusion Transformer features (DiTF) for mask and keypoint propagation in video, "
            "image-pair matching and the standard evaluators. "
            "`ditf-track VIDEO --mask FIRST.png` is short for `ditf-track track VIDEO ...`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ditf-track {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail (to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def _command_names() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _default_to_track(argv: list[str]) -> list[str]:
    """Insert ``track`` when the first positional argument is not a subcommand."""
    names = _command_names()
    if "track" not in names:
        return argv
    for i, arg in enumerate(argv):
        if arg in ("-h", "--help", "--version"):
            return argv
        if arg in ("-v", "--verbose"):
            continue
        if arg in names:
            return argv
        return [*argv[:i], "track", *argv[i:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(_default_to_track(args_list))
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        with cli_logging(args.verbose):
            return handler(args)
    except DitfError as exc:
        print(f"ditf-track: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "ditf-track: interrupted; nothing incomplete was left looking complete "
            "(run again with --resume to continue where supported)",
            file=sys.stderr,
        )
        return 130


__all__ = ["build_parser", "main"]
