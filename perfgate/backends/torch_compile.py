"""``torch.compile`` with the inductor backend, on the CPU.

``torch.compile`` is lazy: wrapping the module costs nothing, the first call at a shape traces
and compiles it. ``build`` therefore makes that first call, at the case's batch size and under
``inference_mode`` as the timed calls run, and the whole of it is the build time; shapes are
static (``dynamic=False``), so the timed calls never recompile.

Inductor's C++ kernels bake the OpenMP thread count of the moment they are generated into the
code. ``build`` compiles under the case's intra-op thread count when the request carries it
(``BuildRequest.run_settings``); ``load`` checks it and, if the count it must run with differs,
compiles again under that count (recorded as ``recompiled_for_threads``), so the timed code always
uses the threads the case says.

Only the ``none`` lowering: inductor has no path for torch.ao's dynamically quantized modules
(they graph-break back to eager), so an ``int8_dynamic`` case here would time eager INT8 under
another name.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings
from perfgate.backends.torch_eager import TorchSession, count_torch_ops, in_memory_artifact, profile_torch
from perfgate.profiling import OperatorProfile


def compile_module(module: torch.nn.Module, example: torch.Tensor, threads: int | None) -> tuple[Any, float]:
    """Compile ``module`` with inductor and trigger the compilation with one call; return it and the seconds.

    :param module: the eval-mode module.
    :param example: an input of the shape the timed calls use.
    :param threads: the intra-op threads the generated kernels are for; ``None`` for the current count.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        # Dynamo's guards ignore the thread count: without a reset, a second case on the same
        # module would reuse kernels generated for another count (and report no compile time).
        torch.compiler.reset()
        with torch.inference_mode(), warnings.catch_warnings():
            # inductor's own deprecation chatter (torch.jit.script_method), not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            compiled = torch.compile(module, backend="inductor", dynamic=False)
            compiled(example)
        return compiled, time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)


class TorchCompileCpuBackend(Backend):
    """The technique's torch module through ``torch.compile`` (inductor), on the CPU."""

    name = "torch_compile_cpu"
    marker = "torch"
    libraries = ("torch",)
    extra_markers: ClassVar[tuple[str, ...]] = ("compiled",)
    requires = ("torch",)
    lowerings = frozenset({"none"})

    def build(self, request: BuildRequest) -> Artifact:
        module = request.model.eval()
        threads = request.run_settings.intra_op_threads if request.run_settings else None
        example = torch.from_numpy(request.data.example(request.batch_size))
        compiled, compile_s = compile_module(module, example, threads)
        # Never "cached": inductor's own caches make a warm compile faster, not free.
        return in_memory_artifact(
            module,
            compiled,
            compile_s,
            lowering=request.lowering,
            compiled_threads=threads or torch.get_num_threads(),
        )

    def profile(
        self, artifact: Artifact, request: BuildRequest, settings: RunSettings, session: Any, inputs: Any, folder: Path
    ) -> OperatorProfile:
        return profile_torch(session, folder, cuda=False)

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> TorchSession:
        compiled, recompile_s = artifact.payload, None
        wanted = settings.intra_op_threads
        if wanted is not None and wanted != artifact.info["compiled_threads"]:
            example = torch.from_numpy(request.data.example(request.batch_size))
            compiled, recompile_s = compile_module(request.model.eval(), example, wanted)
        session = TorchSession(compiled, torch.device("cpu"), {})
        if wanted is not None:
            torch.set_num_threads(wanted)
        session.settings = {
            "intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads(),
            "torch_version": torch.__version__,
            "compile_backend": "inductor",
            "compile_dynamic": False,
            **({"recompiled_for_threads": round(recompile_s, 3)} if recompile_s is not None else {}),
        }
        return session

    def inspect(self, artifact: Artifact) -> dict[str, int]:
        """The compute modules of the module inductor compiled (only the ``none`` lowering: all float).

        :param artifact: what ``build`` returned; its payload is the ``torch.compile`` wrapper.
        """
        # The wrapper keeps the module it compiled; inductor's kernels are not modules to count.
        return count_torch_ops(getattr(artifact.payload, "_orig_mod", artifact.payload))


TORCH_COMPILE_CPU = TorchCompileCpuBackend()
