"""Apache TVM on the CPU (``tvm_cpu``): the shared ONNX export, imported through Relax and compiled.

Build: the ONNX export (perfgate.backends.onnx_export) is frozen at the case's batch size
(:func:`freeze_batch`), imported with ``tvm.relax.frontend.onnx.from_onnx``, compiled with
``tvm.compile`` for an ``llvm`` target derived from the CPU's instruction sets
(:func:`llvm_target`), and exported to a shared library that the artifact cache keeps; ``load``
reads it back into a ``relax.VirtualMachine``. TVM links that library with the system's C
compiler, so a runner without one skips the backend, saying so.

Lowerings:

- ``none``: TVM's default pipeline, untuned. Relax legalizes each operator to a plain loop nest
  and schedules none of them on the CPU, so this is TVM before any tuning (docs/cpu-matrix.md).
- ``tvm_tuned`` (the ``tvm_tuned`` technique, perfgate/techniques/tvm_tuning.py): meta-schedule
  tunes every fused operator within the technique's ``trials`` budget (:func:`tune`), and the
  model is compiled with the best schedules found. The tuning database is cached per model,
  batch size, target (with the thread count) and TVM version, so only the first run tunes.

No INT8 lowering (checked with TVM 0.27): the dynamic INT8 graph ONNX Runtime's quantizer writes
does not import (Relax's ONNX frontend has no ``ConvInteger``), and the static QDQ graph imports
and matches ONNX Runtime's outputs but runs in float: Relax has no pass that folds Q/DQ pairs into
integer kernels (Relay's FakeQuantizationToInteger has no Relax successor), so each convolution
is an FP32 one on dequantized weights between round-and-clip ops. An ``int8_*`` case here would
time FP32 kernels under an INT8 name; those cases are never generated (perf/matrix.toml).

Threads: TVM's runtime sizes its pool from ``TVM_NUM_THREADS`` (else half the logical CPUs on
x86) and, unless ``TVM_BIND_THREADS=0``, pins the calling thread to the cores it picked, which
every thread created after it (another backend's pool) would inherit. ``load`` therefore sets both
before the pool of the calling thread is made, and sizes that pool to every usable core, so that
a later case may ask for more threads than an earlier one (:func:`configure_threads`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings, error_line
from perfgate.backends.onnx_export import INPUT_NAME, export_onnx
from perfgate.cache import CacheHit, dir_size_bytes, stable_hash
from perfgate.hardware import cpu_cores, cpu_isa
from perfgate.model_kinds import CLASSICAL, ONNX, TORCH

# The lowering of the tvm_tuned technique (perfgate/techniques/tvm_tuning.py; the two axes never
# import each other), its option and the option's default.
TUNED_LOWERING = "tvm_tuned"
TRIALS_OPTION = "trials"
DEFAULT_TRIALS = 256
RECIPE_VERSION = 1  # bump when the import, compile or tuning recipe changes
TUNING_RECORD = "tuning.json"
TUNER_LOGGER = "tvm.s_tir.meta_schedule"  # meta-schedule's own logger (see _unnamed_handlers_set_aside)
# runtime.config_threadpool's affinity mode: kBig, all cores alike on x86 (nothing is pinned
# anyway under TVM_BIND_THREADS=0).
_POOL_MODE_BIG = 1


def llvm_target(isa: Iterable[str], machine: str | None = None) -> dict[str, Any]:
    """The ``llvm`` target (TVM's dict form) for a CPU with these instruction sets.

    x86-64 gets LLVM's microarchitecture level rather than a CPU name, so that an AMD and an
    Intel part with the same instruction sets compile alike: ``x86-64-v4`` with AVX-512
    (F, BW, CD, DQ, VL), plus AVX512-VNNI, AVX512-BF16 and AMX where present; ``x86-64-v3``
    (AVX2, FMA) without it, with AVX-VNNI where present; ``x86-64-v2`` otherwise. AArch64
    gets NEON and, where present, the dot-product extension.

    :param isa: the names of :data:`perfgate.hardware.ISA_FLAGS` (``hardware.cpu_isa()``).
    :param machine: ``platform.machine()``; this machine's when ``None``.
    """
    names = set(isa)
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        features = ["+neon", *(["+dotprod"] if "neon_dotprod" in names else [])]
        return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": features}
    if machine not in ("x86_64", "amd64"):
        return {"kind": "llvm"}
    if "avx512" in names:
        extra = {"vnni": "+avx512vnni", "avx512_bf16": "+avx512bf16", "amx": "+amx-tile",
                 "amx_int8": "+amx-int8", "amx_bf16": "+amx-bf16"}  # fmt: skip
        features = [feature for name, feature in extra.items() if name in names]
        return {"kind": "llvm", "mcpu": "x86-64-v4", **({"mattr": features} if features else {})}
    if "avx2" in names:
        return {"kind": "llvm", "mcpu": "x86-64-v3", **({"mattr": ["+avxvnni"]} if "vnni" in names else {})}
    return {"kind": "llvm", "mcpu": "x86-64-v2"}


def freeze_batch(model: Any, batch_size: int) -> Any:
    """The ONNX model with its batch axis fixed and its shape arithmetic folded to constants.

    The export has a dynamic batch axis; each case runs one batch size. With every shape
    static, each ``Shape`` node becomes a constant and so does the integer arithmetic computed
    from it (attention's ``head_dim ** -0.5``, a ``Reshape``'s target): Relax's importer folds
    such a scalar into a float64 value and then refuses to multiply it with a float32 tensor.
    Only values computed from shapes are folded; weights are left for TVM.

    :param model: the ``onnx.ModelProto`` of the export (not modified).
    :param batch_size: the case's batch size.
    """
    import onnx

    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    for value in [*frozen.graph.input, *frozen.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch_size
    shapes = _static_shapes(frozen)
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in frozen.graph.initializer}
    folded: set[str] = set()
    nodes = []
    for node in frozen.graph.node:
        values = _fold(node, shapes, constants, folded)
        if values is None:
            nodes.append(node)
            continue
        for name, value in zip(node.output, values, strict=True):
            constants[name] = value
            if node.op_type != "Constant":
                folded.add(name)
        if node.op_type == "Constant":
            nodes.append(node)
        else:
            nodes.extend(_constant(f"{node.name}/folded_{i}", name, value) for i, (name, value) in
                         enumerate(zip(node.output, values, strict=True)))  # fmt: skip
    used = {name for node in nodes for name in node.input} | {value.name for value in frozen.graph.output}
    del frozen.graph.node[:]
    # The folded shape arithmetic leaves constants nothing reads any more.
    frozen.graph.node.extend(n for n in nodes if n.op_type != "Constant" or set(n.output) & used)
    return frozen


def _static_shapes(model: Any) -> dict[str, list[int]]:
    """Every tensor whose shape ONNX's inference (with data propagation) knows in full."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    shapes = {
        value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in values
        if value.type.HasField("tensor_type")
        and value.type.tensor_type.HasField("shape")
        and all(dim.HasField("dim_value") for dim in value.type.tensor_type.shape.dim)
    }
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    return shapes


def _fold(
    node: Any, shapes: dict[str, list[int]], constants: dict[str, np.ndarray], folded: set[str]
) -> list[np.ndarray] | None:
    """The outputs of ``node`` if it is a constant, a static ``Shape``, or arithmetic on folded
    shapes and constants; ``None`` to keep it as it is."""
    if node.op_type == "Constant":
        return _evaluate(node, {})
    if node.op_type == "Shape":
        if node.input[0] not in shapes:
            return None
        attributes = {attribute.name: attribute.i for attribute in node.attribute}
        shape = np.array(shapes[node.input[0]], dtype=np.int64)
        return [shape[attributes.get("start", 0) : attributes.get("end")]]
    inputs = [name for name in node.input if name]
    if not inputs or not all(name in constants for name in inputs) or not any(n in folded for n in inputs):
        return None
    return _evaluate(node, {name: constants[name] for name in inputs})


def _evaluate(node: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of one ONNX node on constant inputs, by ONNX's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    outputs = ReferenceEvaluator(node).run(None, feeds)  # a list: no output names were asked
    return [np.asarray(value) for value in list(outputs)]


def _constant(node_name: str, output: str, value: np.ndarray) -> Any:
    import onnx

    return onnx.helper.make_node(
        "Constant", [], [output], name=node_name, value=onnx.numpy_helper.from_array(value, output)
    )


def import_relax(onnx_path: Path, batch_size: int) -> Any:
    """The Relax module of the ONNX export at ``batch_size`` (weights bound as constants).

    :param onnx_path: the shared ONNX export.
    :param batch_size: the case's batch size.
    """
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    model = freeze_batch(onnx.load(str(onnx_path)), batch_size)
    shape = [dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim]
    return from_onnx(model, shape_dict={INPUT_NAME: shape}, dtype_dict={INPUT_NAME: "float32"})


def tuning_threads(request: BuildRequest) -> int:
    """The threads a tuned build is tuned for: the case's intra-op count, else every usable core."""
    threads = request.run_settings.intra_op_threads if request.run_settings else None
    return threads or cpu_cores()


def tune(request: BuildRequest, onnx: CacheHit, target: dict[str, Any], trials: int) -> CacheHit:
    """Tune the model with meta-schedule within ``trials`` measured candidates, cached.

    The budget is spread evenly over the fused operators (tasks): ``ceil(trials / tasks)`` each,
    so that none is left unscheduled. Candidates are measured with ``target["num-cores"]``
    threads. The entry is the JSON database (``database_workload.json``,
    ``database_tuning_record.json``) and :data:`TUNING_RECORD`, which says what was tuned and
    how long it took.

    :param request: the case's build request.
    :param onnx: the shared export.
    :param target: the llvm target, with ``num-cores``.
    :param trials: the budget of measured candidates over all tasks.
    """
    import tvm

    key = stable_hash(
        "tvm-tuning",
        onnx.path.parent.name,
        request.batch_size,
        target,
        trials,
        tvm.__version__,
        RECIPE_VERSION,
    )

    def build(path: Path) -> None:
        from tvm.s_tir import meta_schedule as ms

        start = time.perf_counter()
        target_object = tvm.target.Target(target)
        with target_object:
            module = _pre_tuning(import_relax(onnx.path, request.batch_size))
        tasks = ms.relax_integration.extract_tasks(module, target_object)
        per_task = max(1, math.ceil(trials / max(1, len(tasks))))
        with tvm_threads(int(target["num-cores"])), _unnamed_handlers_set_aside(TUNER_LOGGER):
            ms.relax_integration.tune_relax(
                module,
                params={},
                target=target_object,
                work_dir=str(path),
                max_trials_global=trials,
                max_trials_per_task=per_task,
                num_trials_per_iter=min(64, per_task),
                seed=0,
                builder=ms.builder.LocalBuilder(f_build=candidate_builder()),
            )
        records = (path / "database_tuning_record.json").read_text().splitlines()
        _remove_tree(path / "logs")  # per-task search logs: large, and not what a case loads
        (path / TUNING_RECORD).write_text(json.dumps({
            "tuning_trials": trials,
            "tuning_tasks": len(tasks),
            "tuning_trials_per_task": per_task,
            "tuning_records": len(records),
            "tuning_s": round(time.perf_counter() - start, 3),
            "tuned_for_threads": int(target["num-cores"]),
        }, indent=1, sort_keys=True))  # fmt: skip

    return request.cache.get_or_build("tvm-tuning", key, "database", build)


@contextlib.contextmanager
def _unnamed_handlers_set_aside(name: str) -> Iterator[None]:
    """Take the handlers without a name off logger ``name`` while the block runs, then put them back.

    meta-schedule configures its loggers with ``logging.config.dictConfig``, listing its logger's
    current handlers by name; an unnamed one fails it (``None.format``). pytest attaches its
    unnamed capture handlers to every logger that does not propagate, which meta-schedule's is
    once it has tuned, so that the second tuning in a pytest session failed.
    """
    logger = logging.getLogger(name)
    unnamed = [handler for handler in logger.handlers if handler.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in unnamed:
            logger.addHandler(handler)


def candidate_builder() -> Any:
    """meta-schedule's default build function for its builder processes, without its first step,
    ``import tvm.s_tir.tensor_intrin``.

    That import parses the TVMScript of every GPU tensor intrinsic (33 s of CPU on this runner),
    and the builder starts new processes for every batch of candidates, so that on a loaded
    2-core runner every build ran past the builder's 30 s timeout. The intrinsics are only needed
    to tensorize a schedule, which the tuning process does (it imports them once); a builder
    lowers a module that is already scheduled. The function is made here, not at module level,
    so that cloudpickle sends it by value: by reference, each builder process would import
    perfgate, and torch with it.
    """

    def build(module: Any, target: Any, params: Any) -> Any:
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(module), target=target)

    return build


def _pre_tuning(module: Any) -> Any:
    """The passes before tuning, as TVM's ``static_shape_tuning_pipeline`` runs them."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.pipeline.zero_pipeline(),
    ])(module)  # fmt: skip


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def compile_library(
    request: BuildRequest, onnx: CacheHit, target: dict[str, Any], database: CacheHit | None
) -> CacheHit:
    """Compile the model for ``target`` (with the tuned schedules of ``database``) to a shared library, cached.

    :param request: the case's build request.
    :param onnx: the shared export.
    :param target: the llvm target.
    :param database: the tuning entry (:func:`tune`), or ``None`` for TVM's default pipeline.
    """
    import tvm

    tuned = database.path.parent.name if database is not None else None
    key = stable_hash(
        "tvm-library",
        onnx.path.parent.name,
        request.batch_size,
        target,
        tuned,
        tvm.__version__,
        RECIPE_VERSION,
    )

    def build(path: Path) -> None:
        target_object = tvm.target.Target(target)
        module = import_relax(onnx.path, request.batch_size)
        if database is not None:
            from tvm import relax

            with target_object:
                module = relax.transform.MetaScheduleApplyDatabase(str(database.path))(_pre_tuning(module))
        tvm.compile(module, target=target_object).export_library(str(path))

    return request.cache.get_or_build("tvm", key, "model.so", build, load=_load_library)


def _load_library(path: Path) -> Any:
    import tvm

    return tvm.runtime.load_module(str(path))


_POOLS = threading.local()  # whether the calling thread's TVM pool was made (at full size)


def configure_threads(threads: int | None) -> int:
    """Make TVM's runtime run ``threads`` threads in the calling thread, unpinned; return the count it runs.

    ``TVM_BIND_THREADS=0``: TVM would otherwise pin the calling thread to the cores it picked
    (one core for one thread), and every thread created after it would inherit that mask. The
    first call in a thread makes its pool with a worker per usable core (a pool's size is fixed
    when it is made); each call then sets how many of them run (``runtime.config_threadpool``)
    and, through ``TVM_NUM_THREADS``, whether TVM runs a parallel loop on the pool at all (with
    one thread it runs it inline).

    :param threads: the intra-op threads; ``None`` for every core this process may use (TVM's
        own default, half the logical CPUs on x86, assumes two hardware threads per core).
    """
    import tvm

    count = threads or cpu_cores()
    configure = tvm.get_global_func("runtime.config_threadpool")
    os.environ["TVM_BIND_THREADS"] = "0"
    if not getattr(_POOLS, "made", False):
        os.environ["TVM_NUM_THREADS"] = str(max(cpu_cores(), count))
        configure(_POOL_MODE_BIG, 0)
        _POOLS.made = True
    os.environ["TVM_NUM_THREADS"] = str(count)
    configure(_POOL_MODE_BIG, count)
    return int(tvm.runtime.num_threads())


@contextlib.contextmanager
def tvm_threads(threads: int) -> Iterator[None]:
    """``TVM_NUM_THREADS=threads`` and ``TVM_BIND_THREADS=0`` while the block runs, as the
    tuner's measuring processes inherit them; the previous values afterwards."""
    saved = {name: os.environ.get(name) for name in ("TVM_NUM_THREADS", "TVM_BIND_THREADS")}
    os.environ.update({"TVM_NUM_THREADS": str(threads), "TVM_BIND_THREADS": "0"})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class TvmSession:
    """A Relax VM whose input tensor is made at ``bind``; ``run`` is one call of ``main``."""

    needs_sync = False

    def __init__(self, library: Any, settings: dict[str, Any]) -> None:
        import tvm
        from tvm import relax

        self.vm = relax.VirtualMachine(library, tvm.cpu())
        self._main = self.vm["main"]
        self.settings = settings
        self._input: Any = None
        self._output: Any = None

    def bind(self, inputs: np.ndarray) -> None:
        import tvm

        self._input = tvm.runtime.tensor(np.ascontiguousarray(inputs), tvm.cpu())

    def run(self) -> None:
        self._output = self._main(self._input)

    def output(self) -> np.ndarray:
        result = self._output
        if not hasattr(result, "numpy"):  # a model with several outputs returns an array of them
            result = result[0]
        return np.asarray(result.numpy())

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self._main = None
        self.vm = None


class TvmCpuBackend(Backend):
    """Apache TVM (Relax), the ONNX export compiled for this CPU's instruction sets."""

    name = "tvm_cpu"
    marker = "tvm"
    extra_markers: ClassVar[tuple[str, ...]] = ("compiled",)
    libraries = ("apache-tvm", "apache-tvm-ffi")
    requires: ClassVar[tuple[str, ...]] = ("tvm", "onnx", "onnxruntime")  # ORT validates the export
    install_hint = "pip install 'perfgate[tvm]'"
    lowerings = frozenset({"none", TUNED_LOWERING})
    # A classical estimator whose converted graph is standard ONNX (a scaled MLP); one with
    # ai.onnx.ml operators (trees, linear models) is skipped at build, naming them.
    model_kinds = frozenset({TORCH, CLASSICAL, ONNX})

    def missing(self) -> str | None:
        """Why TVM cannot run here: not installed, or no C compiler to link its modules with."""
        reason = super().missing()
        if reason is not None:
            return reason
        try:
            from tvm.support.cc import get_cc

            compiler = get_cc()
        except Exception as exc:  # a TVM whose support module moved or fails
            return f"{self.name}: TVM cannot look for a C compiler: {error_line(exc)}"
        if compiler is None:
            return (
                f"{self.name}: TVM links each compiled model with a C compiler, and none is on PATH "
                "(g++, gcc, clang++, clang, c++, cc; or set CXX)"
            )
        return None

    def target(self, request: BuildRequest) -> dict[str, Any]:
        """The case's llvm target: this CPU's (:func:`llvm_target`), with the tuned threads when tuned."""
        target = llvm_target(cpu_isa())
        if request.lowering == TUNED_LOWERING:
            target["num-cores"] = tuning_threads(request)
        return target

    def build(self, request: BuildRequest) -> Artifact:
        import tvm

        target = self.target(request)
        steps = [export_onnx(request)]
        if request.model_kind != TORCH:  # a converted estimator, or a user's ONNX file
            from perfgate.backends.estimator_onnx import require_standard_operators

            require_standard_operators(request, steps[0].path, self.name)
        database = None
        if request.lowering == TUNED_LOWERING:
            trials = int(request.options.get(TRIALS_OPTION, DEFAULT_TRIALS))
            database = tune(request, steps[0], target, trials)
            steps.append(database)
        library = compile_library(request, steps[0], target, database)
        steps.append(library)
        info: dict[str, Any] = {
            "lowering": request.lowering,
            "target": target,
            "tvm_version": tvm.__version__,
        }
        if database is not None:
            info.update(json.loads((database.path / TUNING_RECORD).read_text()))
        return Artifact(
            path=library.path,
            size_bytes=dir_size_bytes(library.path),
            build_s=sum(step.build_s for step in steps),
            cached=all(step.cached for step in steps),
            payload=library.value,
            info=info,
        )

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> TvmSession:
        library = artifact.payload
        if library is None and artifact.path is not None:
            library = _load_library(artifact.path)
        recorded = {
            "intra_op_threads": configure_threads(settings.intra_op_threads),
            **{k: v for k, v in artifact.info.items() if k != "lowering"},
        }
        return TvmSession(library, recorded)


TVM_CPU = TvmCpuBackend()
