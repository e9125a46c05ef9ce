"""Per-layer INT8 sensitivity and the keep-in-float remedy on a small Q/DQ ONNX graph."""

import numpy as np
import pytest

from bpnet.errors import BpnetError
from bpnet.guide.sensitivity import (keep_layers_float, layer_sensitivity, load_onnx, most_sensitive,
                                     quantized_layers)

CHANNELS = [3, 8, 8, 8, 4]


def build_float_onnx(path, seed=0):
    """NHWC input -> Transpose -> 4 x (Conv [+ Relu]) -> output; deterministic weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2], name="to_nchw")]
    inits = []
    for k in range(4):
        w = rng.normal(0, 0.4, size=(CHANNELS[k + 1], CHANNELS[k], 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, size=CHANNELS[k + 1]).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
        out = f"c{k}" if k < 3 else "output"
        nodes.append(helper.make_node("Conv", [f"x{k}", f"w{k}", f"b{k}"], [out], pads=[1, 1, 1, 1],
                                      name=f"conv{k}"))
        if k < 3:
            nodes.append(helper.make_node("Relu", [out], [f"x{k + 1}"], name=f"relu{k}"))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["N", 16, 16, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def images(count, seed=1):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, size=(count, 16, 16, 3)).astype(np.float32)


def quantize(float_path, qdq_path, data):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": data[i:i + 1]} for i in range(len(data))])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(float_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return qdq_path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qdq")
    float_path = build_float_onnx(folder / "float.onnx")
    qdq_path = quantize(float_path, folder / "int8.onnx", images(8))
    return float_path, qdq_path


def corrupt_input_scale(qdq_path, layer, out_path, factor=200.0):
    """Make `layer`'s activation quantization harmful: a scale `factor` times too coarse."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_path))
    produced_by = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == layer)
    dq = produced_by[node.input[0]]
    scale_names = {dq.input[1], produced_by[dq.input[0]].input[1]}
    for init in model.graph.initializer:
        if init.name in scale_names:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
    onnx.save(model, str(out_path))
    return out_path


def test_every_conv_is_a_quantized_layer(models):
    _, qdq_path = models
    layers = quantized_layers(load_onnx(qdq_path, "model"))
    assert {"conv0", "conv1", "conv2", "conv3"} <= set(layers)


def test_all_layers_in_float_reproduce_the_parent_exactly(models, tmp_path):
    float_path, qdq_path = models
    from bpnet.guide.sensitivity import output_error, run_model

    all_float = keep_layers_float(qdq_path, tmp_path / "f.onnx",
                                  quantized_layers(load_onnx(qdq_path, "m")), float_path=float_path)
    data = images(3, seed=5)
    assert output_error(run_model(load_onnx(all_float, "m"), data),
                        run_model(load_onnx(float_path, "m"), data)) < 1e-6


def test_ranking_names_the_layer_made_harmful_on_purpose(models, tmp_path):
    float_path, qdq_path = models
    broken = corrupt_input_scale(qdq_path, "conv2", tmp_path / "broken.onnx")
    report = layer_sensitivity(broken, images(4, seed=7), float_path=float_path)
    assert report["layers"][0]["layer"] == "conv2"
    assert report["layers"][0]["error"] > 3 * report["layers"][1]["error"]
    assert most_sensitive(report, count=1) == ["conv2"]
    assert report["full_int8_error"] > 0


def test_keeping_the_sensitive_layer_in_float_repairs_the_model(models, tmp_path):
    float_path, qdq_path = models
    from bpnet.guide.sensitivity import output_error, run_model

    broken = corrupt_input_scale(qdq_path, "conv2", tmp_path / "broken.onnx")
    repaired = keep_layers_float(broken, tmp_path / "repaired.onnx", ["conv2"], float_path=float_path)
    data = images(4, seed=9)
    reference = run_model(load_onnx(float_path, "m"), data)
    broken_error = output_error(run_model(load_onnx(broken, "m"), data), reference)
    repaired_error = output_error(run_model(load_onnx(repaired, "m"), data), reference)
    good_error = output_error(run_model(load_onnx(qdq_path, "m"), data), reference)
    assert repaired_error < broken_error / 3
    assert repaired_error < 2 * good_error + 0.01


def test_bad_inputs_are_named(models, tmp_path):
    float_path, qdq_path = models
    with pytest.raises(BpnetError, match="not found"):
        layer_sensitivity(tmp_path / "missing.onnx", images(1))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(BpnetError, match="not a readable ONNX"):
        layer_sensitivity(tmp_path / "junk.onnx", images(1))
    with pytest.raises(BpnetError, match="no quantized layers"):
        layer_sensitivity(float_path, images(1))
    with pytest.raises(BpnetError, match="non-empty"):
        layer_sensitivity(qdq_path, np.zeros((0, 16, 16, 3), np.float32))
    with pytest.raises(BpnetError, match="not quantized layers"):
        keep_layers_float(qdq_path, tmp_path / "x.onnx", ["nope"])


def test_edited_models_are_valid_onnx(models, tmp_path):
    import onnx

    float_path, qdq_path = models
    edited = keep_layers_float(qdq_path, tmp_path / "e.onnx", ["conv1", "output:output"])
    onnx.checker.check_model(onnx.load(str(edited)))
