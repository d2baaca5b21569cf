"""The technique axis: one module per technique family, found through ``TECHNIQUES``."""

from perfgate.registry import Registry
from perfgate.techniques.base import NotApplicable, Technique, TransformContext

TECHNIQUES: Registry[Technique] = Registry("technique")
TECHNIQUES.register("fp32", "perfgate.techniques.reference:FP32", reference=True)
TECHNIQUES.register("int8_dynamic", "perfgate.techniques.quantization:INT8_DYNAMIC")
TECHNIQUES.register("int8_static", "perfgate.techniques.quantization:INT8_STATIC")
TECHNIQUES.register("int8_static_entropy", "perfgate.techniques.quantization:INT8_STATIC_ENTROPY")
TECHNIQUES.register("int8_static_percentile", "perfgate.techniques.quantization:INT8_STATIC_PERCENTILE")
TECHNIQUES.register("qat", "perfgate.techniques.quantization:QAT")
TECHNIQUES.register("fp16", "perfgate.techniques.precision:FP16")
TECHNIQUES.register("bf16", "perfgate.techniques.precision:BF16")
TECHNIQUES.register("prune_unstructured", "perfgate.techniques.pruning:PRUNE_UNSTRUCTURED")
TECHNIQUES.register("prune_structured", "perfgate.techniques.pruning:PRUNE_STRUCTURED")
TECHNIQUES.register("prune_structured_int8", "perfgate.techniques.pruning:PRUNE_STRUCTURED_INT8")
TECHNIQUES.register("distill", "perfgate.techniques.distillation:DISTILL")
TECHNIQUES.register("channels_last", "perfgate.techniques.runtime:CHANNELS_LAST")
TECHNIQUES.register("threads_tuned", "perfgate.techniques.runtime:THREADS_TUNED")
TECHNIQUES.register("tvm_tuned", "perfgate.techniques.tvm_tuning:TVM_TUNED")

# Marker per technique family, applied to every case of a technique of that family.
FAMILIES = {
    "quantized": "INT8 and other integer quantization",
    "pruned": "pruned weights or channels",
    "compiled": "graph compilation (torch.compile, CUDA graphs)",
    "fp16": "reduced floating-point precision (FP16, BF16)",
    "distilled": "knowledge distillation into a smaller student",
}


def reference_technique() -> str:
    """The technique every other one is judged against: the one registered with ``reference=True``
    (``fp32``). Knowing it imports no technique module."""
    if TECHNIQUES.reference is None:
        raise LookupError("no technique is registered with reference=True")
    return TECHNIQUES.reference


__all__ = ["FAMILIES", "TECHNIQUES", "NotApplicable", "Technique", "TransformContext", "reference_technique"]
