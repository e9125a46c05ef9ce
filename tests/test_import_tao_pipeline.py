"""A TAO BodyPoseNet .hdf5 through the whole pipeline: import -> prune -> retrain (one step) ->
export -> INT8 -> evaluate.

The source is built small with the layer structure of TAO's BodyPoseNet
(NVIDIA/tao_tensorflow1_backend, cv/bpnet/models: input `input_1`; a strided VGG-style backbone of
`block_{k}a_conv_1` + `block_{k}a_bn_1` + ReLU blocks; `channel_reduction_conv`; a first stage of
3x3 convs and a 1x1 `conv4` per branch ending in `stage1/{heat,paf}_branch/out`; refinement stages
that read `Concatenate([features, heatmaps, pafs])` through five 7x7 convs and a 1x1 one, the last
stage's outputs named `heatmap_out` / `paf_out`; the model's outputs all heatmaps, then all PAFs),
with 8-16 channels instead of 128-512 so the test stays fast. Its weights are random, so its AP is
meaningless; the heatmap outputs get a bias so the import's keypoint-response check (which needs a
network that lights up at keypoints) passes — what is tested here is that every stage works on
a TAO graph, not accuracy.
"""

from pathlib import Path

import numpy as np
import pytest
import yaml

from bpnet.skeleton import load_skeleton

ROOT = Path(__file__).resolve().parent.parent
IMPORT_HW = (64, 64)


def _tao_bodyposenet(tf, stages=2, width=8, seed=0):
    """A TAO-structured BodyPoseNet (Keras functional, BatchNorm unfolded, ReLU activations)."""
    tf.keras.utils.set_random_seed(seed)
    L = tf.keras.layers
    init = tf.keras.initializers.RandomNormal(stddev=0.1, seed=seed)

    def conv(x, filters, kernel, name, stride=1, relu=True):
        x = L.Conv2D(filters, kernel, strides=stride, padding="same", name=name, kernel_initializer=init)(x)
        return L.Activation("relu", name=f"{name}/relu")(x) if relu else x

    def vgg_block(x, index, filters, stride):
        prefix = f"block_{index}a_"
        x = L.Conv2D(filters, 3, strides=stride, padding="same", name=prefix + "conv_1", kernel_initializer=init)(x)
        x = L.BatchNormalization(name=prefix + "bn_1")(x)
        return L.Activation("relu", name=prefix + "relu")(x)

    image = L.Input((None, None, 3), name="input_1")
    x = vgg_block(image, 1, width, 1)
    x = vgg_block(x, 2, width, 2)              # TAO's use_pooling=False: strided first convs
    x = vgg_block(x, 3, 2 * width, 2)
    x = vgg_block(x, 4, 2 * width, 2)          # stride 8
    x = vgg_block(x, 6, 2 * width, 1)          # the "modified VGG" block renamed index 6
    feat = conv(x, 2 * width, 3, "channel_reduction_conv")

    skeleton = load_skeleton()
    heats, pafs = [], []
    for branch, out_channels, outputs in (("paf", skeleton.num_pafs, pafs), ("heat", skeleton.num_heatmaps, heats)):
        scope = f"stage1/{branch}_branch/"
        y = feat
        for k in (1, 2, 3):
            y = conv(y, width, 3, f"{scope}conv{k}")
        y = conv(y, 2 * width, 1, f"{scope}conv4")
        outputs.append(conv(y, out_channels, 1, f"{scope}out", relu=False))
    for stage in range(2, stages + 1):
        joined = L.Concatenate(name=f"stage{stage}/concat")([feat, heats[-1], pafs[-1]])
        last = stage == stages
        for branch, out_channels, outputs, final in (("paf", skeleton.num_pafs, pafs, "paf_out"),
                                                     ("heat", skeleton.num_heatmaps, heats, "heatmap_out")):
            scope = f"stage{stage}/{branch}_branch/"
            y = joined
            for k in (1, 2, 3, 4, 5):
                y = conv(y, width, 7, f"{scope}conv{k}")
            y = conv(y, width, 1, f"{scope}conv6")
            outputs.append(conv(y, out_channels, 1, final if last else f"{scope}out", relu=False))
    model = tf.keras.Model(image, heats + pafs, name="bpnet_tao_tiny")
    for name in ("stage1/heat_branch/out", "heatmap_out"):   # lit everywhere: see the module docstring
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([kernel, bias + 0.5])
    return model


def _tao_card(path):
    """A card for a TAO BodyPoseNet: our skeleton's order, TAO's default normalisation."""
    skeleton = load_skeleton()
    card = {
        "name": "TAO BodyPoseNet (tiny, test)",
        "origin": "built by tests/test_import_tao_pipeline.py in TAO's cv/bpnet/models layer structure",
        "licence": "test fixture",
        "input": {"colour_order": "BGR",
                  "normalization": {"image_scale": [256.0] * 3, "image_offset": [0.5] * 3},
                  "training_hw": list(IMPORT_HW), "stride": 8, "size_multiple": 8},
        "output": {"heatmaps": {"first_channel": 0, "parts": list(skeleton.parts) + ["background"]},
                   "pafs": {"first_channel": skeleton.num_heatmaps, "xy_order": "xy",
                            "limbs": [[skeleton.parts[a], skeleton.parts[b]] for a, b in skeleton.limbs]}},
    }
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def _retrain_spec(pruned, annotations, images):
    from bpnet.specs import TrainSpec, parse_spec

    return parse_spec(TrainSpec, {
        "random_seed": 1, "num_epoch": 1, "steps_per_epoch": 1, "checkpoint_n_epoch": 1,
        "pretrained_weights": str(pruned), "load_graph": True,
        "model": {"regularization_type": "none"},
        "dataloader": {"batch_size": 1, "image_shape": [64, 64], "num_parallel_calls": 1,
                       "dataset": {"annotations": str(annotations), "images": str(images),
                                   "include_images_without_people": False},
                       "augmentation": {"enabled": False}},
        "optimizer": {"learning_rate_schedule": {"base_learning_rate": 1e-5, "min_learning_rate": 1e-6}},
    }, "test retrain spec")


@pytest.mark.slow
def test_tao_bodyposenet_goes_through_import_prune_retrain_export_int8_evaluate(tmp_path, coco_mini):
    import bpnet  # noqa: F401
    import tensorflow as tf

    from bpnet.evaluate import evaluate_model
    from bpnet.export import export_model
    from bpnet.imports import import_model
    from bpnet.imports.card import read_model_card
    from bpnet.model import load_model, num_stages, stage_model
    from bpnet.preprocess import prepare_batch, read_image
    from bpnet.prune import prune_model_file
    from bpnet.specs import InferSpec
    from bpnet.train import train

    annotations, images = coco_mini
    source = tmp_path / "tao_bpnet.hdf5"
    tao = _tao_bodyposenet(tf)
    tao.save(source, save_format="h5", include_optimizer=False)
    card = _tao_card(tmp_path / "tao_bpnet.card.yaml")

    imported = tmp_path / "imported.hdf5"
    report = import_model(source, imported, card, log=lambda m: None)
    assert report["source_kind"] == "tao" and report["stages"] == 2
    assert report["parity"]["max_abs_diff"] <= 1e-4
    model = load_model(imported)
    assert num_stages(model) == 2 and read_model_card(imported).name == "TAO BodyPoseNet (tiny, test)"
    # the last stage is TAO's heatmap_out / paf_out, in our contract's names
    first = sorted(Path(images).glob("*.jpg"))[0]
    batch, _ = prepare_batch([read_image(first)], IMPORT_HW, "pad_image_input", (256.0,) * 3, (0.5,) * 3)
    theirs = tao(batch, training=False)
    ours = stage_model(model)(batch, training=False)
    assert np.abs(np.asarray(ours[0]) - np.asarray(theirs[1])).max() <= 1e-4    # heatmap_out
    assert np.abs(np.asarray(ours[1]) - np.asarray(theirs[3])).max() <= 1e-4    # paf_out

    pruned = tmp_path / "pruned.hdf5"
    prune_report = prune_model_file(imported, pruned, threshold=0.5, granularity=4, min_filters=4)
    assert prune_report["params_after"] < prune_report["params_before"]
    assert read_model_card(pruned) is not None       # the card travels through pruning

    summary = train(_retrain_spec(pruned, annotations, images), tmp_path / "retrain")
    retrained = Path(summary["model_path"])
    assert summary["steps"] == 1 and np.isfinite(summary["final_loss"])
    assert summary["parameter_count"] == prune_report["params_after"]
    assert read_model_card(retrained).name == read_model_card(imported).name   # and through retraining
    # the card's normalisation was used for retraining, not the spec's defaults by accident
    used = yaml.safe_load((tmp_path / "retrain" / "spec.yaml").read_text())["dataloader"]["normalization"]
    assert used == {"image_scale": [256.0] * 3, "image_offset": [0.5] * 3}

    exported = export_model(retrained, tmp_path / "export" / "model.onnx", (64, 96), data_type="int8",
                            cal_image_dir=images, batch_size=1, batches=2, calibrator="minmax")
    int8 = Path(exported["int8"]["onnx_int8"])
    assert read_model_card(int8) is not None
    metrics = evaluate_model(int8, annotations, images, InferSpec(input_shape=(64, 96)), tmp_path / "eval",
                             max_images=2)
    assert metrics["precision"] == "int8" and metrics["num_images"] == 2
    assert (tmp_path / "eval" / "results.json").is_file()
