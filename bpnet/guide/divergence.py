"""Divergence finder: where along the graph two versions of one network stop agreeing.

For FP32 vs INT8 (Q/DQ), FP32 vs FP16, or ONNX Runtime vs a TensorRT build of the same ONNX:
both run on the same images with every intermediate tensor marked as an output (NVIDIA's
Polygraphy does the marking and the running: `ModifyOutputs(..., MARK_ALL)` + `OnnxrtRunner`,
`ModifyNetworkOutputs` + `TrtRunner` for TensorRT), then each tensor both graphs compute (same
name) is compared in the reference graph's order:
- relative error ||b - a|| / ||a||, cosine similarity of a and b, largest absolute difference;
- the first tensor beyond the tolerance (relative error above `max_relative_error` or cosine
  below `min_cosine`) names the layer where the versions part;
- the largest jump: the tensor whose relative error grows most over the worst of its inputs' (a
  bad layer late in the graph can hide behind errors that merely accumulate).
INT8 Q/DQ graphs keep the float model's tensor names, FP16 graphs from `bpnet.export.to_fp16`
too, so the match is by name; a quantized tensor is compared as the next layer reads it (its
DequantizeLinear output). The maths is numpy
(`tensor_agreement`, `first_divergence`, `with_jumps`, `largest_jump`, `layer_harm`);
`find_divergence` runs the models.
"""

from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.fileio import write_json_atomic

DEFAULT_MAX_RELATIVE_ERROR = 0.2
DEFAULT_MIN_COSINE = 0.98
BACKENDS = ("onnxruntime", "tensorrt")
TENSORRT_MISSING = ("TensorRT comparisons need the tensorrt package and an NVIDIA GPU; this machine has "
                    "neither (install the `tensorrt` extra on a GPU worker)")


# ---------------------------------------------------------------- numpy

def tensor_agreement(reference, candidate):
    """{"relative_error", "cosine", "max_abs_error"} of one tensor pair (float64 maths)."""
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(candidate, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise BpnetError(f"tensor shapes differ: {np.shape(reference)} vs {np.shape(candidate)}")
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    diff = float(np.linalg.norm(b - a))
    relative = diff / norm_a if norm_a > 0 else (0.0 if diff == 0 else float("inf"))
    if norm_a == 0 and norm_b == 0:
        cosine = 1.0
    elif norm_a == 0 or norm_b == 0:
        cosine = 0.0
    else:
        cosine = float(np.dot(a, b) / (norm_a * norm_b))
    return {"relative_error": relative, "cosine": cosine,
            "max_abs_error": float(np.max(np.abs(b - a))) if a.size else 0.0}


def within_tolerance(row, max_relative_error=DEFAULT_MAX_RELATIVE_ERROR, min_cosine=DEFAULT_MIN_COSINE):
    return row["relative_error"] <= max_relative_error and row["cosine"] >= min_cosine


def first_divergence(rows, max_relative_error=DEFAULT_MAX_RELATIVE_ERROR, min_cosine=DEFAULT_MIN_COSINE):
    """The first row (graph order) beyond the tolerance, None when all agree."""
    return next((r for r in rows if not within_tolerance(r, max_relative_error, min_cosine)), None)


def with_jumps(rows, inputs_of):
    """The rows with `jump`: how much a tensor's relative error exceeds the largest of its
    nearest compared ancestors' (the error its own layer adds). Tensors the other graph does not
    have (a Conv output whose Relu ONNX Runtime folded) are looked through to their inputs."""
    error = {r["tensor"]: r["relative_error"] for r in rows}

    def before(tensor):
        worst, stack, seen = 0.0, list(inputs_of.get(tensor, [])), set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in error:
                worst = max(worst, error[name])
            else:
                stack.extend(inputs_of.get(name, []))       # initializers and graph inputs have none
        return worst

    return [{**r, "jump": r["relative_error"] - before(r["tensor"])} for r in rows]


def largest_jump(rows):
    """The row (with `jump`, see `with_jumps`) whose layer adds the most error; None if none adds any."""
    best = max(rows, key=lambda r: r["jump"], default=None)
    return best if best is not None and best["jump"] > 0 else None


def layer_harm(rows):
    """{layer: the largest jump among its output tensors}: a one-pass proxy of the harm each
    layer's quantization does (`bpnet.guide.accuracy_control_run` ranks layers by it)."""
    harm = {}
    for r in rows:
        harm[r["layer"]] = max(harm.get(r["layer"], 0.0), r["jump"])
    return harm


# ---------------------------------------------------------------- running both models (Polygraphy)

ACTIVATION_OPS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish")


def graph_order(onnx_path):
    """[(tensor, node name, op type, layer)] of every node output in graph order, and {tensor:
    inputs}. `layer` is the compute node a fused activation belongs to (the Conv before a Relu
    that reads nothing else): the layer a user keeps in float."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    producer = {out: node for node in model.graph.node for out in node.output}
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    order, inputs_of = [], {}
    for node in model.graph.node:
        layer = node.name
        if node.op_type in ACTIVATION_OPS and node.input and node.input[0] in producer \
                and readers.get(node.input[0]) == 1:
            layer = producer[node.input[0]].name
        for out in node.output:
            if out:
                order.append((out, node.name, node.op_type, layer))
                inputs_of[out] = [i for i in node.input if i]
    return order, inputs_of


def as_consumed(onnx_path):
    """({tensor: the tensor its readers actually read}, {tensor: producing op type}) of a graph.

    In a Q/DQ graph a quantized tensor reaches the next layer as its DequantizeLinear output
    (clamped and rounded), which is what to compare. ONNX Runtime's quantizer also folds a Relu
    or ReLU6 (Clip) into the Q, leaving the values before it under its output name; where a layer
    was returned to float (`bpnet.guide.sensitivity`) a `<tensor>__relu` / `__clip` node clamps
    them again."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dq_of = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    seen = {n.input[0]: n.output[0] for n in model.graph.node
            if n.op_type in ("Relu", "Clip") and n.output[0] in (f"{n.input[0]}__relu", f"{n.input[0]}__clip")}
    seen.update({n.input[0]: dq_of[n.output[0]] for n in model.graph.node
                 if n.op_type == "QuantizeLinear" and n.output[0] in dq_of})
    op_types = {out: n.op_type for n in model.graph.node for out in n.output}
    return seen, op_types


def candidate_value(tensor, reference_op, candidate, consumed, candidate_ops):
    """The candidate's value of `tensor` as its readers see it (None when it has none)."""
    name = consumed.get(tensor, tensor)
    if name not in candidate:
        return None
    value = np.asarray(candidate[name])
    if name == tensor and reference_op == "Relu" and candidate_ops.get(tensor) not in (None, "Relu"):
        value = np.maximum(value, 0)             # a folded Relu nobody re-applied (output unread)
    return value


def input_feed(onnx_path, data):
    """{input name: data in the graph's layout} (NHWC images in; NCHW graphs get them transposed)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph_input = model.graph.input[0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    data = np.ascontiguousarray(data, dtype=np.float32)
    if len(dims) == 4 and dims[1] == 3 and dims[3] != 3:
        data = np.ascontiguousarray(data.transpose(0, 3, 1, 2))
    return {graph_input.name: data}


def all_tensors(model_path, data, backend="onnxruntime"):
    """{tensor name: value} of every tensor the model computes on `data`, through Polygraphy."""
    from polygraphy import constants

    path = Path(model_path)
    if not path.is_file():
        raise BpnetError(f"model not found: {path}")
    if path.suffix != ".onnx":
        raise BpnetError(f"{path}: the divergence finder compares ONNX graphs (a TensorRT comparison builds "
                         f"the engine from the ONNX with every layer marked, so give the .onnx)")
    if backend not in BACKENDS:
        raise BpnetError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    quiet_polygraphy()
    feed = input_feed(path, data)
    if backend == "tensorrt":
        return _tensorrt_tensors(path, feed, constants.MARK_ALL)
    from polygraphy.backend.onnx import BytesFromOnnx, ModifyOutputs, OnnxFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    marked = BytesFromOnnx(ModifyOutputs(OnnxFromPath(str(path)), outputs=constants.MARK_ALL))
    with OnnxrtRunner(SessionFromOnnx(marked, providers=["CPUExecutionProvider"])) as runner:
        return dict(runner.infer(feed))


def quiet_polygraphy():
    """Polygraphy logs every model load at INFO; our callers report what matters."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR


def summary(report, max_rows=None):
    """The report without the bulky parts, for dashboards: rows as (tensor, layer, op_type,
    relative_error, cosine)."""
    keep = ("tensor", "layer", "op_type", "relative_error", "cosine")
    rows = report["rows"] if max_rows is None else report["rows"][:max_rows]
    return {**{k: v for k, v in report.items() if k != "rows"}, "rows": [{k: r[k] for k in keep} for r in rows]}


def _tensorrt_tensors(path, feed, mark_all):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise BpnetError(TENSORRT_MISSING) from None
    from polygraphy.backend.trt import (CreateConfig, EngineFromNetwork, ModifyNetworkOutputs,
                                        NetworkFromOnnxPath, TrtRunner)
    from bpnet.onnx_graph import onnx_precision

    precision = onnx_precision(path)
    network = ModifyNetworkOutputs(NetworkFromOnnxPath(str(path)), outputs=mark_all)
    config = CreateConfig(fp16=precision == "fp16", int8=precision == "int8")
    with TrtRunner(EngineFromNetwork(network, config=config)) as runner:
        return dict(runner.infer(feed))


def find_divergence(reference_model, candidate_model, data, max_relative_error=DEFAULT_MAX_RELATIVE_ERROR,
                    min_cosine=DEFAULT_MIN_COSINE, reference_backend="onnxruntime",
                    candidate_backend="onnxruntime", out_path=None):
    """Per-tensor agreement of `candidate_model` with `reference_model` on `data` (NHWC float32
    images prepared like the evaluation's). Returns (and writes to `out_path`) the report:
    {"rows": [...graph order], "first_divergence", "largest_jump", "tolerance", ...}."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 4 or data.shape[0] == 0:
        raise BpnetError(f"divergence images must be a non-empty (N, H, W, 3) batch, got shape {data.shape}")
    reference = all_tensors(reference_model, data, reference_backend)
    candidate = all_tensors(candidate_model, data, candidate_backend)
    order, inputs_of = graph_order(reference_model)
    consumed, candidate_ops = as_consumed(candidate_model)
    rows = []
    for tensor, node, op_type, layer in order:
        value = candidate_value(tensor, op_type, candidate, consumed, candidate_ops)
        if value is None or tensor not in reference:
            continue
        if np.shape(reference[tensor]) != np.shape(value):
            continue                          # e.g. a layout the other graph computes differently
        if not np.issubdtype(np.asarray(reference[tensor]).dtype, np.floating):
            continue
        rows.append({"tensor": tensor, "node": node, "op_type": op_type, "layer": layer,
                     **tensor_agreement(reference[tensor], value)})
    if not rows:
        raise BpnetError(f"{candidate_model} and {reference_model} share no tensor names; compare two versions "
                         f"of one network (its FP32, FP16 and INT8 exports)")
    rows = with_jumps(rows, inputs_of)
    first = first_divergence(rows, max_relative_error, min_cosine)
    report = {"reference": str(reference_model), "candidate": str(candidate_model),
              "reference_backend": reference_backend, "candidate_backend": candidate_backend,
              "num_images": int(data.shape[0]), "num_compared": len(rows),
              "tolerance": {"max_relative_error": max_relative_error, "min_cosine": min_cosine},
              "first_divergence": first, "largest_jump": largest_jump(rows), "rows": rows,
              "tool": "polygraphy (mark all outputs)"}
    if out_path is not None:
        write_json_atomic(out_path, report)
    return report
