"""Baseline storage: a round trip through JSON, refresh semantics, and concurrent writers."""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perfgate.baselines import (
    REFERENCE_SETTING,
    BaselineError,
    baseline_reference_us,
    load_baseline,
    read_baseline,
    refresh,
    thin,
)
from perfgate.cache import ArtifactCache
from perfgate.reference_workload import REFERENCE_NAME
from perfgate.results import CaseResult
from perfgate.stats import LatencyStats


def case_result(case_id: str, samples: list[float], settings: dict | None = None) -> CaseResult:
    """A passed case with ``samples``, as the plugin collects it."""
    return CaseResult(
        case_id=case_id,
        model=case_id.split("-")[0],
        technique="fp32",
        backend="torch_cpu",
        batch_size=1,
        device="cpu",
        runner="r",
        nodeid=f"perf/test_inference.py::test_case[{case_id}]",
        settings=dict(settings or {}),
        accuracy={"metric": 1.0},
        latency=LatencyStats.from_samples(samples),
        samples_s=list(samples),
    )


def stored_samples(path: Path, case_id: str) -> list[float]:
    """The samples the gate reads for ``case_id``: perfgate's own reader, by case id."""
    baseline = load_baseline(path)
    assert baseline is not None
    return baseline.cases[case_id].samples_s


samples_strategy = st.lists(st.floats(1e-6, 1.0, allow_nan=False), min_size=5, max_size=300)


@settings(max_examples=30, deadline=None)
@given(samples=samples_strategy, threads=st.integers(1, 64), reference_us=st.floats(1.0, 1e4))
def test_round_trip_through_json(samples: list[float], threads: int, reference_us: float) -> None:
    """What a refresh writes reads back as the same samples (to 1 ns), settings and reference."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r" / "0001_baseline.json"
        result = case_result(
            "m-fp32-torch_cpu-b1", samples, {"intra_op_threads": threads, REFERENCE_SETTING: reference_us}
        )
        (change,) = refresh(path, "r", [result], {"perfgate": {}}, {})
        baseline = load_baseline(path)
        assert baseline is not None
        assert stored_samples(path, result.case_id) == pytest.approx(thin(samples), abs=1e-9)
        assert baseline.cases[result.case_id].settings["intra_op_threads"] == threads
        assert baseline_reference_us(baseline, result.case_id) == pytest.approx(reference_us)
        assert change.action == "added"
        assert change.new_p50_ms == pytest.approx(float(np.median(thin(samples))) * 1e3, rel=1e-6, abs=1e-6)


def test_refresh_replaces_only_the_given_cases(tmp_path: Path) -> None:
    """A second refresh with one case replaces that case and keeps the other untouched."""
    path = tmp_path / "r" / "0001_baseline.json"
    refresh(
        path, "r", [case_result("a-fp32-x-b1", [0.001] * 5), case_result("b-fp32-x-b1", [0.002] * 5)], {}, {}
    )
    changes = refresh(path, "r", [case_result("a-fp32-x-b1", [0.003] * 5)], {}, {})
    assert [c.line() for c in changes] == [" replaced  a-fp32-x-b1  p50 1 ms -> 3 ms"]
    cases = read_baseline(path)["perfgate"]["cases"]  # type: ignore[index]
    assert sorted(cases) == ["a-fp32-x-b1", "b-fp32-x-b1"]
    assert stored_samples(path, "b-fp32-x-b1") == [0.002] * 5


def test_refresh_prunes_and_keeps_out_failed_cases(tmp_path: Path) -> None:
    """Pruned cases are removed with their old p50; a case that failed its accuracy gate is not stored."""
    path = tmp_path / "r" / "0001_baseline.json"
    refresh(
        path,
        "r",
        [case_result("a-fp32-x-b1", [0.001] * 5), case_result("gone-fp32-x-b1", [0.004] * 5)],
        {},
        {},
    )
    broken = case_result("c-fp32-x-b1", [0.001] * 5)
    broken.accuracy = None
    changes = refresh(path, "r", [broken], {}, {}, prune={"gone-fp32-x-b1"})
    assert [c.action for c in changes] == ["kept-out", "removed"]
    assert changes[1].line() == "  removed  gone-fp32-x-b1  p50 4 ms -> - (no longer in the matrix)"
    assert sorted(read_baseline(path)["perfgate"]["cases"]) == ["a-fp32-x-b1"]  # type: ignore[index]


def test_reference_of_another_kernel_is_not_used(tmp_path: Path) -> None:
    """A baseline whose reference workload had another name gives no reference (no normalization)."""
    path = tmp_path / "r" / "0001_baseline.json"
    refresh(path, "r", [case_result("a-fp32-x-b1", [0.001] * 5, {REFERENCE_SETTING: 16.0})], {}, {})
    baseline = load_baseline(path)
    assert baseline is not None and baseline.document["perfgate"]["reference_workload"] == REFERENCE_NAME
    assert baseline_reference_us(baseline, "a-fp32-x-b1") == 16.0
    baseline.document["perfgate"]["reference_workload"] = "old-kernel-v0"
    assert baseline_reference_us(baseline, "a-fp32-x-b1") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "is not valid JSON"),
        ('{"benchmarks": [], "perfgate": {"schema_version": 99}}', "schema version 99"),
    ],
)
def test_unreadable_baseline_names_the_file_and_is_kept(tmp_path: Path, text: str, expected: str) -> None:
    """A corrupt or unknown-version file raises an error naming it and the fix; a refresh never overwrites it."""
    path = tmp_path / "r" / "0001_baseline.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(BaselineError, match=expected) as excinfo:
        refresh(path, "r", [case_result("a-fp32-x-b1", [0.001] * 5)], {}, {})
    assert str(path) in str(excinfo.value) and "--perf-refresh-baselines" in str(excinfo.value)
    assert path.read_text() == text


def _refresh_many(path: str, worker: int, start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))  # start together, to make the writes collide
    for i in range(4):
        refresh(
            Path(path), "r", [case_result(f"w{worker}_{i}-fp32-x-b1", [0.001 * (worker + 1)] * 50)], {}, {}
        )


def test_concurrent_refreshes_lose_nothing(tmp_path: Path) -> None:
    """Six processes refreshing one runner at once: every case lands, and the file stays valid JSON."""
    path = tmp_path / "r" / "0001_baseline.json"
    context = multiprocessing.get_context("fork")
    start_at = time.time() + 0.5
    workers = [context.Process(target=_refresh_many, args=(str(path), w, start_at)) for w in range(6)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    assert [p.exitcode for p in workers] == [0] * 6
    document = read_baseline(path)
    assert document is not None
    assert sorted(document["perfgate"]["cases"]) == sorted(
        f"w{w}_{i}-fp32-x-b1" for w in range(6) for i in range(4)
    )
    assert len(document["benchmarks"]) == 24


def _build_entry(root: str, log: str, start_at: float, queue: multiprocessing.Queue) -> None:
    time.sleep(max(0.0, start_at - time.time()))

    def build(target: Path) -> None:
        with open(log, "a") as handle:
            handle.write("built\n")
        time.sleep(0.3)  # a slow build widens the window in which a second builder could start
        target.write_bytes(b"x" * 100_000)

    hit = ArtifactCache(Path(root)).get_or_build("onnx", "key", "model.onnx", build)
    queue.put((str(hit.path), hit.cached))


def test_concurrent_cache_builds_build_once(tmp_path: Path) -> None:
    """Four processes asking for one artifact at once: one builds it, the others wait and reuse it."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    log = tmp_path / "builds.log"
    start_at = time.time() + 0.5
    args = (str(tmp_path / "cache"), str(log), start_at, queue)
    workers = [context.Process(target=_build_entry, args=args) for _ in range(4)]
    for process in workers:
        process.start()
    hits = [queue.get(timeout=60) for _ in workers]
    for process in workers:
        process.join(60)
    assert log.read_text() == "built\n"
    assert len({path for path, _ in hits}) == 1 and sorted(cached for _, cached in hits) == [
        False,
        True,
        True,
        True,
    ]
    assert Path(hits[0][0]).read_bytes() == b"x" * 100_000
