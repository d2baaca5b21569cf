"""One case, step by step: build, load, first inference, accuracy pass, timing, regression gate."""

from __future__ import annotations

import time
from typing import Any

import pytest

from perfgate.accuracy import AccuracyResult, Fidelity, resolve_metric
from perfgate.backends import BACKENDS, Artifact, BuildRequest, RunSettings, Session, predict
from perfgate.baselines import (
    REFERENCE_SETTING,
    baseline_path,
    baseline_reference_us,
    baseline_samples,
    cached_baseline,
)
from perfgate.cache import stable_hash
from perfgate.cuda_timing import record_device_timing
from perfgate.gates import RegressionGate, Verdict, accuracy_verdicts
from perfgate.matrix import Case
from perfgate.memory import PeakMemory, gpu_peak_memory
from perfgate.models import LoadedModel
from perfgate.reference_workload import measure_reference
from perfgate.results import CaseResult
from perfgate.session import PerfgateSession
from perfgate.stats import LatencyStats
from perfgate.techniques import TECHNIQUES, NotApplicable, TransformContext
from perfgate.timing import measure, sample_directly, timed_step


class CaseRun:
    """The steps of one case; each records into ``result`` and fails the test with a clear message."""

    def __init__(
        self,
        case: Case,
        session: PerfgateSession,
        nodeid: str,
        compared_mapping: dict[Any, Any] | None = None,
        require_baseline: bool = False,
    ) -> None:
        self.case = case
        self.compared_mapping = compared_mapping
        self.require_baseline = require_baseline
        self.session = session
        self.backend = BACKENDS.get(case.backend)
        self.technique = TECHNIQUES.get(case.technique)
        self.memory = PeakMemory()
        self.model: LoadedModel | None = None
        self.request: BuildRequest | None = None
        self.artifact: Artifact | None = None
        self.runtime: Session | None = None
        self._step: Any = None  # the timed call, kept for a confirmation run
        self.result = CaseResult(
            case_id=case.id,
            model=case.model.name,
            technique=case.technique,
            backend=case.backend,
            batch_size=case.batch_size,
            device=case.device,
            runner=session.runner,
            nodeid=nodeid,
        )

    def build(self) -> None:
        """Transform, convert and load the variant, then time its first inference."""
        self.memory.start()
        self.model = self.session.model(self.case.model)
        model = self.model
        options = self.case.technique_options
        ctx = TransformContext(
            model.name, model.key, model.data, self.session.cache, options, self.session.progress
        )
        try:
            transformed = self.technique.transform(model.module, ctx)
        except NotApplicable as exc:
            pytest.skip(f"{self.case.id}: {exc}")
        described = self.technique.describe(transformed, model.module)
        extra_key = self.technique.transform_key(options)
        self.request = BuildRequest(
            case_id=self.case.id,
            model=transformed,
            model_key=model.key if extra_key is None else stable_hash(model.key, extra_key),
            lowering=self.technique.lowering,
            options=options,
            data=model.data,
            batch_size=self.case.batch_size,
            cache=self.session.cache,
            run_settings=self._run_settings(),  # a compiler (inductor) bakes the thread count in
        )
        self.session.progress(f"{self.case.id}: building")
        self.artifact = self.backend.build(self.request)
        self.result.build_s = self.artifact.build_s
        self.result.build_cached = self.artifact.cached
        self.result.artifact_bytes = self.artifact.size_bytes
        start = time.perf_counter()
        self.runtime = self.backend.load(self.artifact, self.request, self._run_settings())
        self.result.load_s = time.perf_counter() - start
        self.result.settings = {**self.runtime.settings, **described, "batch_size": self.case.batch_size}
        self.runtime.bind(model.data.example(self.case.batch_size))
        start = time.perf_counter()
        self.runtime.run()
        self.runtime.synchronize()
        self.result.first_inference_s = time.perf_counter() - start

    def _run_settings(self) -> RunSettings:
        threads = {**self.case.threads, **(self.technique.run_settings(self.session.hardware) or {})}
        return RunSettings(intra_op_threads=threads.get("intra_op"), inter_op_threads=threads.get("inter_op"))

    def check_accuracy(self) -> None:
        """The accuracy pass over the whole eval set, then the accuracy gates."""
        assert self.model is not None and self.runtime is not None
        data = self.model.data
        reference = self.session.reference_outputs(self.model)
        outputs = predict(self.runtime, data.eval_inputs, self.case.batch_size)
        spec = self.case.model
        metric = None
        if spec.metric is not None and data.eval_labels is not None:
            metric = resolve_metric(spec.metric)(outputs, data.eval_labels)
        accuracy = AccuracyResult(
            metric_name=spec.metric,
            metric=metric,
            reference_metric=self.session.reference_metric(spec, self.model),
            fidelity=Fidelity.compare(reference, outputs),
            eval_samples=len(outputs),
        )
        self.result.accuracy = {**accuracy.to_dict(), "policy": self.case.accuracy.to_dict()}
        verdicts = accuracy_verdicts(accuracy, self.case.accuracy)
        self.result.verdicts.extend(verdicts)
        self._fail_on(verdicts, "accuracy gate")

    def time(self, benchmark: Any) -> None:
        """Warm up and time the steady state through pytest-benchmark."""
        assert self.runtime is not None and self.model is not None
        self.session.progress(f"{self.case.id}: timing")
        self.runtime.bind(self.model.data.example(self.case.batch_size))
        benchmark.group = self.case.model.name
        benchmark.extra_info.update(perfgate_case=self.case.id, settings=self.result.settings)
        device_timer = getattr(self.runtime, "device_timer", None)  # optional: GPU sessions have one
        step = self._step = timed_step(
            self.runtime.run, self.runtime.synchronize, self.runtime.needs_sync, device_timer
        )
        timing = measure(benchmark, step, self.case.timing)
        self.result.peak_rss_mb = self.memory.peak_mb()
        if self.case.device == "cuda":
            self.result.settings.update(gpu_peak_memory())
        if timing is None:
            return
        self.result.samples_s = timing.samples_s
        # An async-queue session (OpenVINO's throughput hint) runs several batches per timed call.
        per_call = self.case.batch_size * int(self.result.settings.get("batches_per_run", 1))
        self.result.latency = LatencyStats.from_samples(timing.samples_s, per_call)
        self.result.settings["warmup_rounds"] = timing.warmup_rounds
        if device_timer is not None:
            record_device_timing(self.result.settings, device_timer, timing.samples_s)

    def check_regression(self) -> None:
        """Time the reference workload next to the case, then judge it against this runner's baseline.

        The reference is timed whenever the case was, so that a refresh stores it; the gate runs
        under ``--benchmark-compare`` and divides the case's ratio by the reference's. A failing
        verdict is re-measured ``confirm`` times and stands only if every confirmation fails too.
        """
        if not self.result.samples_s:
            return
        reference_us = self.result.settings[REFERENCE_SETTING] = round(measure_reference() * 1e6, 4)
        if self.compared_mapping is None:
            return
        baseline = baseline_samples(self.compared_mapping, self.result.nodeid)
        document = cached_baseline(baseline_path(self.session.baseline_root, self.session.runner))
        baseline_reference = baseline_reference_us(document, self.case.id)
        gate = RegressionGate(self.case.regression)

        def judge(samples: list[float], reference: float) -> Verdict:
            factor = reference / baseline_reference if baseline_reference else None
            return gate.compute(_array(samples), _array(baseline) if baseline else None, factor)

        verdict = judge(self.result.samples_s, reference_us)
        for attempt in range(self.case.regression.confirm):
            if verdict.status != "fail" or self._step is None:
                break
            self.session.progress(f"{self.case.id}: confirming a regression ({attempt + 1})")
            retry = judge(sample_directly(self._step, self.case.timing), measure_reference() * 1e6)
            verdict = _confirmed(verdict, retry)
        if verdict.status == "new" and self.require_baseline:
            verdict = Verdict(verdict.gate, "fail", "no baseline for this runner (--perf-require-baseline)")
        self.result.verdicts.append(verdict)
        self._fail_on([verdict], "regression gate")

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None

    def _fail_on(self, verdicts: list[Verdict], what: str) -> None:
        failed = [v for v in verdicts if v.failed]
        if failed:
            self.result.status = "failed"
            lines = "\n".join(f"  {v.gate}: {v.message}" for v in failed)
            pytest.fail(f"{self.case.id}: {what} failed\n{lines}", pytrace=False)


def _confirmed(first: Verdict, retry: Verdict) -> Verdict:
    """The verdict after a confirmation run: the retry's, with the first measurement kept."""
    values = {**retry.values, "first_ratio": first.values.get("ratio"), "confirmations": 1}
    if retry.status == "fail":
        message = f"{retry.message} (confirmed: the first measurement read x{first.values['ratio']:.3f})"
        return Verdict(retry.gate, "fail", message, values)
    message = f"{retry.message}; a first measurement read x{first.values['ratio']:.3f} and was not confirmed"
    return Verdict(retry.gate, retry.status, message, values)


def _array(samples: list[float]) -> Any:
    import numpy as np

    return np.asarray(samples, dtype=np.float64)
