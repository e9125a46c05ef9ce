"""Q/DQ INT8 ONNX models from a calibration, written by ONNX Runtime's quantizer:
- `ort` target: activations uint8 asymmetric over the calibrated range, weights int8 per channel
  (U8S8, the fast path of ONNX Runtime on CPU);
- `tensorrt` target: activations and weights int8 symmetric (what TensorRT >= 11 needs, since it
  only builds INT8 from explicit Q/DQ)."""

from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.fileio import atomic_path
from bpnet.onnx_graph import sort_nodes_topologically

QDQ_TARGETS = ("ort", "tensorrt")
# Clip is ReLU6 (tf2onnx's Relu6). Listed, the quantizer folds it into the range of the conv
# output before it ([0, 6]); left out, a Conv's output is quantized over its pre-activation range
# (+-100 on the bundled MobileNetV2: steps of 0.8 for values the ReLU6 then keeps in [0, 6]),
# which alone cost that network 2.5 AP points (docs/int8.md).
QUANTIZED_OPS = ("Conv", "MaxPool", "Concat", "Relu", "Clip", "Add", "Mul", "Resize")


def write_qdq_onnx(onnx_path, output_path, calibration, target="ort"):
    """A Q/DQ INT8 ONNX of `onnx_path` with activation ranges from `calibration` (weights are
    quantised per output channel by ONNX Runtime's quantizer)."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    if target not in QDQ_TARGETS:
        raise BpnetError(f"Q/DQ target {target!r} is not one of {', '.join(QDQ_TARGETS)}")
    model = load_model_with_shape_infer(Path(onnx_path))
    if target == "ort":
        ranges = calibration.ranges
        activation_type, extra = QuantType.QUInt8, {}
    else:
        ranges = {name: (-a, a) for name, a in calibration.amax.items()}
        # TensorRT wants symmetric int8 everywhere and keeps its own ReLU fusion.
        activation_type = QuantType.QInt8
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QDQKeepRemovableActivations": True}
    tensors = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in ranges.items()})
    quantizer = QDQQuantizer(model, True, False, QuantType.QInt8, activation_type, tensors,
                             [], output_layers(model), QUANTIZED_OPS, extra)
    quantizer.quantize_model()
    quantized = quantizer.model.model
    # The quantizer appends Q/DQ nodes after their consumers; ONNX (shape inference, TensorRT's
    # parser) expects nodes in topological order.
    sort_nodes_topologically(quantized.graph)
    with atomic_path(output_path) as tmp:
        onnx.save(quantized, str(tmp))
    return Path(output_path)


LAYOUT_OPS = ("Transpose", "Identity", "Reshape")


def output_layers(model):
    """Names of the nodes that compute the graph outputs (through layout-only ops).

    They stay in float: heatmap peaks and PAF values near 1 are rare by nature, so a threshold
    that clips rare values (entropy, percentile) would clip exactly the signal the decoder reads;
    TensorRT's implicit INT8 likewise returns network outputs in float. They are 1x1 convs, cheap.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for output in model.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type in LAYOUT_OPS:
            names.append(node.name)
            node = producers.get(node.input[0])
        if node is not None:
            names.append(node.name)
    return names
