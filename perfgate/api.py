"""perfgate from Python: run a matrix or one case, or build a case to time it yourself.

:func:`run` and :func:`run_case` go through the same pytest session as ``pytest perf`` (in this
process): the same collection, timing through pytest-benchmark, repeats and confirmations, gates,
baselines and report, so a notebook's result is the one CI would get. :func:`build_case` stops
after the build, for a caller that measures the runtime its own way (``benchmarks/``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfgate.results import CaseResult, ResultsDocument


class RunError(RuntimeError):
    """pytest could not run the matrix at all (a usage error, a broken matrix, an interrupted run)."""


@dataclass
class RunResults:
    """What :func:`run` returns: pytest's exit code and the run's ``results.json`` document.

    :param exit_code: 0 when every selected case passed its gates, as ``pytest perf`` exits.
    :param document: the cases and the run's metadata, as ``--perf-report`` writes them.
    """

    exit_code: int
    document: ResultsDocument

    @property
    def cases(self) -> list[CaseResult]:
        return self.document.cases

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def case(self, case_id: str) -> CaseResult:
        for result in self.cases:
            if result.case_id == case_id:
                return result
        raise KeyError(f"no case {case_id!r} in this run; ran: {', '.join(r.case_id for r in self.cases) or 'none'}")


def run(
    matrix: str | os.PathLike[str],
    *,
    select: Iterable[str] | None = None,
    markers: str | None = None,
    compare: bool = False,
    refresh: bool = False,
    report: str | os.PathLike[str] | None = None,
    runner: str | None = None,
    profile: str | None = None,
    repeats: int | None = None,
    root: str | os.PathLike[str] | None = None,
    pytest_args: Sequence[str] = (),
) -> RunResults:
    """Run a matrix's cases, gated, and return their results.

    :param matrix: the matrix file.
    :param select: case ids to run (exactly these; default: every case the matrix generates here).
    :param markers: a ``-m`` expression (``"cpu and not slow"``).
    :param compare: judge latency against this runner's baseline (``--benchmark-compare``).
    :param refresh: write this runner's baselines (``--perf-refresh-baselines``).
    :param report: write ``results.json``, ``report.md`` and the plots into this folder.
    :param runner: the runner id (default: derived from the hardware, as under pytest).
    :param profile: the matrix profile to run.
    :param repeats: sessions per case (``--perf-repeats``).
    :param root: the project folder, which holds ``baselines/`` and the cache (default: the
        current directory).
    :param pytest_args: anything else for pytest (``["-x"]``, ``["--perf-isolate"]``).
    :raises RunError: the run could not start or was interrupted; the message says why.
    """
    import pytest

    matrix_file = Path(matrix).resolve()
    if not matrix_file.is_file():
        raise RunError(f"{matrix_file}: no such matrix file")
    root_dir = Path(root or Path.cwd()).resolve()
    args = [*_tests(matrix_file), "--perf-matrix", str(matrix_file), "--rootdir", str(root_dir), "-p", "no:cacheprovider"]
    args += ["-m", markers] if markers else []
    args += ["--benchmark-compare"] if compare else []
    args += ["--perf-refresh-baselines"] if refresh else []
    args += ["--perf-report", str(Path(report).resolve())] if report else []
    args += ["--perf-runner", runner] if runner else []
    args += ["--perf-profile", profile] if profile else []
    args += ["--perf-repeats", str(repeats)] if repeats else []
    collector = _Collector(set(select) if select is not None else None)
    exit_code = int(pytest.main([*args, *pytest_args], plugins=[collector]))
    if collector.document is None or exit_code in (
        pytest.ExitCode.INTERRUPTED,
        pytest.ExitCode.INTERNAL_ERROR,
        pytest.ExitCode.USAGE_ERROR,
    ):
        raise RunError(f"pytest exited {exit_code} before the cases ran: see its output above")
    if collector.unknown:
        raise RunError(f"no such case(s) in {matrix_file}: {', '.join(sorted(collector.unknown))}")
    return RunResults(exit_code, collector.document)


def run_case(matrix: str | os.PathLike[str], case_id: str, **options: Any) -> CaseResult:
    """Run one case (build, accuracy, timing, gates) and return its result; ``options`` as :func:`run`."""
    return run(matrix, select=[case_id], **options).case(case_id)


def build_case(
    matrix: str | os.PathLike[str],
    case_id: str,
    *,
    root: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    runner: str = "api",
) -> Any:
    """Build and load one case as ``pytest perf`` does, and return it (a
    :class:`perfgate.execution.CaseRun`): ``.runtime.bind(x)`` then ``.runtime.run()`` is one
    inference; ``.close()`` releases it. Nothing is timed, gated or stored.
    """
    from perfgate import hardware
    from perfgate.cache import ArtifactCache
    from perfgate.execution import CaseRun
    from perfgate.matrix import ALL_PROFILES, load_matrix
    from perfgate.session import PerfgateSession

    loaded = load_matrix(Path(matrix), ALL_PROFILES)
    case = next((c for c in loaded.cases if c.id == case_id), None)
    if case is None:
        raise KeyError(f"no case {case_id!r} in {matrix}")
    root_dir = Path(root or Path.cwd())
    cache_dir = Path(cache or os.environ.get("PERFGATE_CACHE") or root_dir / ".perfgate_cache")
    session = PerfgateSession(
        matrix=loaded,
        hardware=hardware.detect(),
        runner=runner,
        cache=ArtifactCache(cache_dir),
        baseline_root=root_dir / "baselines",
        progress=lambda line: None,
    )
    built = CaseRun(case, session, nodeid=case.id)
    built.build()
    return built


def _tests(matrix_file: Path) -> list[str]:
    """The suite to collect: the matrix folder's own test modules (with its conftest and the
    project's ini file), else perfgate's one test under an empty ini (not perfgate's own)."""
    if any(matrix_file.parent.glob("test_*.py")):
        return [str(matrix_file.parent)]
    from perfgate import suite_test

    ini = Path(tempfile.mkdtemp(prefix="perfgate-api-")) / "pytest.ini"
    ini.write_text("[pytest]\n")
    return [str(Path(suite_test.__file__)), "-c", str(ini)]


class _Collector:
    """A pytest plugin for one :func:`run`: keeps the selected cases, and takes the run's document."""

    def __init__(self, select: set[str] | None) -> None:
        self.select = select
        self.unknown: set[str] = set()
        self.document: ResultsDocument | None = None

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        if self.select is None:
            return
        from perfgate.suite_plugin import nodeid_case_id

        ids = {item: nodeid_case_id(item.nodeid) for item in items}
        self.unknown = self.select - set(ids.values())
        deselected = [item for item in items if ids[item] not in self.select]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if ids[item] in self.select]

    def pytest_unconfigure(self, config: Any) -> None:
        from perfgate.suite_plugin import COLLECTED, run_document

        if COLLECTED in config.stash:
            self.document = run_document(config)
