"""One case, step by step: build, load, first inference, accuracy pass, timing, regression gate."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import pytest

from perfgate.accuracy import AccuracyResult, Fidelity, resolve_metric
from perfgate.backends import BACKENDS, Artifact, BuildRequest, RunSettings, Session, predict
from perfgate.baselines import BaselineCase, baseline_path, cached_baseline
from perfgate.cache import stable_hash
from perfgate.cuda_timing import record_device_timing
from perfgate.drift import incomparable_reasons
from perfgate.gates import (
    BaselineAccuracyGate,
    Effect,
    RegressionGate,
    TechniqueEffectGate,
    Verdict,
    accuracy_verdicts,
)
from perfgate.guard import CaseGuard, error_line
from perfgate.hardware import detect
from perfgate.matrix import Case
from perfgate.memory import PeakMemory, gpu_peak_memory
from perfgate.model_kinds import MODEL_KINDS
from perfgate.models import LoadedModel
from perfgate.profiling import ProfileUnavailable, profile_folder
from perfgate.reference_workload import measure_reference
from perfgate.results import CaseResult, Measurement
from perfgate.session import PerfgateSession
from perfgate.sessions import SessionSummary, thin
from perfgate.stats import LatencyStats
from perfgate.techniques import TECHNIQUES, NotApplicable, TransformContext
from perfgate.timing import measure, plan_rounds, timed_step, warm_up

# The steps a case goes through, as named in progress lines, timeouts and failure messages.
CONVERSION_STEPS = ("transform", "building", "loading", "first inference")


class CaseRun:
    """The steps of one case; each records into ``result`` and fails the test with a clear message."""

    def __init__(
        self,
        case: Case,
        session: PerfgateSession,
        nodeid: str,
        compare: bool = False,
        require_baseline: bool = False,
        timing_enabled: bool = True,
        repeats: int = 1,
        earlier: CaseResult | None = None,
    ) -> None:
        """
        :param repeats: sessions to measure before the case is judged (``--perf-repeats``).
        :param earlier: the case's result after its previous pass, when this pass is a later
            session of it (``earlier.pending`` says which: a repeat or a confirmation).
        """
        self.case = case
        self.repeats = repeats
        self.earlier = earlier
        # Which session this pass measures: the case's own test, a repeat, or a confirmation.
        self.pass_kind = earlier.pending if earlier is not None and earlier.pending else "first"
        self.timing_enabled = timing_enabled  # without a fixture (isolation child): time or not
        self.compare = compare
        self.require_baseline = require_baseline
        self.session = session
        self.backend = BACKENDS.get(case.backend)
        self.technique = TECHNIQUES.get(case.technique)
        self.memory = PeakMemory()
        self.model: LoadedModel | None = None
        self.request: BuildRequest | None = None
        self.artifact: Artifact | None = None
        self.runtime: Session | None = None
        self._effect: Effect | None = None
        self._current_samples: list[float] | None = None  # this pass's session, in full
        self._benchmark_info: dict[str, Any] | None = None  # pytest-benchmark's extra_info, once timed
        self.result = CaseResult.for_case(case, session.runner, nodeid)
        if earlier is not None:
            # A later pass goes on from the earlier passes' result: accuracy, sessions, settings.
            self.result = CaseResult.from_dict(earlier.to_dict())
            self.result.verdicts = [v for v in self.result.verdicts if v.gate != "regression"]
            self.result.pending = None
        self.guard = CaseGuard(
            case.id,
            getattr(case.timing, "case_timeout_s", None),
            on_step=lambda step: session.on_step(case.id, step),
            on_hang=session.on_hang,
            hint=self._fix,
        )

    def _fix(self, step: str) -> str | None:
        """The matrix change that leaves out a combination whose conversion failed."""
        model, where = self.case.model.name, self.session.matrix.path
        if step == "transform":
            return f'if {self.case.technique} cannot apply to {model}, leave it out: [models.{model}] exclude = ["{self.case.technique}"] in {where}'  # fmt: skip
        if step in CONVERSION_STEPS and self.case.backend != "torch_cpu":
            return f'if {model} cannot run on {self.case.backend}, leave it out: [models.{model}] exclude = ["{self.case.backend}"] in {where}'  # fmt: skip
        return None

    def build(self) -> None:
        """Transform, convert and load the variant, then time its first inference."""
        self.memory.start()
        with self.guard.step("model"):
            self.model = self.session.model(self.case.model)
        model = self.model
        options = self.case.technique_options
        ctx = TransformContext(
            model.name, model.key, model.data, self.session.cache, options, self.session.progress
        )
        with self.guard.step("transform"):
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
            export_tolerance=self._export_tolerance(),
            calibration=self.case.calibration,
            model_kind=model.kind,
        )
        self.session.progress(f"{self.case.id}: building")
        with self.guard.step("building"):
            self.artifact = self.backend.build(self.request)
            self.result.build_s = self.artifact.build_s
            self.result.build_cached = self.artifact.cached
            self.result.artifact_bytes = self.artifact.size_bytes
            self._effect = self._measure_effect()
        with self.guard.step("loading"):
            start = time.perf_counter()
            self.runtime = self.backend.load(self.artifact, self.request, self._run_settings())
            self.result.load_s = time.perf_counter() - start
        # The facts a backend reports among its settings are taken out here, once, into typed fields.
        reported, backend_settings = Measurement.from_settings(self.runtime.settings)
        self.result.measurement.batches_per_run = reported.batches_per_run
        self.result.measurement.copies_timed = reported.copies_timed
        self.result.settings = {
            **self.result.settings,
            **backend_settings,
            **described,
            "batch_size": self.case.batch_size,
        }
        if "calibration" in options:
            self.result.measurement.calibration_source = model.data.calibration_source
        with self.guard.step("first inference"):
            self.runtime.bind(model.data.example(self.case.batch_size))
            start = time.perf_counter()
            self.runtime.run()
            self.runtime.synchronize()
            self.result.first_inference_s = time.perf_counter() - start

    def _export_tolerance(self) -> Any:
        from perfgate.backends.onnx_export import ExportTolerance

        return (
            ExportTolerance(**self.case.model.export_tolerance) if self.case.model.export_tolerance else None
        )

    def _measure_effect(self) -> Effect:
        """What the lowering changed: the backend's op counts, and the artifact's size against FP32's."""
        assert self.artifact is not None and self.model is not None
        # The untransformed model's weights: what the FP32 case ships, whatever the backend (the
        # export of a pruned or fake-quant model is the variant's own size, not FP32's).
        float_bytes = MODEL_KINDS[self.model.kind].weight_bytes(self.model.module)
        counts = self.backend.inspect(self.artifact) if self.technique.lowering != "none" else {}
        if counts:
            self.result.measurement.op_counts = counts
        return Effect(
            self.technique.lowering,
            self.technique.size_reducing,
            counts,
            self.artifact.size_bytes,
            float_bytes,
        )

    def _run_settings(self) -> RunSettings:
        threads = {**self.case.threads, **(self.technique.run_settings(self.session.hardware) or {})}
        return RunSettings(intra_op_threads=threads.get("intra_op"), inter_op_threads=threads.get("inter_op"))

    def check_accuracy(self) -> None:
        """The accuracy pass over the whole eval set, then the accuracy gates.

        A later pass (a repeat, a confirmation) keeps the first pass's: the same artifact gives
        the same outputs, and a case that failed its accuracy gates is never measured again.
        """
        if self.earlier is not None:
            return
        with self.guard.step("accuracy"):
            self._check_accuracy()

    def _check_accuracy(self) -> None:
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
            metric_direction=spec.metric_direction,
        )
        self.result.accuracy = {**accuracy.to_dict(), "policy": self.case.accuracy.to_dict()}
        verdicts = accuracy_verdicts(accuracy, self.case.accuracy)
        if self._effect is not None:
            verdicts += [v for v in [TechniqueEffectGate(self.case.accuracy).compute(self._effect)] if v]
        if self.compare:
            baseline = self._baseline_case()
            metric_then = baseline.metric if baseline else None
            verdicts += [
                v for v in [BaselineAccuracyGate(self.case.accuracy).compute(accuracy, metric_then)] if v
            ]
        self.result.verdicts.extend(verdicts)
        self._fail_on(verdicts, "accuracy gate")

    def _baseline_case(self) -> BaselineCase | None:
        """This case in this runner's baseline file, read by case id; ``None`` when it has none."""
        baseline = cached_baseline(baseline_path(self.session.baseline_root, self.session.runner))
        return baseline.cases.get(self.case.id) if baseline else None

    def time(self, benchmark: Any | None) -> None:
        """Warm up and time the steady state through pytest-benchmark.

        :param benchmark: pytest-benchmark's fixture; ``None`` in a ``--perf-isolate`` child, which
            times by the same stopping rule itself and hands the samples to the parent's fixture.
        """
        with self.guard.step("timing"):
            self._time(benchmark)

    def _time(self, benchmark: Any | None) -> None:
        assert self.runtime is not None and self.model is not None
        self.session.progress(f"{self.case.id}: timing")
        self.runtime.bind(self.model.data.example(self.case.batch_size))
        if benchmark is not None:
            benchmark.group = self.case.model.name
            benchmark.extra_info["perfgate_case"] = self.case.id
            self._benchmark_info = benchmark.extra_info
            self._show_settings()
            if self.pass_kind != "first":  # each session is a row of its own in pytest-benchmark's table
                label = f" [{self.pass_kind}, session {len(self.result.sessions) + 1}]"
                benchmark.name, benchmark.fullname = benchmark.name + label, benchmark.fullname + label
        device_timer = getattr(self.runtime, "device_timer", None)  # optional: GPU sessions have one
        step = timed_step(self.runtime.run, self.runtime.synchronize, self.runtime.needs_sync, device_timer)
        concurrent = self.session.concurrent_runs()
        if benchmark is not None:
            timing = measure(benchmark, step, self.case.timing)
        elif self.timing_enabled:
            timing = _measure_directly(step, self.case.timing)
        else:
            step()
            timing = None
        concurrent += [run for run in self.session.concurrent_runs() if run not in concurrent]
        if concurrent:
            # Another perfgate run timed on this machine meanwhile: both measured each other.
            self.result.measurement.concurrent_runs = concurrent
        self.result.peak_rss_mb = self.memory.peak_mb()
        if self.case.device == "cuda":
            self.result.settings.update(gpu_peak_memory())
        if timing is None:
            self._show_settings()
            return
        if self.pass_kind == "first":
            self._measure_energy(step)
        self._current_samples = list(timing.samples_s)
        summary = SessionSummary.from_samples(timing.samples_s, self.pass_kind).to_dict()
        self.result.sessions.append({**summary, "kept": True, "samples_s": thin(timing.samples_s)})
        self._settle_samples()
        self.result.measurement.warmup_rounds = timing.warmup_rounds
        if device_timer is not None:
            facts = self.result.measurement
            copies = bool(facts.copies_timed)
            facts.device_timing = record_device_timing(device_timer, timing.samples_s, copies)
        self._show_settings()

    def _measure_energy(self, step: Any) -> None:
        """Energy per inference in its own loop after the timed rounds, where a counter exists
        (perfgate.energy); otherwise the reason, at no cost."""
        from perfgate.energy import measure_energy, unavailable

        if self.session.energy_s <= 0:
            return
        counter = self.session.energy_counter(self.case.device)
        if isinstance(counter, str):
            self.result.energy = unavailable(counter).to_dict()
            return
        self.session.progress(f"{self.case.id}: energy ({self.session.energy_s:g} s)")
        per_call = self.case.batch_size * self.result.measurement.batches_per_call
        reading = measure_energy(step, counter, per_call, self.session.energy_s)
        self.result.energy = reading.to_dict()

    def _show_settings(self) -> None:
        """Keep the settings in pytest-benchmark's ``extra_info`` as stored: with perfgate's facts."""
        if self._benchmark_info is not None:
            self._benchmark_info["settings"] = self.result.stored_settings()

    def _settle_samples(self) -> None:
        """``samples_s`` and the latency: the kept sessions' samples (this pass's in full)."""
        samples: list[float] = []
        current = self._current_samples
        for session in self.result.sessions:
            if session["kept"]:
                this_pass = session is self.result.sessions[-1]
                samples += current if this_pass and current is not None else session["samples_s"]
        self.result.samples_s = samples
        # An async-queue session (OpenVINO's throughput hint) runs several batches per timed call.
        per_call = self.case.batch_size * self.result.measurement.batches_per_call
        self.result.latency = LatencyStats.from_samples(samples, per_call) if samples else None

    def check_regression(self) -> None:
        """Time the reference workload, then judge the case against its baseline (see
        ``_check_regression``); then profile it if asked (see ``_profile_if_asked``), a failed
        verdict included: its report says where the time went."""
        with self.guard.step("regression"):
            try:
                self._check_regression()
            finally:
                self._profile_if_asked()

    def _profile_if_asked(self) -> None:
        """Profile the case once its last session is done: its regression confirmed under
        ``--perf-trace-failures``, its id under ``--perf-trace-case``, or a baseline refresh."""
        if self.result.pending or self._current_samples is None or self.runtime is None:
            return
        regression = self.result.verdict("regression")
        if regression is not None and regression.status == "fail" and self.session.trace_failures:
            self._profile("failure")
        elif self.case.id in self.session.trace_cases:
            self._profile("request")
        elif self.session.profile_refresh:
            self._profile("refresh")

    def _profile(self, trigger: str) -> None:
        """One run under the backend's own profiler, into ``result.profile``; never fails the case."""
        assert self.artifact is not None and self.request is not None and self.model is not None
        assert self.runtime is not None
        self.session.progress(f"{self.case.id}: profiling ({trigger})")
        folder = profile_folder(self.session.cache.root / "profiles", self.case.id, trigger)
        inputs = self.model.data.example(self.case.batch_size)
        try:
            profile = self.backend.profile(
                self.artifact,
                self.request,
                self._run_settings(),
                self.runtime,
                inputs,
                folder,
            )
        except ProfileUnavailable as exc:
            self.result.profile = {"trigger": trigger, "unavailable": str(exc)}
        except Exception as exc:  # a profiler's own failure is reported, never the case's
            self.result.profile = {
                "trigger": trigger,
                "unavailable": f"the profiler failed: {error_line(exc)}",
            }
        else:
            self.result.profile = {"trigger": trigger, **profile.summary(), "files": profile.files}
            baseline = self._baseline_case() if self.compare else None
            if baseline is not None and baseline.profile:
                # Carried with the result, so that a report rendered later (merged) still compares.
                self.result.profile["baseline_operators_us"] = baseline.profile["operators_us"]

    def _check_regression(self) -> None:
        """Time the reference workload next to the case, then judge it against this runner's baseline.

        The reference is timed whenever the case was, so that a refresh stores it. A case with
        repeats to come waits for them (``pending``); the plugin runs them after the other cases.
        Under ``--benchmark-compare`` the gate reads the case's baseline by case id. A baseline
        taken on other hardware or another major version of the backend's library is
        ``incomparable``, never judged. A failing verdict asks for a confirmation (``confirm``
        times): a fresh session after the other cases, which must fail too.
        """
        if self._current_samples is None:
            return
        reference_us = round(measure_reference() * 1e6, 4)
        self.result.measurement.reference_workload_p50_us = reference_us
        self.result.sessions[-1]["reference_us"] = reference_us
        self._show_settings()
        if self.pass_kind != "confirmation" and len(self._measured()) < self.repeats:
            self.result.pending = "repeat"
            return
        if not self.compare:
            return
        baseline = self._baseline_case()
        if self.session.history_judge is not None:
            verdict = self._judge(self._history_judge)
        elif baseline is None:
            verdict = Verdict("regression", "new", "no baseline for this runner: reported as new")
        elif reasons := incomparable_reasons(
            baseline.hardware, detect().to_dict(), self.backend.libraries, self.case.device
        ):
            verdict = _incomparable(baseline, self.result.samples_s, reasons)
        else:
            verdict = self._judge(self._baseline_judge(baseline))
        if verdict.failed and verdict.values.get("confirmations", 0) < self.case.regression.confirm:
            self.result.verdicts.append(verdict)  # provisional: the confirmation pass reads it
            self.result.pending = "confirmation"
            self.session.progress(f"{self.case.id}: {verdict.message}; confirming after the other cases")
            return
        if verdict.status in ("new", "incomparable", "insufficient") and self.require_baseline:
            why = "no baseline for this runner" if verdict.status == "new" else verdict.message
            verdict = Verdict(verdict.gate, "fail", f"{why} (--perf-require-baseline)", verdict.values)
        self.result.verdicts.append(verdict)
        self._fail_on([verdict], "regression gate")

    def _measured(self) -> list[dict[str, Any]]:
        """The sessions of the case's reading: its first and its repeats (not confirmations)."""
        return [s for s in self.result.sessions if s["kind"] != "confirmation"]

    def _baseline_judge(self, baseline: BaselineCase) -> Any:
        """The baseline file's gate, as a function of this run's sessions."""
        gate = RegressionGate(self.case.regression)
        use_factor = self.case.device != "cuda"  # a CPU kernel says nothing of a GPU's speed

        def judge(now: list[SessionSummary]) -> Verdict:
            factor = _machine_factor(now, baseline.sessions) if use_factor else None
            return gate.compute(now, baseline.sessions, factor)

        return judge

    def _history_judge(self, now: list[SessionSummary]) -> Verdict:
        assert self.session.history_judge is not None
        return self.session.history_judge(self.case, now)

    def _judge(self, gate: Any) -> Verdict:
        """The verdict of ``gate`` (sessions -> verdict): of the reading, or of a confirmation.

        A confirmation is judged on its own session and the verdict stands only if it fails too;
        when it does not, the reading it overturned is no longer kept, so it is never stored.
        """

        def judge(sessions: list[dict[str, Any]]) -> Verdict:
            return gate([SessionSummary.from_dict(s) for s in sessions])

        if self.pass_kind != "confirmation" or self.earlier is None:
            return judge(self._measured())
        previous = self.earlier.verdict("regression")
        retry = judge(self.result.sessions[-1:])
        if previous is None:
            return retry
        verdict = _confirmed(previous, retry)
        if not retry.failed:
            for session in self.result.sessions[:-1]:
                session["kept"] = False
            self._settle_samples()
        return verdict

    def close(self) -> None:
        self.guard.stop()
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None

    def _fail_on(self, verdicts: list[Verdict], what: str) -> None:
        failed = [v for v in verdicts if v.failed]
        if failed:
            self.result.status = "failed"
            lines = "\n".join(f"  {v.gate}: {v.message}" for v in failed)
            pytest.fail(f"{self.case.id}: {what} failed\n{lines}", pytrace=False)


def show_in_benchmark(benchmark: Any, samples: list[float]) -> None:
    """Make pytest-benchmark's table and ``--benchmark-json`` show ``samples`` as the case's timing.

    For a measurement taken outside its fixture: a confirmation run, or a ``--perf-isolate`` child.
    """
    if benchmark is None or not samples:
        return
    if benchmark.stats is None:
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # creates the stats to replace
    fresh = type(benchmark.stats.stats)()
    for sample in samples:
        fresh.update(sample)
    benchmark.stats.stats = fresh


def _measure_directly(step: Any, policy: Any) -> Any:
    """Warm up and time ``step`` by pytest-benchmark's loop and perfgate's stopping rule, without it."""
    from perfgate.timing import Timing

    warm = warm_up(step, policy)
    timer = time.perf_counter
    samples = []
    for _ in range(plan_rounds(warm, policy)):
        start = timer()
        step()
        samples.append(timer() - start)
    return Timing(samples_s=samples, warmup_rounds=len(warm))


def _incomparable(baseline: BaselineCase, samples: list[float], reasons: list[str]) -> Verdict:
    """The verdict for a baseline measured on another machine or library: shown, never judged."""
    values = {
        "baseline_p50_ms": baseline.p50_ms,
        "current_p50_ms": statistics.median(samples) * 1e3,
        "reasons": reasons,
    }
    message = "incomparable with the baseline (" + "; ".join(reasons) + "): refresh this runner's baseline"
    return Verdict("regression", "incomparable", message, values)


def _machine_factor(now: Sequence[SessionSummary], then: Sequence[SessionSummary]) -> float | None:
    """The reference workload's p50 now over at the baseline (each side's median), if both timed it."""
    current = [s.reference_us for s in now if s.reference_us]
    stored = [s.reference_us for s in then if s.reference_us]
    if not current or not stored:
        return None
    return statistics.median(current) / statistics.median(stored)


def _confirmed(previous: Verdict, retry: Verdict) -> Verdict:
    """The verdict after a confirmation: the retry's, naming every reading that was taken."""
    readings = [*previous.values.get("readings", [previous.values["ratio"]]), retry.values["ratio"]]
    values = {
        **retry.values,
        "first_ratio": readings[0],
        "first_p50_ms": previous.values.get("first_p50_ms", previous.values.get("current_p50_ms")),
        "confirmations": len(readings) - 1,
        "readings": readings,
    }
    taken = f"first reading x{readings[0]:.3f}; " + "; ".join(
        f"confirmation {i}, after the other cases, x{r:.3f}" for i, r in enumerate(readings[1:], 1)
    )
    if retry.status == "fail":
        return Verdict(retry.gate, "fail", f"{retry.message} (confirmed: {taken})", values)
    return Verdict(retry.gate, retry.status, f"{retry.message}; not confirmed ({taken}): the reading is not kept", values)  # fmt: skip
