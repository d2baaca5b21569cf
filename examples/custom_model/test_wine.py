"""Every case of this folder's matrix.toml (run: pytest examples/custom_model)."""


def test_case(perf_case, benchmark):
    perf_case.build()
    perf_case.check_accuracy()
    perf_case.time(benchmark)
    perf_case.check_regression()
