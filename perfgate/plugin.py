"""The pytest plugin: options, markers, parametrization and hooks. Logic lives in the modules."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perfgate import hardware as hw
from perfgate import hookspec
from perfgate.baselines import (
    BaselineError,
    baseline_path,
    cached_baseline,
    changed_only,
    read_baseline,
    refresh,
)
from perfgate.cache import ArtifactCache
from perfgate.drift import Drift, baseline_drift
from perfgate.matrix import ALL_PROFILES, MatrixError, load_matrix
from perfgate.report import regression_lines, terminal_lines, write_report
from perfgate.results import CaseResult
from perfgate.session import PerfgateSession
from perfgate.techniques import FAMILIES

SESSION = pytest.StashKey["PerfgateSession | None"]()
COLLECTED = pytest.StashKey[list[CaseResult]]()
RUNNER = pytest.StashKey[str]()
COMPARE = pytest.StashKey[bool]()  # --benchmark-compare was given: perfgate's gate is on
CALL_OUTCOME = pytest.StashKey[tuple[str, str | None]]()
RESULT_PROPERTY = "perfgate_result"

MARKERS = {
    "cpu": "runs on the CPU",
    "gpu": "runs on a CUDA GPU",
    "torch": "PyTorch backend (eager or compiled)",
    "onnxruntime": "ONNX Runtime backend",
    "openvino": "OpenVINO backend",
    "litert": "LiteRT / TFLite backend",
    "tensorrt": "TensorRT backend or execution provider",
    "slow": "full-size-shape models, left out of the default run",
    **FAMILIES,
}


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "perfgate", "perfgate: ML inference benchmarks with accuracy and regression gates"
    )
    group.addoption(
        "--perf-matrix",
        metavar="PATH",
        help="matrix file (default: the perf_matrix ini value, perf/matrix.toml)",
    )
    group.addoption(
        "--perf-runner",
        metavar="NAME",
        help="runner id naming the baselines folder (default: PERFGATE_RUNNER, else derived from the hardware)",
    )
    group.addoption(
        "--perf-profile",
        metavar="NAME",
        help="[profiles.NAME] of the matrix to run (default: PERFGATE_PROFILE, else 'default' if defined, else all)",
    )
    group.addoption(
        "--perf-baselines",
        metavar="DIR",
        help="folder holding one baselines folder per runner (default: the perf_baselines ini value, baselines)",
    )
    group.addoption(
        "--perf-cache",
        metavar="DIR",
        help="artifact cache (default: PERFGATE_CACHE, else .perfgate_cache in the rootdir)",
    )
    group.addoption(
        "--perf-refresh-baselines",
        action="store_true",
        help="write this runner's baselines for the cases that ran and passed their accuracy gates (default: off)",
    )
    group.addoption(
        "--perf-refresh-changed",
        action="store_true",
        help="like --perf-refresh-baselines, but only for the cases whose regression verdict is fail or improved; needs --benchmark-compare (default: off)",
    )
    group.addoption(
        "--perf-prune-baselines",
        action="store_true",
        help="with --perf-refresh-baselines, also remove baseline cases that are no longer in the matrix (default: off)",
    )
    group.addoption(
        "--perf-require-baseline",
        action="store_true",
        help="under --benchmark-compare, fail a case that has no baseline instead of reporting it as new (default: off)",
    )
    group.addoption("--perf-report", metavar="DIR", help="write results.json, report.md and a Pareto plot per model (pareto-MODEL.png/.svg, needs matplotlib) into DIR (default: no report)")  # fmt: skip
    parser.addini("perf_matrix", "perfgate matrix file, relative to the rootdir", default="perf/matrix.toml")
    parser.addini("perf_baselines", "perfgate baselines folder, relative to the rootdir", default="baselines")


def _runner_id(config: pytest.Config) -> str:
    explicit = config.getoption("perf_runner") or os.environ.get("PERFGATE_RUNNER")
    if explicit:
        return explicit
    hooked = config.hook.pytest_perfgate_runner_id(config=config, hardware=hw.detect())
    return hooked or hw.detect().runner_id()


def _rooted(config: pytest.Config, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else config.rootpath / path


def _baseline_root(config: pytest.Config) -> Path:
    return _rooted(config, config.getoption("perf_baselines") or config.getini("perf_baselines"))


def _matrix_path(config: pytest.Config) -> Path:
    return _rooted(config, config.getoption("perf_matrix") or config.getini("perf_matrix"))


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    config.stash[COLLECTED] = []
    config.stash[SESSION] = None
    config.pluginmanager.register(ResultCollector(config), "perfgate-results")
    runner = config.stash[RUNNER] = _runner_id(config)
    config.stash[COMPARE] = bool(config.getoption("benchmark_compare", None))
    if not _matrix_path(config).is_file():
        return  # not a perfgate run: pytest-benchmark and every other option behave as without us
    _check_options(config)
    if config.stash[COMPARE] and not config.getoption("benchmark_compare_fail", None):
        # perfgate's gate reads its own baseline; pytest-benchmark would compare with its own
        # saved runs (a rolling baseline, or none: "Can't compare") beside it, so it is left out.
        config.option.benchmark_compare = None
    if config.stash[COMPARE] or config.getoption("perf_refresh_baselines"):
        try:
            read_baseline(baseline_path(_baseline_root(config), runner))
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None


def _check_options(config: pytest.Config) -> None:
    """Refuse the option combinations under which a verdict or a refresh would mean nothing."""
    if config.getoption("perf_refresh_changed"):
        if not config.stash[COMPARE]:
            raise pytest.UsageError("--perf-refresh-changed needs --benchmark-compare: it refreshes what the gate judged")  # fmt: skip
        config.option.perf_refresh_baselines = True
    untimed = _timing_disabled(config)
    if untimed and config.stash[COMPARE]:
        raise pytest.UsageError(
            f"--benchmark-compare needs timings, and {untimed} disables them: the gate would judge nothing "
            "and every case would pass. Drop it, or drop --benchmark-compare for an accuracy-only run"
        )
    if untimed and config.getoption("perf_refresh_baselines"):
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
        matrix_path = _matrix_path(config)
        profile = config.getoption("perf_profile") or os.environ.get("PERFGATE_PROFILE")
        try:
            matrix = load_matrix(matrix_path, profile)
        except MatrixError as exc:
            raise pytest.UsageError(str(exc)) from None
        cache_dir = config.getoption("perf_cache") or os.environ.get("PERFGATE_CACHE") or ".perfgate_cache"
        session = config.stash[SESSION] = PerfgateSession(
            matrix=matrix,
            hardware=hw.detect(),
            runner=config.stash[RUNNER],
            cache=ArtifactCache(_rooted(config, cache_dir)),
            baseline_root=_baseline_root(config),
            progress=lambda line: _progress(config, line),
        )
    return session


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

    session = perfgate_session(metafunc.config)
    params = []
    for case in session.matrix.cases:
        marks = [getattr(pytest.mark, marker) for marker in case.markers]
        missing = BACKENDS.get(case.backend).missing() or TECHNIQUES.get(case.technique).missing(
            session.hardware, case.backend
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
    from perfgate.execution import CaseRun

    session = perfgate_session(request.config)
    config = request.config
    run = CaseRun(
        request.param,
        session,
        request.node.nodeid,
        compare=config.stash[COMPARE],
        require_baseline=config.getoption("perf_require_baseline"),
    )
    try:
        yield run
    finally:
        run.close()
        _record(request, run)


def _record(request: pytest.FixtureRequest, run: Any) -> None:
    """Attach the case's result to the test report (pytest-xdist ships it to the controller)."""
    outcome, error = request.node.stash.get(CALL_OUTCOME, ("error", "the test did not run to its end"))
    if outcome == "skipped":
        return
    if outcome == "error":
        run.result.status, run.result.error = "error", error
    request.node.user_properties.append((RESULT_PROPERTY, json.dumps(run.result.to_dict())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the full-size (``slow``) cases out of a run that selects no markers (``-m slow`` runs them)."""
    if config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


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
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    if call.when == "call" and "perf_case" in getattr(item, "fixturenames", ()):
        if report.passed or report.skipped:
            item.stash[CALL_OUTCOME] = (report.outcome, None)
        elif call.excinfo is not None and call.excinfo.errisinstance(pytest.fail.Exception):
            item.stash[CALL_OUTCOME] = ("failed", None)
        else:
            error = call.excinfo.exconly().strip().splitlines()[-1] if call.excinfo else report.outcome
            item.stash[CALL_OUTCOME] = ("error", error)
    return report


class ResultCollector:
    """Gathers case results from test reports, which pytest-xdist ships from workers to here."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        for name, value in report.user_properties:
            if name == RESULT_PROPERTY:
                result = CaseResult.from_dict(json.loads(value))
                self.config.stash[COLLECTED].append(result)
                self.config.hook.pytest_perfgate_case_result(config=self.config, result=result)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _is_worker(config):
        return
    results = config.stash[COLLECTED]
    # Drift is judged against the baseline as it was before this run's refresh rewrites it.
    drift = config.stash[DRIFT] = _drift(config, results)
    if config.getoption("perf_refresh_baselines") and results:
        _refresh(config, results)
    if config.getoption("perf_report") and results:
        meta: dict[str, Any] = {"runner": config.stash[RUNNER], "machine": hw.detect().to_dict()}
        if drift is not None:
            meta["drift"] = [d.__dict__ for d in drift]
        write_report(_rooted(config, config.getoption("perf_report")), results, meta)
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and config.getoption("markexpr"):
        session.exitstatus = pytest.ExitCode.OK
        config.stash[NOTHING_SELECTED] = True


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
    if config.getoption("perf_prune_baselines"):
        existing = read_baseline(path) or {"perfgate": {"cases": {}}}
        # The whole matrix, whatever profile this run selected: a case outside the profile is
        # still in the matrix, and its baseline stays.
        every_case = {c.id for c in load_matrix(_matrix_path(config), ALL_PROFILES).cases}
        prune = set(existing["perfgate"]["cases"]) - every_case
    bench = getattr(config, "_benchmarksession", None)
    machine_info = {**(bench.get_machine_info() if bench else {}), "perfgate": hw.detect().to_dict()}
    commit_info = bench.config.hook.pytest_benchmark_generate_commit_info(config=config) if bench else {}
    if config.getoption("perf_refresh_changed"):
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
    if config.stash.get(NOTHING_SELECTED, False):
        reason = hw.cuda_missing_reason() or "the matrix has no case that matches"
        terminalreporter.write_line(
            f"perfgate: no case selected by -m {config.getoption('markexpr')!r} ({reason}); exiting 0"
        )
