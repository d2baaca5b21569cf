"""The ``perfgate`` command: re-render and merge saved reports without re-running anything.

perfgate report cpu/results.json gpu/results.json -o merged-report
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from perfgate.results import RESULTS_SCHEMA_VERSION, ResultsDocument, ResultsError, load_results


class CliError(RuntimeError):
    """Bad input on the command line; printed as ``perfgate: error: ...`` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``perfgate`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="perfgate",
        description="perfgate: ML inference benchmarks with accuracy and regression gates. "
        "The benchmarks run under pytest (pytest perf ...); this command works on their saved results.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    report = commands.add_parser(
        "report",
        help="render (and merge) reports from saved results.json files",
        description="Render report.md and the Pareto plots from one or more results.json files written by "
        "pytest --perf-report. Several files, one per runner, make one merged report with the runner as a "
        "dimension: which configuration is best on which hardware. Nothing is re-run.",
        epilog="example: perfgate report reports/cpu/results.json reports/gpu/results.json -o merged",
    )
    report.add_argument(
        "results",
        nargs="+",
        type=Path,
        metavar="RESULTS.json",
        help=f"results files (schema version {RESULTS_SCHEMA_VERSION}), one per runner",
    )
    report.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder to write into (created if missing)",
    )
    report.add_argument(
        "--no-plots", action="store_true", help="write report.md only, without matplotlib (default: plots on)"
    )
    report.set_defaults(handler=run_report)
    return parser


def check_runners(documents: Sequence[ResultsDocument]) -> None:
    """Refuse two files of the same runner: their cases would collide in the merged tables.

    :raises CliError: naming both files.
    """
    seen: dict[str, Path | None] = {}
    for doc in documents:
        if doc.runner in seen:
            raise CliError(
                f"{seen[doc.runner]} and {doc.path} both hold runner {doc.runner!r}; "
                "merge results of different runners (pytest --perf-runner NAME)"
            )
        seen[doc.runner] = doc.path


def run_report(args: argparse.Namespace) -> int:
    """``perfgate report``: load, validate, render; prints the files written."""
    from perfgate.report import render

    documents = [load_results(path) for path in args.results]
    check_runners(documents)
    if args.output.exists() and not args.output.is_dir():
        raise CliError(f"output {args.output} exists and is not a folder")
    written = render(args.output, documents, plots=not args.no_plots)
    cases = sum(len(doc.cases) for doc in documents)
    print(f"perfgate: {cases} cases from {len(documents)} runner(s) rendered into {args.output}")
    for path in written:
        print(f"  {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``perfgate`` console script.

    :param argv: arguments without the program name; ``sys.argv[1:]`` when ``None``.
    :returns: the exit status: 0 on success, 2 on bad input.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (ResultsError, CliError) as exc:
        parser.exit(2, f"perfgate: error: {exc}\n")
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":
            raise
        parser.exit(
            2, "perfgate: error: plots need matplotlib (pip install 'perfgate[report]'), or pass --no-plots\n"
        )
    return 2  # unreachable: parser.exit raises SystemExit


if __name__ == "__main__":
    sys.exit(main())
