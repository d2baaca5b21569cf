"""The ``perfgate`` command: take one model to a Pareto chart, re-render and merge saved reports,
and read the history of runs.

perfgate optimize my_models.py:wine_mlp --data my_models.py:wine -o out
perfgate report cpu/results.json gpu/results.json -o merged-report
perfgate history show digits_resnet-fp32-torch_cpu-b1 --store perf-history.db
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from perfgate.history import (
    MIN_CHANGE_POINTS,
    ChangePoint,
    HistoryError,
    HistoryStore,
    Point,
    change_points,
    format_ms,
    merge,
    plot_series,
)
from perfgate.report import text_table
from perfgate.results import RESULTS_SCHEMA_VERSION, ResultsDocument, ResultsError, load_results


class CliError(RuntimeError):
    """Bad input on the command line; printed as ``perfgate: error: ...`` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``perfgate`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="perfgate",
        description="perfgate: ML inference benchmarks with accuracy and regression gates. "
        "The benchmarks run under pytest (pytest perf ...); this command takes one model through every "
        "technique and backend (optimize), and works on saved results (report, history).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_optimize_parser(commands)
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
    add_history_parser(commands)
    return parser


HISTORY_ENV = "PERFGATE_HISTORY"


def add_optimize_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``perfgate optimize``: one model through every technique and backend that applies here."""
    optimize = commands.add_parser(
        "optimize",
        help="run one model through every technique and backend that applies here: report, Pareto chart, matrix file",
        description="Build the matrix of one model (every technique and backend that applies to it on this "
        "machine), run it with the accuracy gates as pytest perf does, and write DIR/matrix.toml (commit it to "
        "gate CI with it), DIR/results.json, DIR/report.md and the Pareto chart DIR/pareto-MODEL.png; then "
        "print the best configuration per accuracy constraint and batch size.",
        epilog="example: perfgate optimize my_models.py:wine_mlp --data my_models.py:wine "
        "--metric my_models.py:balanced_accuracy -o out",
    )
    optimize.add_argument(
        "target",
        nargs="?",
        metavar="TARGET",
        help="the model's factory, MODULE:FUNCTION or path/to/file.py:FUNCTION, called with a "
        "perfgate.ModelContext (as a matrix's [models.X] factory); or use --model",
    )
    optimize.add_argument(
        "--model",
        type=Path,
        metavar="FILE",
        help="instead of TARGET: an .onnx file (its reference is ONNX Runtime on the file), or a whole torch "
        "module saved with torch.save(model, path) (.pt/.pth), loaded with torch.load(weights_only=False), "
        "which runs code from the file: only files you trust (its class must import: --pythonpath)",
    )
    optimize.add_argument(
        "--data",
        required=True,
        metavar="MODULE:FUNCTION",
        help="the data loader, () -> perfgate.ModelData (a .py path works too)",
    )
    optimize.add_argument(
        "--metric",
        metavar="NAME|MODULE:FUNCTION",
        help="a registered metric (top1, mae, mse, r2) or your (outputs, labels) -> float "
        "(default: top1 for integer labels, else fidelity to FP32 only)",
    )
    optimize.add_argument(
        "--metric-direction",
        choices=("higher", "lower"),
        help="which way your own metric is better (default: higher; a registered metric knows its own)",
    )
    optimize.add_argument(
        "--kind",
        choices=("torch", "classical", "onnx"),
        help="what the factory returns (default: found by calling it once; what it trains is cached)",
    )
    optimize.add_argument(
        "--backends", metavar="A,B", help="only these backends (default: every one that runs here)"
    )
    optimize.add_argument(
        "--techniques", metavar="X,Y", help="only these techniques (default: every one that applies)"
    )
    optimize.add_argument("--batch-sizes", default="1,32", metavar="N,M", help="batch sizes (default: 1,32)")
    optimize.add_argument(
        "-o", "--output", type=Path, default=Path("perfgate-optimize"), metavar="DIR",
        help="folder to write into (default: perfgate-optimize)",
    )  # fmt: skip
    optimize.add_argument(
        "--pythonpath",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a folder to import from (repeatable); a .py path's folder and the current one are added as needed",
    )
    optimize.set_defaults(handler=run_optimize)


def run_optimize(args: argparse.Namespace) -> int:
    """``perfgate optimize``: the plan, the run, the best configurations."""
    import shlex

    from perfgate.optimize import OptimizeError, Request, optimize, parse_batch_sizes, split_names

    if (args.target is None) == (args.model is None):
        raise CliError("optimize: give the model either as TARGET (MODULE:FUNCTION) or as --model FILE (.onnx, .pt)")
    try:
        request = Request(
            target=args.target,
            model_file=args.model,
            data=args.data,
            output=args.output,
            metric=args.metric,
            metric_direction=args.metric_direction,
            kind=args.kind,
            backends=split_names(args.backends),
            techniques=split_names(args.techniques),
            batch_sizes=parse_batch_sizes(args.batch_sizes),
            pythonpath=args.pythonpath,
            command=shlex.join(["perfgate", *args.argv]),
        )
        return optimize(request)
    except OptimizeError as exc:
        raise CliError(str(exc)) from None


def _store_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--store",
        type=Path,
        metavar="PATH",
        default=default,
        help=f"the history store, a SQLite file (default: ${HISTORY_ENV})",
    )


def _series_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", metavar="CASE", help="the case id, as `perfgate history list` shows it")
    parser.add_argument(
        "--fingerprint",
        metavar="HASH",
        help="only the runs of this runner fingerprint (a prefix is enough; default: every fingerprint)",
    )
    parser.add_argument(
        "--accepted-only", action="store_true", help="only accepted runs (default: every recorded run)"
    )
    _store_option(parser, argparse.SUPPRESS)


def add_history_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``perfgate history`` and its actions: list, show, plot, merge."""
    history = commands.add_parser(
        "history",
        help="read the history of runs: list cases, show a case's series and change points, plot, merge",
        description="Read the history store that pytest --perf-history PATH (or $PERFGATE_HISTORY) appends "
        "every run to. Without an action, lists the cases.",
    )
    _store_option(history, None)
    history.set_defaults(handler=run_history_list)
    actions = history.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="every case with its run count, last p50 and runners")
    _store_option(listing, argparse.SUPPRESS)
    listing.set_defaults(handler=run_history_list)
    show = actions.add_parser(
        "show",
        help="a case's runs, one line each, and the change points found in them",
        description="A case's runs in time order, then the change points in its series (PELT on log p50, "
        "see docs/history.md), per runner fingerprint.",
    )
    _series_options(show)
    show.add_argument(
        "--min-effect",
        type=float,
        default=0.02,
        metavar="FRACTION",
        help="the smallest change of the p50 reported (default: 0.02, 2%%)",
    )
    show.set_defaults(handler=run_history_show)
    plot = actions.add_parser("plot", help="draw a case's series with its change points as a PNG")
    _series_options(plot)
    plot.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.png", help="the PNG to write")
    plot.set_defaults(handler=run_history_plot)
    merge = actions.add_parser(
        "merge",
        help="merge several runners' stores into one",
        epilog="example: perfgate history merge cpu/history.db gpu/history.db -o all.db",
    )
    merge.add_argument("sources", nargs="+", type=Path, metavar="STORE.db", help="the stores to merge")
    merge.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="OUT.db",
        help="the merged store (added to if it exists)",
    )
    merge.set_defaults(handler=run_history_merge)


def combine_shards(documents: Sequence[ResultsDocument]) -> list[ResultsDocument]:
    """One document per runner: the files of one runner are shards of its run (pytest-split jobs,
    docs/ci.md) and join when their cases are disjoint.

    :raises CliError: two files of one runner hold the same case; the message names both and the cases.
    """
    by_runner: dict[str, ResultsDocument] = {}
    sources: dict[str, dict[str, Path | None]] = {}
    for doc in documents:
        seen = sources.setdefault(doc.runner, {})
        twice = sorted(case.case_id for case in doc.cases if case.case_id in seen)
        if twice:
            raise CliError(
                f"{seen[twice[0]]} and {doc.path} both hold case(s) {', '.join(twice)} of runner {doc.runner!r}; "
                "merge the shards of one run, or results of different runners (pytest --perf-runner NAME)"
            )
        seen.update({case.case_id: doc.path for case in doc.cases})
        if doc.runner not in by_runner:
            by_runner[doc.runner] = ResultsDocument(dict(doc.meta), list(doc.cases), doc.path)
            continue
        joined = by_runner[doc.runner]
        joined.cases = sorted([*joined.cases, *doc.cases], key=lambda case: case.case_id)
        joined.meta.setdefault("shards", [joined.meta.get("run_id")]).append(doc.meta.get("run_id"))
    return list(by_runner.values())


def run_report(args: argparse.Namespace) -> int:
    """``perfgate report``: load, validate, render; prints the files written."""
    from perfgate.report import render

    documents = combine_shards([load_results(path) for path in args.results])
    if args.output.exists() and not args.output.is_dir():
        raise CliError(f"output {args.output} exists and is not a folder")
    written = render(args.output, documents, plots=not args.no_plots)
    cases = sum(len(doc.cases) for doc in documents)
    print(
        f"perfgate: {cases} cases from {len(documents)} runner(s) ({len(args.results)} file(s)) rendered into {args.output}"
    )
    for path in written:
        print(f"  {path}")
    return 0


def history_store(args: argparse.Namespace) -> HistoryStore:
    """The store named by --store, else $PERFGATE_HISTORY; it must exist (reading never creates one).

    :raises CliError: neither names a store.
    """
    path = args.store or os.environ.get(HISTORY_ENV)
    if not path:
        raise CliError(f"no history store: pass --store PATH or set {HISTORY_ENV}")
    return HistoryStore(path, create=False)


def run_history_list(args: argparse.Namespace) -> int:
    """``perfgate history [list]``: one line per case."""
    store = history_store(args)
    infos = store.cases()
    if not infos:
        print(f"perfgate: {store.path} holds no runs yet")
        return 0
    rows = [
        [
            i.case_id,
            str(i.runs),
            str(i.accepted),
            format_ms(i.last_p50_s),
            i.last_started[:19],
            ", ".join(i.runners),
        ]
        for i in infos
    ]
    for line in text_table(["case", "runs", "accepted", "last p50 ms", "last run (UTC)", "runner(s)"], rows):
        print(line)
    return 0


def case_series(store: HistoryStore, args: argparse.Namespace) -> dict[str, list[Point]]:
    """The case's runs per fingerprint, those matching --fingerprint only.

    :raises CliError: the case, or its fingerprint, is not in the store.
    """
    points = store.series(args.case, accepted_only=args.accepted_only)
    if not points:
        known = [i.case_id for i in store.cases()]
        hint = "; it holds no cases yet" if not known else ": see `perfgate history list`"
        raise CliError(f"case {args.case!r} has no runs in {store.path}{hint}")
    groups: dict[str, list[Point]] = {}
    for point in points:
        if args.fingerprint is None or point.fingerprint.startswith(args.fingerprint):
            groups.setdefault(point.fingerprint, []).append(point)
    if not groups:
        found = ", ".join(sorted({p.fingerprint for p in points}))
        raise CliError(
            f"case {args.case!r} has no runs of fingerprint {args.fingerprint} in {store.path} (it has: {found})"
        )
    return groups


def series_lines(points: Sequence[Point], changes: Sequence[ChangePoint]) -> list[str]:
    """One line per run (numbered from 1, as the change lines count), then the changes found."""
    rows = [
        [
            str(n),
            p.started[:19],
            p.run_id,
            p.commit[:7] or "-",
            format_ms(p.p50_s),
            str(p.sessions),
            p.status + (" (refresh)" if p.refreshed else ""),
            "yes" if p.accepted else f"no: {p.reason}" if p.reason else "no",
        ]
        for n, p in enumerate(points, start=1)
    ]
    lines = text_table(["#", "time (UTC)", "run", "commit", "p50 ms", "sessions", "status", "accepted"], rows)
    if len(points) < MIN_CHANGE_POINTS:
        return [*lines, f"no change point sought: {len(points)} runs, {MIN_CHANGE_POINTS} needed"]
    return [*lines, *(change_line(points, c) for c in changes)] if changes else [*lines, "no change point"]


def change_line(points: Sequence[Point], change: ChangePoint) -> str:
    """``change at run 7 (commit abc1234..def5678): p50 1.400 ms -> 1.550 ms (+10.7%)``."""
    if change.before_commit and change.after_commit:
        where = f"commit {change.before_commit[:7]}..{change.after_commit[:7]}"
    else:
        where = f"runs {change.before_run}..{change.after_run}"
    return (
        f"change at run {change.index + 1} ({where}): p50 {format_ms(change.before_p50_s)} ms -> "
        f"{format_ms(change.after_p50_s)} ms ({change.magnitude:+.1%})"
    )


def run_history_show(args: argparse.Namespace) -> int:
    """``perfgate history show CASE``: the series and its change points, per fingerprint."""
    groups = case_series(history_store(args), args)
    for fingerprint, points in groups.items():
        runners = ", ".join(dict.fromkeys(p.runner for p in points))
        print(f"{args.case} on fingerprint {fingerprint} (runner {runners}): {len(points)} runs")
        for line in series_lines(points, change_points(points, min_effect=args.min_effect)):
            print(f"  {line}")
    return 0


def run_history_plot(args: argparse.Namespace) -> int:
    """``perfgate history plot CASE -o FILE.png``: the latest fingerprint's series, unless one is named."""
    groups = case_series(history_store(args), args)
    fingerprint = max(groups, key=lambda f: groups[f][-1].started)
    points = groups[fingerprint]
    try:
        plot_series(points, change_points(points), args.output, title=f"{args.case} ({fingerprint[:8]})")
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":
            raise
        raise CliError("plots need matplotlib: pip install 'perfgate[report]'") from exc
    others = sorted(set(groups) - {fingerprint})
    note = f" (other fingerprints: {', '.join(others)}; pick one with --fingerprint)" if others else ""
    print(
        f"perfgate: {len(points)} runs of {args.case} on fingerprint {fingerprint} plotted into {args.output}{note}"
    )
    return 0


def run_history_merge(args: argparse.Namespace) -> int:
    """``perfgate history merge A.db B.db -o OUT.db``: prints what was added."""
    counts = merge(args.sources, args.output)
    print(
        f"perfgate: merged {len(args.sources)} store(s) into {args.output}: {counts.runs} runs and "
        f"{counts.cases} case results added, {counts.duplicates} already there"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``perfgate`` console script.

    :param argv: arguments without the program name; ``sys.argv[1:]`` when ``None``.
    :returns: the exit status: 0 on success, 2 on bad input.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.handler(args))
    except (ResultsError, CliError, HistoryError) as exc:
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
