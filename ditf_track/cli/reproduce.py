"""``ditf-track reproduce``: run one of the paper's table rows and put the paper's number beside
the measured one.

The rows are data (:mod:`ditf_track.eval.reproduce`). A row's command is parsed by the parser
``ditf-track`` itself uses and run by the eval subcommand's own handler, so it runs exactly as
typing the command would. Flags after ``--`` are appended to it (argparse keeps the last of a
repeated option: ``-- --limit 20``, ``-- --model ./flux-dev``); the run then records them and
says it is not the row as registered.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._atomic import atomic_path
from ..errors import ConfigError, InputError
from ..eval._run import METRICS_FILE
from ..eval.reproduce import PaperRow, command_text, comparison, find_row, load_rows
from ..outputs import RunDir

USAGE = (
    "ditf-track reproduce (--list | ROW --data PATH --out DIR [--captions FILE.json] "
    "[-- EVAL_FLAGS ...])"
)


class _EvalFlagsParser(argparse.ArgumentParser):
    """Keeps the words after ``--`` verbatim as ``eval_args``: argparse would match them against
    this parser's own positional ROW and refuse them."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(sys.argv[1:] if args is None else args)
        tail: list[str] = []
        if "--" in words:
            cut = words.index("--")
            words, tail = words[:cut], words[cut + 1 :]
        parsed, rest = super().parse_known_args(words, namespace)
        parsed.eval_args = tail
        return parsed, rest


def add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run one of the paper's table rows; the paper's number beside the measured one",
        usage=USAGE,
        description="Run a row of the paper's tables (--list shows them: table, dataset, model, "
        "metric, the paper's number and the command) with its `ditf-track eval` command, then "
        "add a `reproduce` block to the run's metrics.json: the row, the paper's numbers and "
        "the measured ones in percent, their difference, the profile and numerics used and "
        "the settings assumed rather than taken from the authors' code. Flags after -- are "
        "passed to the eval command (the run then records them).",
    )
    # The subparser inherits the root's one-line errors; the split at -- goes in front of them.
    p.__class__ = type("ReproduceParser", (_EvalFlagsParser, type(p)), {})
    p.add_argument("row", nargs="?", metavar="ROW", help="row id, e.g. table9-davis-flux")
    p.add_argument(
        "--list",
        action="store_true",
        help="print every row: id, table, dataset, model, metric, paper's number, command",
    )
    p.add_argument("--data", type=Path, metavar="PATH", help="the row's dataset root")
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder of the run")
    p.add_argument(
        "--captions",
        type=Path,
        metavar="FILE.json",
        help="SPair-71k rows: the authors' per-image captions (without it the runner's prompt "
        "is used and the run's assumed settings say so)",
    )
    p.set_defaults(handler=_run_reproduce, eval_args=[])


def _print_rows(rows: Sequence[PaperRow]) -> None:
    columns = ("id", "table", "dataset", "model", "metric", "paper", "command")
    cells = [
        [r.id, str(r.table), r.dataset, r.model, r.metric, r.paper_text(), command_text(r)]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [list(columns), *cells]) for i in range(6)]
    for line in [list(columns), *cells]:
        print("  ".join([*(c.ljust(w) for c, w in zip(line, widths)), line[6]]).rstrip())


def _run_reproduce(args: argparse.Namespace) -> int:
    if args.list:
        _print_rows(load_rows())
        return 0
    if args.row is None:
        raise ConfigError("reproduce needs a row id or --list (ditf-track reproduce --list)")
    row = find_row(args.row)
    if args.data is None:
        raise ConfigError(f"reproduce {row.id} needs --data PATH, the {row.dataset} root")
    if args.out is None:
        raise ConfigError(f"reproduce {row.id} needs --out DIR for the run's folder")
    argv = [*row.argv(args.data, args.out, args.captions), *args.eval_args]
    if args.captions is not None and not args.captions.is_file():
        raise InputError(
            f"--captions {args.captions} is not a file; pass the authors' "
            "spair_detailed_captions.json, or leave --captions out for the runner's prompt"
        )
    # The package's own parser: the row runs as its typed command would (imported here, as the
    # package imports this module).
    from . import build_parser

    eval_args = build_parser().parse_args(argv)
    code = int(eval_args.handler(eval_args))
    if code != 0:
        return code
    captions = args.captions is not None or "--captions" in args.eval_args
    block = _write_comparison(Path(eval_args.out), row, argv, args.eval_args, captions)
    _print_comparison(block, Path(eval_args.out) / METRICS_FILE)
    return 0


def _write_comparison(
    out: Path, row: PaperRow, argv: list[str], extra: list[str], captions: bool
) -> dict[str, Any]:
    """Add the ``reproduce`` block to the metrics.json the evaluation wrote, under the run
    folder's lock and atomically; the evaluation's own keys are kept as written."""
    path = out / METRICS_FILE
    run_dir = RunDir(out, "reproduce", in_place=True)
    run_dir.acquire()
    try:
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(
                f"cannot read {path} that the evaluation wrote ({exc}); run the row again with "
                "-- --overwrite"
            ) from exc
        block = comparison(row, metrics, argv, extra, captions)
        metrics["reproduce"] = block
        with atomic_path(path, "metrics") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    finally:
        run_dir.release()
    return block


def _number(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}"


def _profile_text(profile: Any) -> str:
    """``official``, or ``official (computed as paper)`` where the profile fell back."""
    if isinstance(profile, dict):
        requested, used = profile.get("requested"), profile.get("used")
        return str(requested) if used == requested else f"{requested} (computed as {used})"
    return "n/a" if profile is None else str(profile)


def _print_comparison(block: dict[str, Any], path: Path) -> None:
    print(
        f"{block['row']}: Table {block['table']}, {block['dataset']}, {block['model']}; "
        f"profile {_profile_text(block['profile'])}, numerics {block['numerics'] or 'n/a'}"
    )
    print(f"{'metric':20s} {'paper':>8s} {'measured':>9s} {'diff':>7s}")
    for v in block["values"]:
        measured = "n/a" if v["measured"] is None else f"{v['measured']:.1f}"
        diff = "" if v["difference"] is None else f"{v['difference']:+.1f}"
        print(f"{v['metric']:20s} {_number(v['paper']):>8s} {measured:>9s} {diff:>7s}")
    if not block["as_registered"]:
        print(f"with extra flags {' '.join(block['extra_args'])}: not the row as registered")
    for text in block["assumed"]:
        print(f"assumed: {text}")
    print(path)
