"""The result of one case: plain data, built from raw samples, serialisable to stable JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from perfgate.gates import Verdict
from perfgate.stats import LatencyStats

RESULTS_SCHEMA_VERSION = 1


@dataclass
class CaseResult:
    """Everything measured for one case; times in seconds unless the field says otherwise."""

    case_id: str
    model: str
    technique: str
    backend: str
    batch_size: int
    device: str
    runner: str
    nodeid: str = ""
    status: str = "passed"  # passed | failed | error
    build_s: float | None = None
    build_cached: bool | None = None
    load_s: float | None = None
    first_inference_s: float | None = None
    artifact_bytes: int | None = None
    peak_rss_mb: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] | None = None
    latency: LatencyStats | None = None
    samples_s: list[float] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    error: str | None = None

    @property
    def accuracy_passed(self) -> bool:
        return self.accuracy is not None and not any(
            v.failed for v in self.verdicts if v.gate != "regression"
        )

    def verdict(self, gate: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.gate == gate), None)

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["latency"] = self.latency.to_dict() if self.latency else None
        result["verdicts"] = [v.to_dict() for v in self.verdicts]
        return result

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        data = dict(data)
        latency = data.pop("latency", None)
        verdicts = data.pop("verdicts", [])
        result = cls(**data)
        if latency:
            latency = dict(latency)
            latency["low_confidence"] = tuple(latency.get("low_confidence", ()))
            result.latency = LatencyStats(**latency)
        result.verdicts = [Verdict(**v) for v in verdicts]
        return result
