"""SourceGraph -> our Keras model contract: input `input` (None, None, 3), outputs
[stage1_heatmaps, stage1_pafs, ...] as Conv2D layers, standard Keras layers only.

Only the nodes the stage outputs need are built (a source's final concat of heatmaps and PAFs
is not). Resize semantics matter for parity: TFLite/TF1 `ResizeBilinear` without
align_corners/half_pixel_centers samples the input at out_index / factor, which for a factor of
2 is exactly a nearest 2x upsampling followed by a 2x2 stride-1 average pool with SAME padding
(TF's average pool divides by the number of valid cells, which reproduces the edge clamp).
Keras' own bilinear upsampling is the half-pixel variant and is used only for that one.
"""

import bpnet  # noqa: F401  (selects tf-keras before TensorFlow is imported)
import tensorflow as tf

from bpnet.errors import BpnetError

L = tf.keras.layers


def build_keras_model(graph, heads, name="imported_pose"):
    """The Keras functional model for `graph` whose outputs are `heads` (bpnet.imports.graph.Heads)."""
    rename = {}
    for k, (heat, paf) in enumerate(zip(heads.heatmaps, heads.pafs), 1):
        rename[heat], rename[paf] = f"stage{k}_heatmaps", f"stage{k}_pafs"
    wanted = needed_nodes(graph, [n for pair in zip(heads.heatmaps, heads.pafs) for n in pair])
    image = tf.keras.Input(shape=(None, None, 3), name="input")
    tensors = {graph.input: image}
    by_name = {}
    for node in graph.nodes:
        if node.name not in wanted:
            continue
        inputs = [tensors[t] for t in node.inputs]
        tensors[node.output] = _layer(node, inputs, rename.get(node.name, node.name))
        by_name[node.name] = tensors[node.output]
    outputs = [by_name[n] for pair in zip(heads.heatmaps, heads.pafs) for n in pair]
    return tf.keras.Model(image, outputs, name=name)


def needed_nodes(graph, names):
    """Names of the nodes the given nodes depend on (themselves included)."""
    by_output = {n.output: n for n in graph.nodes}
    by_name = {n.name: n for n in graph.nodes}
    todo, seen = list(names), set()
    while todo:
        node = by_name[todo.pop()]
        if node.name in seen:
            continue
        seen.add(node.name)
        todo += [by_output[t].name for t in node.inputs if t in by_output]
    return seen


def _layer(node, inputs, name):
    p = node.params
    if node.kind == "conv":
        kernel = p["kernel"]
        layer = L.Conv2D(kernel.shape[3], kernel.shape[:2], strides=p["strides"], padding=p["padding"],
                         dilation_rate=p["dilation"], use_bias=p["bias"] is not None, name=name)
        x = layer(inputs[0])
        layer.set_weights([kernel] + ([p["bias"]] if p["bias"] is not None else []))
        return _activation(x, p["activation"], name)
    if node.kind == "depthwise":
        kernel = p["kernel"]
        layer = L.DepthwiseConv2D(kernel.shape[:2], strides=p["strides"], padding=p["padding"],
                                  depth_multiplier=kernel.shape[3], dilation_rate=p["dilation"],
                                  use_bias=p["bias"] is not None, name=name)
        x = layer(inputs[0])
        layer.set_weights([kernel] + ([p["bias"]] if p["bias"] is not None else []))
        return _activation(x, p["activation"], name)
    if node.kind == "batch_norm":
        layer = L.BatchNormalization(epsilon=p["epsilon"], name=name)
        x = layer(inputs[0])
        layer.set_weights([p["gamma"], p["beta"], p["mean"], p["variance"]])
        return x
    if node.kind == "add":
        return _activation(L.Add(name=name)(inputs), p.get("activation", "none"), name)
    if node.kind == "concat":
        return L.Concatenate(axis=-1, name=name)(inputs)
    if node.kind == "relu":
        return L.ReLU(max_value=p.get("max_value"), name=name)(inputs[0])
    if node.kind == "max_pool":
        return L.MaxPooling2D(p["pool"], p["strides"], padding=p["padding"], name=name)(inputs[0])
    if node.kind == "pad":
        return L.ZeroPadding2D(p["pads"], name=name)(inputs[0])
    if node.kind == "resize":
        return _resize(inputs[0], p["factor"], p["mode"], name)
    raise BpnetError(f"internal: no Keras layer for node kind {node.kind!r} ({node.source_op})")


def _activation(x, activation, name):
    if activation == "none":
        return x
    if activation == "relu":
        return L.ReLU(name=f"{name}_relu")(x)
    if activation == "relu6":
        return L.ReLU(max_value=6.0, name=f"{name}_relu6")(x)
    raise BpnetError(f"internal: unknown activation {activation!r} on {name}")


def _resize(x, factor, mode, name):
    if mode == "nearest":
        return L.UpSampling2D(factor, interpolation="nearest", name=name)(x)
    if mode == "half_pixel_bilinear":
        return L.UpSampling2D(factor, interpolation="bilinear", name=name)(x)
    if mode == "legacy_bilinear" and tuple(factor) == (2, 2):
        x = L.UpSampling2D(2, interpolation="nearest", name=name)(x)
        return L.AveragePooling2D(2, strides=1, padding="same", name=f"{name}_interpolate")(x)
    raise BpnetError(f"resize {name}: bilinear resize by {tuple(factor)} without half-pixel centres is "
                     "supported for a factor of 2 only")
