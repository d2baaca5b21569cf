"""The history of runs: the SQLite store, the history gate's verdict, change points, merge, the CLI.

Every store is a real SQLite file under ``tmp_path``; ruptures and matplotlib run for real.
"""

from __future__ import annotations

import math
import sqlite3
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perfgate.cli import main
from perfgate.history import (
    CaseRecord,
    HistoryError,
    HistoryPolicy,
    HistoryStore,
    MergeCounts,
    Point,
    RunRecord,
    change_points,
    fingerprint,
    history_verdict,
    merge,
    noise_sigma,
)
from perfgate.sessions import SessionSummary

HARDWARE = {
    "cpu_model": "AMD EPYC 7763 64-Core Processor",
    "cpu_family": "25",
    "cpu_model_number": "1",
    "cpu_stepping": "1",
    "cpu_cores": 4,
    "machine": "x86_64",
    "isa": ["avx2"],
    "gpus": [],
    "libraries": {"numpy": "2.1.3", "onnxruntime": "1.20.1", "torch": "2.5.1"},
    "python": "3.11.9",
    "system": "Linux",
}
FP, FP_DATA = fingerprint(HARDWARE)
OTHER_FP, OTHER_DATA = fingerprint({**HARDWARE, "cpu_cores": 8})
CASE = "digits_resnet-fp32-onnxruntime_cpu-b1"
# Ten accepted runs of a steady case on a quiet runner: median 1.000 ms, MAD 0.010 ms.
STEADY_MS = [1.00, 1.01, 0.99, 1.02, 0.98, 1.00, 1.01, 0.99, 1.00, 1.02]
# A +10% step after run 12 under 2% log-normal noise (numpy default_rng(3), rounded):
# the median of the first 12 is 0.9942 ms, of the last 8 1.0943 ms.
STEP_MS = [
    1.0417, 0.9502, 1.0084, 0.9887, 0.9910, 0.9957, 0.9604, 0.9954, 0.9828, 1.0687,
    1.0045, 0.9930, 1.0938, 1.0854, 1.0770, 1.0914, 1.1107, 1.0948, 1.1213, 1.0956,
]  # fmt: skip
# Thirty runs of 2% noise and no change (default_rng(11)).
NOISE_MS = [
    1.0007, 1.0276, 1.0248, 0.9898, 0.9941, 0.9895, 1.0115, 0.9989, 1.0150, 0.9637,
    1.0318, 0.9981, 1.0137, 0.9973, 0.9924, 1.0093, 1.0166, 0.9960, 0.9969, 1.0138,
    0.9827, 0.9702, 1.0079, 0.9867, 0.9623, 0.9839, 0.9907, 0.9764, 0.9706, 1.0007,
]  # fmt: skip


def _sessions(*p50_ms: float) -> list[SessionSummary]:
    return [
        SessionSummary(p50_s=ms * 1e-3, p90_s=ms * 1.1e-3, p99_s=ms * 1.3e-3, spread=0.02, n=200, at="x")
        for ms in p50_ms
    ]


def _commit(n: int) -> str:
    return f"{n:02d}c0ffee" + "0" * 32


def _record(
    store: HistoryStore,
    n: int,
    p50_ms: float,
    *,
    accepted: bool = True,
    fp: str = FP,
    runner: str = "gha-ubuntu-cpu",
    refreshed: bool = False,
    case_id: str = CASE,
) -> None:
    """Run ``n`` (started n minutes after 10:00 UTC) with one session of ``p50_ms`` for the case."""
    run = RunRecord(
        run_id=f"{runner}-run-{n:02d}",
        runner=runner,
        fingerprint=fp,
        fingerprint_data=FP_DATA if fp == FP else OTHER_DATA,
        commit=_commit(n),
        branch="main",
        started=f"2024-05-01T10:{n:02d}:00+00:00",
    )
    status = "pass" if accepted else "fail"
    reason = "" if accepted else "regression verdict: fail"
    case = CaseRecord(
        case_id, "onnxruntime_cpu", "cpu", _sessions(p50_ms), status, accepted, reason, refreshed
    )
    store.record_run(run, [case])


def _store(tmp_path: Path, p50s_ms: list[float], name: str = "history.db", **kwargs: object) -> HistoryStore:
    store = HistoryStore(tmp_path / name)
    for n, ms in enumerate(p50s_ms):
        _record(store, n, ms, **kwargs)  # type: ignore[arg-type]
    return store


def _points(p50s_ms: list[float]) -> list[Point]:
    return [
        Point(f"run-{n:02d}", f"2024-05-01T10:{n:02d}:00+00:00", _commit(n), ms * 1e-3, True, FP, "pass", 1)
        for n, ms in enumerate(p50s_ms)
    ]


# --- the store ----------------------------------------------------------------------------------


def test_record_and_read_back(tmp_path: Path) -> None:
    """A run's cases come back with the median of their sessions, in time order, sessions intact."""
    store = HistoryStore(tmp_path / "deep" / "folder" / "history.db")
    late = RunRecord("run-b", "cpu", FP, FP_DATA, "bbbbbbbb", "main", "2024-05-02T09:00:00+02:00")
    early = RunRecord("run-a", "cpu", FP, FP_DATA, "aaaaaaaa", "main", "2024-05-01T12:00:00")
    three = CaseRecord(CASE, "onnxruntime_cpu", "cpu", _sessions(1.3, 1.1, 1.2), "pass", True)
    store.record_run(late, [three])
    two = CaseRecord(CASE, "onnxruntime_cpu", "cpu", _sessions(1.0, 1.4), "fail", False, "regressed")
    store.record_run(early, [two, CaseRecord("other-b1", "torch_cpu", "cpu", _sessions(2.0), "new", True)])

    points = store.series(CASE)
    assert [p.run_id for p in points] == ["run-a", "run-b"]
    assert points[0] == Point(
        run_id="run-a",
        started="2024-05-01T12:00:00+00:00",  # naive means UTC
        commit="aaaaaaaa",
        p50_s=pytest.approx(1.2e-3),  # the mean of two sessions
        accepted=False,
        fingerprint=FP,
        status="fail",
        sessions=2,
        runner="cpu",
        branch="main",
        reason="regressed",
    )
    assert points[1].started == "2024-05-02T07:00:00+00:00"  # stored in UTC
    assert points[1].p50_s == pytest.approx(1.2e-3) and points[1].sessions == 3
    assert store.sessions("run-b", CASE) == _sessions(1.3, 1.1, 1.2)
    assert [(c.case_id, c.runs, c.accepted, c.runners) for c in store.cases()] == [
        (CASE, 2, 1, ("cpu",)),
        ("other-b1", 1, 1, ("cpu",)),
    ]
    assert store.cases()[0].last_p50_s == pytest.approx(1.2e-3)
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1


def test_rerecording_replaces(tmp_path: Path) -> None:
    """Recording a (run, case) again replaces it; a run recorded case by case keeps one run row,
    and its first time (a later record without a start time does not move the run to now)."""
    store = HistoryStore(tmp_path / "history.db")
    _record(store, 0, 1.00)
    _record(store, 0, 1.50, accepted=False)
    again = RunRecord("gha-ubuntu-cpu-run-00", "gha-ubuntu-cpu", FP, FP_DATA)  # started: now
    store.record_run(again, [CaseRecord("second-b1", "torch_cpu", "cpu", _sessions(2.0), "pass", True)])
    assert store.series("second-b1")[0].started == "2024-05-01T10:00:00+00:00"
    points = store.series(CASE)
    assert len(points) == 1 and points[0].p50_s == pytest.approx(1.5e-3) and not points[0].accepted
    assert [c.case_id for c in store.cases()] == [CASE, "second-b1"]
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


def test_run_id_of_another_runner_is_refused(tmp_path: Path) -> None:
    """One run id for two runners would mix their cases: refused, naming both."""
    store = HistoryStore(tmp_path / "history.db")
    store.record_run(RunRecord("ci-42", "cpu", FP, FP_DATA), [])
    with pytest.raises(HistoryError, match=r"run ci-42 is already in .* for runner 'cpu' .* not 'gpu'"):
        store.record_run(RunRecord("ci-42", "gpu", OTHER_FP, OTHER_DATA), [])


def test_concurrent_writers_wait(tmp_path: Path) -> None:
    """Eight writers appending at once (CI jobs, xdist workers) all land: they wait, none fails."""
    store = HistoryStore(tmp_path / "history.db")
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for n in range(10):
                _record(HistoryStore(store.path), n, 1.0, runner=f"worker{worker}")
        except BaseException as exc:  # collected: a thread's exception would be lost
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.cases()[0].runs == 80


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A store written by a newer perfgate is neither read nor written: the message says upgrade."""
    store = _store(tmp_path, [1.0])
    with sqlite3.connect(store.path) as conn:
        conn.execute("PRAGMA user_version = 2")
    expected = (
        f"history store {store.path} has schema version 2, newer than this perfgate's (1): upgrade perfgate"
    )
    with pytest.raises(HistoryError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        store.series(CASE)
    with pytest.raises(HistoryError, match="schema version 2"):
        _record(store, 1, 1.0)


def test_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    """A text file, another program's SQLite file, a missing file: each a HistoryError with path and fix."""
    text = tmp_path / "notes.db"
    text.write_text("not a database, just some notes\n" * 100)
    with pytest.raises(
        HistoryError,
        match=rf"history store {text} cannot be read \(file is not a database\); pass another --store",
    ):
        HistoryStore(text).series(CASE)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE songs (title TEXT)")
    with pytest.raises(
        HistoryError, match=rf"{foreign} is a SQLite file but no perfgate history store \(tables: songs\)"
    ):
        _record(HistoryStore(foreign), 0, 1.0)
    with pytest.raises(HistoryError, match=rf"no history store at {tmp_path / 'missing.db'}"):
        HistoryStore(tmp_path / "missing.db", create=False).cases()
    assert not (tmp_path / "missing.db").exists()


# --- fingerprint --------------------------------------------------------------------------------


def test_fingerprint_is_stable() -> None:
    """The hash of a machine never changes across versions of perfgate: stored histories key on it."""
    assert FP == "3790eda79016d98b"
    assert FP_DATA["python"] == "3.11" and FP_DATA["libraries"]["torch"] == "2.5.1"
    reordered = dict(reversed(list(HARDWARE.items())))
    noise = {**reordered, "isa": ["avx2"], "cpu_mhz": 2445.4, "memory_gib": 15.6, "python": "3.11.4"}
    assert fingerprint(noise)[0] == FP  # key order, clock, memory, Python's patch level


@pytest.mark.parametrize(
    "change",
    [
        {"libraries": {**HARDWARE["libraries"], "onnxruntime": "1.21.0"}},
        {"libraries": {**HARDWARE["libraries"], "openvino": "2024.4.0"}},
        {"cpu_stepping": "2"},
        {"cpu_cores": 2},
        {"isa": ["avx2", "avx512"]},
        {"gpus": [{"name": "NVIDIA L4", "memory_gib": 22.0}]},
        {"python": "3.12.1"},
    ],
)
def test_fingerprint_changes_with_what_decides_latency(change: dict[str, object]) -> None:
    """A library upgrade, another CPU stepping, core count, ISA, GPU or Python makes another runner."""
    assert fingerprint({**HARDWARE, **change})[0] != FP


# --- the history gate ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now_ms", "status", "message"),
    [
        (
            1.12,
            "fail",
            "p50 1.120 ms vs the median of the last 10 accepted runs 1.000 ms (x1.120, robust z 8.1 > 4): regressed",
        ),
        (
            1.01,
            "pass",
            "p50 1.010 ms vs the median of the last 10 accepted runs 1.000 ms (x1.010, robust z 0.7): unchanged",
        ),
        (
            0.85,
            "improved",
            "p50 0.8500 ms vs the median of the last 10 accepted runs 1.000 ms (x0.850, robust z -10.1 < -4): improved",
        ),
        (
            1.07,
            "pass",
            "p50 1.070 ms vs the median of the last 10 accepted runs 1.000 ms (x1.070, robust z 4.7, within the 10% minimum effect): unchanged",
        ),
    ],
)
def test_history_verdict(tmp_path: Path, now_ms: float, status: str, message: str) -> None:
    """Beyond 4 robust sigmas AND beyond the minimum effect fails (or improves); else unchanged."""
    store = _store(tmp_path, STEADY_MS)
    verdict = history_verdict(store, CASE, FP, now_ms * 1e-3, HistoryPolicy(min_effect=0.10))
    assert (verdict.gate, verdict.status, verdict.message) == ("regression", status, message)
    assert verdict.values == {
        "history_runs": 10,
        "history_median_ms": pytest.approx(1.0),
        "history_mad_ms": pytest.approx(0.01),
        "score": pytest.approx((now_ms - 1.0) / (1.4826 * 0.01)),
        "ratio": pytest.approx(now_ms),
        "current_p50_ms": pytest.approx(now_ms),
        "min_effect": 0.10,
        "window": 20,
    }


def test_beyond_the_effect_but_within_the_noise_passes(tmp_path: Path) -> None:
    """5% slower is beyond a 3% minimum effect, but only 3.4 robust sigmas: noise, not a regression."""
    verdict = history_verdict(_store(tmp_path, STEADY_MS), CASE, FP, 1.05e-3, HistoryPolicy(min_effect=0.03))
    assert verdict.status == "pass"
    assert verdict.message.endswith("(x1.050, robust z 3.4, within the history's noise): unchanged")


def test_insufficient_history_is_said(tmp_path: Path) -> None:
    """Three accepted runs judge nothing: the verdict says so, with the fingerprint; it is no pass."""
    verdict = history_verdict(_store(tmp_path, [1.0, 1.0, 1.0]), CASE, FP, 5e-3, HistoryPolicy())
    assert verdict.status == "insufficient" and not verdict.failed
    assert verdict.message == (
        "insufficient history: 3 of the 5 accepted runs needed on this runner fingerprint (3790eda7); "
        "judged by nothing, run more"
    )
    assert verdict.values["history_runs"] == 3


def test_zero_mad_is_floored(tmp_path: Path) -> None:
    """Six identical runs (MAD 0): 2% slower scores 0.02 / (1.4826 x 0.5%) = 2.7, not infinity."""
    store = _store(tmp_path, [1.0] * 6)
    steady = history_verdict(store, CASE, FP, 1.0e-3, HistoryPolicy(min_effect=0.01))
    assert steady.status == "pass" and steady.values["score"] == 0.0
    small = history_verdict(store, CASE, FP, 1.02e-3, HistoryPolicy(min_effect=0.01))
    assert small.status == "pass" and small.values["score"] == pytest.approx(2.698, abs=1e-3)
    assert small.values["history_mad_ms"] == 0.0
    large = history_verdict(store, CASE, FP, 1.06e-3, HistoryPolicy(min_effect=0.05))
    assert large.status == "fail" and large.values["score"] == pytest.approx(8.094, abs=1e-3)


def test_runs_not_accepted_are_ignored(tmp_path: Path) -> None:
    """Failed runs after the steady ten do not drag the history up: 1.12 ms still fails against 1.00."""
    store = _store(tmp_path, STEADY_MS)
    for n in range(10, 16):
        _record(store, n, 1.12, accepted=False)
    verdict = history_verdict(store, CASE, FP, 1.12e-3, HistoryPolicy(min_effect=0.10))
    assert verdict.status == "fail" and verdict.values["history_runs"] == 10
    few = _store(tmp_path, [1.0] * 4, name="few.db")
    for n in range(4, 10):
        _record(few, n, 1.0, accepted=False)
    assert history_verdict(few, CASE, FP, 1e-3, HistoryPolicy()).status == "insufficient"


def test_other_fingerprints_are_ignored(tmp_path: Path) -> None:
    """Another machine's runs, twice as slow, are not this runner's history."""
    store = _store(tmp_path, STEADY_MS)
    for n in range(10, 20):
        _record(store, n, 2.0, fp=OTHER_FP, runner="gha-8-cores")
    verdict = history_verdict(store, CASE, FP, 1.12e-3, HistoryPolicy(min_effect=0.10))
    assert verdict.status == "fail" and verdict.values["history_median_ms"] == pytest.approx(1.0)
    elsewhere = history_verdict(store, CASE, fingerprint({**HARDWARE, "machine": "aarch64"})[0], 1e-3)
    assert elsewhere.status == "insufficient" and elsewhere.values["history_runs"] == 0


def test_window_takes_the_latest_runs(tmp_path: Path) -> None:
    """With a window of 10, fifteen old runs at 2 ms are out of it: 1.12 ms fails against 1.00."""
    store = _store(tmp_path, [2.0] * 15 + STEADY_MS)
    verdict = history_verdict(store, CASE, FP, 1.12e-3, HistoryPolicy(window=10, min_effect=0.10))
    assert verdict.status == "fail" and verdict.values["history_median_ms"] == pytest.approx(1.0)
    assert verdict.values["history_runs"] == 10


def test_a_refresh_restarts_the_history(tmp_path: Path) -> None:
    """An accepted slowdown (a baseline refresh) is the new normal: the window starts at the refresh."""
    store = _store(tmp_path, STEADY_MS)
    _record(store, 10, 1.12, refreshed=True)
    after = history_verdict(store, CASE, FP, 1.12e-3, HistoryPolicy(min_effect=0.10))
    assert after.status == "insufficient"
    assert after.message == (
        "insufficient history: 1 of the 5 accepted runs needed on this runner fingerprint (3790eda7) since "
        "the baseline refresh of run gha-ubuntu-cpu-run-10; judged by nothing, run more"
    )
    for n, ms in enumerate([1.11, 1.13, 1.12, 1.12], start=11):
        _record(store, n, ms)
    settled = history_verdict(store, CASE, FP, 1.12e-3, HistoryPolicy(min_effect=0.10))
    assert settled.status == "pass" and settled.values["history_median_ms"] == pytest.approx(1.12)


def test_an_accepted_step_starts_a_new_window(tmp_path: Path) -> None:
    """An 8% step, under the 10% minimum effect, is accepted; once five runs follow it, the history
    is those runs: 1.25 ms fails against their 1.08 ms, not against a median and MAD that mix levels."""
    store = _store(tmp_path, STEADY_MS + [round(ms * 1.08, 4) for ms in STEADY_MS])
    verdict = history_verdict(store, CASE, FP, 1.25e-3, HistoryPolicy(min_effect=0.10))
    assert verdict.status == "fail"
    assert verdict.values["history_runs"] == 10
    assert verdict.values["history_median_ms"] == pytest.approx(1.08)
    young = _store(tmp_path, [*STEADY_MS, 1.08, 1.09, 1.07], name="young.db")
    assert (
        history_verdict(young, CASE, FP, 1.25e-3, HistoryPolicy(min_effect=0.10)).values["history_runs"] == 13
    )


def test_the_judged_run_is_left_out(tmp_path: Path) -> None:
    """A run already recorded is not part of its own history."""
    store = _store(tmp_path, [*STEADY_MS, 1.12])
    verdict = history_verdict(
        store, CASE, FP, 1.12e-3, HistoryPolicy(min_effect=0.10), run_id="gha-ubuntu-cpu-run-10"
    )
    assert verdict.status == "fail" and verdict.values["history_runs"] == 10


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(st.floats(0.05, 50.0), min_size=5, max_size=9),
    min_effect=st.floats(0.0, 0.3),
    share=st.floats(-1.0, 1.0),
)
def test_never_fails_within_the_minimum_effect(history: list[float], min_effect: float, share: float) -> None:
    """Whatever the history's noise, a p50 within min_effect of its median never fails."""
    policy = HistoryPolicy(min_effect=min_effect)
    with tempfile.TemporaryDirectory() as folder:
        store = _store(Path(folder), history)
        # The median the verdict judges by (the window does not depend on the current p50).
        median_ms = history_verdict(store, CASE, FP, 1.0, policy).values["history_median_ms"]
        now_ms = median_ms * (1 + share * min_effect)
        verdict = history_verdict(store, CASE, FP, now_ms * 1e-3, policy)
    assert verdict.status != "fail", verdict.message


# --- change points ------------------------------------------------------------------------------


def test_finds_a_step() -> None:
    """A +10% step after run 12 of 20, under 2% noise: found there, with its size and commit range."""
    (change,) = change_points(_points(STEP_MS))
    assert change.index == 12
    assert change.before_p50_s == pytest.approx(0.9942e-3) and change.after_p50_s == pytest.approx(1.0943e-3)
    assert change.magnitude == pytest.approx(0.10, abs=0.01)
    assert (change.before_run, change.after_run) == ("run-11", "run-12")
    assert (change.before_commit, change.after_commit) == (_commit(11), _commit(12))


def test_finds_nothing_in_noise() -> None:
    """Thirty runs of 2% noise hold no change point; neither does one slow outlier in them."""
    assert change_points(_points(NOISE_MS)) == []
    spiked = [*NOISE_MS[:15], 1.30, *NOISE_MS[16:]]
    assert change_points(_points(spiked)) == []


def test_steps_and_noise_over_many_series() -> None:
    """Over 50 random series each: the step is found within one run in at least 47, noise gives at most 2."""
    found = false = 0
    for seed in range(50):
        rng = np.random.default_rng(seed)
        step = np.exp(rng.normal(0, 0.02, 20)) * np.where(np.arange(20) >= 12, 1.1, 1.0)
        changes = change_points(_points(list(step)))
        found += len(changes) == 1 and abs(changes[0].index - 12) <= 1
        false += bool(change_points(_points(list(np.exp(rng.normal(0, 0.02, 30))))))
    assert found >= 47 and false <= 2


def test_changes_below_the_minimum_effect_are_dropped() -> None:
    """A clean 3% step is found at a 2% minimum effect and dropped at 5%; a tiny series is not searched."""
    series = [1.0] * 8 + [1.03] * 8
    assert [round(c.magnitude, 4) for c in change_points(_points(series), min_effect=0.02)] == [0.03]
    assert change_points(_points(series), min_effect=0.05) == []
    assert change_points(_points([1.0, 1.0, 1.0, 1.5, 1.5])) == []


def test_noise_sigma_ignores_the_step() -> None:
    """The noise estimate of the step series is its 2% noise, not the 10% step."""
    assert noise_sigma([math.log(x) for x in STEP_MS]) == pytest.approx(0.02, abs=0.006)


# --- merge --------------------------------------------------------------------------------------


def test_merge_two_runners(tmp_path: Path) -> None:
    """Two runners' stores make one; merging again adds nothing; the destination may not be a source."""
    cpu = _store(tmp_path, [1.0, 1.1, 1.2], name="cpu.db")
    gpu = _store(tmp_path, [0.2, 0.3], name="gpu.db", fp=OTHER_FP, runner="gpu-l4")
    dest = tmp_path / "out" / "all.db"
    assert merge([cpu.path, gpu.path], dest) == MergeCounts(runs=5, cases=5, duplicates=0)
    assert merge([cpu.path, gpu.path], dest) == MergeCounts(runs=0, cases=0, duplicates=5)
    merged = HistoryStore(dest)
    assert [p.p50_s * 1e3 for p in merged.series(CASE, FP)] == pytest.approx([1.0, 1.1, 1.2])
    assert [p.runner for p in merged.series(CASE)] == ["gha-ubuntu-cpu", "gpu-l4"] * 2 + ["gha-ubuntu-cpu"]
    with pytest.raises(HistoryError, match=rf"{cpu.path} is also a source of the merge"):
        merge([gpu.path, cpu.path], cpu.path)
    with pytest.raises(HistoryError, match=rf"no history store at {tmp_path / 'nope.db'}"):
        merge([tmp_path / "nope.db"], tmp_path / "other.db")


# --- the CLI ------------------------------------------------------------------------------------


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The one line a failing command prints; its exit status is 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("perfgate: error: ")
    return err.strip()


def test_cli_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``history list`` (and bare ``history``, with $PERFGATE_HISTORY) gives a line per case."""
    store = _store(tmp_path, STEP_MS)
    _record(store, 20, 1.10, accepted=False)
    assert main(["history", "list", "--store", str(store.path)]) == 0
    listed = capsys.readouterr().out
    assert listed.splitlines() == [
        "case                                   runs  accepted  last p50 ms  last run (UTC)       runner(s)",
        "-------------------------------------  ----  --------  -----------  -------------------  --------------",
        "digits_resnet-fp32-onnxruntime_cpu-b1  21    20        1.100        2024-05-01T10:20:00  gha-ubuntu-cpu",
    ]
    monkeypatch.setenv("PERFGATE_HISTORY", str(store.path))
    assert main(["history"]) == 0
    assert capsys.readouterr().out == listed


def test_cli_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``history show`` prints the runs, then the change found in them, with its commit range."""
    store = _store(tmp_path, STEP_MS)
    assert main(["history", "show", CASE, "--store", str(store.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{CASE} on fingerprint {FP} (runner gha-ubuntu-cpu): 20 runs"
    assert lines[1].split() == [
        "#",
        "time",
        "(UTC)",
        "run",
        "commit",
        "p50",
        "ms",
        "sessions",
        "status",
        "accepted",
    ]
    assert lines[3].split() == [
        "1",
        "2024-05-01T10:00:00",
        "gha-ubuntu-cpu-run-00",
        "00c0ffe",
        "1.042",
        "1",
        "pass",
        "yes",
    ]
    assert len(lines) == 3 + 20 + 1
    assert lines[-1] == "  change at run 13 (commit 11c0ffe..12c0ffe): p50 0.9942 ms -> 1.094 ms (+10.1%)"


def test_cli_show_says_why_no_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Too few runs are not searched, and the output says so; noise gives 'no change point'."""
    short = _store(tmp_path, [1.0, 1.0, 1.3], name="short.db")
    assert main(["history", "show", CASE, "--store", str(short.path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "  no change point sought: 3 runs, 6 needed"
    noisy = _store(tmp_path, NOISE_MS, name="noisy.db")
    assert main(["history", "show", CASE, "--store", str(noisy.path), "--fingerprint", FP[:6]]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "  no change point"


def test_cli_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``history plot`` writes a PNG of the series."""
    pytest.importorskip("matplotlib")
    store = _store(tmp_path, STEP_MS)
    _record(store, 20, 1.2, accepted=False)
    out = tmp_path / "plots" / "series.png"
    assert main(["history", "plot", CASE, "--store", str(store.path), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert capsys.readouterr().out == f"perfgate: 21 runs of {CASE} on fingerprint {FP} plotted into {out}\n"


def test_cli_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``history merge`` prints what it added; the merged store lists both runners."""
    cpu = _store(tmp_path, [1.0, 1.1], name="cpu.db")
    gpu = _store(tmp_path, [0.2], name="gpu.db", fp=OTHER_FP, runner="gpu-l4")
    out = tmp_path / "all.db"
    assert main(["history", "merge", str(cpu.path), str(gpu.path), "-o", str(out)]) == 0
    assert capsys.readouterr().out == (
        f"perfgate: merged 2 store(s) into {out}: 3 runs and 3 case results added, 0 already there\n"
    )
    assert HistoryStore(out).cases()[0].runners == ("gha-ubuntu-cpu", "gpu-l4")
    assert _error(capsys, ["history", "merge", str(cpu.path), "-o", str(cpu.path)]) == (
        f"perfgate: error: {cpu.path} is also a source of the merge: write it to a new file (-o OUT.db)"
    )


def test_cli_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No store, a missing file, a bad file, an unknown case or fingerprint: one line each, exit 2."""
    monkeypatch.delenv("PERFGATE_HISTORY", raising=False)
    assert _error(capsys, ["history", "list"]) == (
        "perfgate: error: no history store: pass --store PATH or set PERFGATE_HISTORY"
    )
    missing = tmp_path / "missing.db"
    assert _error(capsys, ["history", "show", CASE, "--store", str(missing)]).startswith(
        f"perfgate: error: no history store at {missing}: record runs first"
    )
    assert not missing.exists()  # reading never creates a store
    bad = tmp_path / "bad.db"
    bad.write_text("{}")
    assert _error(capsys, ["history", "--store", str(bad), "list"]) == (
        f"perfgate: error: history store {bad} cannot be read (file is not a database); pass another "
        "--store (or PERFGATE_HISTORY), or move the file away: a new store is created on first use"
    )
    store = _store(tmp_path, [1.0])
    assert _error(capsys, ["history", "show", "nope-b1", "--store", str(store.path)]) == (
        f"perfgate: error: case 'nope-b1' has no runs in {store.path}: see `perfgate history list`"
    )
    assert _error(
        capsys, ["history", "plot", CASE, "--store", str(store.path), "--fingerprint", "ffff", "-o", "x.png"]
    ) == (f"perfgate: error: case {CASE!r} has no runs of fingerprint ffff in {store.path} (it has: {FP})")
