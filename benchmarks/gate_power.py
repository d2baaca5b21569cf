"""False alarms and power of the shipped regression gate, measured across separate processes.

Each trial is an independent ``pytest`` process on real cases of the zoo (fp32 of three models on
every CPU backend, and static INT8 of digits_resnet where it exists), loading the artifacts from
the cache, running the shipped gate end to end: the first reading, then a confirmation after the
other cases. A slowdown is injected in the inference path: the backend session's ``run`` spins
on for +5%, +10% or +20% of the case's baseline p50 after each call (``conftest.py`` below). Each
trial gives each case a level in rotation (half of them unchanged, A/A). A baseline refresh
(``--perf-repeats 3``, its own process) opens each block of trials, so the comparisons do not
all lean on one baseline.

The trials run at a 2% threshold so that every reading a higher threshold would confirm is
confirmed; ``analyze`` then judges each comparison with the shipped ``RegressionGate`` at each
threshold (first reading, then its confirmation), and the old gate (Mann-Whitney U at 0.01 and
the threshold on one session's raw samples, with the machine factor) on the same samples.

    python benchmarks/gate_power.py run --trials 50 --out /tmp/gate-power   # ~50 min here, alone
    python benchmarks/gate_power.py analyze /tmp/gate-power/trials.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from exclusive import exclusive  # noqa: E402

LEVELS = (0.0, 0.0, 0.20, 0.0, 0.10, 0.0, 0.05, 0.20)  # rotated over the cases: half A/A
THRESHOLDS = (0.03, 0.05, 0.07, 0.10, 0.15)

MATRIX = """
pythonpath = ["{repo}"]
batch_sizes = [1]

[timing]
warmup_rounds = 20
warmup_time_s = 0.2
min_rounds = 200
min_time_s = 0.5

[threads]
intra_op = 1
inter_op = 1

[regression]
threshold = 0.02   # low, so that every reading a higher threshold would confirm is confirmed

[models.digits_resnet]
factory = "fixtures.zoo:digits_resnet"
data = "fixtures.digits:digits"
metric = "top1"

[models.digits_mobilenet]
factory = "fixtures.zoo:digits_mobilenet"
data = "fixtures.digits:digits"
metric = "top1"
exclude = ["int8_static"]

[models.digits_transformer]
factory = "fixtures.zoo:digits_transformer"
data = "fixtures.digits:digits"
metric = "top1"
exclude = ["int8_static"]

[techniques.fp32]
[techniques.int8_static]
options = {{ calibration = {{ method = "minmax", size = 256 }} }}

[backends.torch_cpu]
[backends.onnxruntime_cpu]
[backends.torch_compile_cpu]
[backends.openvino_cpu]
[backends.openvino_cpu_throughput]
[backends.litert_cpu]
"""

# The injected slowdown: after every call of a case's bound run, spin for the seconds given.
CONFTEST = """
import json
import os
import time

import pytest

EXTRA_S = json.loads(os.environ.get("GATE_POWER_EXTRA_S", "{}"))


def _slowed(run, extra_s):
    def run_and_spin():
        run()
        end = time.perf_counter() + extra_s
        while time.perf_counter() < end:
            pass

    return run_and_spin


class _SlowedBackend:
    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def load(self, artifact, request, settings):
        session = self._backend.load(artifact, request, settings)
        extra_s = EXTRA_S.get(request.case_id)
        if extra_s:
            session.run = _slowed(session.run, extra_s)
        return session


@pytest.hookimpl(trylast=True)
def pytest_perfgate_register(backends, techniques, metrics):
    for name in ("torch_cpu", "onnxruntime_cpu", "torch_compile_cpu", "openvino_cpu", "openvino_cpu_throughput", "litert_cpu"):
        backends.register(name, _SlowedBackend(backends.get(name)))
"""


def _pytest(out: Path, *args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pytest", "perf", "-q", "-p", "no:cacheprovider", *args]
    command += [f"--perf-cache={REPO / '.perfgate_cache'}", "--perf-runner=power"]
    with exclusive():
        subprocess.run(
            command, cwd=out, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, check=False
        )


def _setup(out: Path) -> None:
    (out / "perf").mkdir(parents=True, exist_ok=True)
    (out / "perf" / "matrix.toml").write_text(MATRIX.format(repo=REPO.as_posix()))
    (out / "perf" / "test_inference.py").write_text((REPO / "perf" / "test_inference.py").read_text())
    (out / "conftest.py").write_text(CONFTEST)
    (out / "pytest.ini").write_text("[pytest]\n")


def _baseline(out: Path) -> dict[str, Any]:
    return json.loads((out / "baselines" / "power" / "0001_baseline.json").read_text())


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    _setup(out)
    trials = out / "trials.jsonl"
    for trial in range(args.trials):
        if trial % args.refresh_every == 0:
            _pytest(out, "--perf-refresh-baselines", "--perf-repeats=3")
            baseline = _baseline(out)
        cases = sorted(baseline["perfgate"]["cases"])
        levels = {case: LEVELS[(trial + i) % len(LEVELS)] for i, case in enumerate(cases)}
        p50 = {c: statistics.median(s["p50_s"] for s in baseline["perfgate"]["cases"][c]["sessions"]) for c in cases}  # fmt: skip
        extra = {c: p50[c] * level for c, level in levels.items() if level}
        report = out / "report"
        load_before = os.getloadavg()[0]
        _pytest(
            out,
            "--benchmark-compare",
            f"--perf-report={report}",
            env={"GATE_POWER_EXTRA_S": json.dumps(extra)},
        )
        load_after = os.getloadavg()[0]
        results = json.loads((report / "results.json").read_text())
        (report / "results.json").unlink()
        with trials.open("a") as f:
            for case in results["cases"]:
                stored = baseline["perfgate"]["cases"].get(case["case_id"])
                if stored is None or not case.get("sessions"):
                    continue
                base_entry = next(
                    b for b in baseline["benchmarks"] if b["params"]["perf_case"] == case["case_id"]
                )
                start, end = stored["sessions"][0]["samples"]
                record = {
                    "trial": trial,
                    "case_id": case["case_id"],
                    "backend": case["backend"],
                    "level": levels.get(case["case_id"], 0.0),
                    "baseline_sessions": stored["sessions"],
                    "baseline_first_samples": base_entry["stats"]["data"][start:end],
                    "sessions": case["sessions"],
                    "verdict": next((v for v in case["verdicts"] if v["gate"] == "regression"), None),
                    "load": [load_before, load_after],
                    "time": time.time(),
                }
                f.write(json.dumps(record) + "\n")
        print(f"trial {trial + 1}/{args.trials}: load {load_before:.1f}-{load_after:.1f}", flush=True)


def _new_verdict(record: dict[str, Any], threshold: float) -> tuple[str, bool]:
    """The shipped gate at ``threshold`` on the recorded sessions: (status, confirmation taken)."""
    sys.path.insert(0, str(REPO))
    from perfgate.gates import RegressionGate, RegressionPolicy
    from perfgate.sessions import SessionSummary

    gate = RegressionGate(RegressionPolicy(threshold=threshold))
    base = [SessionSummary.from_dict(s) for s in record["baseline_sessions"]]
    sessions = [SessionSummary.from_dict(s) for s in record["sessions"]]
    first = [s for s in sessions if s.kind != "confirmation"]
    confirmations = [s for s in sessions if s.kind == "confirmation"]
    verdict = gate.compute(first, base).status
    if verdict != "fail":
        return verdict, False
    if not confirmations:  # the 2% run did not need one: cannot happen when the first fails at >= 2%
        raise SystemExit(
            f"trial {record['trial']} {record['case_id']}: a failing reading without its confirmation"
        )
    return gate.compute(confirmations[:1], base).status, True


def _old_verdict(record: dict[str, Any], threshold: float, normalize: bool = True) -> str:
    """The gate before sessions: one-sided Mann-Whitney U at 0.01 and the threshold on the raw
    samples of one baseline session and the first reading, normalized by the machine factor."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    base = np.asarray(record["baseline_first_samples"])
    first = next(s for s in record["sessions"] if s["kind"] != "confirmation")
    now = np.asarray(first["samples_s"])
    ref_then, ref_now = record["baseline_sessions"][0].get("reference_us"), first.get("reference_us")
    factor = ref_now / ref_then if ref_then and ref_now and normalize else 1.0
    raw = float(np.median(now) / np.median(base))
    ratio, limit = raw / factor, 1.0 + threshold
    beyond = ratio > limit and raw > limit
    if beyond and mannwhitneyu(now, base * factor, alternative="greater").pvalue < 0.01:
        return "fail"
    return "pass"


def _shipped(case_id: str) -> float:
    """The case's threshold in perf/matrix.toml, as shipped."""
    global _SHIPPED
    if not _SHIPPED:
        sys.path.insert(0, str(REPO))
        from perfgate.matrix import ALL_PROFILES, load_matrix

        _SHIPPED = {
            c.id: c.regression.threshold
            for c in load_matrix(REPO / "perf" / "matrix.toml", ALL_PROFILES).cases
        }
    return _SHIPPED[case_id]


_SHIPPED: dict[str, float] = {}
OLD_THRESHOLDS = {"torch_cpu": 0.10, "torch_compile_cpu": 0.10, "openvino_cpu_throughput": 0.15}


def analyze(args: argparse.Namespace) -> None:
    records = [json.loads(line) for line in Path(args.trials).read_text().splitlines() if line.strip()]
    by_backend: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_backend[record["backend"]].append(record)
    loads = [x for r in records for x in r["load"]]
    trials = len({r["trial"] for r in records})
    print(f"{len(records)} comparisons in {trials} trials; load average {min(loads):.1f}-{max(loads):.1f} (median {statistics.median(loads):.1f}) on {os.cpu_count()} cores\n")  # fmt: skip
    header = (
        "| backend | rule | A/A comparisons | false alarms | detected +5% | detected +10% | detected +20% |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|")
    for backend in sorted(by_backend):
        rows = by_backend[backend]
        for threshold in THRESHOLDS:
            print(
                _row(
                    backend, f"sessions, {threshold:.0%}", rows, lambda r, t=threshold: _new_verdict(r, t)[0]
                )
            )
        shipped = sorted({_shipped(r["case_id"]) for r in rows})
        label = "/".join(f"{t:.0%}" for t in shipped)
        print(
            _row(
                backend,
                f"**shipped: sessions, {label}**",
                rows,
                lambda r: _new_verdict(r, _shipped(r["case_id"]))[0],
            )
        )
        old = OLD_THRESHOLDS.get(backend, 0.05)
        print(_row(backend, f"old gate, {old:.0%}", rows, lambda r, t=old: _old_verdict(r, t)))
    print(
        "\n| backend | A/A comparisons | smallest threshold with no false alarm | its detection of +10% | +20% |"
    )
    print("|---|---|---|---|---|")
    for backend in sorted(by_backend):
        print(_safest(backend, by_backend[backend]))
    _machine_factor(records)


def _safest(backend: str, rows: list[dict[str, Any]]) -> str:
    """The smallest threshold (in whole percent) at which no A/A comparison of ``backend`` failed."""
    aa = [r for r in rows if r["level"] == 0.0]
    for percent in range(2, 101):  # the trials ran at 2%: below it a failing reading has no confirmation
        threshold = percent / 100
        if not any(_new_verdict(r, threshold)[0] == "fail" for r in aa):
            cells = []
            for level in (0.10, 0.20):
                hit = [r for r in rows if r["level"] == level]
                caught = sum(_new_verdict(r, threshold)[0] == "fail" for r in hit)
                cells.append(f"{caught}/{len(hit)}")
            return f"| {backend} | {len(aa)} | {percent}% | {cells[0]} | {cells[1]} |"
    return f"| {backend} | {len(aa)} | above 100% | - | - |"


def _row(backend: str, rule: str, rows: list[dict[str, Any]], judge: Any) -> str:
    cells = []
    aa = [r for r in rows if r["level"] == 0.0]
    alarms = sum(judge(r) == "fail" for r in aa)
    cells.append(f"{len(aa)}")
    cells.append(f"{alarms} ({alarms / len(aa):.1%})" if aa else "-")
    for level in (0.05, 0.10, 0.20):
        hit = [r for r in rows if r["level"] == level]
        caught = sum(judge(r) == "fail" for r in hit)
        cells.append(f"{caught}/{len(hit)} ({caught / len(hit):.0%})" if hit else "-")
    return f"| {backend} | {rule} | " + " | ".join(cells) + " |"


def _machine_factor(records: list[dict[str, Any]]) -> None:
    """Does the reference workload track the cases? Its ratio against each A/A case's ratio."""
    import numpy as np

    pairs = []
    for r in records:
        if r["level"] != 0.0:
            continue
        first = next(s for s in r["sessions"] if s["kind"] != "confirmation")
        then = [s["reference_us"] for s in r["baseline_sessions"] if s.get("reference_us")]
        base = statistics.median(s["p50_s"] for s in r["baseline_sessions"])
        if then and first.get("reference_us"):
            pairs.append((first["reference_us"] / statistics.median(then), first["p50_s"] / base))
    if not pairs:
        return
    factor, ratio = np.log(np.asarray(pairs)).T
    corrected = ratio - factor
    print(
        f"\nmachine factor over {len(pairs)} A/A comparisons: factor spread (sd of log) {factor.std():.3f}, "
        f"case ratio spread {ratio.std():.3f}, after dividing by the factor {corrected.std():.3f}; "
        f"correlation {np.corrcoef(factor, ratio)[0, 1]:.2f}"
    )


def export(args: argparse.Namespace) -> None:
    """Real comparisons for tests/test_regression_gate.py: per backend, the A/A comparisons that the
    old gate failed (a false alarm on unchanged code), and one +20% comparison, with the sessions
    and (thinned) raw samples the two rules judge."""
    records = [json.loads(line) for line in Path(args.trials).read_text().splitlines() if line.strip()]
    thresholds = {k: float(v) for k, v in (item.split("=") for item in args.thresholds.split(","))}
    cases = []
    for backend, threshold in thresholds.items():
        rows = [r for r in records if r["backend"] == backend]
        old = OLD_THRESHOLDS.get(backend, 0.05)
        aa = [r for r in rows if r["level"] == 0.0 and _old_verdict(r, old, normalize=False) == "fail"][
            : args.per_backend
        ]
        slowed = [r for r in rows if r["level"] == 0.20 and _new_verdict(r, threshold)[0] == "fail"][:1]
        for record in aa + slowed:
            first = next(s for s in record["sessions"] if s["kind"] != "confirmation")
            cases.append(
                {
                    "case_id": record["case_id"],
                    "level": record["level"],
                    "threshold": threshold,
                    "old_threshold": old,
                    "baseline": [
                        {k: v for k, v in s.items() if k != "samples"} for s in record["baseline_sessions"]
                    ],
                    "current": {k: v for k, v in first.items() if k not in ("samples_s", "kept")},
                    "confirmation": next(
                        (
                            {k: v for k, v in c.items() if k not in ("samples_s", "kept")}
                            for c in record["sessions"]
                            if c["kind"] == "confirmation"
                        ),
                        None,
                    ),
                    "baseline_samples_s": thinned(record["baseline_first_samples"], 300),
                    "current_samples_s": thinned(first["samples_s"], 300),
                }
            )
    Path(args.output).write_text(
        json.dumps({"source": "benchmarks/gate_power.py export-test-data", "cases": cases}, indent=1) + "\n"
    )
    print(f"{len(cases)} comparisons written to {args.output}")


def thinned(samples: list[float], limit: int = 300) -> list[float]:
    """At most ``limit`` samples, evenly taken: what the gate's test data keeps of a session."""
    step = max(1, len(samples) // limit)
    return samples[::step][:limit]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run")
    runner.add_argument("--trials", type=int, default=50)
    runner.add_argument("--refresh-every", type=int, default=10)
    runner.add_argument("--out", required=True)
    runner.set_defaults(handler=run)
    analyzer = commands.add_parser("analyze")
    analyzer.add_argument("trials")
    analyzer.set_defaults(handler=analyze)
    exporter = commands.add_parser("export-test-data")
    exporter.add_argument("trials")
    exporter.add_argument("--thresholds", required=True, metavar="BACKEND=T,...")
    exporter.add_argument("--per-backend", type=int, default=2)
    exporter.add_argument("-o", "--output", required=True)
    exporter.set_defaults(handler=export)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
