"""The example CI workflows are documentation that must work: every command they run is valid.

Each ``pytest`` command of ``examples/ci/*.yml`` is run (collection only) against a small
project with perfgate's and pytest-benchmark's real option parser, once per matrix entry, and its
marker expression may use registered markers only. Each ``perfgate`` command goes through the
CLI's own argparse.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perfgate.cli import build_parser
from perfgate.matrix import ALL_PROFILES, load_matrix
from perfgate.suite_plugin import MARKERS, matrix_markers

yaml = pytest.importorskip("yaml")

EXAMPLES = Path(__file__).parent.parent / "examples" / "ci"
WORKFLOWS = sorted(EXAMPLES.glob("*.yml"))
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    document["on"] = document.pop(True, document.get("on"))
    return document


def _steps(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(job id, matrix entry, step) for every step, once per entry of the job's matrix."""
    for job_id, job in document["jobs"].items():
        entries = job.get("strategy", {}).get("matrix", {}).get("include") or [{}]
        for entry in entries:
            for step in job["steps"]:
                yield job_id, entry, step


def _expand(text: str, entry: dict[str, Any]) -> str:
    """Substitute ``${{ matrix.X }}``; other expressions become a placeholder word."""

    def value(match: re.Match[str]) -> str:
        expression = match.group(1)
        if expression.startswith("matrix."):
            return str(entry[expression.removeprefix("matrix.")])
        return "EXPR"

    return EXPRESSION.sub(value, text)


def commands(path: Path) -> list[tuple[str, list[str]]]:
    """Every pytest or perfgate command line that a workflow runs, as (job, argv)."""
    found = []
    for job_id, entry, step in _steps(_load(path)):
        script = _expand(step.get("run", ""), entry).replace("\\\n", " ")
        for line in script.splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["pytest"] or argv[:3] == ["python", "-m", "pytest"]:
                found.append((job_id, argv[argv.index("pytest") + 1 :]))
            elif argv[:1] == ["perfgate"]:
                found.append((job_id, argv[1:]))
    return found


def _pytest_commands() -> list[Any]:
    return [
        pytest.param(argv, id=f"{path.stem}-{job}-{i}")
        for path in WORKFLOWS
        for i, (job, argv) in enumerate(commands(path))
        if argv and argv[0] != "report"
    ]


def _perfgate_commands() -> list[Any]:
    return [
        pytest.param(argv, id=f"{path.stem}-{job}")
        for path in WORKFLOWS
        for job, argv in commands(path)
        if argv and argv[0] == "report"
    ]


def test_examples_exist_and_run_the_promised_commands() -> None:
    """A runner matrix that gates with --benchmark-compare, a merge, and a manual refresh."""
    perf, refresh = _load(EXAMPLES / "perf.yml"), _load(EXAMPLES / "refresh-baselines.yml")
    labels = [entry["runs-on"] for entry in perf["jobs"]["perf"]["strategy"]["matrix"]["include"]]
    assert "ubuntu-latest" in labels and any(
        "self-hosted" in label for label in labels if isinstance(label, list)
    )
    gated = [argv for job, argv in commands(EXAMPLES / "perf.yml") if job == "perf"]
    assert gated and all("--benchmark-compare" in argv and "--perf-report" in argv for argv in gated)
    assert [argv[0] for job, argv in commands(EXAMPLES / "perf.yml") if job == "report"] == ["report"]
    summaries = {job for job, _, step in _steps(perf) if '>> "$GITHUB_STEP_SUMMARY"' in step.get("run", "")}
    assert summaries == {"perf", "report"}
    assert list(refresh["on"]) == ["workflow_dispatch"]
    refreshing = [argv for _, argv in commands(EXAMPLES / "refresh-baselines.yml")]
    assert refreshing and all("--perf-refresh-baselines" in argv for argv in refreshing)
    script = "\n".join(step.get("run", "") for _, _, step in _steps(refresh))
    assert "git switch -c" in script and "gh pr create" in script


@pytest.mark.parametrize("argv", _pytest_commands())
def test_pytest_command_is_valid(argv: list[str], perf_project: pytest.Pytester) -> None:
    """The options parse with the real plugins, and -m names registered markers only."""
    if "-m" in argv:
        words = set(re.findall(r"[A-Za-z_][\w-]*", argv[argv.index("-m") + 1])) - {"and", "or", "not"}
        registered = {**MARKERS, **matrix_markers(load_matrix(EXAMPLES.parent.parent / "perf" / "matrix.toml", ALL_PROFILES))}
        assert words <= set(registered), f"unregistered markers {sorted(words - set(registered))} in {argv}"
    result = perf_project.runpytest_inprocess(*argv, "--collect-only", "-q")
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), result.stderr.str()


@pytest.mark.parametrize("argv", _perfgate_commands())
def test_perfgate_command_is_valid(argv: list[str]) -> None:
    """The CLI's own parser accepts the merge command."""
    args = build_parser().parse_args(argv)
    assert args.command == "report" and args.results and args.output
