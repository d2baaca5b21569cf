"""The Apache TVM backend (``tvm_cpu``) and its tuned technique (``tvm_tuned``), run for real.

Everything runs TVM itself on the tiny models of ``tests/tiny_models.py``: compiled, loaded and
compared with torch. The module skips where the ``tvm`` extra is absent; the tests of the skip
itself make the installed TVM look absent. TVM is imported here, at collection, because it
cannot be imported twice in one process: an in-process pytester run drops what it imported.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import blobs, tiny_mlp
from torch import nn

from perfgate.backends import BACKENDS, BuildRequest, RunSettings, predict
from perfgate.backends.tvm import (
    TVM_CPU,
    configure_threads,
    freeze_batch,
    import_relax,
    llvm_target,
)
from perfgate.cache import ArtifactCache
from perfgate.hardware import cpu_isa
from perfgate.matrix import load_matrix
from perfgate.models import ModelContext, model_fingerprint

tvm = pytest.importorskip("tvm")
from tvm.target import codegen  # noqa: E402  (after the skip: TVM may be absent)

FP32_TOLERANCE = 1e-4
ONE_THREAD = RunSettings(intra_op_threads=1, inter_op_threads=1)
# /proc/cpuinfo flag lines of three x86 CPUs and an ARM one, as the hardware detection reads them.
AVX512_VNNI = "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni\n"
AVX512 = "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512dq avx512bw avx512vl\n"
AVX2 = "flags\t\t: fpu sse4_2 avx avx2 fma\n"
NEON_DOTPROD = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 asimddp\n"


@pytest.fixture(scope="module")
def trained(shared_cache: Path) -> tuple[nn.Module, ArtifactCache]:
    """The tiny MLP, trained once (cached) and in eval mode, with the shared artifact cache."""
    cache = ArtifactCache(shared_cache)
    model = tiny_mlp(ModelContext("tiny_mlp", blobs(), cache, {}, lambda line: None)).eval()
    return model, cache


def make_request(
    model: nn.Module,
    cache: ArtifactCache,
    lowering: str = "none",
    batch_size: int = 1,
    options: dict[str, object] | None = None,
    settings: RunSettings | None = ONE_THREAD,
) -> BuildRequest:
    return BuildRequest(
        case_id=f"tiny-{lowering}-tvm_cpu-b{batch_size}",
        model=model,
        model_key=model_fingerprint(model),
        lowering=lowering,
        options=options or {},
        data=blobs(),
        batch_size=batch_size,
        cache=cache,
        run_settings=settings,
    )


def run_tvm(request: BuildRequest, settings: RunSettings = ONE_THREAD) -> tuple[np.ndarray, np.ndarray, dict]:
    """Build, load and predict the whole eval set; return TVM's outputs, torch's, and the settings."""
    session = TVM_CPU.load(TVM_CPU.build(request), request, settings)
    try:
        outputs = predict(session, request.data.eval_inputs, request.batch_size)
        recorded = dict(session.settings)
    finally:
        session.close()
    with torch.inference_mode():
        reference = request.model(torch.from_numpy(request.data.eval_inputs)).numpy()
    return outputs, reference, recorded


@pytest.mark.parametrize("batch_size", [1, 8])
def test_fp32_matches_torch(trained, batch_size: int) -> None:
    """The compiled model computes what torch computes, at the case's static batch size."""
    model, cache = trained
    outputs, reference, settings = run_tvm(make_request(model, cache, batch_size=batch_size))
    assert np.max(np.abs(outputs - reference)) < FP32_TOLERANCE
    assert settings["target"] == llvm_target(cpu_isa())
    assert settings["tvm_version"] == tvm.__version__


def test_second_build_is_a_cache_hit(trained) -> None:
    """The compiled library is cached: the second build loads it; another batch size compiles anew."""
    model, cache = trained
    first = TVM_CPU.build(make_request(model, cache, batch_size=2))
    again = TVM_CPU.build(make_request(model, cache, batch_size=2))
    other = TVM_CPU.build(make_request(model, cache, batch_size=3))
    assert again.cached and again.path == first.path and again.path.name == "model.so"
    assert again.build_s == first.build_s > 0  # the original compile time is still reported
    assert other.path != first.path
    assert again.size_bytes == first.path.stat().st_size > 0


class ScaledAttention(nn.Module):
    """Self-attention whose scale is computed from the input's shape, as the zoo's transformer's
    is: its export derives ``head_dim ** -0.5`` from a ``Shape`` node."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(x.shape[0], 4, 4)
        q, k, v = self.qkv(tokens).split(4, dim=-1)
        scores = (q @ k.transpose(1, 2)) * (q.shape[-1] ** -0.5)
        return self.head((scores.softmax(-1) @ v).flatten(1))


def test_shape_arithmetic_is_folded_and_imports(trained) -> None:
    """An export that computes from its input's shape imports into Relax once the batch is frozen:
    no ``Shape`` node is left, the weights are untouched, and TVM's outputs match torch's."""
    import onnx

    from perfgate.backends.onnx_export import export_onnx

    _, cache = trained
    request = make_request(ScaledAttention().eval(), cache, batch_size=4)
    exported = export_onnx(request).path
    original = onnx.load(str(exported))
    assert any(node.op_type == "Shape" for node in original.graph.node)
    frozen = freeze_batch(original, 4)
    assert not any(node.op_type == "Shape" for node in frozen.graph.node)
    assert [i.name for i in frozen.graph.initializer] == [i.name for i in original.graph.initializer]
    assert frozen.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert import_relax(exported, 4) is not None
    outputs, reference, _ = run_tvm(request)
    assert np.max(np.abs(outputs - reference)) < FP32_TOLERANCE


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "expected"),
    [
        (AVX512_VNNI, "x86_64", {"kind": "llvm", "mcpu": "x86-64-v4", "mattr": ["+avx512vnni"]}),
        (AVX512, "x86_64", {"kind": "llvm", "mcpu": "x86-64-v4"}),
        (AVX2, "x86_64", {"kind": "llvm", "mcpu": "x86-64-v3"}),
        (
            AVX2.rstrip() + " avx_vnni\n",
            "x86_64",
            {"kind": "llvm", "mcpu": "x86-64-v3", "mattr": ["+avxvnni"]},
        ),
        (
            AVX512_VNNI.rstrip() + " avx512_bf16 amx_tile amx_int8 amx_bf16\n",
            "x86_64",
            {
                "kind": "llvm",
                "mcpu": "x86-64-v4",
                "mattr": ["+avx512vnni", "+avx512bf16", "+amx-tile", "+amx-int8", "+amx-bf16"],
            },
        ),
        ("flags\t\t: fpu sse4_2\n", "x86_64", {"kind": "llvm", "mcpu": "x86-64-v2"}),
        (
            NEON_DOTPROD,
            "aarch64",
            {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]},
        ),
    ],
)
def test_target_follows_the_cpu_flags(cpuinfo: str, machine: str, expected: dict) -> None:
    """The llvm target comes from the ISA flags /proc/cpuinfo lists."""
    assert llvm_target(cpu_isa(cpuinfo), machine) == expected


@pytest.mark.parametrize(
    ("cpuinfo", "has", "lacks"),
    [
        (AVX512_VNNI, ("avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx2"), ()),
        (AVX512, ("avx512f", "avx2"), ("avx512vnni",)),
        (AVX2, ("avx2", "fma"), ("avx512f", "avx512vnni")),
    ],
)
def test_llvm_compiles_for_the_instruction_sets_named(cpuinfo: str, has: tuple, lacks: tuple) -> None:
    """TVM accepts each x86 target, and LLVM turns on exactly the instruction sets the flags name."""
    fields = llvm_target(cpu_isa(cpuinfo), "x86_64")
    assert codegen.llvm_is_valid_cpu(fields["mcpu"], "x86_64-linux-gnu")
    target = tvm.target.Target(fields)
    assert all(codegen.target_has_features(feature, target) for feature in has)
    assert not any(codegen.target_has_features(feature, target) for feature in lacks)


def _parallel_probe() -> tuple[object, set[int]]:
    """A compiled kernel with a parallel loop that records the OS thread running each iteration."""
    import tvm_ffi
    from tvm.script import tirx as T

    seen: set[int] = set()

    def record() -> int:
        seen.add(threading.get_native_id())
        return 0

    tvm_ffi.register_global_func("perfgate_test.record_thread", record, override=True)

    @T.prim_func
    def probe(a: T.Buffer((8,), "int32")) -> None:
        for i in T.parallel(8):
            a[i] = T.call_packed("perfgate_test.record_thread")

    return tvm.compile(probe, target=tvm.target.Target({"kind": "llvm"})), seen


def test_thread_count_is_honoured_and_leaves_affinity_alone() -> None:
    """A parallel loop runs on as many OS threads as asked, the count can go up after a first case
    that asked for one thread (a TVM pool's size is fixed when it is made), and TVM pins no
    thread: the process keeps every core it had. Run in a new thread, whose TVM pool is new."""
    probe, seen = _parallel_probe()
    data = tvm.runtime.tensor(np.zeros(8, "int32"))
    cores = os.sched_getaffinity(0)
    observed: list[tuple[int, int, set[int]]] = []

    def run() -> None:
        for threads in [1, 2, 1] if len(cores) >= 2 else [1]:
            seen.clear()
            reported = configure_threads(threads)
            for _ in range(20):
                probe(data)
            observed.append((reported, len(seen), os.sched_getaffinity(0)))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    expected = [1, 2, 1] if len(cores) >= 2 else [1]
    assert observed == [(n, n, cores) for n in expected]
    assert os.sched_getaffinity(0) == cores


def test_load_records_the_threads_it_set(trained) -> None:
    """The session's settings carry the thread count TVM's runtime reports after ``load``."""
    model, cache = trained
    request = make_request(model, cache)
    artifact = TVM_CPU.build(request)
    for threads in (1, 2):
        session = TVM_CPU.load(artifact, request, RunSettings(intra_op_threads=threads))
        assert session.settings["intra_op_threads"] == threads == tvm.runtime.num_threads()
        session.close()


def test_missing_tvm_skips_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the ``tvm`` package, the reason names it and the extra that brings it."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "tvm" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert BACKENDS.get("tvm_cpu").missing() == "tvm_cpu: tvm is not installed (pip install 'perfgate[tvm]')"


def test_missing_compiler_skips_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """TVM links every compiled model with a C compiler: without one, the backend says so."""
    import tvm.support.cc

    monkeypatch.setattr(tvm.support.cc, "get_cc", lambda: None)
    reason = TVM_CPU.missing()
    assert reason is not None and reason.startswith(
        "tvm_cpu: TVM links each compiled model with a C compiler"
    )


def test_int8_is_never_generated_and_tuning_only_on_tvm(tmp_path: Path) -> None:
    """tvm_cpu has no INT8 lowering (Relax computes a QDQ graph in float), and tvm_tuned exists only
    on tvm_cpu: both combinations are left out with their reasons, never skipped at run time."""
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(
        '[models.m]\nfactory = "tiny_models:tiny_mlp"\ndata = "tiny_models:blobs"\n'
        "[techniques.fp32]\n[techniques.int8_static]\n[techniques.int8_dynamic]\n[techniques.tvm_tuned]\n"
        "[backends.tvm_cpu]\n[backends.onnxruntime_cpu]\n"
    )
    loaded = load_matrix(matrix)
    generated = {(case.technique, case.backend): case.markers for case in loaded.cases}
    assert set(generated) == {
        ("fp32", "tvm_cpu"),
        ("tvm_tuned", "tvm_cpu"),
        ("fp32", "onnxruntime_cpu"),
        ("int8_static", "onnxruntime_cpu"),
        ("int8_dynamic", "onnxruntime_cpu"),
    }
    assert generated[("fp32", "tvm_cpu")] == ("cpu", "tvm", "compiled")
    reasons = {item.combination: item.reason for item in loaded.excluded}
    assert reasons["m-int8_static-tvm_cpu"] == "tvm_cpu has no 'int8_static' lowering for int8_static"
    assert reasons["m-tvm_tuned-onnxruntime_cpu"] == "tvm_tuned means nothing to onnxruntime_cpu"


def test_tuning_database_is_cached_and_the_tuned_model_matches(trained) -> None:
    """One measured trial (the smallest budget; about 50 s here, 33 s of it TVM importing its tensor
    intrinsics): the database records it, the tuned library matches torch, and the second build
    reuses database and library without tuning again."""
    model, cache = trained
    request = make_request(model, cache, "tvm_tuned", options={"trials": 1}, settings=None)
    first = TVM_CPU.build(request)
    again = TVM_CPU.build(request)
    assert again.cached and again.path == first.path
    assert again.info == first.info
    assert first.info["tuning_trials"] == 1 and first.info["tuning_records"] >= 1
    assert (
        first.info["target"]["num-cores"] == first.info["tuned_for_threads"] == len(os.sched_getaffinity(0))
    )
    assert first.info["tuning_s"] > 0
    database = Path(cache.root) / "tvm-tuning"
    assert len([entry for entry in database.iterdir() if entry.is_dir()]) == 1
    outputs, reference, settings = run_tvm(request)
    assert np.max(np.abs(outputs - reference)) < FP32_TOLERANCE
    assert settings["tuning_records"] == first.info["tuning_records"]


TVM_MATRIX = """
[models.seeded_mlp]
factory = "tiny_models:seeded_mlp"
data = "tiny_models:blobs"
metric = "top1"

[techniques.tvm_tuned]
options = { trials = 1 }

[backends.tvm_cpu]
"""


def test_e2e_matrix_runs_tvm_untuned_and_tuned(perf_project: pytest.Pytester) -> None:
    """A pytest run of the tiny matrix on tvm_cpu: fp32 and tvm_tuned pass their gates on two
    models, the int8_dynamic combination is never generated, and results.json records TVM's
    settings. The two tunings run in two tests of one session (pytest's capture handlers on
    meta-schedule's logger once broke the second)."""
    import json

    matrix = perf_project.path / "perf" / "matrix.toml"
    text = (
        matrix.read_text().replace("[backends.torch_cpu]\n", "").replace("[backends.onnxruntime_cpu]\n", "")
    )
    matrix.write_text(text + TVM_MATRIX)
    result = perf_project.runpytest("perf", "-v", "--perf-report", "out")
    result.assert_outcomes(passed=4)
    document = json.loads((perf_project.path / "out" / "results.json").read_text())
    cases = {case["case_id"]: case for case in document["cases"]}
    assert sorted(cases) == [
        "seeded_mlp-fp32-tvm_cpu-b1",
        "seeded_mlp-tvm_tuned-tvm_cpu-b1",
        "tiny_mlp-fp32-tvm_cpu-b1",
        "tiny_mlp-tvm_tuned-tvm_cpu-b1",
    ]
    for case in cases.values():
        assert case["settings"]["intra_op_threads"] >= 1
        assert case["settings"]["target"]["kind"] == "llvm"
    assert cases["tiny_mlp-fp32-tvm_cpu-b1"]["accuracy"]["metric"] >= 0.95
    assert cases["seeded_mlp-tvm_tuned-tvm_cpu-b1"]["settings"]["tuning_trials"] == 1
