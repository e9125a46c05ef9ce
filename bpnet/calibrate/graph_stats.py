"""One pass of an ONNX graph over the calibration tensor, recording `TensorStats` of every
activation, and the calibrations (thresholds per tensor) computed from it."""

import time

import numpy as np

from bpnet.calibrate.stats import TensorStats, calibration_from_stats
from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.limits import CALIBRATORS, DEFAULT_PERCENTILE


def activation_tensor_names(model):
    """Graph inputs and every float tensor computed by a node: what TensorRT calibrates."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    initializers = {init.name for init in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    for node in model.graph.node:
        if node.op_type in ("Constant", "Shape"):
            continue
        for out in node.output:
            if out and types.get(out) == onnx.TensorProto.FLOAT and out not in names:
                names.append(out)
    return names


def _with_all_outputs(model, names):
    """A copy of `model` whose graph outputs include every tensor in `names`."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name not in existing:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def input_layout(model):
    """'NHWC' or 'NCHW' from the graph input's static channel dimension (3)."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return "NCHW" if len(dims) == 4 and dims[1] == 3 and dims[3] != 3 else "NHWC"


def collect_stats(onnx_path, data, chunk_size=2, progress=None):
    """Run the graph over `data` (NHWC float32) and record TensorStats of every activation.

    Graph optimisations are off so every ONNX tensor (not fused ones) is observable; images go
    through in small chunks because all intermediate tensors are held at once.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    names = activation_tensor_names(model)
    input_name = model.graph.input[0].name
    nchw = input_layout(model) == "NCHW"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(_with_all_outputs(model, names).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    stats = {name: TensorStats() for name in names}
    total = len(data)
    for start in range(0, total, chunk_size):
        chunk = np.ascontiguousarray(data[start:start + chunk_size], dtype=np.float32)
        if nchw:
            chunk = np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))
        outputs = session.run(names, {input_name: chunk})
        for name, value in zip(names, outputs):
            stats[name].observe(value)
        done = min(start + chunk_size, total)
        emit(progress, "calibrate", "step", step=done, num_steps=total, fraction=done / total)
    return stats


def calibrate_onnx(onnx_path, data, methods=("entropy",), percentile=DEFAULT_PERCENTILE,
                   chunk_size=2, progress=None, equalize=False):
    """{method: Calibration} for each requested calibrator from one pass over `data`.
    `equalize`: first rescale the concat inputs of the float ONNX file itself
    (`bpnet.calibrate.equalize`; rewrites `onnx_path`, same outputs), listed in each
    calibration's `extra["equalized"]`."""
    for method in methods:
        if method not in CALIBRATORS:
            raise BpnetError(f"--calibrator: {method!r} is not one of {', '.join(CALIBRATORS)}")
    started = time.perf_counter()
    if equalize:
        from bpnet.calibrate.equalize import equalize_onnx_file

        stats, scaled = equalize_onnx_file(onnx_path, data, chunk_size, progress)
    else:
        stats, scaled = collect_stats(onnx_path, data, chunk_size, progress), []
    collected = time.perf_counter() - started
    result = {}
    for method in methods:
        t0 = time.perf_counter()
        result[method] = calibration_from_stats(stats, method, percentile, num_images=len(data))
        result[method].seconds = collected + time.perf_counter() - t0
        result[method].extra.update(num_tensors=len(stats), equalized=scaled)
    return result
