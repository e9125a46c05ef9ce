"""The demo recipe (specs/train_demo.yaml + specs/infer_demo.yaml, docs/demo.md): the specs agree
with each other, and the batch-norm model they train survives export unchanged."""

import numpy as np
import pytest

from conftest import ROOT

SPECS = ROOT / "specs"


def test_demo_inference_runs_at_the_training_size_and_placement():
    from bpnet.specs import load_infer_spec, load_train_spec
    from bpnet.train import check_train_spec

    train = load_train_spec(SPECS / "train_demo.yaml")
    check_train_spec(train)
    infer = load_infer_spec(SPECS / "infer_demo.yaml")
    # A model that memorised people at one pixel size finds none at another (AP 0.000 at 288x384).
    assert tuple(infer.input_shape) == tuple(train.dataloader.image_shape)
    # Without augmentation training letterboxes exactly like strict inference; the same placement
    # means the model is evaluated on the images it saw.
    assert not train.dataloader.augmentation.enabled
    assert infer.keep_aspect_ratio_mode == "pad_image_input"
    assert infer.normalization == train.dataloader.normalization
    assert train.model.use_batch_norm


def test_demo_decoder_settings_are_the_oracle_tuned_ones():
    from bpnet.specs import load_infer_spec

    demo = load_infer_spec(SPECS / "infer_demo.yaml")
    strict = load_infer_spec(SPECS / "infer_strict_288x384.yaml")
    assert demo == strict.model_copy(update={"input_shape": demo.input_shape})


def test_small_specs_train_and_retrain_on_the_same_placement():
    from bpnet.specs import load_train_spec

    train = load_train_spec(SPECS / "train_small.yaml")
    retrain = load_train_spec(SPECS / "retrain_small.yaml")
    assert train.dataloader.augmentation.enabled == retrain.dataloader.augmentation.enabled is False
    assert train.dataloader.image_shape == retrain.dataloader.image_shape


@pytest.mark.slow
def test_batch_norm_model_exports_to_onnx_with_its_moving_statistics(tmp_path):
    import bpnet  # noqa: F401  (tf-keras before TensorFlow)
    import tensorflow as tf

    from bpnet.export import export_onnx, parity_batch

    from bpnet.onnx_graph import onnx_session
    from bpnet.model import build_model, load_model, save_model
    from bpnet.specs import ModelSpec

    tf.keras.utils.set_random_seed(3)
    model = build_model(ModelSpec(backbone_width=0.125, stages=2, use_batch_norm=True))
    rng = np.random.default_rng(3)
    # Trained statistics, not the identity a fresh layer holds: an export that dropped or
    # mis-folded them would change the maps.
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2.0, n), rng.uniform(-0.5, 0.5, n),
                               rng.uniform(-0.5, 0.5, n), rng.uniform(0.2, 3.0, n)])
    path = tmp_path / "bn.hdf5"
    save_model(model, path)
    kernels_only = build_model(ModelSpec(backbone_width=0.125, stages=2, use_batch_norm=True))
    for layer in kernels_only.layers:
        if not isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.set_weights(model.get_layer(layer.name).get_weights())
    summary = export_onnx(path, tmp_path / "bn.onnx", (64, 96))
    batch = parity_batch((64, 96), batch=2, seed=5)
    keras_maps = [np.asarray(m) for m in load_model(path)(batch, training=False)[-2:]]
    onnx_maps = onnx_session(tmp_path / "bn.onnx").run(["heatmaps", "pafs"], {"input": batch})
    for onnx_map, keras_map in zip(onnx_maps, keras_maps):
        assert np.abs(onnx_map - keras_map).max() <= 1e-4
    assert summary["max_abs_diff"] <= 1e-4
    # The statistics matter for this network, so the parity above is a real check of them.
    plain_maps = [np.asarray(m) for m in kernels_only(batch, training=False)[-2:]]
    assert max(np.abs(a - b).max() for a, b in zip(plain_maps, keras_maps)) > 1e-3
