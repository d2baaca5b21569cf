"""perfgate is inert in a project that has no perfgate matrix.

Installed, perfgate's plugin loads in every pytest run of the environment. In a run that loads no
matrix, pytest and pytest-benchmark must behave exactly as without it. Each test here builds the
same unrelated project twice (plain tests, pytest's documented ``--runslow`` recipe, a
pytest-benchmark test, its own ``--perf-report`` option, an unregistered ``gpu`` marker), runs it
with perfgate and with ``-p no:perfgate``, and checks both against literal expectations and
against each other: outcomes, exit codes, ``--markers``, and the files the runs leave behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

WITHOUT = ("-p", "no:perfgate")

# pytest's recipe "Control skipping of tests according to command line option", as documented,
# plus the project's own --perf-report option (a name perfgate uses for itself), which writes a file.
CONFTEST = """
import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")
    parser.addoption("--perf-report", action="store", default=None, help="this project's own report file")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: mark test as slow to run")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        # --runslow given in cli: do not skip slow tests
        return
    skip_slow = pytest.mark.skip(reason="need --runslow option to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def pytest_sessionfinish(session):
    report = session.config.getoption("--perf-report")
    if report:
        (session.config.rootpath / report).write_text("the project's own report\\n")
"""

TESTS = """
import pytest


def test_fast():
    assert 1 + 1 == 2


@pytest.mark.slow
def test_slow():
    assert sum(range(10)) == 45


def test_sum_speed(benchmark):
    assert benchmark(sum, [1, 2, 3]) == 6
"""

GPU_TEST = """
import pytest


@pytest.mark.gpu
def test_on_gpu():
    pass
"""


@dataclass(frozen=True)
class Run:
    """What a project run shows of itself: exit code, outcome counts and the files it left."""

    ret: int
    outcomes: dict[str, int]
    files: tuple[str, ...]
    warned: tuple[str, ...]  # warnings printed on stderr (pytest-benchmark's own, at the end)
    crash: str = ""  # the last line of stderr, when pytest stopped before its summary
    loaded: bool = field(default=False, compare=False)  # perfgate on the header's "plugins:" line


def make_project(root: Path) -> Path:
    """The unrelated project in ``root``: its own rootdir (``pytest.ini``), no perfgate matrix."""
    (root / "tests").mkdir(parents=True)
    (root / "strict").mkdir()
    # anyio's plugin, installed beside perfgate's test tools, warns in every run under pytest 9.2.
    (root / "pytest.ini").write_text("[pytest]\naddopts = -p no:anyio\n")
    (root / "conftest.py").write_text(CONFTEST)
    (root / "tests" / "test_app.py").write_text(TESTS)
    (root / "strict" / "test_gpu.py").write_text(GPU_TEST)
    return root


def files(root: Path) -> tuple[str, ...]:
    """Every path under ``root`` that the runs created, dates in saved-run names masked."""
    made = {"pytest.ini", "conftest.py", "tests", "tests/test_app.py", "strict", "strict/test_gpu.py"}
    found = (p.relative_to(root).as_posix() for p in root.rglob("*") if "__pycache__" not in p.parts)
    return tuple(sorted(re.sub(r"\d{8}_\d{6}", "DATE", path) for path in found if path not in made))


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, root: Path, *args: str) -> Run:
    """One pytest process in ``root`` (pytest-benchmark's default storage is relative to the cwd)."""
    monkeypatch.chdir(root)
    result = pytester.runpytest_subprocess(*args)
    loaded = any(line.startswith("plugins:") and "perfgate" in line for line in result.outlines)
    warned = tuple(m[1].replace(str(root), "ROOT") for line in result.errlines if (m := re.search(r"(\w+Warning: .*)", line)))  # fmt: skip
    try:
        return Run(int(result.ret), result.parseoutcomes(), files(root), warned, loaded=loaded)
    except ValueError:  # no summary line: a usage or internal error
        crash = next((line for line in reversed(result.errlines) if line.strip()), "")
        return Run(int(result.ret), {}, files(root), warned, crash, loaded)


# Each run of the project, and what pytest and pytest-benchmark give without perfgate: exit code,
# outcome counts, warnings on stderr.
NO_COMPARE = "PytestBenchmarkWarning: Can't compare. No benchmark files in 'ROOT/.benchmarks' match '9999'."
RUNS = {
    "runslow": (
        ["tests", "--runslow", "--benchmark-autosave", "--perf-report=report.txt"],
        0,
        {"passed": 3},
        (),
    ),
    # strict/ holds the unregistered gpu marker: one collection error, the rest still runs; no
    # saved run matches 9999: pytest-benchmark warns that it cannot compare.
    "default": (
        [
            "tests",
            "strict",
            "--strict-markers",
            "--continue-on-collection-errors",
            "--benchmark-compare=9999",
        ],
        1,
        {"passed": 2, "skipped": 1, "errors": 1},
        (NO_COMPARE,),
    ),
    "nothing": (["tests", "-m", "nothing"], 5, {"deselected": 3}, ()),
}


def test_runs_of_an_unrelated_project_are_the_same_with_and_without_perfgate(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``--runslow`` recipe selects as documented, ``--strict-markers`` catches ``gpu``,
    ``-m nothing`` exits 5, a missing comparison warns, the project's ``--perf-report`` is its
    own, and storage stays pytest-benchmark's ``.benchmarks``: the same with perfgate loaded."""
    seen: dict[str, dict[str, Run]] = {}
    for variant, extra in (("without", WITHOUT), ("with", ())):
        root = make_project(pytester.path / variant)
        seen[variant] = {
            name: run(pytester, monkeypatch, root, *extra, *args) for name, (args, *_) in RUNS.items()
        }
    assert seen["with"] == seen["without"]
    assert [r.loaded for r in seen["with"].values()] == [True] * 3, "perfgate did not load"
    assert not any(r.loaded for r in seen["without"].values())
    for name, (_, ret, outcomes, warned) in RUNS.items():
        got = seen["with"][name]
        assert (got.ret, got.outcomes, got.warned) == (ret, outcomes, warned), name
    created = seen["with"]["nothing"].files
    assert "report.txt" in created
    assert not [path for path in created if path.startswith(("baselines", ".perfgate"))]
    saved = [re.sub(r"^\.benchmarks/[^/]+/", "", p) for p in created if p.startswith(".benchmarks/") and p.endswith(".json")]  # fmt: skip
    assert saved == ["0001_unversioned_DATE.json"]


def test_markers_of_an_unrelated_project_are_the_same_with_and_without_perfgate(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pytest --markers`` lists the project's ``slow`` once and no perfgate marker (no ``gpu``)."""
    listed = {}
    for variant, extra in (("without", WITHOUT), ("with", ())):
        monkeypatch.chdir(make_project(pytester.path / variant))
        result = pytester.runpytest_subprocess(*extra, "--markers")
        assert result.ret == 0, result.stderr.str()
        listed[variant] = [line for line in result.outlines if line.startswith("@pytest.mark.")]
    assert listed["with"] == listed["without"]
    slow = [line for line in listed["with"] if line.startswith("@pytest.mark.slow")]
    assert slow == ["@pytest.mark.slow: mark test as slow to run"]
    assert not [line for line in listed["with"] if line.startswith("@pytest.mark.gpu")]
