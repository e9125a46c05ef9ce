"""A user's model file is data: a Lambda/custom layer is refused before Keras deserialises it, on
every path that takes a model (library, CLI, run spec)."""

import json
import os
import subprocess
import sys

import h5py
import pytest

from bpnet.errors import BpnetError
from bpnet.model_safety import check_model_config, check_model_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save_lambda_model(path, marker):
    """A tiny Functional model whose Lambda layer creates `marker` whenever it is rebuilt."""
    import bpnet  # noqa: F401
    import tensorflow as tf

    inputs = tf.keras.Input((None, None, 3), name="input")
    x = tf.keras.layers.Conv2D(4, 1, name="conv")(inputs)
    x = tf.keras.layers.Lambda(lambda t, p=str(marker): (open(p, "w").close(), t)[1], name="evil")(x)
    tf.keras.Model(inputs, x).save(path, save_format="h5")
    os.remove(marker)   # building the model ran it once already; only loading counts
    return path


def _config_file(path, config):
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
    return path


def _functional(*layers):
    return {"class_name": "Functional", "config": {"name": "m", "layers": list(layers)}}


def _layer(kind, name, **config):
    return {"class_name": kind, "config": {"name": name, **config}, "name": name, "inbound_nodes": []}


@pytest.mark.slow
def test_lambda_model_is_refused_and_its_code_never_runs(tmp_path):
    import tensorflow as tf
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    from bpnet.model import load_model

    marker = tmp_path / "pwned.txt"
    path = _save_lambda_model(tmp_path / "evil.hdf5", marker)
    # The danger is real: Keras' HDF5 loader itself runs the bytecode.
    with SafeModeScope(False):
        tf.keras.models.load_model(path, compile=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(BpnetError, match=r"layer 'evil' is a Lambda .*Python code.*refused"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.slow
def test_cli_prune_refuses_a_lambda_model_with_exit_2(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = _save_lambda_model(tmp_path / "evil.hdf5", marker)
    proc = subprocess.run([sys.executable, "-m", "bpnet.cli", "prune", "-m", str(path), "-o",
                           str(tmp_path / "out.hdf5"), "-pth", "0.1"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Lambda" in proc.stderr and "evil" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_run_spec_with_a_lambda_model_is_rejected_at_submit(tmp_path, coco_mini):
    from worker.runs import parse_run_spec

    annotations, images = coco_mini
    model = _config_file(tmp_path / "evil.hdf5", _functional(
        _layer("InputLayer", "input"), _layer("Lambda", "evil", function=["ZGF0YQ==", None, None])))
    with pytest.raises(BpnetError, match="layer 'evil' is a Lambda"):
        parse_run_spec({"name": "x", "model": str(model), "precisions": ["fp32"],
                        "dataset": {"annotations": str(annotations), "images": str(images)}})


@pytest.mark.parametrize("layer, message", [
    (_layer("TFOpLambda", "write", function="io.write_file"), "TFOpLambda .*TensorFlow function"),
    (_layer("MyBlock", "block"), "MyBlock .*custom or unknown"),
    ({**_layer("Conv2D", "conv", activation="relu"), "module": "evil_pkg.layers"}, "module 'evil_pkg.layers'"),
    ({**_layer("Conv2D", "conv"), "registered_name": "Custom>Conv"}, "custom object 'Custom>Conv'"),
    (_layer("Conv2D", "conv", activation="my_act"), "activation 'my_act'"),
    (_layer("Conv2D", "conv", kernel_initializer={"class_name": "Evil", "config": {}}), "'Evil'"),
    (_layer("Functional", "inner", layers=[_layer("Lambda", "deep")]), "layer 'inner/deep' is a Lambda"),
])
def test_config_check_names_the_refused_layer(layer, message):
    with pytest.raises(BpnetError, match=message):
        check_model_config(_functional(_layer("InputLayer", "input"), layer), "model file m.hdf5")


def test_standard_layers_pass_and_weights_only_files_are_refused(tmp_path):
    good = _functional(
        _layer("InputLayer", "input"),
        _layer("Conv2D", "conv", activation="linear",
               kernel_initializer={"module": "keras.initializers", "class_name": "GlorotUniform",
                                   "config": {"seed": None}, "registered_name": None},
               kernel_regularizer={"class_name": "L2", "config": {"l2": 1e-4}}),
        _layer("DepthwiseConv2D", "dw"), _layer("BatchNormalization", "bn"),
        _layer("ReLU", "relu6", max_value=6.0), _layer("Activation", "act", activation="sigmoid"),
        _layer("Add", "add"), _layer("Concatenate", "cat", axis=-1), _layer("ZeroPadding2D", "pad"),
        _layer("UpSampling2D", "up", interpolation="bilinear"), _layer("MaxPooling2D", "pool"))
    assert check_model_file(_config_file(tmp_path / "good.hdf5", good))["class_name"] == "Functional"
    weights_only = tmp_path / "weights.h5"
    with h5py.File(weights_only, "w") as f:
        f.create_dataset("w", data=[1.0])
    with pytest.raises(BpnetError, match="no model architecture"):
        check_model_file(weights_only)
