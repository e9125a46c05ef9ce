"""Per-layer INT8 sensitivity of a Q/DQ ONNX model, and keeping chosen layers in float.

A Q/DQ model marks what runs in INT8 by QuantizeLinear -> DequantizeLinear pairs on the inputs
of each quantized node (activations) and DequantizeLinear on its int8 weights. Rewiring a node's
inputs to the float tensors behind those pairs makes that node compute in float again; nothing
else changes. That one graph edit serves both:
- sensitivity: quantize one layer at a time (every other layer rewired to float) and measure how
  far the outputs move from the all-float graph on real images; the layers that move them most
  are the ones to keep in FP32;
- the remedy "keep the most sensitive layers in FP32": rewire just those layers.
It works on any Q/DQ model (ours, ONNX Runtime's quantize_static, a tfmot QAT export), with the
model's own scales, so a wrong scale shows up exactly where it is.

Weights: a quantized weight is an int8 initializer; in float it is dequantized offline
((q - zero_point) * scale), or taken from the float parent ONNX when given (same node names), so
the float path is exactly the parent.
"""

from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.fileio import atomic_path
from bpnet.onnx_graph import sort_nodes_topologically

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def load_onnx(path, what):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise BpnetError(f"{what} not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as err:   # onnx raises DecodeError and others for a file that is not ONNX
        raise BpnetError(f"{what} {path} is not a readable ONNX model ({type(err).__name__})") from None


def producers(model):
    return {out: node for node in model.graph.node for out in node.output}


OUTPUT_PREFIX = "output:"    # pseudo-layer: the quantization of a graph output itself


def quantized_layers(model):
    """Names of compute nodes that read at least one DequantizeLinear output, in graph order,
    then `output:<name>` for each graph output that is itself quantized (Q -> DQ -> output)."""
    produced_by = producers(model)
    layers = []
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        if any(produced_by.get(i) is not None and produced_by[i].op_type == "DequantizeLinear"
               for i in node.input):
            if not node.name:
                raise BpnetError(f"the Q/DQ model has an unnamed {node.op_type} node; name every node "
                                 f"(ONNX Runtime's quantizer and tf2onnx do)")
            layers.append(node.name)
    for out in model.graph.output:
        if _quantized_output_source(out.name, produced_by) is not None:
            layers.append(OUTPUT_PREFIX + out.name)
    return layers


def _quantized_output_source(name, produced_by):
    """The float tensor behind a graph output computed as Q -> DQ, else None."""
    dq = produced_by.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = produced_by.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None


def _initializers(model):
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def dequantize_initializer(dq_node, inits):
    """float32 values of a DequantizeLinear whose input is a quantized initializer."""
    q = inits[dq_node.input[0]].astype(np.float32)
    scale = inits[dq_node.input[1]].astype(np.float32)
    zero = inits[dq_node.input[2]].astype(np.float32) if len(dq_node.input) > 2 and dq_node.input[2] \
        else np.zeros_like(scale)
    if scale.ndim == 1 and scale.size > 1:
        axis = next((a.i for a in dq_node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def float_inputs_for(model, layers, float_model=None):
    """The QDQ model with `layers` reading float tensors instead of dequantized ones (a copy)."""
    import onnx
    from onnx import numpy_helper

    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    produced_by = producers(model_copy)
    inits = _initializers(model_copy)
    float_nodes = {n.name: n for n in float_model.graph.node} if float_model is not None else {}
    float_inits = {i.name: i for i in float_model.graph.initializer} if float_model is not None else {}
    float_producers = producers(float_model) if float_model is not None else {}
    layers = set(layers)
    added, relus = {}, {}
    for node in model_copy.graph.node:
        if node.name not in layers:
            continue
        for index, name in enumerate(node.input):
            dq = produced_by.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            source = produced_by.get(dq.input[0])
            if source is not None and source.op_type == "QuantizeLinear":
                node.input[index] = float_activation(source, inits, relus, float_producers, float_inits, added)
                continue
            if dq.input[0] not in inits:
                continue                                       # not a pattern we can undo; leave it
            parent = float_nodes.get(node.name)
            if parent is not None and parent.op_type == node.op_type and index < len(parent.input) \
                    and parent.input[index] in float_inits:
                values = numpy_helper.to_array(float_inits[parent.input[index]])
            else:
                values = dequantize_initializer(dq, inits)
            float_name = f"{dq.input[0]}__float"
            if float_name not in added:
                added[float_name] = numpy_helper.from_array(values.astype(np.float32), float_name)
            node.input[index] = float_name
    model_copy.graph.initializer.extend(added.values())
    model_copy.graph.node.extend(relus.values())
    for out in model_copy.graph.output:
        if OUTPUT_PREFIX + out.name in layers:
            _float_graph_output(model_copy, out.name, produced_by)
    remove_dead_nodes(model_copy)
    sort_nodes_topologically(model_copy.graph, "the edited Q/DQ graph")
    return model_copy


def _float_graph_output(model, name, produced_by):
    """Make graph output `name` the float tensor before its Q -> DQ (an Identity keeps the name)."""
    from onnx import helper

    source = _quantized_output_source(name, produced_by)
    model.graph.node.remove(produced_by[name])
    model.graph.node.append(helper.make_node("Identity", [source], [name], name=f"{name}__float"))


def float_activation(q_node, inits, relus, float_producers=None, float_inits=None, added=None):
    """The float tensor a QuantizeLinear quantizes, with the activation the quantizer folded into it.

    ONNX Runtime's quantizer drops a ReLU or a ReLU6 (Clip) before a quantized tensor whose range
    starts at 0: the clamps of the quantized range do their job, and the tensor keeps the
    activation's name with the values before it. The float path must clamp too. With the float
    graph at hand, its activation that computed this tensor is re-inserted (a Clip with its bounds);
    without it a ReLU is inserted whenever the zero point is the type's minimum (a no-op for tensors
    that were >= 0 anyway).
    """
    source = q_node.input[0]
    original = (float_producers or {}).get(source)
    if original is not None and original.op_type in ("Relu", "Clip"):
        return _reapplied(original, source, relus, float_inits, added)
    zero_name = q_node.input[2] if len(q_node.input) > 2 else ""
    zero = inits.get(zero_name) if zero_name else None
    if zero is None or not np.issubdtype(zero.dtype, np.integer) \
            or np.any(zero != np.iinfo(zero.dtype).min):
        return source
    if source not in relus:
        from onnx import helper

        relus[source] = helper.make_node("Relu", [source], [f"{source}__relu"], name=f"{source}__relu")
    return relus[source].output[0]


def _reapplied(original, source, relus, float_inits, added):
    """`source` through a copy of the float graph's activation `original` (its bounds copied as
    new initializers), made once per tensor."""
    if source in relus:
        return relus[source].output[0]
    from onnx import helper

    suffix = "__relu" if original.op_type == "Relu" else "__clip"
    inputs = [source]
    for bound in original.input[1:]:
        if not bound:
            inputs.append("")
            continue
        name = f"{bound}__float"
        if name not in added:
            copy = type(float_inits[bound])()
            copy.CopyFrom(float_inits[bound])
            copy.name = name
            added[name] = copy
        inputs.append(name)
    relus[source] = helper.make_node(original.op_type, inputs, [f"{source}{suffix}"], name=f"{source}{suffix}",
                                     **{a.name: helper.get_attribute_value(a) for a in original.attribute})
    return relus[source].output[0]


def remove_dead_nodes(model):
    """Drop nodes (and initializers) whose outputs nothing reads any more, in place."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Basic level only: the point is the numbers the Q/DQ graph computes, not fused kernels.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _feed(model, data):
    """NHWC images -> the graph's input layout (tf2onnx keeps NHWC; some graphs are NCHW)."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[1] == 3 and dims[3] != 3:
        data = np.ascontiguousarray(data.transpose(0, 3, 1, 2))
    return {model.graph.input[0].name: data}


def run_model(model, data):
    return _session(model).run(None, _feed(model, data))


def output_error(outputs, reference):
    """Mean over outputs of ||y - y_ref|| / ||y_ref - channel mean of y_ref||.

    Normalised by how much the reference varies (per channel, over images and positions) rather
    than by its size: heatmaps are mostly a constant background, and an error as large as the
    variation means the output no longer depends on the image. 0 = identical.
    """
    errors = []
    for y, ref in zip(outputs, reference):
        ref = np.asarray(ref, dtype=np.float64)
        variation = ref - ref.mean(axis=tuple(range(ref.ndim - 1)), keepdims=True)
        norm = float(np.linalg.norm(variation))
        errors.append(float(np.linalg.norm(np.asarray(y, dtype=np.float64) - ref)) / (norm if norm > 0 else 1.0))
    return float(np.mean(errors))


def layer_sensitivity(qdq_path, data, float_path=None, progress=None):
    """Rank the quantized layers of `qdq_path` by the output error each causes alone.

    `data`: NHWC float32 images prepared like the calibration images (a few suffice).
    Returns {"layers": [{"layer", "op_type", "error"}...] worst first, "full_int8_error",
    "num_images"}.
    """
    model = load_onnx(qdq_path, "Q/DQ model")
    float_model = load_onnx(float_path, "float model") if float_path is not None else None
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 4 or data.shape[0] == 0:
        raise BpnetError(f"sensitivity images must be a non-empty (N, H, W, 3) batch, got shape {data.shape}")
    layers = quantized_layers(model)
    if not layers:
        raise BpnetError(f"{qdq_path} has no quantized layers (no DequantizeLinear feeds a compute node)")
    op_types = {n.name: n.op_type for n in model.graph.node}
    reference = run_model(float_inputs_for(model, layers, float_model), data)
    full_error = output_error(run_model(model, data), reference)
    ranking = []
    for k, layer in enumerate(layers):
        others = [name for name in layers if name != layer]
        error = output_error(run_model(float_inputs_for(model, others, float_model), data), reference)
        ranking.append({"layer": layer, "op_type": op_types.get(layer, "Output"), "error": error})
        emit(progress, "sensitivity", "step", step=k + 1, num_steps=len(layers),
             fraction=(k + 1) / len(layers), message=f"{layer}: {error:.4f}")
    ranking.sort(key=lambda r: -r["error"])
    return {"layers": ranking, "full_int8_error": full_error, "num_images": int(data.shape[0])}


def most_sensitive(report, count=None, min_share=0.5):
    """Names of the layers to keep in float: the top `count`, or (by default) the fewest whose
    errors add up to `min_share` of the total single-layer error."""
    layers = report["layers"]
    if count is not None:
        return [r["layer"] for r in layers[:count]]
    total = sum(r["error"] for r in layers) or 1.0
    chosen, running = [], 0.0
    for r in layers:
        chosen.append(r["layer"])
        running += r["error"]
        if running >= min_share * total:
            break
    return chosen


def keep_layers_float(qdq_path, output_path, layers, float_path=None):
    """Write a copy of the Q/DQ model with `layers` computing in float (the FP32-fallback remedy)."""
    import onnx

    model = load_onnx(qdq_path, "Q/DQ model")
    known = set(quantized_layers(model))
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise BpnetError(f"layers {unknown} are not quantized layers of {qdq_path}; "
                         f"choose among {sorted(known)[:8]}{'...' if len(known) > 8 else ''}")
    float_model = load_onnx(float_path, "float model") if float_path is not None else None
    edited = float_inputs_for(model, layers, float_model)
    with atomic_path(output_path) as tmp:
        onnx.save(edited, str(tmp))
    return Path(output_path)
