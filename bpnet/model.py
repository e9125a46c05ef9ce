"""BodyPoseNet: a VGG-19-style backbone to stride 8, an initial stage and refinement stages.

    input (N, H, W, 3)
      -> block1..block4 (VGG-19 convs, three 2x2 max-pools)  + interface_conv4_3/4_4  # (N, H/8, W/8, 128w)
      -> stage1: heat branch + PAF branch (3x3 convs, a wide 1x1, a 1x1 output)
      -> stage k >= 2: concat(features, previous heatmaps, previous PAFs), two branches of
         five 7x7 convs, a 1x1 and a 1x1 output
    outputs [stage1_heatmaps, stage1_pafs, stage2_heatmaps, stage2_pafs, ...]  # (N, H/8, W/8, 19 | 38)

Only standard Keras layers with deterministic names, so a saved model loads with
`tf.keras.models.load_model(path, compile=False)` and no custom objects, and pruning and weight
transfer can address layers by name. `backbone_width` multiplies every hidden channel count (never
below 8); the output channel counts come from the skeleton (19 heatmaps, 38 PAFs).
"""

import re
import warnings
from pathlib import Path

import bpnet  # noqa: F401  (selects tf-keras before TensorFlow is imported)
import tensorflow as tf

from bpnet.errors import BpnetError
from bpnet.fileio import atomic_path
from bpnet.limits import stages_problem
from bpnet.model_safety import check_model_file
from bpnet.preprocess import check_input_hw
from bpnet.skeleton import DEFAULT_SKELETON, load_skeleton

MIN_CHANNELS = 8

# (block, number of 3x3 convs, channels at width 1.0); a 2x2 max-pool follows blocks 1-3 only,
# so the features are at stride 8.
VGG_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 2, 512))
INTERFACE_CONVS = (("interface_conv4_3", 256), ("interface_conv4_4", 128))
STAGE1_CONVS = 3              # 3x3 convs per branch in the initial stage
STAGE1_WIDE_CHANNELS = 512    # its 1x1 conv before the output
STAGE_CHANNELS = 128
REFINE_CONVS = 5              # 7x7 convs per branch in a refinement stage
REFINE_KERNEL = 7

OUTPUT_NAME = re.compile(r"^stage(\d+)_(heatmaps|pafs)$")


def scaled_channels(channels, width):
    return max(MIN_CHANNELS, int(round(channels * width)))


def make_regularizer(regularization_type, factor):
    if regularization_type == "none" or factor == 0:
        return None
    if regularization_type == "l1":
        return tf.keras.regularizers.L1(factor)
    if regularization_type == "l2":
        return tf.keras.regularizers.L2(factor)
    raise BpnetError(f"model.regularization_type: {regularization_type!r} is not one of l1, l2, none")


class _LayerFactory:
    """Conv (+BN) + ReLU blocks sharing the model's width, bias, BN and regulariser settings."""

    def __init__(self, model_spec):
        self.spec = model_spec
        self.regularizer = make_regularizer(model_spec.regularization_type,
                                            model_spec.kernel_regularization_factor)

    def conv_relu(self, x, channels, kernel, name):
        # He init because the network trains from scratch (no ImageNet VGG weights here) and
        # TLT's N(0, 0.01) starts a deep ReLU stack with vanishing activations.
        x = tf.keras.layers.Conv2D(
            scaled_channels(channels, self.spec.backbone_width), kernel, padding="same",
            use_bias=self.spec.use_bias and not self.spec.use_batch_norm,
            kernel_initializer="he_normal", kernel_regularizer=self.regularizer, name=name)(x)
        if self.spec.use_batch_norm:
            x = tf.keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return tf.keras.layers.ReLU(name=f"{name}_relu")(x)

    def conv_out(self, x, channels, name):
        # Output channels are the skeleton's, never scaled by the width. Small initial weights
        # (TLT's N(0, 0.01)) start every map near zero instead of at large random values that
        # the first hundreds of steps would only spend shrinking.
        return tf.keras.layers.Conv2D(
            channels, 1, padding="same", use_bias=True,
            kernel_initializer=tf.keras.initializers.RandomNormal(stddev=0.01),
            kernel_regularizer=self.regularizer, name=name)(x)


def _backbone(layers, x):
    for block, num_convs, channels in VGG_BLOCKS:
        for i in range(1, num_convs + 1):
            x = layers.conv_relu(x, channels, 3, f"block{block}_conv{i}")
        if block < 4:
            x = tf.keras.layers.MaxPooling2D(2, 2, padding="same", name=f"block{block}_pool")(x)
    for name, channels in INTERFACE_CONVS:
        x = layers.conv_relu(x, channels, 3, name)
    return x  # (N, H/8, W/8, 128w)


def _initial_branch(layers, x, branch, out_channels, out_name):
    for i in range(1, STAGE1_CONVS + 1):
        x = layers.conv_relu(x, STAGE_CHANNELS, 3, f"stage1_{branch}_conv{i}")
    x = layers.conv_relu(x, STAGE1_WIDE_CHANNELS, 1, f"stage1_{branch}_conv{STAGE1_CONVS + 1}")
    return layers.conv_out(x, out_channels, out_name)


def _refinement_branch(layers, x, stage, branch, out_channels, out_name):
    for i in range(1, REFINE_CONVS + 1):
        x = layers.conv_relu(x, STAGE_CHANNELS, REFINE_KERNEL, f"stage{stage}_{branch}_conv{i}")
    x = layers.conv_relu(x, STAGE_CHANNELS, 1, f"stage{stage}_{branch}_conv{REFINE_CONVS + 1}")
    return layers.conv_out(x, out_channels, out_name)


def build_model(model_spec, input_hw=None, skeleton=DEFAULT_SKELETON):
    """A fresh BodyPoseNet for `model_spec` (bpnet.specs.ModelSpec) predicting the maps of
    `skeleton` (a name, file or `Skeleton`: its heatmap and PAF channel counts); input (None, None, 3).

    `input_hw`, if given, is only checked (H and W multiples of 8): the model itself accepts any
    such size.
    """
    if input_hw is not None:
        check_input_hw(input_hw, "input_hw")
    if stages_problem(model_spec.stages):
        raise BpnetError(f"model.stages: {stages_problem(model_spec.stages)}")
    if not hasattr(skeleton, "num_pafs"):
        skeleton = load_skeleton(skeleton)
    layers = _LayerFactory(model_spec)
    image = tf.keras.Input(shape=(None, None, 3), name="input")
    features = _backbone(layers, image)

    heat = _initial_branch(layers, features, "heat", skeleton.num_heatmaps, "stage1_heatmaps")
    paf = _initial_branch(layers, features, "paf", skeleton.num_pafs, "stage1_pafs")
    outputs = [heat, paf]
    for stage in range(2, model_spec.stages + 1):
        x = tf.keras.layers.Concatenate(name=f"stage{stage}_concat")([features, heat, paf])
        heat = _refinement_branch(layers, x, stage, "heat", skeleton.num_heatmaps, f"stage{stage}_heatmaps")
        paf = _refinement_branch(layers, x, stage, "paf", skeleton.num_pafs, f"stage{stage}_pafs")
        outputs += [heat, paf]
    return tf.keras.Model(image, outputs, name="bodyposenet")


# ---------------------------------------------------------------- inspecting saved models

def output_stages(model):
    """Stage numbers k for which the model has both `stage{k}_heatmaps` and `stage{k}_pafs`."""
    found = {}
    for layer in model.layers:
        match = OUTPUT_NAME.match(layer.name)
        if match:
            found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return sorted(k for k, kinds in found.items() if kinds == {"heatmaps", "pafs"})


def num_stages(model):
    stages = output_stages(model)
    if not stages or stages != list(range(1, len(stages) + 1)):
        raise BpnetError(
            f"model {model.name!r} is not a BodyPoseNet: expected output layers stage1_heatmaps, "
            f"stage1_pafs, stage2_heatmaps, ... (found stages {stages or 'none'})")
    return len(stages)


def count_params(model):
    return int(sum(int(tf.size(w)) for w in model.weights))


def save_model(model, path, card_from=None):
    """Write `model` as Keras HDF5 at `path`, atomically (no optimizer state).

    `card_from`: a model file whose model card (bpnet.imports.card) the new file inherits, so
    an imported network keeps its preprocessing through pruning and retraining.
    """
    from bpnet.imports.card import copy_card_into_hdf5

    with atomic_path(path) as tmp:
        write_hdf5(model, tmp)
        if card_from is not None:
            copy_card_into_hdf5(card_from, tmp)


def write_hdf5(model, path):
    logger = tf.get_logger()
    level = logger.level
    with warnings.catch_warnings():
        # HDF5 is the format this project exchanges (pruning, TLT-style tooling); Keras calls it
        # legacy on every save, and warns about metrics of a model that was never compiled.
        warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save\\(\\)`.*")
        logger.setLevel("ERROR")
        try:
            model.save(path, include_optimizer=False, save_format="h5")
        finally:
            logger.setLevel(level)


def load_keras_model(path, what="model file"):
    """Any Keras model from an HDF5 file, or a BpnetError naming the file and the problem."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise BpnetError(f"{what} not found: {path}")
    if path.suffix.lower() == ".onnx":
        raise BpnetError(f"{what} {path}: ONNX import: no trainable graph (pruning, retraining and "
                         "QAT need a Keras .hdf5; an ONNX model supports export, INT8, evaluate, "
                         "gate and bench)")
    if not h5py.is_hdf5(path):
        raise BpnetError(f"{what} {path} is not a Keras HDF5 file (.hdf5/.h5 expected)")
    check_model_file(path, what)   # a user's file is data: refuse Lambda/custom layers unread
    from tf_keras.src.saving.serialization_lib import SafeModeScope
    try:
        # Keras' own guard against Lambda bytecode; its HDF5 loader does not enter it by itself.
        with SafeModeScope(True):
            return tf.keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for truncated or foreign HDF5 files
        raise BpnetError(f"{what} {path} could not be loaded as a Keras model: "
                         f"{type(err).__name__}: {err}") from None


def load_model(path):
    """A BodyPoseNet Keras model from an HDF5 file, or a BpnetError saying what is wrong with it."""
    model = load_keras_model(path)
    try:
        num_stages(model)
    except BpnetError as err:
        raise BpnetError(f"model file {path}: {err}") from None
    return model


def stage_model(model, stage=None):
    """The model truncated after `stage` (None = last) with two outputs named `heatmaps`, `pafs`.

    Later stages are not part of the returned graph, so they cost nothing at inference.
    """
    last = num_stages(model)
    stage = last if stage is None else int(stage)
    if not 1 <= stage <= last:
        raise BpnetError(f"stage: {stage} is outside this model's stages 1..{last}")
    # Linear activations only rename: exported graphs and backends see `heatmaps` and `pafs`.
    heatmaps = tf.keras.layers.Activation("linear", name="heatmaps")(
        model.get_layer(f"stage{stage}_heatmaps").output)
    pafs = tf.keras.layers.Activation("linear", name="pafs")(
        model.get_layer(f"stage{stage}_pafs").output)
    return tf.keras.Model(model.input, [heatmaps, pafs], name=f"{model.name}_stage{stage}")


def with_regularizer(model, model_spec):
    """A copy of `model` (same graph and weights) whose conv kernels use the spec's regulariser.

    A model loaded from a file (e.g. a pruned graph) keeps the regulariser it was saved with;
    retraining must follow the spec instead, and Keras only attaches regularisers at build time,
    so the graph is rebuilt from its config.
    """
    regularizer = make_regularizer(model_spec.regularization_type,
                                   model_spec.kernel_regularization_factor)
    serialized = tf.keras.regularizers.serialize(regularizer) if regularizer else None
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "Conv2D":
            layer["config"]["kernel_regularizer"] = serialized
    rebuilt = tf.keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def transfer_weights(source, target):
    """Copy weights layer by layer where name and every weight shape match.

    Returns (matched layer names, skipped layer names of `target` that have weights).
    """
    source_layers = {layer.name: layer for layer in source.layers}
    matched, skipped = [], []
    for layer in target.layers:
        if not layer.weights:
            continue
        donor = source_layers.get(layer.name)
        donor_weights = donor.get_weights() if donor is not None else []
        shapes_match = (len(donor_weights) == len(layer.weights) and all(
            w.shape == tuple(v.shape) for w, v in zip(donor_weights, layer.weights)))
        if shapes_match:
            layer.set_weights(donor_weights)
            matched.append(layer.name)
        else:
            skipped.append(layer.name)
    return matched, skipped
