"""perfgate's own measurement facts: typed on a result, stored flat in ``settings`` as before."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from perfgate.baselines import REFERENCE_SETTING
from perfgate.execution import CaseRun
from perfgate.results import CaseResult, DeviceTiming, Measurement, case_from_json, load_results

DATA = Path(__file__).parent / "data"
# Written by perfgate before the facts were typed: one case per kind of fact (CPU, CUDA, TensorRT).
FACTS_FILE = DATA / "results_facts.json"
EXAMPLE_REPORT = Path(__file__).parent.parent / "docs" / "example-report" / "results.json"

# A value for each kind of field: a new field of another kind fails the round trip below until
# it gets one here.
SAMPLE_BY_TYPE: dict[str, Any] = {
    "int | None": 3,
    "bool | None": True,
    "float | None": 12.5,
    "str | None": "calibration",
    "list[dict[str, Any]] | None": [{"run_id": "other", "pid": 7}],
    "dict[str, int] | None": {"quantized_ops": 2, "float_ops": 1},
    "DeviceTiming | None": DeviceTiming(
        {"p50_ms": 0.1, "rounds": 5}, 1.0, 0.1, "copies", "keep inputs on device"
    ),
}


def every_fact() -> Measurement:
    """A measurement with every field set, whatever fields it has."""
    return Measurement(**{f.name: SAMPLE_BY_TYPE[str(f.type)] for f in dataclasses.fields(Measurement)})


def a_result(**settings: Any) -> CaseResult:
    return CaseResult("m-fp32-x-b1", "m", "fp32", "x", 1, "cpu", "r", settings=dict(settings))


def test_every_fact_survives_a_round_trip_through_json() -> None:
    """to_dict, JSON and from_dict keep every field of the measurement, set to a value."""
    result = a_result(intra_op_threads=2)
    result.measurement = every_fact()
    again = case_from_json(json.loads(json.dumps(result.to_dict())))
    assert again.measurement == result.measurement
    assert again.settings == {"intra_op_threads": 2}
    assert all(getattr(again.measurement, f.name) is not None for f in dataclasses.fields(Measurement))


def test_the_facts_are_stored_flat_in_settings_under_their_keys() -> None:
    """On disk nothing moved: each fact is a key of ``settings``, the device timing's fields too."""
    result = a_result(intra_op_threads=2)
    result.measurement = every_fact()
    stored = result.to_dict()
    assert "measurement" not in stored
    assert set(stored["settings"]) == {
        "intra_op_threads",
        *(f.name for f in dataclasses.fields(Measurement) if f.name != "device_timing"),
        *(f.name for f in dataclasses.fields(DeviceTiming)),
    }
    assert stored["settings"][REFERENCE_SETTING] == 12.5


def test_a_fact_not_measured_is_not_stored() -> None:
    """A CPU case has no device timing: its settings gain no null keys; a device-bound one keeps gpu_remedy."""
    assert a_result(batch_size=1).to_dict()["settings"] == {"batch_size": 1}
    result = a_result()
    result.measurement.device_timing = DeviceTiming({"p50_ms": 1.0}, 1.0, 1.0, "device", None)
    assert result.to_dict()["settings"]["gpu_remedy"] is None


@pytest.mark.parametrize("path", [FACTS_FILE, EXAMPLE_REPORT], ids=["facts", "example-report"])
def test_an_old_results_file_reads_and_writes_back_the_same_settings(path: Path) -> None:
    """Every case of a results.json written before the facts were typed comes back key for key."""
    raw = json.loads(path.read_text(encoding="utf-8"))["cases"]
    for stored, case in zip(raw, load_results(path).cases, strict=True):
        assert case.to_dict()["settings"] == stored["settings"]
        assert not set(case.settings) & {f.name for f in dataclasses.fields(Measurement)}


def test_an_old_results_file_reads_with_its_facts() -> None:
    """The facts of an old file land in the typed fields, the backend's settings stay in settings."""
    cases = {c.backend: c for c in load_results(FACTS_FILE).cases}
    openvino = cases["openvino_throughput"].measurement
    assert openvino.batches_per_run == 2 and openvino.warmup_rounds == 10
    assert openvino.reference_workload_p50_us == 29.5
    assert openvino.op_counts == {"quantized_ops": 3, "float_ops": 0}
    assert openvino.calibration_source == "calibration"
    assert openvino.concurrent_runs is not None and openvino.concurrent_runs[0]["run_id"] == "other-1"
    assert cases["openvino_throughput"].settings["infer_requests"] == 2
    cuda = cases["torch_cuda"]
    assert cuda.measurement.copies_timed is False and cuda.measurement.warmup_rounds == 12
    assert cuda.measurement.device_timing == DeviceTiming(
        {"p50_ms": 0.1, "p90_ms": 0.12, "p95_ms": 0.13, "p99_ms": 0.2, "mean_ms": 0.11, "rounds": 7},
        1.0,
        0.1,
        "launch overhead",
        "use CUDA graphs",
    )
    assert cuda.settings["gpu_torch_peak_allocated_mb"] == 12.5
    tensorrt = cases["tensorrt"].measurement
    assert tensorrt.warmup_rounds == 0 and tensorrt.copies_timed is True
    assert tensorrt.device_timing is not None and tensorrt.device_timing.gpu_remedy is None


def test_a_null_or_partial_fact_stays_in_settings() -> None:
    """What does not fit a typed field is left as it was stored, so that it is written back the same."""
    stored = {"calibration_source": None, "device_time": {"p50_ms": 1.0}, "host_p50_ms": 1.0}
    facts, rest = Measurement.from_settings(stored)
    assert facts == Measurement() and rest == stored


class _Run:
    """What ``CaseRun._settle_samples`` reads: the case's batch size and the result."""

    def __init__(self, batch_size: int, result: CaseResult) -> None:
        self.case = a_result()
        self.case.batch_size = batch_size
        self.result = result
        self._current_samples = [0.004] * 5


@pytest.mark.parametrize(("batches_per_run", "per_call"), [(None, 4), (1, 4), (3, 12)])
def test_the_per_call_latency_counts_batches_per_run(batches_per_run: int | None, per_call: int) -> None:
    """An async-queue session runs ``batches_per_run`` batches per timed call: all count in the throughput."""
    result = a_result()
    result.measurement.batches_per_run = batches_per_run
    result.sessions = [{"kept": True, "samples_s": [0.004] * 5}]
    run = _Run(4, result)
    CaseRun._settle_samples(run)  # type: ignore[arg-type]
    assert result.latency is not None and result.latency.batch_size == per_call
    assert result.latency.throughput_per_s == pytest.approx(per_call / 0.004)


def test_the_reference_key_is_the_measurement_field() -> None:
    """Baselines read the reference under REFERENCE_SETTING: the name the field is stored under."""
    assert REFERENCE_SETTING in {f.name for f in dataclasses.fields(Measurement)}
