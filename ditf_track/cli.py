"""The ``ditf-track`` command line. The only module that prints.

``ditf-track VIDEO --mask FIRST.png`` is shorthand for ``ditf-track track VIDEO ...``: a first
argument that is not a subcommand means ``track``. Every :class:`~ditf_track.errors.DitfError`
becomes one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ._version import __version__
from .errors import DitfError

log = logging.getLogger("ditf_track")

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def _add_cache(sub: argparse._SubParsersAction) -> None:
    """``ditf-track cache info|clear``: what the feature/text cache holds, and freeing it."""
    from .cache import DEFAULT_DEVICE_FRACTION, cache_info, clear_cache, format_size

    def sized(count: int, nbytes: int | None = None) -> str:
        return f"{count}" if nbytes is None else f"{count} ({format_size(nbytes)})"

    def info(args: argparse.Namespace) -> int:
        got = cache_info(args.cache_dir)
        share = f"{DEFAULT_DEVICE_FRACTION:.0%}"
        rows = [
            ("cache directory", str(got.directory)),
            ("feature files", sized(got.feature_files, got.feature_bytes)),
            ("clip metadata files", sized(got.clip_files)),
            ("text embedding files", sized(got.text_files, got.text_bytes)),
            ("disk budget (features)", format_size(got.disk_budget or 0)),
            (
                "memory budget (default)",
                f"{format_size(got.device_budget or 0)}, on CUDA at most {share} of free memory",
            ),
        ]
        if got.temp_files:
            rows.append(("unfinished temp files", f"{got.temp_files} (cache clear removes them)"))
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
        return 0

    def clear(args: argparse.Namespace) -> int:
        done = clear_cache(args.cache_dir, text=args.text)
        parts = [
            f"{done.feature_files} feature files ({format_size(done.feature_bytes)})",
            f"{done.clip_files} clip metadata files",
        ]
        if args.text:
            parts.append(f"{done.text_files} text embedding files ({format_size(done.text_bytes)})")
        print(f"freed {format_size(done.freed_bytes)}: {', '.join(parts)}")
        return 0

    cache = sub.add_parser(
        "cache",
        help="show or clear the feature cache",
        description="Per-frame DiTF features and text embeddings are cached on disk (default "
        "$DITF_TRACK_CACHE or ~/.cache/ditf-track) so that a second run extracts nothing.",
    )

    def usage(_args: argparse.Namespace) -> int:
        cache.print_help()
        return 2

    cache.set_defaults(handler=usage)
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    for name, handler, help_text in (
        ("info", info, "print the cache folder, its files, their size and the budgets"),
        ("clear", clear, "delete the cached features (and text embeddings with --text)"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument(
            "--cache-dir",
            metavar="DIR",
            default=None,
            help="cache folder (default: $DITF_TRACK_CACHE or ~/.cache/ditf-track)",
        )
        if name == "clear":
            action.add_argument(
                "--text",
                action="store_true",
                help="also delete the cached text embeddings (re-encoding loads the text encoders)",
            )
        action.set_defaults(handler=handler)


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_cache]


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
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="ditf-track: %(levelname)s: %(message)s",
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
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


if __name__ == "__main__":
    sys.exit(main())
