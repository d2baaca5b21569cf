"""The history of runs: every run's per-case summaries in one SQLite file, judged and searched.

A stored baseline is one moment; the history is every run since. The ``history`` gate mode
judges a run against the recent accepted runs of the same runner fingerprint (robust z on the
median and MAD of their p50s), ``perfgate history`` shows a case's series and finds the runs where
its latency stepped (change points, via ``ruptures``), and stores of several runners merge into one.

The store is a plain SQLite file (stdlib ``sqlite3``): one writer at a time, the others wait on
its lock (two CI jobs or xdist workers appending at once), and each write is one transaction.
ruptures and matplotlib are imported only by the functions that need them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
import math
import sqlite3
import statistics
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfgate.gates import Verdict
from perfgate.sessions import SessionSummary, session_p50

SCHEMA_VERSION = 1
# Seconds a writer waits for another's lock before giving up: a CI job appending a whole run
# holds it for milliseconds, so this is only reached by a stuck process.
LOCK_TIMEOUT_S = 60.0
FIX = "pass another --store (or PERFGATE_HISTORY), or move the file away: a new store is created on first use"
# The hardware fields that decide latency; clock speed and memory size are noise, not identity.
FINGERPRINT_KEYS = ("cpu_model", "cpu_family", "cpu_model_number", "cpu_stepping", "cpu_cores", "machine")
# 1.4826 x MAD estimates the standard deviation of normal data.
MAD_TO_SIGMA = 1.4826
# A history whose p50s are all equal (a coarse timer, one run merged in twice) has MAD 0, and any
# difference would score infinitely far out: the MAD is floored at this share of the median, below
# the 1-3% that sessions of one case differ by on a quiet machine (docs/regression-gate.md).
MAD_FLOOR = 0.005
# Fewer points than this hold no two segments of CHANGE_MIN_SIZE runs: no change point is sought.
CHANGE_MIN_SIZE = 3
MIN_CHANGE_POINTS = 2 * CHANGE_MIN_SIZE
# The detector's penalty is this many noise sigmas times log(n) (see change_points).
PENALTY_SIGMAS = 2.0
SIGMA_FLOOR = 0.001  # in log(p50): a perfectly steady series still gets a positive penalty

_SCHEMA = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    runner TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    fingerprint_json TEXT NOT NULL,
    commit_sha TEXT NOT NULL DEFAULT '',
    branch TEXT NOT NULL DEFAULT '',
    started TEXT NOT NULL
);
CREATE TABLE cases (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    case_id TEXT NOT NULL,
    backend TEXT NOT NULL,
    device TEXT NOT NULL,
    p50_s REAL NOT NULL,
    n_sessions INTEGER NOT NULL,
    sessions_json TEXT NOT NULL,
    status TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    refreshed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, case_id)
);
CREATE INDEX cases_by_case ON cases (case_id);
CREATE INDEX runs_by_time ON runs (started, run_id);
"""
_RUN_COLUMNS = "run_id, runner, fingerprint, fingerprint_json, commit_sha, branch, started"
_CASE_COLUMNS = (
    "run_id, case_id, backend, device, p50_s, n_sessions, sessions_json, status, accepted, reason, refreshed"
)


class HistoryError(RuntimeError):
    """A history store that cannot be used: the message names the file and the fix."""


@dataclass(frozen=True)
class RunRecord:
    """One pytest run on one runner.

    :param run_id: unique across runners and runs (:func:`new_run_id`): merged stores key on it.
    :param runner: the runner id (``--perf-runner``).
    :param fingerprint: :func:`fingerprint`'s hash of the hardware and library versions.
    :param fingerprint_data: what was hashed, kept readable.
    :param commit: the commit under test, ``""`` when unknown.
    :param branch: its branch, ``""`` when unknown.
    :param started: when the run started, ISO 8601 (stored in UTC).
    """

    run_id: str
    runner: str
    fingerprint: str
    fingerprint_data: dict[str, Any]
    commit: str = ""
    branch: str = ""
    started: str = ""


@dataclass(frozen=True)
class CaseRecord:
    """One case of a run: its sessions and how the run judged it.

    :param sessions: the case's measurement sessions; the run's p50 is their median.
    :param status: the regression verdict's status (``pass``, ``fail``, ``improved``, ``new``, ...).
    :param accepted: whether later runs are judged against this one.
    :param reason: why not, when not accepted.
    :param refreshed: the run refreshed the case's baseline (``--perf-refresh-baselines``): the
        user declared its latency the new normal, and the history gate's window starts again here.
    """

    case_id: str
    backend: str
    device: str
    sessions: list[SessionSummary]
    status: str
    accepted: bool
    reason: str = ""
    refreshed: bool = False


@dataclass(frozen=True)
class Point:
    """One run of one case in a series: the run's p50 and whether it was accepted."""

    run_id: str
    started: str
    commit: str
    p50_s: float
    accepted: bool
    fingerprint: str
    status: str
    sessions: int
    runner: str = ""
    branch: str = ""
    reason: str = ""
    refreshed: bool = False


@dataclass(frozen=True)
class CaseInfo:
    """A case in the store: how many runs it has, and its latest."""

    case_id: str
    runs: int
    accepted: int
    last_p50_s: float
    last_started: str
    runners: tuple[str, ...]


@dataclass(frozen=True)
class MergeCounts:
    """What a merge added: runs and case rows new to the destination, and case rows it already held."""

    runs: int
    cases: int
    duplicates: int


def new_run_id() -> str:
    """A run id unique across runners: the UTC start time (sorts) and a random suffix."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def utc_iso(text: str) -> str:
    """``text`` (ISO 8601; naive means UTC) as ISO 8601 in UTC, so that stored times sort as text.

    :param text: a time such as ``2024-05-01T10:00:00+02:00`` or ``...Z``; empty means now.
    """
    if not text:
        return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))  # Python 3.10 reads no "Z"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat()


def fingerprint(hardware: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A stable hash of what decides latency on a machine, and the data hashed.

    The CPU (model name, family/model/stepping, cores), the architecture and instruction sets, the
    GPUs' names, the installed runtimes' versions and Python's minor version; not clock speed,
    memory size or the driver's patch level, which change without changing what a run measures.

    :param hardware: :meth:`perfgate.hardware.Hardware.to_dict` of the machine.
    :returns: (16 hex digits, the fingerprint data).
    """
    data: dict[str, Any] = {key: hardware.get(key) for key in FINGERPRINT_KEYS}
    data["isa"] = sorted(hardware.get("isa") or [])
    data["gpus"] = [str(gpu.get("name")) for gpu in hardware.get("gpus") or []]
    data["libraries"] = dict(sorted((hardware.get("libraries") or {}).items()))
    data["python"] = ".".join(str(hardware.get("python") or "").split(".")[:2])
    payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(payload).hexdigest()[:16], data


class HistoryStore:
    """A SQLite file of runs and their cases; created (with its folders) on first use.

    :param path: the file.
    :param create: ``False`` to refuse a missing file (the CLI reads; it never creates).
    """

    def __init__(self, path: Path | str, create: bool = True) -> None:
        self.path = Path(path)
        self.create = create

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A checked connection; with ``write``, inside one ``BEGIN IMMEDIATE`` transaction."""
        if not self.create and not self.path.exists():
            raise HistoryError(
                f"no history store at {self.path}: record runs first "
                "(pytest --perf-history PATH) or pass the right --store"
            )
        if self.create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: transactions are begun here, explicitly, not by the sqlite3 module.
            conn = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise HistoryError(f"history store {self.path} cannot be opened ({exc}); {FIX}") from exc
        try:
            conn.row_factory = sqlite3.Row
            if write:
                # IMMEDIATE takes the write lock up front: two writers queue instead of deadlocking.
                conn.execute("BEGIN IMMEDIATE")
            self._check_schema(conn)
            yield conn
            if write:
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"history store {self.path} cannot be read ({exc}); {FIX}") from exc
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables in a new file; refuse a newer schema, or a SQLite file that is not a store."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"history store {self.path} has schema version {version}, newer than this perfgate's "
                f"({SCHEMA_VERSION}): upgrade perfgate (pip install -U perfgate) to read it"
            )
        if version == SCHEMA_VERSION:
            return
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if tables:
            raise HistoryError(
                f"{self.path} is a SQLite file but no perfgate history store (tables: {', '.join(tables)}); {FIX}"
            )
        if not self.create:
            raise HistoryError(f"{self.path} is empty, no perfgate history store; {FIX}")
        if conn.in_transaction:
            self._create_tables(conn)
            return
        conn.execute("BEGIN IMMEDIATE")
        # Another process may have created the tables while this one waited for the lock.
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            self._create_tables(conn)
        conn.execute("COMMIT")

    @staticmethod
    def _create_tables(conn: sqlite3.Connection) -> None:
        # One statement at a time: executescript() would commit the open transaction.
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def record_run(self, run: RunRecord, cases: Sequence[CaseRecord]) -> None:
        """Append a run and its cases in one transaction; re-recording a (run, case) replaces it.

        A run may be recorded case by case, as each finishes: the run row is written once and
        kept, and each call adds its cases.

        :raises HistoryError: the run id is already stored for another runner or fingerprint.
        """
        with self._connect(write=True) as conn:
            self._write_run(conn, run)
            conn.executemany(
                f"INSERT OR REPLACE INTO cases ({_CASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_case_row(run.run_id, case) for case in cases],
            )

    def _refuse_other_runner(self, conn: sqlite3.Connection, run_id: str, runner: str, print_: str) -> None:
        """Refuse a run id already stored for another runner or fingerprint: their cases would mix."""
        stored = conn.execute("SELECT runner, fingerprint FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if stored and (stored["runner"], stored["fingerprint"]) != (runner, print_):
            raise HistoryError(
                f"run {run_id} is already in {self.path} for runner {stored['runner']!r} "
                f"(fingerprint {stored['fingerprint'][:8]}), not {runner!r} ({print_[:8]}): "
                "give every runner's run its own id (perfgate.history.new_run_id())"
            )

    def _write_run(self, conn: sqlite3.Connection, run: RunRecord) -> None:
        self._refuse_other_runner(conn, run.run_id, run.runner, run.fingerprint)
        conn.execute(
            # The first record of a run stays: a later call (the next case) must not move its time.
            f"INSERT OR IGNORE INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                run.run_id,
                run.runner,
                run.fingerprint,
                json.dumps(run.fingerprint_data, sort_keys=True),
                run.commit,
                run.branch,
                utc_iso(run.started),
            ),
        )

    def series(
        self, case_id: str, fingerprint: str | None = None, accepted_only: bool = False
    ) -> list[Point]:
        """The runs of one case in time order.

        :param fingerprint: only runs of this fingerprint; all when ``None``.
        :param accepted_only: only the accepted runs.
        """
        query = (
            "SELECT r.run_id, r.started, r.commit_sha AS 'commit', c.p50_s, c.accepted, r.fingerprint, "
            "c.status, c.n_sessions AS sessions, r.runner, r.branch, c.reason, c.refreshed "
            "FROM cases c JOIN runs r USING (run_id) WHERE c.case_id = ?"
        )
        params: list[Any] = [case_id]
        if fingerprint is not None:
            query += " AND r.fingerprint = ?"
            params.append(fingerprint)
        if accepted_only:
            query += " AND c.accepted = 1"
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY r.started, r.run_id", params).fetchall()
        return [
            Point(**{**dict(row), "accepted": bool(row["accepted"]), "refreshed": bool(row["refreshed"])})
            for row in rows
        ]

    def sessions(self, run_id: str, case_id: str) -> list[SessionSummary]:
        """The sessions stored for one case of one run, empty when there is none."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT sessions_json FROM cases WHERE run_id = ? AND case_id = ?", (run_id, case_id)
            ).fetchone()
        return [SessionSummary.from_dict(s) for s in json.loads(row[0])] if row else []

    def cases(self) -> list[CaseInfo]:
        """Every case in the store, by id, with its run counts, latest p50 and runners."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT c.case_id, c.accepted, c.p50_s, r.started, r.runner FROM cases c "
                "JOIN runs r USING (run_id) ORDER BY c.case_id, r.started, r.run_id"
            ).fetchall()
        found: dict[str, CaseInfo] = {}
        for case_id, accepted, p50_s, started, runner in rows:
            seen = found.get(case_id)
            runners = seen.runners if seen else ()
            found[case_id] = CaseInfo(
                case_id=case_id,
                runs=(seen.runs if seen else 0) + 1,
                accepted=(seen.accepted if seen else 0) + int(accepted),
                last_p50_s=p50_s,
                last_started=started,
                runners=runners if runner in runners else (*runners, runner),
            )
        return list(found.values())


def _case_row(run_id: str, case: CaseRecord) -> tuple[Any, ...]:
    return (
        run_id,
        case.case_id,
        case.backend,
        case.device,
        session_p50(case.sessions),
        len(case.sessions),
        json.dumps([s.to_dict() for s in case.sessions], sort_keys=True),
        case.status,
        int(case.accepted),
        "" if case.accepted else case.reason,
        int(case.refreshed),
    )


@dataclass(frozen=True)
class HistoryPolicy:
    """When the ``history`` gate fails a case (or calls it improved).

    :param window: the last this many accepted runs of the fingerprint form the history.
    :param min_runs: fewer accepted runs than this judge nothing: the verdict is ``insufficient``.
    :param max_score: the robust z, ``(now - median) / (1.4826 x MAD)``, a run must exceed.
    :param min_effect: and the relative effect it must exceed too (the case's regression
        threshold): a slowdown of 1% on a very steady runner is beyond the noise but not worth a
        red build.
    """

    window: int = 20
    min_runs: int = 5
    max_score: float = 4.0
    min_effect: float = 0.05


def history_verdict(
    store: HistoryStore,
    case_id: str,
    fingerprint: str,
    current_p50_s: float,
    policy: HistoryPolicy = HistoryPolicy(),  # frozen: one shared default is safe
    run_id: str | None = None,
) -> Verdict:
    """Judge this run's p50 of a case against the recent accepted runs of the same fingerprint.

    :param store: the history.
    :param case_id: the case.
    :param fingerprint: this runner's :func:`fingerprint` hash; other machines' runs are ignored.
    :param current_p50_s: this run's p50 (:func:`perfgate.sessions.session_p50` of its sessions).
    :param policy: the rule's settings.
    :param run_id: this run's id, left out of the history if it is already recorded.
    """
    points = history_window(store, case_id, fingerprint, policy, run_id)
    p50s = [p.p50_s for p in points]
    if len(p50s) < policy.min_runs:
        return _insufficient(points, fingerprint, current_p50_s, policy)
    median = statistics.median(p50s)
    mad = statistics.median(abs(x - median) for x in p50s)
    score = (current_p50_s - median) / (MAD_TO_SIGMA * max(mad, MAD_FLOOR * median))
    status, word = _judge(current_p50_s, median, score, policy)
    ratio = current_p50_s / median
    values = {
        "history_runs": len(p50s),
        "history_median_ms": median * 1e3,
        "history_mad_ms": mad * 1e3,
        "score": score,
        "ratio": ratio,
        "current_p50_ms": current_p50_s * 1e3,
        "min_effect": policy.min_effect,
        "window": policy.window,
    }
    message = (
        f"p50 {format_ms(current_p50_s)} ms vs the median of the last {len(p50s)} accepted runs "
        f"{format_ms(median)} ms (x{ratio:.3f}, robust z {word}"
    )
    return Verdict("regression", status, message, values)


def _insufficient(
    points: Sequence[Point], fingerprint: str, current_p50_s: float, policy: HistoryPolicy
) -> Verdict:
    """Too few accepted runs to judge: said, never a silent pass."""
    refresh = (
        f" since the baseline refresh of run {points[0].run_id}" if points and points[0].refreshed else ""
    )
    return Verdict(
        "regression",
        "insufficient",
        f"insufficient history: {len(points)} of the {policy.min_runs} accepted runs needed on this "
        f"runner fingerprint ({fingerprint[:8]}){refresh}; judged by nothing, run more",
        {"history_runs": len(points), "min_runs": policy.min_runs, "current_p50_ms": current_p50_s * 1e3},
    )


def history_window(
    store: HistoryStore, case_id: str, fingerprint: str, policy: HistoryPolicy, run_id: str | None = None
) -> list[Point]:
    """The accepted runs a verdict is judged against: the last ``policy.window`` of this fingerprint.

    None before the latest baseline refresh (the user declared its latency the new normal), and
    none before the window's last change point once ``policy.min_runs`` runs follow it: a step
    smaller than the minimum effect is accepted, and a window that straddles it has a median
    between the two levels and a MAD as wide as the step, which would hide a later regression.

    :param run_id: a run to leave out (the one being judged).
    """
    points = [p for p in store.series(case_id, fingerprint, accepted_only=True) if p.run_id != run_id]
    refreshes = [i for i, p in enumerate(points) if p.refreshed]
    points = points[max(refreshes[-1] if refreshes else 0, len(points) - policy.window) :]
    changes = change_points(points)
    if changes and len(points) - changes[-1].index >= policy.min_runs:
        return points[changes[-1].index :]
    return points


def _judge(now: float, median: float, score: float, policy: HistoryPolicy) -> tuple[str, str]:
    """The status, and the message's tail after ``robust z``: beyond the noise AND the minimum effect."""
    limit, z = policy.max_score, f"{score:.1f}"
    # Products, not the ratio: a p50 within min_effect of the median must never fail by a rounding.
    slower, faster = now > median * (1 + policy.min_effect), now * (1 + policy.min_effect) < median
    if score > limit and slower:
        return "fail", f"{z} > {limit:g}): regressed"
    if score < -limit and faster:
        return "improved", f"{z} < -{limit:g}): improved"
    if abs(score) > limit:
        return "pass", f"{z}, within the {policy.min_effect:.0%} minimum effect): unchanged"
    if slower or faster:
        return "pass", f"{z}, within the history's noise): unchanged"
    return "pass", f"{z}): unchanged"


def format_ms(seconds: float) -> str:
    """A latency in milliseconds with four significant digits, trailing zeros kept (1.400, 0.05210)."""
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 1e4 else f"{ms:#.4g}".rstrip(".")


@dataclass(frozen=True)
class ChangePoint:
    """A step in a case's series: the runs before and after it, and the medians on either side.

    :param index: the position in the series of the first point after the change.
    :param magnitude: ``after_p50_s / before_p50_s - 1``: +0.10 is 10% slower.
    """

    index: int
    before_p50_s: float
    after_p50_s: float
    magnitude: float
    before_run: str
    before_commit: str
    after_run: str
    after_commit: str


def noise_sigma(log_p50s: Sequence[float]) -> float:
    """The run-to-run noise of a log-latency series, robust to its steps and outliers.

    First differences cancel the level (a step leaves one large difference, which the MAD ignores);
    a difference of two independent points has sqrt(2) times their standard deviation.
    """
    diffs = [b - a for a, b in itertools.pairwise(log_p50s)]
    center = statistics.median(diffs)
    mad = statistics.median(abs(d - center) for d in diffs)
    return max(MAD_TO_SIGMA * mad / math.sqrt(2), SIGMA_FLOOR)


def change_points(
    points: Sequence[Point], min_effect: float = 0.02, penalty: float | None = None
) -> list[ChangePoint]:
    """The runs where a case's latency stepped, found by PELT on log(p50) with an L1 cost.

    The L1 cost (absolute deviations from each segment's median) makes one slow run an outlier,
    not a segment, and segments are at least :data:`CHANGE_MIN_SIZE` runs: a change must persist.
    The default penalty, ``2 sigma log(n)``, is BIC-like in the cost's units, with sigma the
    series' own noise (:func:`noise_sigma`). Changes whose medians differ by less than
    ``min_effect`` are then dropped, smallest first, merging their segments.

    :param points: one case's series of one fingerprint, in time order (:meth:`HistoryStore.series`).
    :param min_effect: the smallest relative change reported.
    :param penalty: the detector's penalty, in the L1 cost's units; ``None`` for the default.
    :returns: the changes in series order; none for fewer than :data:`MIN_CHANGE_POINTS` points.
    """
    if len(points) < MIN_CHANGE_POINTS:
        return []
    import numpy as np
    import ruptures

    signal = np.log([p.p50_s for p in points])
    pen = penalty if penalty is not None else PENALTY_SIGMAS * noise_sigma(signal.tolist()) * math.log(len(points))
    detector = ruptures.Pelt(model="l1", min_size=CHANGE_MIN_SIZE, jump=1).fit(signal.reshape(-1, 1))
    breaks = _large_enough(
        [p.p50_s for p in points], [int(b) for b in detector.predict(pen=pen)[:-1]], min_effect
    )
    return [_change_point(points, breaks, i) for i in range(len(breaks))]


def _segment_medians(p50s: Sequence[float], breaks: Sequence[int], i: int) -> tuple[float, float]:
    """The medians of the segments before and after the ``i``-th break."""
    bounds = [0, *breaks, len(p50s)]
    before = statistics.median(p50s[bounds[i] : bounds[i + 1]])
    return before, statistics.median(p50s[bounds[i + 1] : bounds[i + 2]])


def _large_enough(p50s: Sequence[float], breaks: Sequence[int], min_effect: float) -> list[int]:
    """``breaks`` without those whose segments' medians differ by less than ``min_effect``."""
    kept = list(breaks)
    while kept:
        medians = [_segment_medians(p50s, kept, i) for i in range(len(kept))]
        effects = [abs(after / before - 1) for before, after in medians]
        smallest = min(range(len(kept)), key=effects.__getitem__)
        if effects[smallest] >= min_effect:
            break
        del kept[smallest]  # its neighbours' segments merge, so their effects are measured again
    return kept


def _change_point(points: Sequence[Point], breaks: Sequence[int], i: int) -> ChangePoint:
    before, after = (float(x) for x in _segment_medians([p.p50_s for p in points], breaks, i))
    last, first = points[breaks[i] - 1], points[breaks[i]]
    return ChangePoint(
        index=breaks[i],
        before_p50_s=before,
        after_p50_s=after,
        magnitude=after / before - 1,
        before_run=last.run_id,
        before_commit=last.commit,
        after_run=first.run_id,
        after_commit=first.commit,
    )


def merge(sources: Sequence[Path], dest: Path) -> MergeCounts:
    """Merge several runners' stores into ``dest`` (created if missing), in one transaction.

    Rows already in ``dest`` are kept: a (run, case) is inserted only when new.

    :raises HistoryError: ``dest`` is one of the sources, a source is missing or no store, or one
        run id belongs to two different runners.
    """
    for source in sources:
        if Path(source).resolve() == Path(dest).resolve():
            raise HistoryError(f"{dest} is also a source of the merge: write it to a new file (-o OUT.db)")
    runs: list[sqlite3.Row] = []
    cases: list[sqlite3.Row] = []
    for source in sources:
        with HistoryStore(source, create=False)._connect() as conn:
            runs += conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs").fetchall()
            cases += conn.execute(f"SELECT {_CASE_COLUMNS} FROM cases").fetchall()
    target = HistoryStore(dest)
    with target._connect(write=True) as conn:
        for run in runs:
            target._refuse_other_runner(conn, run["run_id"], run["runner"], run["fingerprint"])
        added_runs = conn.executemany(
            f"INSERT OR IGNORE INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", runs
        ).rowcount
        added_cases = conn.executemany(
            f"INSERT OR IGNORE INTO cases ({_CASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", cases
        ).rowcount
    return MergeCounts(runs=added_runs, cases=added_cases, duplicates=len(cases) - added_cases)


def plot_series(points: Sequence[Point], changes: Sequence[ChangePoint], path: Path, title: str = "") -> Path:
    """Draw a case's p50 per run as a PNG: accepted runs filled, the others hollow, changes as lines.

    Needs matplotlib (``pip install 'perfgate[report]'``); it is imported here, not before.

    :param points: the series, in time order.
    :param changes: its change points, drawn between the runs they separate, with their magnitude.
    :param path: the PNG to write (its folder is created).
    :param title: the plot's title, e.g. the case id.
    """
    from matplotlib.figure import Figure  # no pyplot: no display, no global state

    figure = Figure(figsize=(max(6.0, min(16.0, 0.35 * len(points))), 4.0), layout="constrained")
    axes = figure.subplots()
    xs = list(range(len(points)))
    ms = [p.p50_s * 1e3 for p in points]
    axes.plot(xs, ms, color="0.7", linewidth=1, zorder=1)
    styles: dict[str, dict[str, Any]] = {
        "accepted": {"color": "tab:blue", "marker": "o"},
        "not accepted": {"facecolors": "none", "edgecolors": "tab:red", "marker": "o"},
    }
    for label, style in styles.items():
        chosen = [i for i, p in enumerate(points) if p.accepted == (label == "accepted")]
        if chosen:
            axes.scatter([xs[i] for i in chosen], [ms[i] for i in chosen], label=label, zorder=2, **style)
    for change in changes:
        axes.axvline(change.index - 0.5, color="tab:orange", linestyle="--")
        axes.annotate(
            f"{change.magnitude:+.1%}",
            (change.index - 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            color="tab:orange",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
    _commit_ticks(axes, points)
    axes.margins(y=0.15)  # room above the points for the changes' labels
    axes.set_ylabel("p50 (ms)")
    axes.set_title(title)
    axes.legend(loc="best", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _commit_ticks(axes: Any, points: Sequence[Point], most: int = 30) -> None:
    """Short commits under the runs (every k-th of many), else the run numbers."""
    step = max(1, math.ceil(len(points) / most))
    ticks = list(range(0, len(points), step))
    axes.set_xticks(ticks)
    if any(p.commit for p in points):
        axes.set_xticklabels(
            [points[i].commit[:7] or str(i + 1) for i in ticks], rotation=60, fontsize="x-small"
        )
        axes.set_xlabel("commit")
    else:
        axes.set_xticklabels([str(i + 1) for i in ticks])
        axes.set_xlabel("run")
