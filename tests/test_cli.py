"""The ``perfgate`` command: re-rendering and merging saved results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perfgate.cli import main
from perfgate.gates import Verdict
from perfgate.report import write_report
from perfgate.results import CaseResult
from perfgate.stats import LatencyStats


def _case(runner: str, backend: str, p50_ms: float, threads: int) -> CaseResult:
    samples = [p50_ms * 1e-3] * 20
    return CaseResult(
        case_id=f"m-fp32-{backend}-b1",
        model="m",
        technique="fp32",
        backend=backend,
        batch_size=1,
        device="cpu",
        runner=runner,
        artifact_bytes=1000,
        settings={"intra_op_threads": threads},
        accuracy={
            "metric_name": "top1",
            "metric": 0.9,
            "metric_delta": 0.0,
            "fidelity": {"top1_agreement": 1.0},
        },
        latency=LatencyStats.from_samples(samples),
        samples_s=samples,
        verdicts=[Verdict("fidelity", "pass", "ok")],
    )


def _results(tmp_path: Path, runner: str, threads: int) -> Path:
    """A results.json of one runner, as ``--perf-report`` writes it."""
    cases = [
        _case(runner, "torch_cpu", 1.0 / threads, threads),
        _case(runner, "onnxruntime_cpu", 0.8, threads),
    ]
    write_report(tmp_path / runner, cases, {"runner": runner, "machine": {"cpu_cores": threads}})
    return tmp_path / runner / "results.json"


def test_merges_two_runners(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runners' files make one report with the runner as a dimension, without re-running."""
    one, two = _results(tmp_path, "cpu-1thread", 1), _results(tmp_path, "cpu-2threads", 2)
    assert main(["report", str(one), str(two), "-o", str(tmp_path / "merged"), "--no-plots"]) == 0
    text = (tmp_path / "merged" / "report.md").read_text()
    assert text.startswith("# perfgate report: runners `cpu-1thread`, `cpu-2threads`")
    assert "| m | `cpu-1thread` | intra_op_threads=1 | `fp32-onnxruntime_cpu-b1` |" in text
    assert "| m | `cpu-2threads` | intra_op_threads=2 | `fp32-torch_cpu-b1` |" in text
    assert "| **cpu_cores** | 1 | 2 |" in text  # the environments differ, and the row says so
    assert "4 cases from 2 runner(s)" in capsys.readouterr().out


def test_same_case_of_one_runner_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two files of one runner with the same cases are not shards of one run: the error names both files."""
    one = _results(tmp_path, "cpu", 1)
    copy = tmp_path / "copy.json"
    copy.write_text(one.read_text())
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(one), str(copy), "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"perfgate: error: {one} and {copy} both hold case(s) " in err and "of runner 'cpu'" in err


def test_bad_file_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A results file of another schema version fails with exit status 2 and its path."""
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"schema_version": 0, "cases": []}))
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(bad), "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert f"results file {bad} has schema version 0" in capsys.readouterr().err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse rejects a missing output folder and a missing command, with usage."""
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "results.json"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: -o/--output" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
    assert "usage: perfgate" in capsys.readouterr().err


def test_help_runs_as_a_command() -> None:
    """``report --help`` documents the merge, run as a command (the console script calls the same main)."""
    done = subprocess.run(
        [sys.executable, "-m", "perfgate.cli", "report", "--help"], capture_output=True, text=True, check=True
    )
    assert "RESULTS.json" in done.stdout and "-o DIR, --output DIR" in done.stdout
    assert "merged report" in done.stdout
