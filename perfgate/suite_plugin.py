"""The hooks of a perfgate run: markers, parametrization, the ``perf_case`` fixture, the gates'
verdicts, baselines, history and report. Logic lives in the modules.

:mod:`perfgate.plugin` registers this module only in a run that loads a perfgate matrix, and
everything here acts only on the ``perf_case`` tests: a project's other tests keep pytest's own
selection, markers and exit codes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from perfgate import hardware as hw
from perfgate.baselines import (
    BaselineError,
    baseline_path,
    cached_baseline,
    changed_only,
    refresh,
)
from perfgate.cache import ArtifactCache
from perfgate.drift import Drift, baseline_drift
from perfgate.guard import CaseError, CaseTimeout
from perfgate.matrix import ALL_PROFILES, MatrixError, load_matrix
from perfgate.model_kinds import MODEL_KINDS
from perfgate.passes import PASS_RESULT, forget
from perfgate.plugin import matrix_path, option, rooted
from perfgate.report import regression_lines, terminal_lines, write_report
from perfgate.results import CaseResult
from perfgate.session import PerfgateSession
from perfgate.techniques import FAMILIES

SESSION = pytest.StashKey["PerfgateSession | None"]()
COLLECTED = pytest.StashKey[list[CaseResult]]()
RUNNER = pytest.StashKey[str]()
COMPARE = pytest.StashKey[bool]()  # --benchmark-compare was given: perfgate's gate is on
CALL_OUTCOME = pytest.StashKey[tuple[str, str | None, str | None]]()  # status, error, details
RESULT_PROPERTY = "perfgate_result"


@dataclass
class RunState:
    """What this run keeps beside the cases: its journal, its entry in the machine-wide registry
    of perfgate runs, its isolation child, and what it found of an earlier run that died."""

    run_id: str
    # To the microsecond: the history orders runs by it, and in-process runs start within one second.
    started: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat())
    journal: Any = None  # perfgate.journal.RunJournal, opened when the first case starts
    registry: Any = None  # perfgate.concurrency.RunRegistry
    worker: Any = None  # perfgate.isolation.CaseWorker under --perf-isolate
    lost: list[Any] = field(default_factory=list)  # perfgate.journal.LostRun
    current: Any = None  # the CaseRun running now, for a hang's record
    passes: Any = None  # perfgate.passes.LaterPasses: repeats and confirmations after the other cases
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


STATE = pytest.StashKey[RunState]()

# Markers with a meaning of their own; every other marker a case carries (its backend's, a family's,
# one the matrix declares) is registered from the loaded matrix (``_register_markers``).
MARKERS = {
    "cpu": "perfgate case that runs on the CPU",
    "gpu": "perfgate case that runs on a CUDA GPU",
    "slow": "full-size-shape models, left out of a perfgate run that selects no markers",
    **FAMILIES,
    **{kind.marker: f"perfgate cases of {kind.returns}" for kind in MODEL_KINDS.values() if kind.marker},
}
REGISTERED = pytest.StashKey[set[str]]()
PERF_ITEMS = pytest.StashKey[int]()  # perf cases collected, before -m deselected any


def _runner_id(config: pytest.Config) -> str:
    explicit = option(config, "perf_runner") or os.environ.get("PERFGATE_RUNNER")
    if explicit:
        return explicit
    hooked = config.hook.pytest_perfgate_runner_id(config=config, hardware=hw.detect())
    return hooked or hw.detect().runner_id()


def _baseline_root(config: pytest.Config) -> Path:
    return rooted(config, option(config, "perf_baselines") or config.getini("perf_baselines"))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REGISTERED] = set()
    _register_markers(config, MARKERS)
    # A cache entry that failed its check is rebuilt and the case goes on: the warning says so,
    # and must not fail the case in a project that turns warnings into errors.
    config.addinivalue_line("filterwarnings", "default::perfgate.cache.PerfgateCacheWarning")
    config.stash[COLLECTED] = []
    config.stash[SESSION] = None
    from perfgate.concurrency import RUN_ID_ENV
    from perfgate.journal import new_run_id

    # An isolation child shares its parent's run id; one started by hand gets its own.
    config.stash[STATE] = RunState(run_id=(os.environ.get(RUN_ID_ENV) if _serving(config) else None) or new_run_id())
    config.pluginmanager.register(ResultCollector(config), "perfgate-results")
    runner = config.stash[RUNNER] = _runner_id(config)
    config.stash[COMPARE] = bool(config.getoption("benchmark_compare", None))
    _check_options(config)
    if option(config, "perf_gate") == "history":
        config.stash[COMPARE] = (
            True  # the history gate judges every case, with or without --benchmark-compare
        )
    if config.getoption("benchmark_compare", None) is True and not config.getoption("benchmark_compare_fail", None):
        # A bare --benchmark-compare is perfgate's gate against this runner's baseline (the
        # documented CI command). pytest-benchmark would also compare with the latest of its own
        # saved runs (a rolling baseline, or none: "Can't compare"), so that comparison is left
        # out. A named run (--benchmark-compare=0001) or --benchmark-compare-fail is the user's
        # request to pytest-benchmark, and stays.
        config.option.benchmark_compare = None
    if config.stash[COMPARE] or option(config, "perf_refresh_baselines"):
        try:
            cached_baseline(baseline_path(_baseline_root(config), runner))  # the cases read it from this cache
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
    if config.getoption("markers", False):
        perfgate_session(config)  # `pytest --markers` lists the markers the matrix's cases carry too


def _register_markers(config: pytest.Config, markers: dict[str, str]) -> None:
    """Register the markers perfgate's cases carry (once each), so that --strict-markers accepts them."""
    registered = config.stash[REGISTERED]
    for name, description in markers.items():
        if name not in registered:
            registered.add(name)
            config.addinivalue_line("markers", f"{name}: {description}")


def matrix_markers(matrix: Any) -> dict[str, str]:
    """Every marker of the matrix's cases, described by where it comes from: derived from the
    registries through the cases, so a backend a plugin registers gets its marker with no edit here."""
    sources: dict[str, set[str]] = {}
    for case in matrix.cases:
        for marker in case.markers:
            sources.setdefault(marker, set()).add(case.backend)
    return {
        marker: MARKERS.get(marker) or f"perfgate cases on {', '.join(sorted(backends))}"
        for marker, backends in sorted(sources.items())
    }


def _serving(config: pytest.Config) -> bool:
    """This process is a ``--perf-isolate`` child: it serves cases and writes nothing of its own."""
    return bool(option(config, "perf_serve"))


def _check_options(config: pytest.Config) -> None:
    """Refuse the option combinations under which a verdict or a refresh would mean nothing."""
    if option(config, "perf_isolate") and config.getoption("numprocesses", None):
        raise pytest.UsageError(
            "--perf-isolate and -n (pytest-xdist) both run cases in other processes: pick one "
            "(xdist already survives a crashed worker, but disables timing)"
        )
    if option(config, "perf_refresh_changed"):
        if not config.stash[COMPARE]:
            raise pytest.UsageError("--perf-refresh-changed needs --benchmark-compare: it refreshes what the gate judged")  # fmt: skip
        config.option.perf_refresh_baselines = True
    untimed = _timing_disabled(config)
    if untimed and config.stash[COMPARE]:
        raise pytest.UsageError(
            f"--benchmark-compare needs timings, and {untimed} disables them: the gate would judge nothing "
            "and every case would pass. Drop it, or drop --benchmark-compare for an accuracy-only run"
        )
    if option(config, "perf_trace_failures") and option(config, "perf_no_trace_failures"):
        raise pytest.UsageError("--perf-trace-failures and --perf-no-trace-failures contradict each other: pick one")
    energy_s = option(config, "perf_energy_s")
    if energy_s is not None and not (0 <= energy_s < float("inf")):
        raise pytest.UsageError(f"--perf-energy-s {energy_s}: seconds >= 0 (0: do not measure energy)")
    repeats = option(config, "perf_repeats")
    if repeats is not None and repeats < 1:
        raise pytest.UsageError(f"--perf-repeats {repeats}: a case needs at least 1 session")
    if untimed and option(config, "perf_refresh_baselines"):
        raise pytest.UsageError(
            f"--perf-refresh-baselines needs timings, and {untimed} disables them: drop it"
        )
    storage = str(config.getoption("benchmark_storage", "") or "")
    root = _baseline_root(config).resolve()
    folder = Path(storage.removeprefix("file://")).expanduser()
    if storage.startswith("file://") and (root == (resolved := (config.invocation_params.dir / folder).resolve()) or root in resolved.parents):  # fmt: skip
        raise pytest.UsageError(
            f"--benchmark-storage {storage} points into perfgate's baselines folder {root}: pytest-benchmark "
            "would save its runs beside the baselines. Keep its storage elsewhere (the default .benchmarks)"
        )


def _repeats(config: pytest.Config) -> int:
    """Sessions per case: ``--perf-repeats``, else 3 for a refresh (the baseline's spread between
    sessions is what the gate judges against) and 1 for a compare or a plain run."""
    repeats = option(config, "perf_repeats")
    if repeats is not None:
        return int(repeats)
    return 3 if option(config, "perf_refresh_baselines") else 1


def _timing_disabled(config: pytest.Config) -> str | None:
    """The option that turns timing off in this run (xdist or --benchmark-disable), or ``None``."""
    if config.getoption("numprocesses", None):
        return "-n (pytest-xdist)"
    if config.getoption("benchmark_disable", False):
        return "--benchmark-disable"
    if config.getoption("benchmark_skip", False):
        return "--benchmark-skip"
    return None


def perfgate_session(config: pytest.Config) -> PerfgateSession:
    """The session state, created when the first test asks for a case."""
    session = config.stash[SESSION]
    if session is None:
        from perfgate.accuracy import METRICS
        from perfgate.backends import BACKENDS
        from perfgate.techniques import TECHNIQUES

        config.hook.pytest_perfgate_register(backends=BACKENDS, techniques=TECHNIQUES, metrics=METRICS)
        matrix_file = matrix_path(config)
        profile = option(config, "perf_profile") or os.environ.get("PERFGATE_PROFILE")
        try:
            matrix = load_matrix(matrix_file, profile)
        except MatrixError as exc:
            raise pytest.UsageError(str(exc)) from None
        _register_markers(config, matrix_markers(matrix))
        judge = _history_judge(config, matrix) if option(config, "perf_gate") == "history" else None
        session = config.stash[SESSION] = PerfgateSession(
            matrix=matrix,
            hardware=hw.detect(),
            runner=config.stash[RUNNER],
            cache=ArtifactCache(_cache_dir(config)),
            baseline_root=_baseline_root(config),
            progress=lambda line: _progress(config, line),
            on_step=lambda case_id, step: _journal(config, "step", case_id=case_id, step=step),
            on_hang=lambda message: _on_hang(config, message),
            concurrent_runs=lambda: _concurrent_runs(config),
            history_judge=judge,
            trace_failures=_trace_failures(config),
            trace_cases=frozenset(option(config, "perf_trace_case") or ()),
            # --perf-refresh-changed refreshes the failures, already profiled: no case pays for more.
            profile_refresh=bool(option(config, "perf_refresh_baselines") and not option(config, "perf_refresh_changed")),
            energy_s=_energy_seconds(config),
        )
    return session


def _energy_seconds(config: pytest.Config) -> float:
    """The energy loop's seconds; none where timing is off (an accuracy-only run measures nothing)."""
    return 0.0 if _timing_disabled(config) else float(option(config, "perf_energy_s") or 0.0)


def _trace_failures(config: pytest.Config) -> bool:
    """Profile a confirmed regression: asked for, or by default under the gate, unless refused."""
    if option(config, "perf_no_trace_failures"):
        return False
    return bool(option(config, "perf_trace_failures") or config.stash[COMPARE] or option(config, "perf_gate") == "history")


def _history_path(config: pytest.Config, matrix: Any = None) -> Path | None:
    """The history store: --perf-history, else PERFGATE_HISTORY, else the matrix's [history] path."""
    value = option(config, "perf_history") or os.environ.get("PERFGATE_HISTORY")
    if value:
        return rooted(config, value)
    if matrix is None:
        session = config.stash.get(SESSION, None)
        matrix = session.matrix if session is not None else None
    return matrix.history.get("path") if matrix is not None else None


def _history_judge(config: pytest.Config, matrix: Any) -> Any:
    """The history gate, as a function of a case and its sessions (``--perf-gate history``)."""
    import dataclasses

    from perfgate.history import HistoryError, HistoryPolicy, HistoryStore, fingerprint, history_verdict
    from perfgate.sessions import session_p50

    path = _history_path(config, matrix)
    if path is None:
        raise pytest.UsageError(
            "--perf-gate history needs a history store: pass --perf-history PATH, set PERFGATE_HISTORY, "
            "or set [history] path in the matrix (docs/history.md)"
        )
    try:
        store = HistoryStore(path)
        store.cases()  # opened now: a path that cannot hold a store is one usage error, not one per case
    except HistoryError as exc:
        raise pytest.UsageError(f"--perf-gate history: {exc} (under pytest: --perf-history PATH)") from None
    print_, _ = fingerprint(hw.detect().to_dict())
    settings = {k: v for k, v in matrix.history.items() if k != "path"}
    policy = HistoryPolicy(**settings)

    def judge(case: Any, sessions: list[Any]) -> Any:
        rule = dataclasses.replace(policy, min_effect=case.regression.threshold)
        return history_verdict(store, case.id, print_, session_p50(sessions), rule)

    return judge


def _cache_dir(config: pytest.Config) -> Path:
    return rooted(
        config, option(config, "perf_cache") or os.environ.get("PERFGATE_CACHE") or ".perfgate_cache"
    )


def _timing_here(config: pytest.Config) -> bool:
    """This process times cases: not an xdist worker or a run with timing disabled."""
    return _timing_disabled(config) is None


def _start_run(config: pytest.Config) -> RunState:
    """Open the run journal and join the machine-wide registry, once, when the first case starts.

    Reads the journals of earlier runs first: one that died is reported in this run's summary.
    """
    state = config.stash[STATE]
    if state.journal is not None or _serving(config) or _is_worker(config):
        return state
    from perfgate.concurrency import RunRegistry
    from perfgate.journal import RunJournal, lost_runs

    folder = _cache_dir(config) / "runs"
    state.lost = lost_runs(folder)
    for lost in state.lost:
        _progress(config, f"warning: {lost.line()}")
    header = {"runner": config.stash[RUNNER], "args": list(config.invocation_params.args), "cwd": str(config.invocation_params.dir)}  # fmt: skip
    state.journal = RunJournal(folder, state.run_id, header)
    if _timing_here(config):
        state.registry = RunRegistry(state.run_id, {"cwd": header["cwd"], "started": state.run_id})
    return state


def _journal(config: pytest.Config, event: str, **fields: Any) -> None:
    journal = config.stash[STATE].journal
    if journal is not None:
        journal.write(event, **fields)


def _concurrent_runs(config: pytest.Config) -> list[dict[str, Any]]:
    state = config.stash[STATE]
    if _serving(config) and state.registry is None:
        from perfgate.concurrency import RunRegistry

        state.registry = RunRegistry(state.run_id, {}, register=False)  # the parent is registered
    return state.registry.others() if state.registry is not None else []


def _on_hang(config: pytest.Config, message: str) -> None:
    """A case is stuck in native code past its limit: record it, write what finished, and exit.

    Runs in the guard's watchdog thread; the main thread is blocked in the library call.
    """
    state = config.stash[STATE]
    run = state.current
    if run is not None:
        run.result.status, run.result.error = "error", message
        config.stash[COLLECTED].append(run.result)
        _journal(config, "result", result=run.result.to_dict())
    _progress(config, f"{message}; writing the finished cases' results and exiting. Run with --perf-isolate to have a hang cost only its case (docs/failure-handling.md)")  # fmt: skip
    with contextlib.suppress(Exception):
        _finish(config, int(pytest.ExitCode.TESTS_FAILED))
    with contextlib.suppress(Exception):
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            pytest_terminal_summary(reporter, 1, config)
    os._exit(int(pytest.ExitCode.TESTS_FAILED))


def _progress(config: pytest.Config, line: str) -> None:
    """Show a step on the terminal, past output capturing, with the case's place in the matrix.

    Routine steps (building, timing) show only with -v, where pytest already gives each case a line;
    by default the dots stay on one line and only rare long steps (training) interrupt them.
    """
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    session = config.stash.get(SESSION, None)
    if session is not None:
        if session.counter.is_step(line) and config.get_verbosity() < 1:
            return
        line = session.counter.line(line)
    if reporter is None or config.get_verbosity() < 0:
        return
    if capture is None:
        reporter.write_line(f"perfgate: {line}")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"perfgate: {line}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "perf_case" not in metafunc.fixturenames:
        return
    from perfgate.backends import BACKENDS
    from perfgate.techniques import TECHNIQUES

    try:
        session = perfgate_session(metafunc.config)
    except pytest.UsageError as exc:
        # A collection error shows this message alone; a UsageError raised here would come
        # after some twenty lines of pluggy's traceback.
        raise pytest.Collector.CollectError(f"perfgate: {exc}") from None
    params = []
    for case in session.matrix.cases:
        marks = [getattr(pytest.mark, marker) for marker in case.markers]
        missing = BACKENDS.get(case.backend).missing() or TECHNIQUES.get(case.technique).missing(
            session.hardware, case.device
        )
        if missing:
            marks.append(pytest.mark.skip(reason=missing))
        params.append(pytest.param(case, marks=marks, id=case.id))
    metafunc.parametrize("perf_case", params, indirect=True)


@pytest.fixture
def perf_case(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One case of the matrix (model x technique x backend x batch), ready to build, gate and time.

    Call ``build()``, ``check_accuracy()``, ``time(benchmark)`` and ``check_regression()`` in turn.
    """
    session = perfgate_session(request.config)
    config = request.config
    state = _start_run(config)
    if option(config, "perf_isolate"):
        run = _isolated_run(config, state, session, request.param, request.node.nodeid)
    else:
        from perfgate.execution import CaseRun

        run = CaseRun(
            request.param,
            session,
            request.node.nodeid,
            compare=config.stash[COMPARE],
            require_baseline=option(config, "perf_require_baseline"),
            repeats=_repeats(config),
            earlier=_earlier(state, request.node.nodeid),
        )
    state.current = run
    try:
        yield run
    finally:
        run.close()
        state.current = None
        _record(request, run)
        request.node.stash[PASS_RESULT] = run.result


def _isolated_run(
    config: pytest.Config, state: RunState, session: PerfgateSession, case: Any, nodeid: str
) -> Any:
    """The parent's handle on a case that runs in the isolation child (started on first use)."""
    from perfgate.concurrency import RUN_ID_ENV
    from perfgate.isolation import CaseWorker, IsolatedCaseRun, child_args

    if state.worker is None:
        options = {
            "perf-matrix": str(matrix_path(config)),
            "perf-runner": config.stash[RUNNER],
            "perf-profile": option(config, "perf_profile"),
            "perf-baselines": str(_baseline_root(config)),
            "perf-cache": str(_cache_dir(config)),
            "perf-gate": option(config, "perf_gate"),
            "perf-history": str(path) if (path := _history_path(config)) else None,
        }
        env = {**os.environ, RUN_ID_ENV: state.run_id}
        state.worker = CaseWorker(
            child_args(config, options),
            config.invocation_params.dir,
            env,
            _cache_dir(config) / "runs",
            state.run_id,
        )

    def on_step(step: str) -> None:
        session.progress(f"{case.id}: {step}")
        _journal(config, "step", case_id=case.id, step=step)

    return IsolatedCaseRun(
        case,
        state.worker,
        nodeid,
        config.stash[RUNNER],
        compare=config.stash[COMPARE],
        require_baseline=option(config, "perf_require_baseline"),
        repeats=_repeats(config),
        earlier=_earlier(state, nodeid),
        on_step=on_step,
    )


def _earlier(state: RunState, nodeid: str) -> Any:
    """The result a case's later pass goes on from; ``None`` in its first pass."""
    return state.passes.earlier(nodeid) if state.passes is not None else None


def _record(request: pytest.FixtureRequest, run: Any) -> None:
    """Attach the case's result to the test report (pytest-xdist ships it to the controller)."""
    outcome, error, details = request.node.stash.get(
        CALL_OUTCOME, ("error", "the test did not run to its end", None)
    )
    forget(request.node.stash, CALL_OUTCOME)
    if outcome == "skipped":
        return
    if outcome in ("error", "crashed"):
        run.result.status, run.result.error, run.result.details = outcome, error, details
        run.result.pending = None
    properties = request.node.user_properties
    properties[:] = [p for p in properties if p[0] != RESULT_PROPERTY]  # an earlier pass's
    properties.append((RESULT_PROPERTY, json.dumps(run.result.to_dict())))


def _is_case(item: pytest.Item) -> bool:
    return "perf_case" in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)  # before -m deselects: PERF_ITEMS counts what the matrix generated
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the full-size (``slow``) cases out of a run that selects no markers (``-m slow`` runs them).

    Only perfgate's own cases: a project's other ``slow`` tests keep its own selection.
    """
    config.stash[PERF_ITEMS] = sum(map(_is_case, items))
    if config.getoption("markexpr"):
        return
    slow = [item for item in items if _is_case(item) and item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not (_is_case(item) and item.get_closest_marker("slow"))]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Number the selected cases, for the ``[7/42]`` of the progress lines."""
    state = session.config.stash.get(SESSION, None)
    if state is not None:
        cases = [item.nodeid for item in session.items if "perf_case" in getattr(item, "fixturenames", ())]
        state.counter.select(cases)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = item.config.stash.get(SESSION, None)
    if state is not None:
        state.counter.enter(item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "call" and "perf_case" in getattr(item, "fixturenames", ()):
        excinfo = call.excinfo
        if report.passed or report.skipped:
            item.stash[CALL_OUTCOME] = (report.outcome, None, None)
        elif excinfo is not None and excinfo.errisinstance(pytest.fail.Exception):
            item.stash[CALL_OUTCOME] = ("failed", None, None)
        elif excinfo is not None and excinfo.errisinstance((CaseError, CaseTimeout)):
            # One line on the terminal (case, step, the library's own error, the fix); the full
            # traceback goes to the report.
            message = str(excinfo.value)
            status = getattr(excinfo.value, "status", "error")
            item.stash[CALL_OUTCOME] = (
                status,
                message.splitlines()[0],
                getattr(excinfo.value, "details", None),
            )
            if not item.config.getoption("fulltrace"):
                report.longrepr = message
        else:
            error = excinfo.exconly().strip().splitlines()[-1] if excinfo else report.outcome
            details = str(report.longrepr) if report.longrepr else None
            item.stash[CALL_OUTCOME] = ("error", error, details)
    return report


class ResultCollector:
    """Gathers case results from test reports, which pytest-xdist ships from workers to here."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when not in ("setup", "call", "teardown") and report.failed:
            self._crashed(report)  # pytest-xdist's report of a worker that died running the test
            return
        if report.when != "teardown":
            return
        for name, value in report.user_properties:
            if name == RESULT_PROPERTY:
                self._add(CaseResult.from_dict(json.loads(str(value))))  # the JSON text _record wrote

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        case_id = nodeid_case_id(nodeid)
        if case_id is not None and self.config.stash[SESSION] is not None:
            _start_run(self.config)  # before the first case's own start is recorded
        _journal(self.config, "case", nodeid=nodeid, case_id=case_id)

    def _add(self, result: CaseResult) -> None:
        if _is_worker(self.config) or _serving(self.config):
            return
        state = _start_run(self.config)
        if state.finished:
            return
        self.config.stash[COLLECTED].append(result)
        _journal(self.config, "result", result=result.to_dict())
        self.config.hook.pytest_perfgate_case_result(config=self.config, result=result)

    def _crashed(self, report: pytest.TestReport) -> None:
        """A case whose process died: a result with status ``crashed``, so the report counts it."""
        case_id = nodeid_case_id(report.nodeid)
        if case_id is None or not matrix_path(self.config).is_file():
            return
        case = _matrix_case(self.config, case_id)
        if case is None:
            return
        result = CaseResult.for_case(case, self.config.stash[RUNNER], report.nodeid)
        result.status, result.error = "crashed", f"{case_id}: {report.longreprtext.strip().splitlines()[-1]}"
        self._add(result)


def nodeid_case_id(nodeid: str) -> str | None:
    """The case id in a parametrized node id (``test_case[<case id>]``), or ``None``."""
    if not nodeid.endswith("]") or "[" not in nodeid:
        return None
    return nodeid[nodeid.index("[") + 1 : -1]


def _matrix_case(config: pytest.Config, case_id: str) -> Any:
    """The case called ``case_id`` in this run's matrix (the controller of xdist never loads it)."""
    session = config.stash.get(SESSION, None)
    try:
        matrix = session.matrix if session else load_matrix(matrix_path(config), ALL_PROFILES)
    except MatrixError:
        return None
    return next((c for c in matrix.cases if c.id == case_id), None)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """A case's first pass here; its later sessions (repeats, confirmation) after the last case."""
    config = item.config
    if "perf_case" not in getattr(item, "fixturenames", ()) or _serving(config) or not _timing_here(config):
        return None
    state = config.stash[STATE]
    if state.passes is None:
        from perfgate.passes import LaterPasses

        state.passes = LaterPasses(
            progress=lambda line: _progress(config, line),
            on_start=lambda it: _journal(config, "case", nodeid=it.nodeid, case_id=nodeid_case_id(it.nodeid)),
        )
    state.passes.run(item, nextitem)
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    """In a ``--perf-isolate`` child: serve the parent's cases instead of running tests."""
    config = session.config
    if not _serving(config):
        return None
    from perfgate.execution import CaseRun
    from perfgate.isolation import serve

    state = perfgate_session(config)
    cases = {case.id: case for case in state.matrix.cases}

    def make_run(request: dict[str, Any]) -> CaseRun:
        return CaseRun(
            cases[request["case_id"]],
            state,
            request["nodeid"],
            compare=request["compare"],
            require_baseline=request["require_baseline"],
            repeats=request.get("repeats", 1),
            earlier=CaseResult.from_dict(request["earlier"]) if request.get("earlier") else None,
        )

    serve(config, option(config, "perf_serve"), make_run)
    return True


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's: the child must be gone when it saves
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _is_worker(config) or _serving(config):
        return
    state = config.stash[STATE]
    if state.worker is not None:
        state.worker.close()
    if _finish(config, exitstatus) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = (
            pytest.ExitCode.TESTS_FAILED
        )  # a refresh or a report that was asked for is missing
    if (
        exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED
        and config.getoption("markexpr")
        and config.stash.get(PERF_ITEMS, 0)
    ):
        # The matrix generated cases and -m selected none of them: a runner label with nothing to
        # run here (-m gpu on a CPU runner) is not a failed CI job. Any other empty selection
        # keeps pytest's exit code 5.
        session.exitstatus = pytest.ExitCode.OK
        config.stash[NOTHING_SELECTED] = True


def _finish(config: pytest.Config, exitstatus: int) -> list[str]:
    """Write the baselines and the report, each on its own, then close the journal. Runs once.

    A failure of one (a full disk, a report folder that cannot be created) does not stop the
    other; each failure is one line naming the path, shown in the summary.
    :returns: those lines.
    """
    state = config.stash[STATE]
    with state.lock:
        if state.finished:
            return []
        state.finished = True
    results = config.stash[COLLECTED].copy()
    errors: list[str] = []
    drift = None
    try:
        # Drift is judged against the baseline as it was before this run's refresh rewrites it.
        drift = _drift(config, results)
    except (OSError, BaselineError) as exc:
        errors.append(f"environment drift not checked: {exc}")
    config.stash[DRIFT] = drift
    if option(config, "perf_refresh_baselines") and results:
        try:
            _refresh(config, results)
        except (OSError, BaselineError) as exc:
            path = baseline_path(_baseline_root(config), config.stash[RUNNER])
            errors.append(f"baselines NOT refreshed: writing {path} failed: {exc}; the file is unchanged")
    if (history := _history_path(config)) is not None and results:
        try:
            _record_history(config, history, results)
        except Exception as exc:  # sqlite3, a full disk, a foreign file: one line, and the rest goes on
            errors.append(f"history NOT recorded: {history}: {exc}")
    if option(config, "perf_report") and results:
        directory = rooted(config, option(config, "perf_report"))
        try:
            write_report(directory, results, _report_meta(config, drift))
        except OSError as exc:
            errors.append(f"report NOT written: {directory}: {exc}")
    if state.journal is not None:
        state.journal.close(exitstatus)
    if state.registry is not None:
        state.registry.close()
    config.stash[WRITE_ERRORS] = errors
    return errors


def _record_history(config: pytest.Config, path: Path, results: list[CaseResult]) -> None:
    """Append this run's timed cases to the history store (docs/history.md).

    A case is accepted (later runs are judged against it) when it finished, passed its accuracy
    gates, was timed alone and did not fail its regression gate; a refresh accepts its cases
    whatever the verdict, which is how a user accepts an intended change.
    """
    from perfgate.history import CaseRecord, HistoryStore, RunRecord, fingerprint, new_run_id
    from perfgate.sessions import SessionSummary

    refreshing = bool(option(config, "perf_refresh_baselines"))
    cases = []
    for result in results:
        kept = [SessionSummary.from_dict(s) for s in result.sessions if s.get("kept", True)]
        if not kept:
            continue
        verdict = result.verdict("regression")
        status = verdict.status if verdict is not None else "unjudged"
        reason = _not_accepted(result, status)
        # A refresh stores a regressed case as the new normal: the history starts again from it.
        stored = refreshing and reason in ("", REGRESSED)
        cases.append(
            CaseRecord(
                case_id=result.case_id,
                backend=result.backend,
                device=result.device,
                sessions=kept,
                status=status,
                accepted=stored or not reason,
                reason="" if stored else reason,
                refreshed=stored,
            )
        )
    if not cases:
        return
    state = config.stash[STATE]
    commit = config.hook.pytest_benchmark_generate_commit_info(config=config) or {}
    print_, data = fingerprint(hw.detect().to_dict())
    run = RunRecord(
        run_id=f"{config.stash[RUNNER]}-{new_run_id()}",  # unique across runners and runs, for merges
        runner=config.stash[RUNNER],
        fingerprint=print_,
        fingerprint_data=data,
        commit=str(commit.get("id") or ""),
        branch=str(commit.get("branch") or ""),
        started=state.started,
    )
    HistoryStore(path).record_run(run, cases)


def _not_accepted(result: CaseResult, status: str) -> str:
    """Why later runs must not be judged against this case's run; ``""`` when they may."""
    if result.status in ("error", "crashed"):
        return "it did not run to the end"
    if not result.accuracy_passed:
        return "it failed its accuracy gates"
    if result.measurement.concurrent_runs:
        return "it was timed while another perfgate run was running"
    if status == "fail":
        return REGRESSED
    return ""


REGRESSED = "its regression gate failed"


def run_document(config: pytest.Config) -> Any:
    """This run's cases and metadata as the :class:`perfgate.results.ResultsDocument` that its
    ``results.json`` holds (:func:`perfgate.run` returns it); call after the session finished."""
    from perfgate.report import results_document
    from perfgate.results import ResultsDocument

    results = config.stash.get(COLLECTED, []).copy()
    document = results_document(results, _report_meta(config, config.stash.get(DRIFT, None)))
    meta = {key: value for key, value in document.items() if key != "cases"}
    return ResultsDocument(meta, sorted(results, key=lambda r: r.case_id))


def _report_meta(config: pytest.Config, drift: list[Drift] | None) -> dict[str, Any]:
    state = config.stash[STATE]
    meta: dict[str, Any] = {
        "runner": config.stash[RUNNER],
        "machine": hw.detect().to_dict(),
        "run_id": state.run_id,
    }
    if drift is not None:
        meta["drift"] = [d.__dict__ for d in drift]
    if state.journal is not None:
        meta["journal"] = str(state.journal.path)
    if state.lost:
        meta["lost_runs"] = [lost.to_dict() for lost in state.lost]
    if concurrent := _concurrent_summary(config.stash[COLLECTED]):
        meta["concurrent_runs"] = concurrent
    return meta


def _concurrent_summary(results: list[CaseResult]) -> dict[str, Any] | None:
    """The other perfgate runs seen while cases were timed, and which cases they overlapped."""
    runs: dict[str, dict[str, Any]] = {}
    cases = []
    for result in results:
        seen = result.measurement.concurrent_runs or []
        if seen:
            cases.append(result.case_id)
        for run in seen:
            runs[str(run.get("run_id"))] = run
    return {"runs": list(runs.values()), "cases": cases} if cases else None


WRITE_ERRORS = pytest.StashKey[list[str]]()


def _warning_lines(config: pytest.Config) -> list[str]:
    """What the run must not hide: a write that failed, a run that died, runs that overlapped."""
    from perfgate.concurrency import describe

    lines = [f"perfgate: ERROR: {error}" for error in config.stash.get(WRITE_ERRORS, [])]
    state = config.stash.get(STATE, None)
    if state is not None:
        lines += [f"perfgate: warning: {lost.line()}" for lost in state.lost]
    concurrent = _concurrent_summary(config.stash.get(COLLECTED, []))
    if concurrent:
        lines.append(
            f"perfgate: warning: {len(concurrent['cases'])} case(s) were timed while another perfgate run was "
            f"running on this machine ({describe(concurrent['runs'])}): the two measured each other, so their "
            "latencies and verdicts are unreliable; re-run them alone"
        )
    crashed = [r.case_id for r in config.stash.get(COLLECTED, []) if r.status == "crashed"]
    if crashed:
        lines.append(f"perfgate: {len(crashed)} case(s) crashed their process: {', '.join(crashed)}")
    return lines


NOTHING_SELECTED = pytest.StashKey[bool]()
REFRESH_LINES = pytest.StashKey[list[str]]()
DRIFT = pytest.StashKey["list[Drift] | None"]()


def _drift(config: pytest.Config, results: list[CaseResult]) -> list[Drift] | None:
    """Environment drift against this runner's baseline; ``None`` when no case was compared."""
    compared = [(r.case_id, r.settings) for r in results if r.verdict("regression") is not None]
    if not compared:
        return None
    baseline = cached_baseline(baseline_path(_baseline_root(config), config.stash[RUNNER]))
    if baseline is None:
        return None
    return baseline_drift(baseline.document, hw.detect().to_dict(), compared)


def _refresh(config: pytest.Config, results: list[CaseResult]) -> None:
    runner = config.stash[RUNNER]
    path = baseline_path(_baseline_root(config), runner)
    prune = None
    if option(config, "perf_prune_baselines"):
        stored = cached_baseline(path)
        existing = stored.document if stored is not None else {"perfgate": {"cases": {}}}
        # The whole matrix, whatever profile this run selected: a case outside the profile is
        # still in the matrix, and its baseline stays.
        every_case = {c.id for c in load_matrix(matrix_path(config), ALL_PROFILES).cases}
        prune = set(existing["perfgate"]["cases"]) - every_case
    # Through pytest-benchmark's public hooks, as its own saved runs get them; perfgate's view of
    # the hardware and libraries beside it.
    machine_info = config.hook.pytest_benchmark_generate_machine_info(config=config)
    config.hook.pytest_benchmark_update_machine_info(config=config, machine_info=machine_info)
    machine_info = {**machine_info, "perfgate": hw.detect().to_dict()}
    commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
    if option(config, "perf_refresh_changed"):
        results = changed_only(results)
    changes = refresh(path, runner, results, machine_info, commit_info, prune)
    config.stash[REFRESH_LINES] = [f"baselines of runner {runner!r} in {path}:", *(c.line() for c in changes)]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    results = config.stash.get(COLLECTED, [])
    if results:
        terminalreporter.section("perfgate")
        drift = [d.__dict__ for d in config.stash.get(DRIFT, None) or []]
        for line in terminal_lines(results) + regression_lines(results, drift):
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"runner: {config.stash[RUNNER]}")
    for line in config.stash.get(REFRESH_LINES, []):
        terminalreporter.write_line(line)
    for line in _warning_lines(config):
        terminalreporter.write_line(line, yellow=True, bold=True)
    if config.stash.get(NOTHING_SELECTED, False):
        reason = hw.cuda_missing_reason() or "the matrix has no case that matches"
        terminalreporter.write_line(
            f"perfgate: no case selected by -m {config.getoption('markexpr')!r} ({reason}); exiting 0"
        )
