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
from pathlib import Path

from ._version import __version__
from .errors import ConfigError, DitfError

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


def _add_eval(sub: argparse._SubParsersAction) -> None:
    """``ditf-track eval <benchmark>``: one sub-subcommand per evaluator (``_add_eval_*``)."""
    parser = sub.add_parser(
        "eval",
        help="score results on a standard benchmark",
        description="Score results on a standard benchmark with its official protocol.",
    )
    eval_sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for add in _EVAL_BENCHMARKS:
        add(eval_sub)


def _add_eval_davis(eval_sub: argparse._SubParsersAction) -> None:
    parser = eval_sub.add_parser(
        "davis",
        help="DAVIS video object segmentation: J&F (region J, boundary F)",
        description=(
            "DAVIS semi-supervised J&F with the official davis2017-evaluation conventions: the "
            "first and last frame are not scored, objects are the ids of the first ground-truth "
            "frame, ground-truth 255 counts as background, boundary tolerance 0.008 of the "
            "diagonal. Prints the official global and per-sequence tables."
        ),
    )
    # Where the masks to score come from: exactly one source per run.
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--pred",
        metavar="PRED_ROOT",
        type=Path,
        help="folder of predicted masks, <sequence>/<frame>.png (palette or grayscale ids), "
        "named like the ground-truth frames",
    )
    parser.add_argument(
        "--gt",
        metavar="GT_ROOT",
        type=Path,
        help="ground-truth folder, <sequence>/<frame>.png (e.g. DAVIS/Annotations/480p); "
        "required with --pred",
    )
    parser.add_argument(
        "--sequences",
        metavar="A,B|LIST.txt",
        type=_sequence_list,
        help="sequences to score, in this order: comma-separated names, or a text file with one "
        "name per line such as DAVIS/ImageSets/2017/val.txt (default: every sequence folder of "
        "the ground truth)",
    )
    parser.add_argument(
        "--mode",
        choices=("multi", "binary"),
        help="multi: DAVIS-2017 palette ids, scored per object; binary: DAVIS-2016 {0,255} "
        "masks, one object (ground truth > 0 against prediction > 0). Default: binary when every "
        "first ground-truth frame holds only 0 and 255, else multi",
    )
    parser.add_argument(
        "--json", metavar="OUT.json", type=Path, help="also write the metrics as JSON here"
    )
    parser.add_argument(
        "--csv",
        metavar="DIR",
        type=Path,
        help="also write the official global_results-<set>.csv and "
        "per-sequence_results-<set>.csv into this folder",
    )
    parser.add_argument(
        "--set",
        dest="subset",
        metavar="SET",
        default="val",
        help="subset name used in the CSV file names and table titles (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        metavar="N",
        type=_positive_int,
        help="processes to score with (default: the number of usable CPU cores; 1 = no pool)",
    )
    parser.set_defaults(handler=_run_eval_davis)


def _sequence_list(text: str) -> list[str]:
    """Names from ``a,b,c`` or from a file with one name per line (DAVIS ImageSets style)."""
    path = Path(text)
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read sequence list {path}: {exc}") from None
    else:
        names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no sequence names in {text!r}; use e.g. blackswan,dog")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Right-aligned columns like pandas' to_string(index=False); floats with 3 decimals."""
    cells = [list(columns)] + [
        [v if isinstance(v, str) else f"{v:.3f}" for v in row] for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        " ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells
    )


def _run_eval_davis(args: argparse.Namespace) -> int:
    from .eval.davis import evaluate_davis, write_davis_csvs, write_davis_json

    if args.gt is None:
        raise ConfigError("--pred needs --gt GT_ROOT (the folder of <sequence>/<frame>.png)")

    def progress(done: int, total: int, name: str) -> None:
        log.info("[%d/%d] %s", done, total, name)

    result = evaluate_davis(
        args.pred,
        args.gt,
        sequences=args.sequences,
        mode=args.mode,
        workers=args.workers,
        progress=progress,
    )
    global_columns, global_rows = result.global_table()
    rule = "-" * 27
    print(f"{rule} Global results for {args.subset} {rule}")
    print(_format_table(global_columns, global_rows))
    seq_columns, seq_rows = result.per_sequence_table()
    print(f"\n---------- Per sequence results for {args.subset} ----------")
    print(_format_table(seq_columns, seq_rows))
    if args.json is not None:
        print(f"\nmetrics written to {write_davis_json(result, args.json)}")
    if args.csv is not None:
        paths = write_davis_csvs(result, args.csv, args.subset)
        print(f"CSVs written to {paths[0]} and {paths[1]}")
    return 0


_EVAL_BENCHMARKS: list[Callable[[argparse._SubParsersAction], None]] = [_add_eval_davis]
_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_eval]


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
