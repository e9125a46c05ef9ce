"""Structured pruning of a functional Keras model: plan which channels each tensor keeps, then
rebuild the model from its config with fewer filters and copy the sliced weights.

Channel bookkeeping uses "channel spaces": a convolution creates a new space (its output
channels); channel-wise layers (activations, pooling, BatchNorm, ...) pass their input's space on;
an element-wise op (Add, Multiply, ...) ties its inputs' spaces into one group that must keep the
same channels; a concatenation is a composite of its inputs' spaces. A space is *fixed* (keeps all
channels) when it reaches a model output, an excluded layer, a layer this module does not
understand, or the network input. Each unfixed group then keeps the filters chosen by the ranking
rule applied to the merged statistics of its convolutions.

Only the model's config and weights are read; the input model object is never changed.
"""

import numpy as np

from bpnet.errors import BpnetError
from bpnet.prune.ranking import filters_to_keep, merge_stats, rank_filters

# Layers that transform each channel on its own: output channel c depends only on input channel c.
CHANNELWISE = {
    "ReLU", "LeakyReLU", "ELU", "PReLU", "ThresholdedReLU", "Activation", "MaxPooling2D",
    "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "UpSampling2D",
    "ZeroPadding2D", "Cropping2D", "Dropout", "SpatialDropout2D", "GaussianNoise",
    "GaussianDropout", "ActivityRegularization", "BatchNormalization",
}
# Activations that mix channels are not channel-wise (a softmax over fewer channels differs).
CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax"}
ELEMENTWISE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}


class _Spaces:
    """Union-find over channel spaces, with a fixed flag and the convolutions of each group."""

    def __init__(self):
        self.parent = []
        self.fixed = []
        self.convs = []        # conv layer names whose outputs are this group's channels
        self.children = []     # for a concatenation: the spaces it is made of

    def new(self, conv=None, fixed=False, children=None):
        self.parent.append(len(self.parent))
        self.fixed.append(fixed)
        self.convs.append([conv] if conv else [])
        self.children.append(list(children or []))
        return len(self.parent) - 1

    def find(self, s):
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def is_composite(self, s):
        return bool(self.children[self.find(s)])

    def fix(self, s):
        root = self.find(s)
        self.fixed[root] = True
        for child in self.children[root]:
            self.fix(child)

    def union(self, spaces):
        roots = [self.find(s) for s in spaces]
        keep = roots[0]
        for other in roots[1:]:
            if other == keep:
                continue
            self.parent[other] = keep
            self.fixed[keep] = self.fixed[keep] or self.fixed[other]
            self.convs[keep] += self.convs[other]
        return keep


def model_graph(config):
    """(layers in topological order, {name: [(inbound layer, tensor index)]}) of a functional
    model config; shared layers (called more than once) are rejected."""
    layers = {entry["name"]: entry for entry in config["layers"]}
    inbound = {}
    for name, entry in layers.items():
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) > 1:
            raise BpnetError(f"layer {name!r} is used {len(nodes)} times (a shared layer); "
                             "pruning supports only layers used once")
        if nodes and "__keras_tensor__" in str(nodes[0]):
            raise BpnetError(f"layer {name!r} ({entry['class_name']}) takes tensors as keyword "
                             "arguments; pruning cannot trace its inputs")
        inbound[name] = [(item[0], item[2]) for item in nodes[0]] if nodes else []
    order, done = [], set()

    def visit(name):
        if name in done:
            return
        for parent, _ in inbound[name]:
            visit(parent)
        done.add(name)
        order.append(name)

    for name in layers:
        visit(name)
    return [layers[name] for name in order], inbound


def is_prunable_conv(entry):
    cfg = entry["config"]
    return (entry["class_name"] == "Conv2D" and cfg.get("groups", 1) == 1
            and cfg.get("data_format", "channels_last") == "channels_last")


def is_channelwise(entry):
    cfg = entry["config"]
    if entry["class_name"] == "BatchNormalization":
        axis = cfg.get("axis")
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        return axis in (-1, 3)
    if entry["class_name"] == "Activation":
        return cfg.get("activation") not in CHANNEL_MIXING_ACTIVATIONS
    if entry["class_name"] == "PReLU":
        return cfg.get("shared_axes") is None or 3 not in cfg["shared_axes"]
    return entry["class_name"] in CHANNELWISE


def is_channel_concat(entry):
    return entry["class_name"] == "Concatenate" and entry["config"].get("axis") in (-1, 3)


def assign_spaces(config, excluded):
    """Channel space of every layer output and the union-find holding the groups."""
    layers, inbound = model_graph(config)
    spaces = _Spaces()
    space_of = {}
    for entry in layers:
        name, kind = entry["name"], entry["class_name"]
        inputs = [space_of[(parent, t)] for parent, t in inbound[name]]
        if kind == "InputLayer":
            out = spaces.new(fixed=True)
        elif is_prunable_conv(entry):
            out = spaces.new(conv=name, fixed=name in excluded)
        elif is_channelwise(entry) and len(inputs) == 1:
            out = inputs[0]
        elif kind in ELEMENTWISE and inputs:
            if any(spaces.is_composite(s) for s in inputs):
                for s in inputs:
                    spaces.fix(s)
            out = spaces.union(inputs)
        elif is_channel_concat(entry):
            out = spaces.new(children=inputs)
        else:
            # Unknown layer (Dense, Reshape, a grouped conv, a nested model...): it keeps its
            # weights as they are, so everything it reads keeps every channel.
            for s in inputs:
                spaces.fix(s)
            out = spaces.new(fixed=True)
        for t in range(_num_outputs(entry)):
            space_of[(name, t)] = out
    for item in config["output_layers"]:
        spaces.fix(space_of[(item[0], item[2])])
    return layers, inbound, spaces, space_of


def _num_outputs(entry):
    return 1 if entry["class_name"] != "Functional" else len(entry["config"]["output_layers"])


def choose_channels(model, spaces, normalizer, equalization, threshold, granularity, min_filters):
    """{group root: kept channel indices} for every group of convolutions that may be pruned."""
    decisions = {}
    for root in sorted({spaces.find(s) for s in range(len(spaces.parent))}):
        convs = spaces.convs[root]
        if spaces.fixed[root] or not convs:
            continue
        stats = [rank_filters(model.get_layer(c).get_weights()[0], normalizer) for c in convs]
        merged = stats[0] if len(stats) == 1 else merge_stats(stats, equalization)
        decisions[root] = filters_to_keep(merged, threshold, granularity, min_filters)
    return decisions


def kept_channels(model, layers, inbound, spaces, space_of, decisions):
    """{(layer name, tensor index): original channel indices kept in that output}."""
    kept = {}
    for entry in layers:
        name, kind = entry["name"], entry["class_name"]
        sources = [kept[key] for key in inbound[name]]
        for t in range(_num_outputs(entry)):
            root = spaces.find(space_of[(name, t)])
            if root in decisions:
                out = decisions[root]
            elif is_channel_concat(entry):
                widths = [_channels(model, parent, pt) for parent, pt in inbound[name]]
                offsets = np.cumsum([0] + widths[:-1])
                out = np.concatenate([k + off for k, off in zip(sources, offsets)])
            elif (is_channelwise(entry) or kind in ELEMENTWISE) and sources:
                out = sources[0]
            else:
                out = np.arange(_channels(model, name, t))
            kept[(name, t)] = np.asarray(out, dtype=np.int64)
    return kept


def _channels(model, layer_name, tensor_index):
    shape = model.get_layer(layer_name).output_shape
    if isinstance(shape, list):
        shape = shape[tensor_index]
    return int(shape[-1])


def pruned_config(config, layers, kept):
    """The model config with each convolution's filter count set to the channels it keeps."""
    new_layers = []
    for entry in layers:
        entry = {**entry, "config": dict(entry["config"])}
        # The recorded build shape is the unpruned one; layers rebuild from their real inputs.
        entry.pop("build_config", None)
        if is_prunable_conv(entry):
            entry["config"]["filters"] = int(len(kept[(entry["name"], 0)]))
        new_layers.append(entry)
    return {**config, "layers": new_layers}


def sliced_weights(model, entry, inbound, kept):
    """The layer's weights restricted to its kept input and output channels."""
    name = entry["name"]
    weights = model.get_layer(name).get_weights()
    if not weights:
        return weights
    if is_prunable_conv(entry):
        in_kept = kept[inbound[name][0]]
        out_kept = kept[(name, 0)]
        kernel = weights[0][:, :, in_kept, :][..., out_kept]
        return [kernel] + [w[out_kept] for w in weights[1:]]
    if is_channelwise(entry):
        out_kept = kept[(name, 0)]
        return [w[..., out_kept] for w in weights]
    return weights


def prune_keras_model(model, threshold=0.1, equalization="union", granularity=8, min_filters=16,
                      normalizer="max", excluded_layers=()):
    """A new, smaller functional model and {conv name: (kept, total)}.

    `excluded_layers` (and every layer whose output reaches a model output) keep all filters.
    """
    import tensorflow as tf

    config = model.get_config()
    if "layers" not in config or "output_layers" not in config:
        raise BpnetError(f"model {model.name!r} is not a functional Keras model; "
                         "pruning needs the layer graph")
    names = {entry["name"] for entry in config["layers"]}
    unknown = sorted(set(excluded_layers) - names)
    if unknown:
        raise BpnetError(f"excluded layers (-el): {', '.join(unknown)} not in the model; "
                         f"its convolution layers are: {', '.join(conv_layer_names(model))}")
    layers, inbound, spaces, space_of = assign_spaces(config, set(excluded_layers))
    decisions = choose_channels(model, spaces, normalizer, equalization, threshold, granularity,
                                min_filters)
    kept = kept_channels(model, layers, inbound, spaces, space_of, decisions)
    new_model = tf.keras.Model.from_config(pruned_config(config, layers, kept))
    for entry in layers:
        weights = sliced_weights(model, entry, inbound, kept)
        if weights:
            new_model.get_layer(entry["name"]).set_weights(weights)
    per_layer = {
        entry["name"]: (int(len(kept[(entry["name"], 0)])), _channels(model, entry["name"], 0))
        for entry in layers if is_prunable_conv(entry)
    }
    return new_model, per_layer


def conv_layer_names(model):
    return [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"]
