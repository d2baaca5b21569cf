"""``fp32``: the model as trained, the reference every other case is judged against."""

from perfgate.techniques.base import EVERY_KIND, Technique

FP32 = Technique(
    name="fp32",
    description="FP32 reference; on a non-torch backend, a lossless conversion",
    lossless=True,
    model_kinds=EVERY_KIND,  # a classical estimator's conversion to ONNX is judged the same way
    # A conversion may reorder float sums (fused kernels), never change a prediction. The diff
    # tolerance scales with the outputs: 1e-4 plus 1e-5 of the largest one (a regressor's outputs in
    # the hundreds differ by a float32 rounding of ~3e-5 that an absolute 1e-4 barely holds).
    accuracy={
        "max_abs_diff": 1e-4,
        "max_diff_rtol": 1e-5,
        "min_top1_agreement": 0.995,
        "min_relative_metric": 0.999,
    },
)
