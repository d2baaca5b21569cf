"""The matrix file: case generation, ids, impossible combinations, precedence, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from perfgate.matrix import MatrixError, load_matrix

BASE = """
batch_sizes = [1, 8]
[accuracy]
min_relative_metric = 0.98
[models.m]
factory = "tiny_models:tiny_mlp"
data = "tiny_models:blobs"
metric = "top1"
[techniques.fp32]
[techniques.int8_dynamic]
[backends.torch_cpu]
[backends.onnxruntime_cpu]
[backends.torch_cuda]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "matrix.toml"
    path.write_text(text)
    return path


def test_one_case_per_possible_combination(tmp_path: Path) -> None:
    """torch_cuda has no int8_dynamic lowering: those combinations are not generated."""
    matrix = load_matrix(write(tmp_path, BASE))
    ids = [c.id for c in matrix.cases]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert "m-int8_dynamic-onnxruntime_cpu-b8" in ids
    assert not any(i.startswith("m-int8_dynamic-torch_cuda") for i in ids)
    assert [e.combination for e in matrix.excluded] == ["m-int8_dynamic-torch_cuda"]
    assert "no 'int8_dynamic' lowering" in matrix.excluded[0].reason


def test_markers_name_device_backend_and_family(tmp_path: Path) -> None:
    cases = {c.id: c for c in load_matrix(write(tmp_path, BASE)).cases}
    assert cases["m-int8_dynamic-onnxruntime_cpu-b1"].markers == ("cpu", "onnxruntime", "quantized")
    assert cases["m-fp32-torch_cuda-b1"].markers == ("gpu", "torch")


def test_threshold_precedence(tmp_path: Path) -> None:
    """Global < technique default < [techniques.X] < [models.X] < [[overrides]] in file order."""
    text = (
        BASE
        + """
[[overrides]]
match = "m-int8_dynamic-*-b8"
accuracy = { min_relative_metric = 0.95 }
regression = { threshold = 0.25 }
"""
    )
    text = text.replace(
        "[techniques.int8_dynamic]", "[techniques.int8_dynamic]\naccuracy = { min_sqnr_db = 12.0 }"
    )
    cases = {c.id: c for c in load_matrix(write(tmp_path, text)).cases}
    b1 = cases["m-int8_dynamic-torch_cpu-b1"]
    assert b1.accuracy.min_relative_metric == 0.99  # the technique's default beats [accuracy]
    assert b1.accuracy.min_sqnr_db == 12.0  # the matrix's technique table beats the default
    assert b1.regression.threshold == 0.10
    b8 = cases["m-int8_dynamic-torch_cpu-b8"]
    assert (b8.accuracy.min_relative_metric, b8.regression.threshold) == (0.95, 0.25)
    assert cases["m-fp32-torch_cpu-b1"].accuracy.max_abs_diff == 1e-4


def test_profile_restricts_the_cases(tmp_path: Path) -> None:
    text = BASE + '[profiles.smoke]\nbackends = ["onnxruntime_cpu"]\nbatch_sizes = [1]\n'
    ids = [c.id for c in load_matrix(write(tmp_path, text), profile="smoke").cases]
    assert ids == ["m-fp32-onnxruntime_cpu-b1", "m-int8_dynamic-onnxruntime_cpu-b1"]
    with pytest.raises(MatrixError, match=r"no \[profiles.nightly\]; defined: \['smoke'\]"):
        load_matrix(write(tmp_path, text), profile="nightly")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("[techniques.fp32]", "[techniques.fp64]"),
            r"\[techniques.fp64\]: unknown technique 'fp64'; registered: ",
        ),
        (("[backends.torch_cpu]", "[backends.tpu]"), r"unknown backend 'tpu'"),
        (('metric = "top1"', 'metrik = "top1"'), r"\[models.m\] has unknown key\(s\) \['metrik'\]"),
        (
            ('factory = "tiny_models:tiny_mlp"', 'factory = "tiny_models"'),
            r'needs factory = "package.module:function"',
        ),
        (
            ("[accuracy]\n", "[accuracy]\nmin_sqnr = 3\n"),
            r"\[accuracy\] min_sqnr = 3: unknown accuracy setting",
        ),
        (("batch_sizes = [1, 8]", "batch_sizes = 1"), r"batch_sizes must be a list of int"),
        (("[models.m]", "[models.m\n"), r"not valid TOML"),
    ],
)
def test_errors_name_the_file_and_the_fix(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = write(tmp_path, BASE.replace(*edit))
    with pytest.raises(MatrixError, match=message) as info:
        load_matrix(path)
    assert str(path) in str(info.value)


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match=r"matrix file not found .*--perf-matrix"):
        load_matrix(tmp_path / "nope.toml")
