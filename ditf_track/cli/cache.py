"""``ditf-track cache info|clear``: what the feature/text cache holds, and freeing it."""

from __future__ import annotations

import argparse

from ..cache import DEFAULT_DEVICE_FRACTION, cache_info, clear_cache, format_size


def _sized(count: int, nbytes: int | None = None) -> str:
    return f"{count}" if nbytes is None else f"{count} ({format_size(nbytes)})"


def run_info(args: argparse.Namespace) -> int:
    got = cache_info(args.cache_dir)
    share = f"{DEFAULT_DEVICE_FRACTION:.0%}"
    rows = [
        ("cache directory", str(got.directory)),
        ("feature files", _sized(got.feature_files, got.feature_bytes)),
        ("clip metadata files", _sized(got.clip_files)),
        ("text embedding files", _sized(got.text_files, got.text_bytes)),
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


def run_clear(args: argparse.Namespace) -> int:
    done = clear_cache(args.cache_dir, text=args.text)
    parts = [
        f"{done.feature_files} feature files ({format_size(done.feature_bytes)})",
        f"{done.clip_files} clip metadata files",
    ]
    if args.text:
        parts.append(f"{done.text_files} text embedding files ({format_size(done.text_bytes)})")
    print(f"freed {format_size(done.freed_bytes)}: {', '.join(parts)}")
    return 0


def add_cache(sub: argparse._SubParsersAction) -> None:
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
        ("info", run_info, "print the cache folder, its files, their size and the budgets"),
        ("clear", run_clear, "delete the cached features (and text embeddings with --text)"),
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
