"""A model given as an ONNX file (``kind = "onnx"``), made ready for the ONNX-based backends.

The file is copied into the artifact cache with perfgate's names (its one input ``input``, its
one output ``output``) and a symbolic batch axis on both, so that every backend feeds and reads it
as it does the torch export. Nothing else changes: its reference is ONNX Runtime on this copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perfgate.backends.base import BuildRequest
from perfgate.backends.onnx_export import INPUT_NAME, OUTPUT_NAME
from perfgate.cache import CacheHit, stable_hash

RECIPE_VERSION = 1  # bump when the renaming changes: cached copies follow it
BATCH_AXIS = "batch"


class OnnxFileError(ValueError):
    """The ONNX file cannot be fed as perfgate feeds a model; the message names it and the fix."""


def prepare_onnx_file(request: BuildRequest) -> CacheHit:
    """The request's ONNX file (``request.model`` is its path), renamed, batch axis symbolic, cached."""
    source = Path(request.model)
    key = stable_hash("onnx-file", RECIPE_VERSION, request.model_key)

    def build(path: Path) -> None:
        import onnx

        model = onnx.load(str(source))
        _rename(model, source, request.case_id)
        onnx.save(model, str(path))

    return request.cache.get_or_build("onnx", key, "model.onnx", build)


def _rename(model: Any, source: Path, case_id: str) -> None:
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxFileError(
            f"{case_id}: {source} has {len(inputs)} input(s) ({', '.join(v.name for v in inputs)}) and "
            f"{len(graph.output)} output(s) ({', '.join(v.name for v in graph.output)}); perfgate feeds one "
            "input and reads one output: export the model with one of each"
        )
    renames = {inputs[0].name: INPUT_NAME, graph.output[0].name: OUTPUT_NAME}
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renames.get(value.name, value.name)
    for value in (inputs[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if dims:  # the batch axis, fixed or not, becomes symbolic: every case's batch size runs
            dims[0].ClearField("dim_value")
            dims[0].dim_param = BATCH_AXIS
