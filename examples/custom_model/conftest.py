"""Points perfgate at this folder's matrix file."""


def pytest_configure(config):
    if not config.getoption("perf_matrix"):
        config.option.perf_matrix = str(__import__("pathlib").Path(__file__).with_name("matrix.toml"))
