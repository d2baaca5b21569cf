"""Splitting the matrix across CI jobs with pytest-split, and merging the shards' reports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_shards_cover_the_matrix_once_and_merge_into_one_report(perf_project: pytest.Pytester) -> None:
    everything = perf_project.runpytest("perf", "--collect-only", "-q")
    cases = sorted(line.split("[", 1)[1].rstrip("]") for line in everything.outlines if "::test_case[" in line)
    assert len(cases) >= 3
    shards = []
    for group in (1, 2):
        result = perf_project.runpytest(
            "perf", "--splits", "2", "--group", str(group), "--perf-report", f"shard-{group}"
        )
        assert result.ret == 0, result.stdout.str()
        document = json.loads((perf_project.path / f"shard-{group}" / "results.json").read_text())
        shards.append(sorted(c["case_id"] for c in document["cases"]))
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == cases
    merge = subprocess.run(
        [sys.executable, "-m", "perfgate.cli", "report", "shard-1/results.json", "shard-2/results.json", "-o", "merged"],
        cwd=perf_project.path, capture_output=True, text=True,
    )  # fmt: skip
    assert merge.returncode == 0, merge.stderr
    assert f"{len(cases)} cases from 1 runner(s) (2 file(s))" in merge.stdout
    report = (perf_project.path / "merged" / "report.md").read_text()
    assert all(case in report for case in cases)
