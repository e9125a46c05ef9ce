"""Pruning: the ranking rule (numpy), channel surgery on small Keras graphs and on BodyPoseNet,
the `bpnet prune` verb, and retraining / export / evaluation of a pruned model."""

import hashlib
import json

import numpy as np
import pytest

from bpnet.errors import BpnetError
from bpnet.prune.ranking import (count_to_keep, filter_norms, filters_to_keep, merge_stats,
                                 normalize_stats, rank_filters)
from tests.numeric import assert_close_to_scale, max_relative_diff

EQUALIZATIONS = ("union", "intersection", "arithmetic_mean", "geometric_mean")


# ---------------------------------------------------------------- ranking (pure numpy)

def test_filter_norms_are_l2_over_all_but_the_last_axis():
    kernel = np.zeros((3, 3, 2, 4))
    kernel[0, 0, 0, 1] = 3.0
    kernel[1, 1, 1, 1] = 4.0
    kernel[..., 3] = 1.0
    np.testing.assert_allclose(filter_norms(kernel), [0.0, 5.0, 0.0, np.sqrt(18.0)])


def test_normalizers_follow_tlt():
    norms = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(normalize_stats(norms, "max"), [0.25, 0.5, 1.0])
    # L2: divided by the norm of the norms, times their count (n equal filters: sqrt(n) each).
    np.testing.assert_allclose(normalize_stats(norms, "L2"), norms / np.sqrt(21.0) * 3)
    np.testing.assert_allclose(normalize_stats(np.full(4, 7.0), "L2"), np.full(4, 2.0))
    np.testing.assert_array_equal(normalize_stats(np.zeros(4), "max"), np.zeros(4))
    np.testing.assert_array_equal(normalize_stats(np.zeros(4), "L2"), np.zeros(4))


def test_filters_at_or_below_the_threshold_are_removed():
    stats = np.array([1.0, 0.05, 0.5, 0.1, 0.0, 0.3])
    np.testing.assert_array_equal(filters_to_keep(stats, 0.1, granularity=1, min_filters=1),
                                  [0, 2, 5])
    np.testing.assert_array_equal(filters_to_keep(stats, 0.0, granularity=1, min_filters=1),
                                  [0, 1, 2, 3, 5])


def test_min_filters_keeps_the_strongest():
    stats = np.array([0.01, 1.0, 0.02, 0.03, 0.04])
    np.testing.assert_array_equal(filters_to_keep(stats, 0.5, granularity=1, min_filters=3),
                                  [1, 3, 4])
    # Never more than the layer has.
    assert len(filters_to_keep(stats, 0.5, granularity=1, min_filters=16)) == 5


def test_granularity_rounds_up_to_a_multiple_but_never_above_the_layer():
    assert count_to_keep(num_above=9, num_filters=64, granularity=8, min_filters=1) == 16
    assert count_to_keep(num_above=16, num_filters=64, granularity=8, min_filters=1) == 16
    assert count_to_keep(num_above=0, num_filters=64, granularity=8, min_filters=12) == 16
    assert count_to_keep(num_above=61, num_filters=64, granularity=8, min_filters=1) == 64
    assert count_to_keep(num_above=3, num_filters=20, granularity=8, min_filters=1) == 8
    assert count_to_keep(num_above=17, num_filters=20, granularity=8, min_filters=1) == 20


def test_higher_threshold_never_keeps_more_filters():
    rng = np.random.default_rng(3)
    for _ in range(50):
        stats = rank_filters(rng.laplace(size=(3, 3, 4, int(rng.integers(1, 80)))), "max")
        granularity, min_filters = (int(v) for v in rng.integers(1, 17, size=2))
        counts = [len(filters_to_keep(stats, t, granularity, min_filters))
                  for t in np.linspace(0, 1.2, 25)]
        assert counts == sorted(counts, reverse=True)


def test_equalization_criteria_merge_differently():
    a = np.array([1.0, 0.5, 1.0, 0.6, 0.4])
    b = np.array([1.0, 0.05, 0.05, 0.2, 0.35])
    kept = {eq: filters_to_keep(merge_stats([a, b], eq), 0.3, granularity=1, min_filters=1)
            for eq in EQUALIZATIONS}
    assert kept["union"].tolist() == [0, 1, 2, 3, 4]
    assert kept["arithmetic_mean"].tolist() == [0, 2, 3, 4]
    assert kept["geometric_mean"].tolist() == [0, 3, 4]
    assert kept["intersection"].tolist() == [0, 4]


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": -0.1}, "-pth"),
    ({"threshold": float("nan")}, "-pth"),
    ({"min_filters": 0}, "-nf"),
    ({"granularity": 0}, "-pg"),
])
def test_out_of_range_options_are_named(kwargs, message):
    options = {"threshold": 0.1, "granularity": 8, "min_filters": 16, **kwargs}
    with pytest.raises(BpnetError, match=message):
        filters_to_keep(np.ones(8), **options)


def test_unknown_criterion_and_normalizer_are_named():
    with pytest.raises(BpnetError, match=r"-eq.*'median'.*union"):
        merge_stats([np.ones(3), np.ones(3)], "median")
    with pytest.raises(BpnetError, match=r"-n.*'l1'.*max"):
        normalize_stats(np.ones(3), "l1")


# ---------------------------------------------------------------- surgery on small Keras graphs

def _tf():
    import bpnet  # noqa: F401  (tf-keras before TensorFlow)
    import tensorflow as tf
    return tf


def _kill_filters(layer, channels):
    """Zero the kernel and bias of `channels`, so their outputs are exactly zero (dead)."""
    weights = layer.get_weights()
    weights[0][..., channels] = 0.0
    if len(weights) > 1:
        weights[1][channels] = 0.0
    layer.set_weights(weights)


def _residual_concat_model(tf):
    """Conv-BN-ReLU, two convs tied by an Add, a pool, an output conv, and a refinement conv
    reading concat(features, output) -- the BodyPoseNet patterns, plus a residual tie."""
    layers = tf.keras.layers
    reg = tf.keras.regularizers.L1(1e-4)
    image = layers.Input((None, None, 3), name="input")
    x = layers.Conv2D(16, 3, padding="same", kernel_regularizer=reg, name="conv_a")(image)
    x = layers.BatchNormalization(name="conv_a_bn")(x)
    x = layers.ReLU(name="conv_a_relu")(x)
    b = layers.Conv2D(16, 3, padding="same", name="conv_b")(x)
    c = layers.Conv2D(16, 1, name="conv_c")(x)
    x = layers.Add(name="tie")([b, c])
    x = layers.ReLU(name="tie_relu")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    heat = layers.Conv2D(5, 1, name="stage1_heatmaps")(x)
    y = layers.Concatenate(name="stage2_concat")([x, heat])
    y = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_d")(y)
    out = layers.Conv2D(5, 1, name="stage2_heatmaps")(y)
    model = tf.keras.Model(image, [heat, out], name="toy")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            layer.set_weights([rng.normal(0, 0.3, w.shape).astype("float32")
                               for w in layer.get_weights()])
    return model


@pytest.mark.slow
def test_dead_filters_are_removed_exactly_and_outputs_do_not_change():
    from bpnet.prune.surgery import prune_keras_model
    tf = _tf()
    model = _residual_concat_model(tf)
    _kill_filters(model.get_layer("conv_a"), [1, 4, 9])
    # BatchNorm after a dead conv outputs beta - gamma * mean / sqrt(var): zero at init.
    _kill_filters(model.get_layer("conv_b"), [0, 2, 3])
    _kill_filters(model.get_layer("conv_c"), [0, 2, 3, 15])
    _kill_filters(model.get_layer("conv_d"), [5])
    pruned, per_layer = prune_keras_model(model, threshold=0.0, granularity=1, min_filters=1,
                                          excluded_layers=["stage1_heatmaps", "stage2_heatmaps"])

    assert per_layer == {"conv_a": (13, 16), "conv_b": (13, 16), "conv_c": (13, 16),
                         "stage1_heatmaps": (5, 5), "conv_d": (7, 8), "stage2_heatmaps": (5, 5)}
    # The concatenation lost conv_b/conv_c's 3 dead channels, not the heatmaps' 5.
    assert pruned.get_layer("conv_d").get_weights()[0].shape == (3, 3, 13 + 5, 7)
    assert pruned.get_layer("conv_a_bn").get_weights()[0].shape == (13,)
    assert [l.name for l in pruned.layers] == [l.name for l in model.layers]
    assert isinstance(pruned.get_layer("conv_a").kernel_regularizer, tf.keras.regularizers.L1)
    x = np.random.default_rng(1).normal(size=(2, 32, 24, 3)).astype("float32")
    for before, after in zip(model.predict(x, verbose=0), pruned.predict(x, verbose=0)):
        # Only float summation order changes (fewer, reordered channels; threads under load):
        # ~1e-7 relative. A wrongly removed live filter changes outputs by ~1e-1 of their scale.
        assert_close_to_scale(after, before, 1e-5)
    assert pruned.count_params() < model.count_params()


@pytest.mark.slow
def test_equalization_criteria_give_different_models_on_tied_layers():
    from bpnet.prune.surgery import prune_keras_model
    tf = _tf()
    model = _residual_concat_model(tf)
    # conv_b and conv_c meet at an Add: give their filters the norms of the ranking test.
    strengths = {"conv_b": [1.0, 0.5, 1.0, 0.6, 0.4], "conv_c": [1.0, 0.05, 0.05, 0.2, 0.35]}
    for name, norms in strengths.items():
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        kernel = np.zeros_like(kernel)
        for channel, norm in enumerate(norms + [0.01] * 11):
            kernel[0, 0, 0, channel] = norm
        layer.set_weights([kernel, bias])
    kept = {}
    for eq in EQUALIZATIONS:
        _, per_layer = prune_keras_model(model, threshold=0.3, equalization=eq, granularity=1,
                                         min_filters=1)
        assert per_layer["conv_b"] == per_layer["conv_c"]   # tied layers keep the same channels
        kept[eq] = per_layer["conv_b"][0]
    assert kept == {"union": 5, "arithmetic_mean": 4, "geometric_mean": 3, "intersection": 2}


@pytest.mark.slow
def test_layers_the_surgery_does_not_understand_keep_their_inputs_whole():
    from bpnet.prune.surgery import prune_keras_model
    tf = _tf()
    layers = tf.keras.layers
    image = layers.Input((8, 8, 3), name="input")
    x = layers.Conv2D(16, 3, name="conv")(image)
    x = layers.Flatten(name="flat")(x)
    out = layers.Dense(2, name="dense")(x)
    model = tf.keras.Model(image, out)
    _kill_filters(model.get_layer("conv"), list(range(12)))
    pruned, per_layer = prune_keras_model(model, threshold=0.1, granularity=1, min_filters=1)
    assert per_layer["conv"] == (16, 16)
    assert pruned.count_params() == model.count_params()


# ---------------------------------------------------------------- BodyPoseNet

def _bodyposenet(stages, width=0.125, use_batch_norm=False):
    from bpnet.model import build_model
    from bpnet.specs import ModelSpec
    _tf()
    return build_model(ModelSpec(stages=stages, backbone_width=width,
                                 use_batch_norm=use_batch_norm))


def _kill_half_of_every_hidden_conv(model, seed=0):
    from bpnet.model import OUTPUT_NAME
    rng = np.random.default_rng(seed)
    dead = {}
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D" and not OUTPUT_NAME.match(layer.name):
            n = layer.filters
            dead[layer.name] = np.sort(rng.choice(n, n // 2, replace=False))
            _kill_filters(layer, dead[layer.name])
    return dead


def _max_output_diff(model_a, model_b, hw=(64, 48)):
    x = np.random.default_rng(2).normal(size=(1, *hw, 3)).astype("float32")
    a, b = model_a.predict(x, verbose=0), model_b.predict(x, verbose=0)
    assert [t.shape for t in a] == [t.shape for t in b]
    return max(max_relative_diff(q, p) for p, q in zip(a, b))   # relative to the outputs' scale


@pytest.mark.slow
@pytest.mark.parametrize("stages, use_batch_norm", [(2, True), (7, False)])
def test_bodyposenet_loses_exactly_its_dead_filters(stages, use_batch_norm):
    from bpnet.model import OUTPUT_NAME
    from bpnet.prune.surgery import prune_keras_model
    model = _bodyposenet(stages, use_batch_norm=use_batch_norm)
    dead = _kill_half_of_every_hidden_conv(model)
    outputs = [l.name for l in model.layers if OUTPUT_NAME.match(l.name)]
    pruned, per_layer = prune_keras_model(model, threshold=0.0, granularity=1, min_filters=1,
                                          excluded_layers=outputs)
    for name, (kept, total) in per_layer.items():
        assert kept == total - len(dead.get(name, []))
    assert _max_output_diff(model, pruned) <= 1e-5


@pytest.mark.slow
def test_bodyposenet_options_are_respected_and_threshold_is_monotonic():
    from bpnet.prune.surgery import prune_keras_model
    model = _bodyposenet(3, width=0.25)
    rng = np.random.default_rng(5)
    for layer in model.layers:   # spread of filter norms, like an L1-trained model
        if type(layer).__name__ == "Conv2D":
            kernel, *rest = layer.get_weights()
            layer.set_weights([kernel * rng.exponential(size=kernel.shape[-1])] + rest)
    params = []
    for threshold in (0.0, 0.05, 0.1, 0.2, 0.5, 1.0):
        pruned, per_layer = prune_keras_model(model, threshold=threshold, granularity=8,
                                              min_filters=16, excluded_layers=[])
        for name, (kept, total) in per_layer.items():
            assert kept == total or (kept % 8 == 0 and kept >= min(16, total)), name
            if "heatmaps" in name or "pafs" in name:
                assert kept == total
        params.append(pruned.count_params())
    assert params == sorted(params, reverse=True) and params[-1] < params[0]


# ---------------------------------------------------------------- the verb on files

def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(argv):
    from bpnet.cli import main
    try:
        return main(["prune", *argv])
    except ModuleNotFoundError as err:
        pytest.skip(f"bpnet.cli cannot build its parser yet ({err}): another verb is missing")


@pytest.fixture(scope="module")
def dead_filter_model_file(tmp_path_factory, tiny_trained_model):
    """The tiny trained BodyPoseNet with half the filters of every hidden conv zeroed."""
    from bpnet.model import load_model
    model = load_model(tiny_trained_model)
    dead = _kill_half_of_every_hidden_conv(model, seed=4)
    path = tmp_path_factory.mktemp("dead") / "dead_filters.hdf5"
    model.save(path, save_format="h5", include_optimizer=False)
    return path, dead


@pytest.mark.slow
def test_prune_file_of_a_trained_model_writes_model_and_report(dead_filter_model_file, tmp_path,
                                                               capsys):
    from bpnet.model import load_model
    path, dead = dead_filter_model_file
    digest = _digest(path)
    output = tmp_path / "out" / "pruned.hdf5"
    code = _cli(["-m", str(path), "-o", str(output), "-pth", "0", "-pg", "1", "-nf", "1"])
    assert code == 0
    assert _digest(path) == digest
    report = json.loads((tmp_path / "out" / "pruned.hdf5.prune.json").read_text())
    kept = {row["name"]: (row["kept"], row["total"]) for row in report["layers"]}
    for name, channels in dead.items():
        assert kept[name] == (kept[name][1] - len(channels), kept[name][1])
    assert report["params_after"] < report["params_before"]
    assert report["param_ratio"] == pytest.approx(report["params_after"] / report["params_before"])
    assert report["options"] == {"threshold": 0.0, "equalization": "union", "granularity": 1,
                                 "min_filters": 1, "normalizer": "max", "excluded_layers": []}
    assert f"{report['params_after']:,}" in capsys.readouterr().out
    assert _max_output_diff(load_model(path), load_model(output)) <= 1e-5


@pytest.mark.slow
def test_excluded_layers_keep_every_filter(dead_filter_model_file, tmp_path):
    from bpnet.prune import prune_model_file
    path, dead = dead_filter_model_file
    events = []
    report = prune_model_file(path, tmp_path / "p.hdf5", threshold=0.0, granularity=1,
                              min_filters=1, excluded_layers=["block1_conv1", "block2_conv2"],
                              progress=events.append)
    assert [e["event"] for e in events] == ["start", "pruned", "done"]
    assert events[-1]["params_after"] == report["params_after"]
    kept = {row["name"]: (row["kept"], row["total"]) for row in report["layers"]}
    assert kept["block1_conv1"][0] == kept["block1_conv1"][1]
    assert kept["block2_conv2"][0] == kept["block2_conv2"][1]
    assert kept["block1_conv2"][0] < kept["block1_conv2"][1]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["-pth", "-0.1"], "-pth"),
    (["-eq", "median"], "-eq"),
    (["-nf", "0"], "-nf"),
    (["-pg", "0"], "-pg"),
    (["-n", "mean"], "-n"),
    (["-el", "block9_conv1"], "block9_conv1"),
])
def test_bad_options_are_clear_errors_and_touch_nothing(dead_filter_model_file, tmp_path, capsys,
                                                        args, message):
    path, _ = dead_filter_model_file
    digest = _digest(path)
    output = tmp_path / "pruned.hdf5"
    assert _cli(["-m", str(path), "-o", str(output), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert _digest(path) == digest
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_model_that_is_not_a_bodyposenet_is_refused(tmp_path, capsys):
    tf = _tf()
    image = tf.keras.layers.Input((None, None, 3), name="input")
    model = tf.keras.Model(image, tf.keras.layers.Conv2D(4, 3, name="conv")(image))
    path = tmp_path / "other.hdf5"
    model.save(path, save_format="h5")
    digest = _digest(path)
    assert _cli(["-m", str(path), "-o", str(tmp_path / "p.hdf5")]) == 2
    assert "not a BodyPoseNet" in capsys.readouterr().err
    assert _digest(path) == digest and not (tmp_path / "p.hdf5").exists()
    (tmp_path / "notes.hdf5").write_text("not a model")
    assert _cli(["-m", str(tmp_path / "notes.hdf5"), "-o", str(tmp_path / "p.hdf5")]) == 2
    assert "not a Keras HDF5" in capsys.readouterr().err


def test_output_must_differ_from_input_and_be_hdf5(tmp_path):
    from bpnet.prune import prune_model_file
    model = tmp_path / "m.hdf5"
    with pytest.raises(BpnetError, match="never overwrites"):
        prune_model_file(model, model)
    with pytest.raises(BpnetError, match=r"\.hdf5"):
        prune_model_file(model, tmp_path / "m.onnx")


# ---------------------------------------------------------------- retrain, export, evaluate

@pytest.fixture(scope="module")
def pruned_and_retrained(tmp_path_factory, dead_filter_model_file):
    """The tiny trained model with dead filters, pruned, then retrained from the pruned graph."""
    from bpnet.prune import prune_model_file
    from bpnet.specs import TrainSpec, parse_spec
    from bpnet.train import train
    from conftest import tiny_train_spec_dict

    root = tmp_path_factory.mktemp("retrain")
    pruned = root / "pruned.hdf5"
    report = prune_model_file(dead_filter_model_file[0], pruned, threshold=0.01, granularity=8,
                              min_filters=8)
    spec = parse_spec(TrainSpec, tiny_train_spec_dict(
        pretrained_weights=str(pruned), load_graph=True, num_epoch=1), "retrain spec")
    summary = train(spec, root / "retrain")
    return report, pruned, root / "retrain" / "bpnet_model.hdf5", summary


@pytest.mark.slow
def test_pruned_model_retrains_with_the_pruned_graph(pruned_and_retrained):
    from bpnet.model import load_model
    report, pruned, retrained, _ = pruned_and_retrained
    assert report["param_ratio"] < 1.0
    before, after = load_model(pruned), load_model(retrained)
    assert [w.shape for w in after.weights] == [w.shape for w in before.weights]
    changed = [not np.array_equal(a, b) for a, b in zip(before.get_weights(), after.get_weights())]
    assert any(changed)


@pytest.mark.slow
def test_retrained_pruned_model_exports_to_onnx_and_evaluates(pruned_and_retrained, tmp_path,
                                                              coco_mini):
    from bpnet.model import load_model, stage_model
    from bpnet.specs import InferSpec
    _, _, retrained, _ = pruned_and_retrained
    try:
        from bpnet.export import export_onnx
    except ImportError:
        pytest.skip("bpnet.export is not in the tree yet")
    onnx_path = tmp_path / "pruned.onnx"
    export_onnx(retrained, onnx_path, input_hw=(64, 64))
    import onnxruntime as ort
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    heat_onnx = session.run(["heatmaps"], {"input": x})[0]
    heat_keras = stage_model(load_model(retrained)).predict(x, verbose=0)[0]
    assert np.abs(heat_onnx - heat_keras).max() <= 1e-4

    import importlib.util
    if importlib.util.find_spec("bpnet.backends.ort_backend") is None:
        pytest.skip("bpnet.backends.ort_backend (needed to evaluate an ONNX model) is not in the "
                    "tree yet")
    from bpnet.evaluate import evaluate_model
    annotations, images = coco_mini
    spec = InferSpec(input_shape=(64, 64))
    metrics = evaluate_model(onnx_path, annotations, images, spec, tmp_path / "eval", max_images=8)
    assert 0.0 <= metrics["AP"] <= 1.0 and metrics["num_images"] == 8
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_retrain_spec_loads_the_pruned_graph():
    from bpnet.specs import load_train_spec
    from conftest import ROOT
    spec = load_train_spec(ROOT / "specs" / "retrain_small.yaml")
    assert spec.load_graph is True
    assert spec.pretrained_weights == ROOT / "results" / "prune" / "bpnet_model_pruned.hdf5"


def test_prune_help_lists_the_tlt_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("-pth", "-eq", "-pg", "-nf", "-n", "-el", "-m", "-o"):
        assert flag in out
