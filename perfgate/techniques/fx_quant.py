"""Torch INT8 through FX graph-mode quantization (``torch.ao.quantization.quantize_fx``).

Why FX and not PT2E: torch 2.13 no longer ships ``torch.ao.quantization.quantize_pt2e`` or the
X86 inductor quantizer (they moved to torchao), and a PT2E graph only becomes INT8 once inductor
compiles it; eager PT2E runs float math between quantize/dequantize pairs. FX ``convert_fx``
yields quantized modules (``QuantizedConv2d``, ``QuantizedLinear``, fused ``ConvReLU2d``) whose
kernels (fbgemm / oneDNN, the "x86" engine) compute in INT8 in eager mode.

Used by the static INT8 lowering of the torch backend and by the QAT technique.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch.ao.quantization import (
    FakeQuantize,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    QConfig,
    QConfigMapping,
    default_per_channel_weight_observer,
    get_default_qconfig_mapping,
)
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

from perfgate.data import ModelData
from perfgate.techniques.quantization import Calibration

RECIPE_VERSION = 2  # bump when the QAT recipe changes, so cached fine-tunes are rebuilt
ENGINE = "x86"  # torch's CPU engine: fbgemm or oneDNN per op, VNNI/AMX kernels where present


class PercentileObserver(HistogramObserver):
    """A histogram observer whose range drops the tails beyond ``percentile`` on each side.

    torch.ao has no percentile observer; this keeps HistogramObserver's running histogram (so the
    result does not depend on the batch split) and replaces only its range search.
    """

    def __init__(self, percentile: float = 99.999, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.percentile = percentile

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        cdf = torch.cumsum(self.histogram, dim=0) / self.histogram.sum()
        tail = (100.0 - self.percentile) / 100.0
        low = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)))
        high = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail, dtype=cdf.dtype)))
        width = (self.max_val - self.min_val) / self.bins
        # Never clip past zero: ReLU outputs keep an exact zero point.
        new_min = torch.minimum(self.min_val + width * low, torch.zeros_like(self.min_val))
        new_max = torch.maximum(self.min_val + width * (high + 1), torch.zeros_like(self.max_val))
        return new_min, torch.minimum(new_max, self.max_val)


def reduce_range() -> bool:
    """7-bit activations where the CPU lacks VNNI: fbgemm's AVX2 u8s8 path can saturate otherwise."""
    from perfgate.hardware import detect

    return detect().machine in {"x86_64", "AMD64"} and "vnni" not in detect().isa


def activation_observer(calibration: Calibration) -> Any:
    """The activation observer of a calibration method (per-tensor, unsigned, asymmetric).

    ``entropy`` is torch's HistogramObserver, which searches the range that minimises the
    quantization error of the histogram; torch.ao has no KL-divergence observer.
    """
    # quant_max rather than reduce_range=True, which torch deprecates with a warning.
    common = {"dtype": torch.quint8, "qscheme": torch.per_tensor_affine, "quant_min": 0,
              "quant_max": 127 if reduce_range() else 255}  # fmt: skip
    observers = {
        "minmax": MinMaxObserver.with_args(**common),
        "entropy": HistogramObserver.with_args(**common),
        "percentile": PercentileObserver.with_args(percentile=calibration.percentile, **common),
    }
    return observers[calibration.method]


def _x86_mapping(qconfig: QConfig) -> QConfigMapping:
    """torch's x86 mapping with ``qconfig`` as the global one, and elementwise ``mul`` left in float.

    FX treats every node as a tensor: a scale computed from ``x.shape`` (``head_dim ** -0.5`` in
    attention) that reaches a ``mul`` would get an activation observer and break calibration.
    """
    mapping = get_default_qconfig_mapping(ENGINE).set_global(qconfig)
    for object_type, default in list(mapping.object_type_qconfigs.items()):
        # The x86 defaults of some ops (LayerNorm, ConvTranspose...) observe with torch's default
        # 7-bit observer, deprecated and not calibrated our way: they take our activation observer.
        partial = getattr(default, "activation", None)
        if getattr(partial, "p", None) is not None and partial.p.keywords.get("reduce_range"):
            ours = QConfig(activation=qconfig.activation, weight=default.weight)
            mapping.set_object_type(object_type, ours)
    return mapping.set_object_type(operator.mul, None).set_object_type(torch.mul, None)


def static_qconfig_mapping(calibration: Calibration) -> QConfigMapping:
    """torch's x86 mapping, with the calibration method's observer and per-channel INT8 weights."""
    activation = activation_observer(calibration)
    return _x86_mapping(QConfig(activation=activation, weight=default_per_channel_weight_observer))


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


def quantize_static(model: torch.nn.Module, data: ModelData, calibration: Calibration) -> torch.nn.Module:
    """Calibrate a copy of ``model`` on the calibration set and convert it to INT8 modules.

    :param model: the FP32 model, in eval mode; it must be traceable by ``torch.fx``.
    :param data: where the calibration set comes from (the training split).
    :param calibration: method and size.
    """
    torch.backends.quantized.engine = ENGINE
    batches = calibration.batches(data)
    example = (torch.from_numpy(batches[0][:1]),)
    traced = split_relu6(copy.deepcopy(model).eval())
    prepared = prepare_fx(traced, static_qconfig_mapping(calibration), example)
    with torch.no_grad():
        for batch in batches:
            prepared(torch.from_numpy(batch))
    return convert_fx(prepared).eval()


def qat_qconfig_mapping() -> QConfigMapping:
    """Fake-quant INT8 for QAT: per-channel symmetric weights, full-range unsigned activations.

    Full 8-bit activations (0..255, no ``reduce_range``) because the QDQ ONNX export allows only
    (0, 255) or (-128, 127) without an extra Clip, which would stop ONNX Runtime and OpenVINO from
    fusing the Q/DQ pairs into integer kernels.
    """
    activation = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )  # fmt: skip
    weight = FakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric, ch_axis=0,
    )  # fmt: skip
    return _x86_mapping(QConfig(activation=activation, weight=weight))


def prepare_qat(model: torch.nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Insert fake-quant modules (and fuse conv + BN into QAT modules) into ``model``."""
    torch.backends.quantized.engine = ENGINE
    return prepare_qat_fx(split_relu6(model).train(), qat_qconfig_mapping(), (example,))


def fine_tune_qat(
    prepared: torch.nn.Module, data: ModelData, options: dict[str, Any], progress: Callable[[str], None]
) -> None:
    """Fine-tune the fake-quant model in place: live ranges first, then frozen ranges and BN.

    The last ``frozen_epochs`` run with the quantization ranges and BatchNorm statistics fixed,
    so that the weights adapt to the exact rounding the INT8 model will apply (torch's QAT recipe).
    """
    from perfgate.training import TrainConfig, fit

    epochs, frozen = int(options["epochs"]), int(options["frozen_epochs"])
    lr, shift = float(options["lr"]), int(options["max_shift"])
    inputs, labels = data.train_inputs, data.train_labels
    fit(prepared, inputs, labels, TrainConfig(max(1, epochs - frozen), lr=lr, max_shift=shift), progress)
    if frozen > 0:
        _freeze(prepared)
        fit(prepared, inputs, labels, TrainConfig(frozen, lr=lr, max_shift=shift), progress)


def _freeze(prepared: torch.nn.Module) -> None:
    prepared.apply(torch.ao.quantization.disable_observer)
    prepared.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)


def fold_bn(prepared: torch.nn.Module) -> torch.nn.Module:
    """Replace each QAT conv + BN module by a QAT conv with the BN folded into its weights.

    During training the BN is simulated around the conv (``conv(x, fq(w * g)) / g`` then BN); in
    eval mode with frozen statistics that is ``conv(x, fq(w * g)) + folded bias``, which is what a
    plain QAT conv on the folded weights computes with the trained weight fake-quant (its scales
    were observed on ``w * g``). Folded, the ONNX export is DQ -> Conv -> Q, the pattern ONNX
    Runtime and OpenVINO fuse into integer convolutions, instead of Conv -> Div -> BN.
    """
    import torch.ao.nn.intrinsic as nni
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.nn.qat as nnqat

    targets = {nniqat.ConvBn2d: nnqat.Conv2d, nniqat.ConvBnReLU2d: nniqat.ConvReLU2d}
    for name, module in list(prepared.named_modules()):
        qat_type = targets.get(type(module))
        if qat_type is None:
            continue
        folded = module.to_float()
        conv = folded[0] if isinstance(folded, nni.ConvReLU2d) else folded
        replacement = qat_type(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, qconfig=module.qconfig,
        )  # fmt: skip
        replacement.weight, replacement.bias = conv.weight, conv.bias
        replacement.weight_fake_quant = module.weight_fake_quant
        parent, _, child = name.rpartition(".")
        setattr(prepared.get_submodule(parent) if parent else prepared, child, replacement.eval())
    return prepared


def scalar_qparams(prepared: torch.nn.Module) -> torch.nn.Module:
    """Make each per-tensor fake-quant's scale and zero point 0-d tensors (they are shape [1]).

    The export then carries scalar Q/DQ parameters, which ONNX Runtime requires to fuse Q/DQ
    around an Add into QLinearAdd (a shape-[1] scale fails its type inference).
    """
    for module in prepared.modules():
        if isinstance(module, FakeQuantize) and module.qscheme == torch.per_tensor_affine:
            module.scale = module.scale.reshape(())
            module.zero_point = module.zero_point.reshape(())
    return prepared


def freeze_qat(prepared: torch.nn.Module) -> torch.nn.Module:
    """The fine-tuned fake-quant model for inference: ranges and BN fixed, BN folded, eval mode."""
    _freeze(prepared)
    return scalar_qparams(fold_bn(prepared)).eval()


def convert_qat(model: torch.nn.Module) -> torch.nn.Module:
    """Convert a fine-tuned fake-quant model to real INT8 modules (a copy)."""
    torch.backends.quantized.engine = ENGINE
    return convert_fx(copy.deepcopy(model)).eval()
