"""The one test a perfgate suite needs, for a matrix whose folder holds no test module of its own.

:func:`perfgate.run` collects this file when the matrix's folder has no ``test_*.py``; a project's
own suite (``perf/test_inference.py``) is the same four lines.
"""


def test_case(perf_case, benchmark):
    """Build the variant, hold it to its accuracy gates, time it, and compare with the baseline."""
    perf_case.build()
    perf_case.check_accuracy()
    perf_case.time(benchmark)
    perf_case.check_regression()
