"""Why raw samples of one session cannot be treated as independent: the two halves of one session
of unchanged code, judged by the old gate's one-sided Mann-Whitney U test.

    python benchmarks/halves.py baselines/amd-epyc-2c/0001_baseline.json

For each case of a baseline file (the first session's samples, in time order): the p-value of
the one-sided test in the direction the halves' medians moved, the lag-1 autocorrelation of the
samples, and how far the second half's p50 sits from the first's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("baseline", type=Path)
    args = parser.parse_args()
    document = json.loads(args.baseline.read_text())
    significant, lags, drifts = 0, [], []
    for entry in document["benchmarks"]:
        case_id = entry["params"]["perf_case"]
        sessions = document["perfgate"]["cases"][case_id].get("sessions")
        start, end = sessions[0]["samples"] if sessions else (0, len(entry["stats"]["data"]))
        samples = np.asarray(entry["stats"]["data"][start:end])
        first, second = samples[: samples.size // 2], samples[samples.size // 2 :]
        direction = "greater" if np.median(second) > np.median(first) else "less"
        p = float(mannwhitneyu(second, first, alternative=direction).pvalue)
        lag = float(np.corrcoef(samples[:-1], samples[1:])[0, 1])
        drift = float(np.median(second) / np.median(first) - 1)
        significant += p < 0.01
        lags.append(lag)
        drifts.append(abs(drift))
        print(f"{case_id:55s} halves x{1 + drift:.3f}  p={p:.2g}  lag-1 autocorrelation {lag:.2f}")
    cases = len(document["benchmarks"])
    print(
        f"\n{significant} of {cases} cases: p < 0.01 between two halves of one session of unchanged code; "
        f"lag-1 autocorrelation up to {max(lags):.2f}; the halves' p50s up to {max(drifts):.1%} apart"
    )


if __name__ == "__main__":
    main()
