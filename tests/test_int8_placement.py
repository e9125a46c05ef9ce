"""Where INT8 loses signal and the two graph-level fixes (docs/int8.md, the bundled network):
a ReLU6 (Clip) folded into the range of the conv before it, and concat inputs rescaled to one
range. A small ONNX shaped like an OpenPose stage: ReLU6 features, wide linear features and small
'maps' concatenated, read by a depthwise conv."""

import numpy as np
import pytest

from bpnet import calibrate
from bpnet.guide.sensitivity import keep_layers_float, load_onnx, output_error, quantized_layers, run_model


def build_stage_onnx(path, seed=0):
    """input (N,16,16,3) -> conv0 + ReLU6 (pre-activation up to about +-40) -> [conv2 small maps
    (+-0.3), conv1 wide features (+-30)] -> Concat -> depthwise 3x3 + ReLU6 -> 1x1 conv reading the
    maps' channels -> output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weights(name, shape, scale):
        return numpy_helper.from_array(rng.normal(0, scale, size=shape).astype(np.float32), name)

    inits = [weights("w0", (8, 3, 3, 3), 2.0), weights("b0", (8,), 1.0), weights("w1", (8, 8, 1, 1), 3.0),
             weights("b1", (8,), 1.0), weights("w2", (4, 8, 1, 1), 0.03), weights("b2", (4,), 0.01),
             weights("w3", (12, 1, 3, 3), 0.3), weights("b3", (12,), 0.1), weights("w4", (4, 12, 1, 1), 0.5),
             weights("b4", (4,), 0.1),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    # the output reads the maps (concat channels 0-3) through the depthwise conv, not the features
    w3 = numpy_helper.to_array(inits[6]).copy()
    w3[:4] *= 30.0
    inits[6] = numpy_helper.from_array(w3, "w3")
    w4 = numpy_helper.to_array(inits[8]).copy()
    w4[:, 4:] = 0.0
    inits[8] = numpy_helper.from_array(w4, "w4")
    nodes = [helper.make_node("Transpose", ["input"], ["x"], perm=[0, 3, 1, 2], name="to_nchw"),
             helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("Clip", ["c0", "zero", "six"], ["r0"], name="relu6_0"),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["features"], name="conv1"),
             helper.make_node("Conv", ["r0", "w2", "b2"], ["maps"], name="conv2"),
             helper.make_node("Concat", ["maps", "features"], ["joined"], axis=1, name="concat"),
             helper.make_node("Conv", ["joined", "w3", "b3"], ["c3"], group=12, pads=[1, 1, 1, 1], name="dw3"),
             helper.make_node("Clip", ["c3", "zero", "six"], ["r3"], name="relu6_3"),
             helper.make_node("Conv", ["r3", "w4", "b4"], ["output"], name="conv4")]
    graph = helper.make_graph(nodes, "stage", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["N", 16, 16, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def stage(tmp_path):
    path = build_stage_onnx(tmp_path / "stage.onnx")
    data = np.random.default_rng(1).uniform(0, 1, (6, 16, 16, 3)).astype(np.float32)
    return path, data


def int8_error(float_path, data, out_path, equalize):
    import onnx

    cal = calibrate.calibrate_onnx(float_path, data, ("minmax",), equalize=equalize)["minmax"]
    calibrate.write_qdq_onnx(float_path, out_path, cal, target="ort")
    reference = run_model(onnx.load(str(float_path)), data)
    return output_error(run_model(onnx.load(str(out_path)), data), reference), cal


def test_relu6_is_folded_into_the_range_of_the_conv_before_it(stage, tmp_path):
    path, data = stage
    cal = calibrate.calibrate_onnx(path, data, ("minmax",))["minmax"]
    assert cal.ranges["c0"][1] > 20.0                   # the pre-activation range ...
    calibrate.write_qdq_onnx(path, tmp_path / "q.onnx", cal, target="ort")
    model = load_onnx(tmp_path / "q.onnx", "q")
    assert not [n for n in model.graph.node if n.op_type == "Clip"]
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv0_out = next(n.output[0] for n in model.graph.node if n.name == "conv0")
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv0_out)
    assert float(inits[q.input[1]]) * 255 <= 6.0 + 1e-5   # ... is quantized over the ReLU6's [0, 6]


def test_layers_back_in_float_clamp_at_six_again(stage, tmp_path):
    import onnx

    path, data = stage
    cal = calibrate.calibrate_onnx(path, data, ("minmax",))["minmax"]
    calibrate.write_qdq_onnx(path, tmp_path / "q.onnx", cal, target="ort")
    layers = quantized_layers(load_onnx(tmp_path / "q.onnx", "q"))
    keep_layers_float(tmp_path / "q.onnx", tmp_path / "f.onnx", layers, float_path=path)
    reference = run_model(onnx.load(str(path)), data)
    got = run_model(onnx.load(str(tmp_path / "f.onnx")), data)
    np.testing.assert_allclose(got[0], reference[0], rtol=1e-4, atol=1e-4 * np.abs(reference[0]).max())


def test_concat_inputs_rescaled_exactly_and_int8_keeps_the_small_input(stage, tmp_path):
    import onnx

    path, data = stage
    plain_error, _ = int8_error(path, data, tmp_path / "plain.onnx", equalize=False)
    before = run_model(onnx.load(str(path)), data)
    equalized_path = tmp_path / "equalized.onnx"
    equalized_path.write_bytes(path.read_bytes())
    error, cal = int8_error(equalized_path, data, tmp_path / "eq.onnx", equalize=True)
    scaled = cal.extra["equalized"]
    assert [(s["input"], s["producer"]) for s in scaled] == [("maps", "conv2")] and scaled[0]["scale"] > 10
    after = run_model(onnx.load(str(equalized_path)), data)   # the float function is unchanged
    np.testing.assert_allclose(after[0], before[0], rtol=1e-4, atol=1e-4 * np.abs(before[0]).max())
    assert error < 0.5 * plain_error


def test_concat_with_a_reader_that_is_not_a_conv_is_left_alone(stage):
    import onnx
    from onnx import helper

    path, _ = stage
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("Relu", ["joined"], ["side"], name="side"))
    model.graph.output.append(helper.make_tensor_value_info("side", onnx.TensorProto.FLOAT, None))
    assert calibrate.equalize_concat_inputs(model, {"maps": 0.3, "features": 30.0}) == []
