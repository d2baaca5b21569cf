"""Whole-suite A/A: the default suite's batch-1 cases of every CPU backend, refreshed once, then
compared with that baseline in separate pytest runs spread over an hour, the code unchanged.

A gate whose false alarms are 1% per case still turns a 150-case suite red in most runs; this
measures what a CI user sees: how many of the runs had any false alarm.

    python benchmarks/suite_aa.py run --runs 10 --interval-min 6 --out /tmp/suite-aa   # ~70 min
    python benchmarks/suite_aa.py analyze /tmp/suite-aa

``--select "-m classical"`` runs another selection instead (every batch size of it), for a new
backend's or model kind's own A/A.

Each run holds the benchmark lock of ``exclusive.py`` (with priority), so that it never overlaps
a ``gate_power.py`` trial started in the same session.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from exclusive import exclusive  # noqa: E402
from gate_power import OLD_THRESHOLDS, thinned  # noqa: E402

SELECTION = ["-k", "b1"]  # the default profile (slow cases left out), batch 1, every backend here


def _pytest(out: Path, *args: str, selection: list[str] = SELECTION) -> float:
    command = [sys.executable, "-m", "pytest", "perf", "-q", "-p", "no:cacheprovider", *selection, *args]
    command += [f"--perf-baselines={out / 'baselines'}", "--perf-runner=suite-aa"]
    start = time.time()
    with exclusive(priority=True):
        load = os.getloadavg()[0]
        subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, check=False)
    (out / "loads.jsonl").open("a").write(json.dumps({"args": list(args), "start": start, "load_before": load, "load_after": os.getloadavg()[0], "end": time.time()}) + "\n")  # fmt: skip
    return start


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    selection = args.select.split() if args.select else SELECTION
    if not (out / "baselines").exists():
        _pytest(out, "--perf-refresh-baselines", selection=selection)
    done = len(list(out.glob("run-*")))  # a second invocation goes on where the first stopped
    for index in range(done, done + args.runs):
        started = _pytest(
            out, "--benchmark-compare", f"--perf-report={out / f'run-{index:02d}'}", selection=selection
        )
        print(f"run {index + 1} done", flush=True)
        if index + 1 < done + args.runs:
            time.sleep(max(0.0, started + args.interval_min * 60 - time.time()))


def _judge(case: dict[str, Any], threshold: float | None) -> str:
    """The case's verdict, or the shipped gate's at ``threshold`` on the sessions it recorded."""
    verdict = next((v for v in case["verdicts"] if v["gate"] == "regression"), None)
    if verdict is None or threshold is None or verdict["status"] in ("new", "incomparable"):
        return verdict["status"] if verdict else "-"
    sys.path.insert(0, str(REPO))
    from perfgate.gates import RegressionGate, RegressionPolicy
    from perfgate.sessions import SessionSummary

    gate = RegressionGate(RegressionPolicy(threshold=threshold))
    base = [
        SessionSummary(p / 1e3, p / 1e3, p / 1e3, 0.0, 1) for p in verdict["values"]["baseline_sessions_ms"]
    ]
    sessions = [SessionSummary.from_dict(s) for s in case["sessions"]]
    first = gate.compute([s for s in sessions if s.kind != "confirmation"], base).status
    confirmation = [s for s in sessions if s.kind == "confirmation"]
    if first != "fail" or not confirmation:
        return first
    return gate.compute(confirmation[:1], base).status


def _unstable(case: dict[str, Any], threshold: float | None) -> bool:
    """Whether the case's baseline sessions vary by more than its threshold (as run, or ``threshold``)."""
    values = next(v for v in case["verdicts"] if v["gate"] == "regression")["values"]
    spread = values.get("between_spread")
    return spread is not None and spread > (threshold if threshold is not None else values["threshold"])


def _old_rule(case: dict[str, Any], baseline: dict[str, Any]) -> str:
    """The gate before sessions on this run's first reading: the baseline's first session's raw
    samples against the reading's, the p50 ratio over the machine factor beyond the threshold
    (the raw ratio too) and a one-sided Mann-Whitney U p < 0.01; its in-process confirmation left out."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    stored = baseline["perfgate"]["cases"].get(case["case_id"])
    first = next((s for s in case["sessions"] if s["kind"] != "confirmation"), None)
    if stored is None or first is None:
        return "-"
    entry = next(b for b in baseline["benchmarks"] if b["params"]["perf_case"] == case["case_id"])
    start, end = stored["sessions"][0]["samples"]
    base, now = np.asarray(entry["stats"]["data"][start:end]), np.asarray(first["samples_s"])
    then_ref, now_ref = stored["sessions"][0].get("reference_us"), first.get("reference_us")
    factor = now_ref / then_ref if then_ref and now_ref else 1.0
    raw = float(np.median(now) / np.median(base))
    limit = 1.0 + OLD_THRESHOLDS.get(case["backend"], 0.05)
    beyond = raw / factor > limit and raw > limit
    return (
        "fail" if beyond and mannwhitneyu(now, base * factor, alternative="greater").pvalue < 0.01 else "pass"
    )


def _thresholds(matrix: str) -> dict[str, float]:
    """Each case's regression threshold in ``matrix``."""
    sys.path.insert(0, str(REPO))
    from perfgate.matrix import ALL_PROFILES, load_matrix

    return {case.id: case.regression.threshold for case in load_matrix(Path(matrix), ALL_PROFILES).cases}


def analyze(args: argparse.Namespace) -> None:
    out = Path(args.out)
    loads = [json.loads(line) for line in (out / "loads.jsonl").read_text().splitlines()]
    runs = sorted(out.glob("run-*/results.json"))
    baseline = json.loads((out / "baselines" / "suite-aa" / "0001_baseline.json").read_text())
    old_any = 0
    thresholds = _thresholds(args.matrix) if args.matrix else {}
    print(
        "| run | started | load before-after | cases compared | false alarms | improved | unstable | old gate's false alarms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    any_alarm = 0
    for index, path in enumerate(runs):
        document = json.loads(path.read_text())
        cases = [c for c in document["cases"] if any(v["gate"] == "regression" for v in c["verdicts"])]
        statuses = [_judge(c, thresholds.get(c["case_id"])) for c in cases]
        alarms = [c["case_id"] for c, s in zip(cases, statuses, strict=True) if s == "fail"]
        unstable = sum(_unstable(c, thresholds.get(c["case_id"])) for c in cases)
        load = next(x for x in loads if f"--perf-report={path.parent}" in x["args"])
        stamp = time.strftime("%H:%M", time.localtime(load["start"]))
        old_alarms = sum(_old_rule(c, baseline) == "fail" for c in cases)
        old_any += bool(old_alarms)
        any_alarm += bool(alarms)
        alarms = [f"`{a}`" for a in alarms]
        print(f"| {index + 1} | {stamp} | {load['load_before']:.1f}-{load['load_after']:.1f} | {len(cases)} | {len(alarms)} {' '.join(alarms)} | {statuses.count('improved')} | {unstable} | {old_alarms} |")  # fmt: skip
    print(
        f"\nruns with any false alarm: {any_alarm} of {len(runs)}; with the old gate: {old_any} of {len(runs)}"
    )


def export(args: argparse.Namespace) -> None:
    """Append to a gate_power.py test-data file the A/A comparisons of these runs that the old gate
    failed (on raw samples, without the machine factor) and the shipped gate, with its
    confirmation, passed: at most ``--per-backend`` per single-threaded CPU backend."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    out, thresholds = Path(args.out), _thresholds(args.matrix)
    baseline = json.loads((out / "baselines" / "suite-aa" / "0001_baseline.json").read_text())
    data = json.loads(Path(args.output).read_text())
    picked: dict[str, int] = {}
    for path in sorted(out.glob("run-*/results.json")):
        for case in json.loads(path.read_text())["cases"]:
            backend = case["backend"]
            wanted = backend in ("torch_cpu", "onnxruntime_cpu", "openvino_cpu", "litert_cpu")
            if (
                not wanted
                or case["technique"] == "threads_tuned"
                or picked.get(backend, 0) >= args.per_backend
            ):
                continue
            if _judge(case, thresholds[case["case_id"]]) in ("fail", "new", "incomparable", "-"):
                continue
            stored = baseline["perfgate"]["cases"][case["case_id"]]
            entry = next(b for b in baseline["benchmarks"] if b["params"]["perf_case"] == case["case_id"])
            start, end = stored["sessions"][0]["samples"]
            first = next(s for s in case["sessions"] if s["kind"] != "confirmation")
            base, now = thinned(entry["stats"]["data"][start:end]), thinned(first["samples_s"])
            old = OLD_THRESHOLDS.get(backend, 0.05)
            beyond = np.median(now) / np.median(base) > 1 + old
            if not (beyond and mannwhitneyu(now, base, alternative="greater").pvalue < 0.01):
                continue
            picked[backend] = picked.get(backend, 0) + 1
            summary = {k: v for k, v in first.items() if k not in ("samples_s", "kept")}
            confirmation = next((s for s in case["sessions"] if s["kind"] == "confirmation"), None)
            data["cases"].append(
                {
                    "case_id": case["case_id"],
                    "level": 0.0,
                    "threshold": thresholds[case["case_id"]],
                    "old_threshold": old,
                    "baseline": [{k: v for k, v in s.items() if k != "samples"} for s in stored["sessions"]],
                    "current": summary,
                    "confirmation": {k: v for k, v in confirmation.items() if k not in ("samples_s", "kept")}
                    if confirmation
                    else None,
                    "baseline_samples_s": base,
                    "current_samples_s": now,
                }
            )
    data["source"] += " and benchmarks/suite_aa.py export-test-data"
    Path(args.output).write_text(json.dumps(data, indent=1) + "\n")
    print(f"{sum(picked.values())} comparisons appended to {args.output}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run")
    runner.add_argument("--runs", type=int, default=10)
    runner.add_argument("--interval-min", type=float, default=6.0)
    runner.add_argument("--out", required=True)
    runner.add_argument(
        "--select", metavar="ARGS", help=f'pytest selection instead of {" ".join(SELECTION)!r}, e.g. "-m classical"'
    )
    runner.set_defaults(handler=run)
    analyzer = commands.add_parser("analyze")
    analyzer.add_argument("out")
    analyzer.add_argument(
        "--matrix",
        metavar="PATH",
        help="re-judge every case at its threshold in this matrix file (exact where each is at least the "
        "threshold the run used: a first reading that failed then was confirmed in the run); default: as run",
    )
    analyzer.set_defaults(handler=analyze)
    exporter = commands.add_parser("export-test-data")
    exporter.add_argument("out")
    exporter.add_argument("--matrix", default=str(REPO / "perf" / "matrix.toml"))
    exporter.add_argument("--per-backend", type=int, default=2)
    exporter.add_argument("-o", "--output", required=True, help="a gate_power.py export-test-data file")
    exporter.set_defaults(handler=export)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
