"""INT8 quantization techniques; each backend does the lowering its own way."""

from perfgate.techniques.base import Technique

INT8_DYNAMIC = Technique(
    name="int8_dynamic",
    description="INT8 weights, activations quantized at run time (torch.ao / onnxruntime.quantization)",
    lowering="int8_dynamic",
    family="quantized",
    accuracy={"min_relative_metric": 0.99, "min_top1_agreement": 0.97, "min_sqnr_db": 15.0},
)
