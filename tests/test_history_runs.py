"""The history of runs end to end: real pytest runs append to the store, `perfgate history` reads
it, finds the change point of a real injected slowdown, and the history gate judges against it."""

from __future__ import annotations

import pytest

from conftest import SLOWED_MODEL
from perfgate.cli import main
from perfgate.history import HistoryStore, change_points

CASE = "slowed_mlp-fp32-torch_cpu-b1"


@pytest.fixture
def project(perf_project: pytest.Pytester) -> pytest.Pytester:
    matrix = perf_project.path / "perf" / "matrix.toml"
    text = matrix.read_text().replace("[techniques.fp32]", SLOWED_MODEL + "\n[techniques.fp32]")
    matrix.write_text(text + "\n[history]\npath = '../runs.db'\nmin_runs = 3\n")
    return perf_project


def run(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, delay_us: int, *args: str
) -> pytest.RunResult:
    monkeypatch.setenv("PERFGATE_TEST_DELAY_US", str(delay_us))
    return project.runpytest_inprocess("perf", "-k", "slowed and fp32 and torch", *args)


def test_three_real_runs_make_a_series_that_the_cli_lists_and_shows(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The matrix's [history] path is used by every run; each appends its case with its sessions."""
    for _ in range(3):
        run(project, monkeypatch, 0).assert_outcomes(passed=1, deselected=7)
    capsys.readouterr()
    store = project.path / "runs.db"
    points = HistoryStore(store).series(CASE)
    assert len(points) == 3 and all(p.accepted and p.p50_s > 0 for p in points)
    assert main(["history", "list", "--store", str(store)]) == 0
    assert CASE in capsys.readouterr().out
    assert main(["history", "show", CASE, "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert sum(point.run_id in shown for point in points) == 3


def test_a_real_slowdown_halfway_is_a_change_point_and_fails_the_history_gate(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four runs of the unchanged model, then a real busy-wait of 300 us per call (x6 or more):
    the history gate fails the first slow run (not accepted), a refresh accepts the new normal,
    and the series of all eight runs has one change point, at the fifth run."""
    for _ in range(4):
        run(project, monkeypatch, 0, "--perf-gate", "history").assert_outcomes(passed=1, deselected=7)
    slowed = run(project, monkeypatch, 300, "--perf-gate", "history")
    slowed.assert_outcomes(failed=1, deselected=7)
    slowed.stdout.fnmatch_lines(["*vs the median of the last 4 accepted runs*regressed (confirmed*"])
    run(project, monkeypatch, 300, "--perf-refresh-baselines", "--perf-repeats", "1").assert_outcomes(passed=1, deselected=7)  # fmt: skip
    for _ in range(2):
        run(project, monkeypatch, 300, "--perf-gate", "history").stdout.fnmatch_lines(
            ["*insufficient history*"]
        )
    points = HistoryStore(project.path / "runs.db").series(CASE)
    assert [p.accepted for p in points] == [True] * 4 + [False] + [True] * 3
    changes = change_points(points)
    assert [c.index for c in changes] == [4]
    assert changes[0].magnitude > 3


def test_the_first_runs_are_insufficient_history_never_a_silent_pass(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run(project, monkeypatch, 0, "--perf-gate", "history", "--perf-report", "out")
    result.assert_outcomes(passed=1, deselected=7)
    result.stdout.fnmatch_lines(["*insufficient history: 0 of the 3 accepted runs needed*"])
    strict = run(project, monkeypatch, 0, "--perf-gate", "history", "--perf-require-baseline")
    strict.assert_outcomes(failed=1, deselected=7)


def test_the_history_gate_needs_a_store(perf_project: pytest.Pytester) -> None:
    result = perf_project.runpytest_inprocess("perf", "--perf-gate", "history")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*--perf-gate history needs a history store*"])


def test_a_store_that_cannot_be_written_is_one_line_and_exit_1(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A history path that is not a SQLite file: the run's cases pass, the report is still written,
    and the summary names the file; the exit status is 1, since what was asked for is missing."""
    (project.path / "not-a-store.db").write_text("this is not SQLite")
    result = run(project, monkeypatch, 0, "--perf-history", "not-a-store.db", "--perf-report", "out")
    assert result.ret == 1
    result.assert_outcomes(passed=1, deselected=7)
    result.stdout.fnmatch_lines(["*ERROR: history NOT recorded: *not-a-store.db*"])
    assert (project.path / "out" / "results.json").is_file()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[history]\nwindow = 0", "[history] window = 0: must be an integer >= 1"),
        ("[history]\nmax_score = -1", "[history] max_score = -1: must be a finite number > 0"),
        ("[history]\nkeep = 3", "[history] has unknown key(s) ['keep']"),
    ],
)
def test_a_bad_history_table_names_its_key(perf_project: pytest.Pytester, table: str, message: str) -> None:
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(matrix.read_text() + "\n" + table + "\n")
    result = perf_project.runpytest_inprocess("perf")
    assert result.ret != 0
    assert message in result.stdout.str() + result.stderr.str()


def test_the_history_gate_refuses_a_store_it_cannot_open(project: pytest.Pytester) -> None:
    """A folder given as the store: one usage error at collection, naming it, not one failure per case."""
    (project.path / "a-folder").mkdir()
    result = project.runpytest_inprocess("perf", "--perf-gate", "history", "--perf-history", "a-folder")
    assert result.ret != 0
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*--perf-gate history: history store *a-folder cannot be opened*--perf-history PATH*"]
    )
