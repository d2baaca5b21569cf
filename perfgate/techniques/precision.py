"""Reduced floating-point precision: FP16 and BF16, lowered by each backend that has the kernels.

No torch-level transform: the cast belongs to the runtime (ONNX Runtime converts the graph,
torch casts the module, OpenVINO sets its inference precision hint), and inputs and outputs stay
float32 everywhere so that the accuracy pass compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfgate.hardware import Hardware
from perfgate.techniques.base import GRAPH_KINDS, Technique


@dataclass(frozen=True)
class ReducedPrecision(Technique):
    """A 16-bit float lowering; ``cpu_isa`` lists the CPU features of which one must be present.

    On a CPU without them the backend would emulate the format in float32, which measures an
    emulation rather than the technique, so such a case is skipped with the reason.
    """

    family: str | None = "fp16"
    cpu_isa: tuple[str, ...] = ()

    def missing(self, hardware: Hardware, device: str) -> str | None:
        """Why the CPU cannot run this precision natively, or ``None`` (always on a CUDA device).

        :param hardware: this runner.
        :param device: the case's device, ``"cpu"`` or ``"cuda"``.
        """
        if not self.cpu_isa or device != "cpu":
            return None
        if any(flag in hardware.isa for flag in self.cpu_isa):
            return None
        have = ", ".join(hardware.isa) or "none detected"
        return f"{self.name} needs a CPU with {' or '.join(self.cpu_isa)} (this CPU has: {have})"


FP16 = ReducedPrecision(
    name="fp16",
    description="FP16 weights and compute, FP32 inputs and outputs",
    lowering="fp16",
    size_reducing=True,  # FP16 weights on every backend that lowers it (BF16 is a compute precision)
    model_kinds=GRAPH_KINDS,  # ONNX Runtime and OpenVINO convert an ONNX file's graph too
    # An 11-bit mantissa: logits move by ~1e-3 relative, a prediction almost never.
    accuracy={"min_relative_metric": 0.99, "min_top1_agreement": 0.99, "min_sqnr_db": 35.0},
)

BF16 = ReducedPrecision(
    name="bf16",
    description="BF16 weights and compute (AVX512-BF16 / AMX), FP32 inputs and outputs",
    lowering="bf16",
    cpu_isa=("avx512_bf16", "amx_bf16"),
    # An 8-bit mantissa, 8x coarser than FP16, but FP32's range: no overflow, more rounding noise.
    accuracy={"min_relative_metric": 0.99, "min_top1_agreement": 0.98, "min_sqnr_db": 20.0},
)
