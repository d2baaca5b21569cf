"""Execution settings as techniques: channels-last memory format and tuned thread counts.

Neither changes a number the model computes; each changes how the runtime lays out or schedules
the work, so that its effect on latency shows in the table next to the FP32 reference.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from perfgate.hardware import Hardware
from perfgate.techniques.base import EVERY_KIND, Technique, TransformContext

# Exact up to float reassociation in the kernels: the same tolerances as a lossless conversion.
LOSSLESS_ACCURACY: dict[str, float | None] = {
    "max_abs_diff": 1e-4,
    "max_diff_rtol": 1e-5,
    "min_top1_agreement": 0.995,
    "min_relative_metric": 0.999,
}


class ChannelsLast(Technique):
    """Convolution weights (and so activations) in NHWC order, which oneDNN's conv kernels prefer."""

    def transform(self, model: Any, ctx: TransformContext) -> Any:
        import torch

        # A conv whose weight is channels-last produces channels-last output even from an NCHW
        # input, so converting the module suffices; the timed input stays as the data gives it.
        return copy.deepcopy(model).to(memory_format=torch.channels_last)

    def transform_key(self, options: dict[str, Any]) -> str | None:
        return "channels_last"


def physical_cores(cpuinfo: str | None = None, allowed: set[int] | None = None) -> int:
    """Physical cores among the CPUs this process may use (SMT siblings count once).

    :param cpuinfo: the text of /proc/cpuinfo (read when ``None``).
    :param allowed: logical CPU ids this process may run on (its affinity when ``None``).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    if allowed is None:
        allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    cores = set()
    for block in cpuinfo.strip().split("\n\n"):
        fields = dict(re.findall(r"^([^\t:]+?)\s*:\s*(.*)$", block, re.MULTILINE))
        if "processor" not in fields or "core id" not in fields:
            continue
        if not allowed or int(fields["processor"]) in allowed:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    # Without topology (ARM, containers hiding it) every allowed logical CPU counts as a core.
    return len(cores) or len(allowed) or os.cpu_count() or 1


class ThreadsTuned(Technique):
    """Intra-op threads = physical cores, inter-op = 1: the usual best setting for one stream."""

    def run_settings(self, hardware: Hardware) -> dict[str, int] | None:
        # SMT siblings share a core's vector units: more threads than cores only add contention;
        # one inter-op thread, because a single inference has no independent branches to overlap.
        return {"intra_op": min(physical_cores(), hardware.cpu_cores), "inter_op": 1}


CHANNELS_LAST = ChannelsLast(
    name="channels_last",
    description="torch channels-last (NHWC) memory format; meaningless for ONNX-based backends",
    lossless=True,
    runtimes=frozenset({"torch"}),
    accuracy=LOSSLESS_ACCURACY,
)

THREADS_TUNED = ThreadsTuned(
    name="threads_tuned",
    description="intra-op threads = physical cores, inter-op = 1 (the matrix default is 1 thread)",
    lossless=True,
    devices=frozenset({"cpu"}),  # CPU thread pools; a GPU case's work is not on them
    # A tree ensemble parallelizes over trees (one row) or rows (a batch): ONNX Runtime exposes no
    # other setting of its TreeEnsemble kernel, so its threads are the tree-ensemble technique.
    model_kinds=EVERY_KIND,
    accuracy=LOSSLESS_ACCURACY,
)
