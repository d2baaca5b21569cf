"""What the QAT technique and the torch backend share of torch's FX graph-mode quantization.

Below both axes: the QAT technique prepares its fake-quant model with it
(:mod:`perfgate.techniques.qat_fx`), the torch backend's INT8 lowerings convert with it
(:mod:`perfgate.backends.torch_fx_quant`), and both must agree on the engine, the qconfig
mapping and the ReLU6 rewrite for the learned scales to mean the same thing on either side.
"""

from __future__ import annotations

import operator

import torch
from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig_mapping

ENGINE = "x86"  # torch's CPU engine: fbgemm or oneDNN per op, VNNI/AMX kernels where present


def x86_mapping(qconfig: QConfig) -> QConfigMapping:
    """torch's x86 mapping with ``qconfig`` as the global one, and elementwise ``mul`` left in float.

    FX treats every node as a tensor: a scale computed from ``x.shape`` (``head_dim ** -0.5`` in
    attention) that reaches a ``mul`` would get an activation observer and break calibration.
    """
    mapping = get_default_qconfig_mapping(ENGINE).set_global(qconfig)
    for object_type, default in list(mapping.object_type_qconfigs.items()):
        if default is None:
            continue
        # The x86 defaults of some ops (LayerNorm, ConvTranspose...) observe with torch's default
        # 7-bit observer, deprecated and not calibrated our way: they take our activation observer.
        observer = getattr(default.activation, "p", None)
        if observer is not None and observer.keywords.get("reduce_range"):
            ours = QConfig(activation=qconfig.activation, weight=default.weight)
            mapping.set_object_type(object_type, ours)
    return mapping.set_object_type(operator.mul, None).set_object_type(torch.mul, None)


def split_relu6(model: torch.nn.Module) -> torch.fx.GraphModule:
    """Trace ``model`` and rewrite each ``ReLU6`` as ``ReLU`` then ``clamp(max=6)`` (the same function).

    The x86 backend fuses conv + BN + ReLU but not ReLU6, so a ReLU6 network would quantize each
    conv output over its whole range, negatives included (MobileNetV2 loses ~17 dB SQNR that way).
    Split, the conv output is fused with the ReLU and quantized over [0, max], and the clamp
    shares its scale, as ONNX Runtime does by folding Clip into the conv's quantization range.
    """
    traced = torch.fx.symbolic_trace(model)
    for node in list(traced.graph.nodes):
        is_module = node.op == "call_module" and isinstance(traced.get_submodule(node.target), torch.nn.ReLU6)
        if not (is_module or (node.op == "call_function" and node.target is torch.nn.functional.relu6)):
            continue
        if is_module:
            traced.delete_submodule(node.target)
            traced.add_submodule(node.target, torch.nn.ReLU())
        else:
            node.target, node.kwargs = torch.nn.functional.relu, {}
        with traced.graph.inserting_after(node):
            clamp = traced.graph.call_function(torch.clamp, (node,), {"max": 6.0})
        node.replace_all_uses_with(clamp)
        clamp.args = (node,)
    traced.graph.lint()
    traced.recompile()
    return traced.train(model.training)  # a traced root and the new ReLUs start in train mode
