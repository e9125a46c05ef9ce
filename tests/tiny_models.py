"""Tiny BodyPoseNets saved to HDF5 for the export, calibration, TensorRT and bench tests, and a
small ONNX conv chain with INT8-harmful layers for the accuracy-control and divergence tests."""

import numpy as np


def save_tiny_model(path, stages=2, seed=0, width=0.125, bias=None):
    """A seeded, untrained BodyPoseNet at `path`. `bias` sets every conv bias (trained models
    have non-zero ones; tf2onnx drops all-zero biases, which changes parameter counts)."""
    import bpnet  # noqa: F401  (tf-keras before TensorFlow)
    import tensorflow as tf

    from bpnet.model import build_model
    from bpnet.specs import ModelSpec

    tf.keras.utils.set_random_seed(seed)
    model = build_model(ModelSpec(backbone_width=width, stages=stages))
    if bias is not None:
        for layer in model.layers:
            if getattr(layer, "bias", None) is not None:
                layer.bias.assign(np.full(layer.bias.shape, bias, np.float32))
    model.save(path)
    return path


CHAIN_DEPTH, CHAIN_WIDTH, CHAIN_HARMFUL = 12, 8, (4, 9)


def build_chain_onnx(path, seed=0):
    """NHWC input -> CHAIN_DEPTH x (3x3 Conv + Relu) -> output. Before each layer in CHAIN_HARMFUL, one
    channel carries a huge constant (bias 400) that the next layer ignores (zero weights): in
    float nothing changes, in INT8 the tensor's one per-tensor scale is so coarse that the useful
    channels round to a few levels - the reading layer is harmful, the others are not."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2], name="to_nchw")]
    inits = []
    for k in range(CHAIN_DEPTH):
        c_in = 3 if k == 0 else CHAIN_WIDTH
        c_out = 4 if k == CHAIN_DEPTH - 1 else CHAIN_WIDTH
        w = rng.normal(0, 1.0 / np.sqrt(9 * c_in), size=(c_out, c_in, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.05, size=c_out).astype(np.float32)
        if k + 1 in CHAIN_HARMFUL:
            b[0] = 400.0                      # the outlier channel of this layer's output
            w[0] = 0.0
        if k in CHAIN_HARMFUL:
            w[:, 0] = 0.0                     # ... which the next layer does not read
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
        conv_out = "output" if k == CHAIN_DEPTH - 1 else f"c{k}"
        nodes.append(helper.make_node("Conv", [f"x{k}", f"w{k}", f"b{k}"], [conv_out], pads=[1, 1, 1, 1],
                                      name=f"conv{k}"))
        if k < CHAIN_DEPTH - 1:
            nodes.append(helper.make_node("Relu", [conv_out], [f"x{k + 1}"], name=f"relu{k}"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["N", 16, 16, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path
