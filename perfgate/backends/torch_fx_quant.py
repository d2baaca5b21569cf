"""Torch INT8 through FX graph-mode quantization (``torch.ao.quantization.quantize_fx``).

Why FX and not PT2E: torch 2.13 no longer ships ``torch.ao.quantization.quantize_pt2e`` or the
X86 inductor quantizer (they moved to torchao), and a PT2E graph only becomes INT8 once inductor
compiles it; eager PT2E runs float math between quantize/dequantize pairs. FX ``convert_fx``
yields quantized modules (``QuantizedConv2d``, ``QuantizedLinear``, fused ``ConvReLU2d``) whose
kernels (fbgemm / oneDNN, the "x86" engine) compute in INT8 in eager mode.

The torch backend's lowerings: static INT8 (calibrated here) and the conversion of the QAT
technique's fake-quant model (prepared in :mod:`perfgate.techniques.qat_fx`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.ao.quantization import (
    HistogramObserver,
    MinMaxObserver,
    QConfig,
    QConfigMapping,
    default_per_channel_weight_observer,
)
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from perfgate.calibration import Calibration
from perfgate.data import ModelData
from perfgate.fx_quant import ENGINE, split_relu6, x86_mapping


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


def static_qconfig_mapping(calibration: Calibration) -> QConfigMapping:
    """torch's x86 mapping, with the calibration method's observer and per-channel INT8 weights."""
    activation = activation_observer(calibration)
    return x86_mapping(QConfig(activation=activation, weight=default_per_channel_weight_observer))


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


def convert_qat(model: torch.fx.GraphModule) -> torch.nn.Module:
    """Convert a fine-tuned fake-quant model (``qat_fx.prepare_qat``'s) to real INT8 modules (a copy)."""
    torch.backends.quantized.engine = ENGINE
    return convert_fx(copy.deepcopy(model)).eval()
