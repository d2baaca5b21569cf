"""The reference suite: every case of perf/matrix.toml, gated on accuracy and on latency."""


def test_case(perf_case, benchmark):
    """Build the variant, hold it to its accuracy gates, time it, and compare with the baseline."""
    perf_case.build()
    perf_case.check_accuracy()
    perf_case.time(benchmark)
    perf_case.check_regression()
