"""QAT's fake-quant model in torch FX graph mode: prepare, fine-tune, freeze.

The QAT technique's transform (:class:`perfgate.techniques.quantization.QuantizationAwareTraining`);
the torch backend converts the result to INT8 modules (:mod:`perfgate.backends.torch_fx_quant`),
ONNX Runtime and OpenVINO run its QDQ export.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    QConfig,
    QConfigMapping,
)
from torch.ao.quantization.quantize_fx import prepare_qat_fx

from perfgate.data import ModelData
from perfgate.fx_quant import ENGINE, split_relu6, x86_mapping

RECIPE_VERSION = 2  # bump when the QAT recipe changes, so cached fine-tunes are rebuilt


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
    return x86_mapping(QConfig(activation=activation, weight=weight))


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
    inputs, labels = data.training_split()
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
