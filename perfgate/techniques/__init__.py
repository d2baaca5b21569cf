"""The technique axis: one module per technique family, found through ``TECHNIQUES``."""

from perfgate.registry import Registry
from perfgate.techniques.base import Technique, TransformContext

TECHNIQUES: Registry[Technique] = Registry("technique")
TECHNIQUES.register("fp32", "perfgate.techniques.reference:FP32")
TECHNIQUES.register("int8_dynamic", "perfgate.techniques.quantization:INT8_DYNAMIC")

# Marker per technique family, applied to every case of a technique of that family.
FAMILIES = {
    "quantized": "INT8 and other integer quantization",
    "pruned": "pruned weights or channels",
    "compiled": "graph compilation (torch.compile, CUDA graphs)",
    "fp16": "reduced floating-point precision (FP16, BF16)",
    "distilled": "knowledge distillation into a smaller student",
}

__all__ = ["FAMILIES", "TECHNIQUES", "Technique", "TransformContext"]
