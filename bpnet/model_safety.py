"""A model file from a user is data, never code: its Keras config is checked before Keras sees it.

A Keras HDF5 file stores the model's architecture as JSON (`model_config`). Deserialising it can
run code the file carries: a `Lambda` layer holds marshalled Python bytecode, a `TFOpLambda`
calls any TensorFlow function by name (file writes included), and custom classes import modules.
So `check_model_file` reads that JSON with h5py (no TensorFlow here) and refuses every layer that
is not a standard Keras layer of the kinds pose networks are made of, naming the layer, its class
and what is allowed. `bpnet.model.load_keras_model` calls it first and then loads inside Keras'
safe mode as a second line of defence.
"""

import json
from pathlib import Path

from bpnet.errors import BpnetError

# Standard Keras layers that carry no code (BodyPoseNet, MobileNet-style OpenPose nets, imported
# TFLite graphs, pruned graphs). Models nested in a model (Functional, Sequential) are walked.
ALLOWED_LAYERS = frozenset({
    "InputLayer", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense",
    "BatchNormalization", "LayerNormalization", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
    "ThresholdedReLU", "Activation", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    "Concatenate", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
    "ZeroPadding2D", "Cropping2D", "UpSampling2D", "Resizing", "Reshape", "Flatten", "Permute",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "ActivityRegularization",
})
CONTAINERS = frozenset({"Functional", "Model", "Sequential"})
# Activation functions by name (an unknown name would make Keras look up a custom object).
ALLOWED_ACTIVATIONS = frozenset({
    "linear", "relu", "relu6", "sigmoid", "hard_sigmoid", "tanh", "softmax", "softplus", "softsign",
    "elu", "selu", "swish", "silu", "gelu", "exponential", "hard_swish", "leaky_relu", "mish",
})
# Non-layer objects a layer config may name: initializers, regularizers, constraints, dtype policy.
ALLOWED_OBJECTS = frozenset({
    "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal", "Identity",
    "Orthogonal", "VarianceScaling", "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform",
    "LecunNormal", "LecunUniform", "L1", "L2", "L1L2", "OrthogonalRegularizer", "MaxNorm",
    "MinMaxNorm", "NonNeg", "UnitNorm", "RadialConstraint", "Policy", "DTypePolicy",
    "__tuple__",
})
KERAS_MODULES = ("keras", "tf_keras")


def check_model_file(path, what="model file"):
    """Refuse (BpnetError) a Keras HDF5 file whose architecture holds anything but standard
    layers; returns the parsed model config. Reads the file's JSON only: nothing is executed."""
    config = read_model_config(path, what)
    check_model_config(config, f"{what} {path}")
    return config


def read_model_config(path, what="model file"):
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as err:
        raise BpnetError(f"{what} {path} is not a readable HDF5 file ({err})") from None
    if raw is None:
        raise BpnetError(f"{what} {path} holds no model architecture (`model_config`): a "
                         "weights-only file? Save the whole model (model.save(path))")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    try:
        config = json.loads(raw)
    except ValueError as err:
        raise BpnetError(f"{what} {path}: its model_config is not valid JSON ({err})") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise BpnetError(f"{what} {path}: its model_config is not a Keras model description")
    return config


def check_model_config(config, source="model"):
    """Walk a Keras model config; a BpnetError names the first layer that is not allowed."""
    _check_container(config, source, path="")


def _check_container(entry, source, path):
    kind = entry.get("class_name")
    if kind not in CONTAINERS:
        raise BpnetError(f"{source}: the model is a {kind!r}, not a Keras Functional or Sequential model")
    _check_module(entry, source, entry.get("config", {}).get("name", "model"))
    for layer in entry.get("config", {}).get("layers", []):
        _check_layer(layer, source, path)


def _check_layer(layer, source, path):
    if not isinstance(layer, dict):
        raise BpnetError(f"{source}: a layer entry is not an object: {str(layer)[:80]}")
    kind = layer.get("class_name")
    cfg = layer.get("config") or {}
    name = f"{path}{cfg.get('name') or layer.get('name') or '?'}"
    if kind in CONTAINERS:
        _check_container(layer, source, path=f"{name}/")
        return
    if kind not in ALLOWED_LAYERS:
        why = (" (it holds Python code, which would run on loading)" if kind == "Lambda" else
               " (it calls a TensorFlow function by name)" if kind in ("TFOpLambda", "SlicingOpLambda")
               else " (a custom or unknown layer class)")
        raise BpnetError(f"{source}: layer {name!r} is a {kind}{why}; refused - a model file must "
                         f"contain only standard Keras layers ({', '.join(sorted(ALLOWED_LAYERS))})")
    _check_module(layer, source, name)
    activation = cfg.get("activation")
    if activation is not None:
        _check_activation(activation, source, name)
    for key, value in cfg.items():
        if key != "activation":
            _check_objects(value, source, name, key)


def _check_activation(activation, source, name):
    label = activation.get("config", {}).get("name") if isinstance(activation, dict) else activation
    if isinstance(activation, dict) and activation.get("class_name") not in (None, "function"):
        label = activation.get("class_name")
    if not isinstance(label, str) or label not in ALLOWED_ACTIVATIONS:
        raise BpnetError(f"{source}: layer {name!r} uses activation {label!r}, which is not a "
                         f"standard Keras activation; allowed: {', '.join(sorted(ALLOWED_ACTIVATIONS))}")


def _check_objects(value, source, name, key):
    """Serialised objects inside a layer config (an initializer, a regularizer) must be Keras'."""
    if isinstance(value, list):
        for item in value:
            _check_objects(item, source, name, key)
        return
    if not isinstance(value, dict):
        return
    if "class_name" in value:
        if value["class_name"] not in ALLOWED_OBJECTS:
            raise BpnetError(f"{source}: layer {name!r} field {key!r} is a {value['class_name']!r}, "
                             "not a standard Keras initializer/regularizer/constraint; refused")
        _check_module(value, source, name)
    for sub_key, sub in value.items():
        _check_objects(sub, source, name, f"{key}.{sub_key}")


def _check_module(entry, source, name):
    module = entry.get("module")
    registered = entry.get("registered_name")
    if module is not None and module.split(".")[0] not in KERAS_MODULES:
        raise BpnetError(f"{source}: layer {name!r} comes from module {module!r}, not Keras; refused")
    if registered not in (None, entry.get("class_name")):
        raise BpnetError(f"{source}: layer {name!r} is the custom object {registered!r}; refused")
