"""Which channels every tensor of a functional Keras model keeps: a walk over the model's config
and weights (plain dicts and numpy arrays), no TensorFlow.

Channel bookkeeping uses "channel spaces": a convolution creates a new space (its output
channels); channel-wise layers (activations, pooling, padding, resizing, BatchNorm, ...) pass
their input's space on, and so does a depthwise convolution (depth multiplier 1): it filters each
channel on its own, so it keeps exactly the channels its producer keeps. As in TAO, its own
per-channel kernel norms are ranked too and merged with its producer's by the `-eq` criterion
(TAO equalises a depthwise conv with its prunable parent): with `union` a channel stays when
either the pointwise filter making it or the depthwise filter reading it is strong — in a graph
whose BatchNorms were folded into the convs, the depthwise kernel carries the channel's scale.
An element-wise op (Add, Multiply, ...) ties its inputs' spaces into one group that must keep the
same channels (a residual chain of MobileNetV2 blocks becomes one group); a channel
concatenation is a composite of its inputs' spaces. A space is *fixed* (keeps all channels) when it
reaches a model output, an excluded layer, a layer this module does not understand, or the network
input. Each unfixed group then keeps the filters chosen by the ranking rule applied to the merged
statistics (`-eq`) of its convolutions.

`plan_pruning` returns the decision; `sliced_weights` gives each layer's weights restricted to its
kept channels, and `pruned_param_count` the parameter count of the pruned model — both from numpy
arrays, so the decision can be previewed without building a Keras model.
"""

from dataclasses import dataclass

import numpy as np

from bpnet.errors import BpnetError
from bpnet.limits import (DEFAULT_PRUNE_GRANULARITY, DEFAULT_PRUNE_MIN_FILTERS, DEFAULT_PRUNE_THRESHOLD, EQUALIZATIONS,
                          NORMALIZERS)
from bpnet.prune.ranking import filters_to_keep, merge_stats, rank_depthwise_filters, rank_filters

# Layers that transform each channel on its own: output channel c depends only on input channel c.
CHANNELWISE = {
    "ReLU", "LeakyReLU", "ELU", "PReLU", "ThresholdedReLU", "Activation", "MaxPooling2D",
    "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "UpSampling2D",
    "Resizing", "ZeroPadding2D", "Cropping2D", "Dropout", "SpatialDropout2D", "GaussianNoise",
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
        self.depthwise = []    # depthwise convs filtering this group's channels (ranked with it)

    def new(self, conv=None, fixed=False, children=None):
        self.parent.append(len(self.parent))
        self.fixed.append(fixed)
        self.convs.append([conv] if conv else [])
        self.children.append(list(children or []))
        self.depthwise.append([])
        return len(self.parent) - 1

    def add_depthwise(self, s, name):
        root = self.find(s)
        if not self.children[root]:   # a concatenation's channels are decided by its parts
            self.depthwise[root].append(name)

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
            self.depthwise[keep] += self.depthwise[other]
        return keep

    def roots(self):
        return sorted({self.find(s) for s in range(len(self.parent))})


@dataclass
class PruningPlan:
    """The decision: `kept[(layer, tensor index)]` = original channel indices kept in that
    output (None: all of an output whose width is unknown, e.g. a Dense layer's), and `groups`,
    the convolutions that were ranked together (one entry per group, tied groups have several)."""
    layers: list
    inbound: dict
    kept: dict
    widths: dict
    groups: list
    bias_shift: dict    # conv name: what its removed inputs contributed (see compensate.py)

    def filters(self, name):
        """(kept, total) output channels of a layer."""
        kept = self.kept[(name, 0)]
        total = self.widths[(name, 0)]
        return (total if kept is None else int(len(kept))), total

    def pruned_layers(self):
        """{name: (kept, total)} of every convolution and depthwise convolution."""
        return {entry["name"]: self.filters(entry["name"]) for entry in self.layers
                if is_prunable_conv(entry) or is_depthwise(entry)}


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


def is_depthwise(entry):
    """A depthwise convolution that keeps its input's channels one to one (multiplier 1)."""
    cfg = entry["config"]
    return (entry["class_name"] == "DepthwiseConv2D" and cfg.get("depth_multiplier", 1) == 1
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


def _num_outputs(entry):
    return 1 if entry["class_name"] != "Functional" else len(entry["config"]["output_layers"])


def tensor_widths(layers, inbound):
    """{(layer, tensor index): channel count, or None where this walk cannot know it}."""
    widths = {}
    for entry in layers:
        name, kind, cfg = entry["name"], entry["class_name"], entry["config"]
        sources = [widths[key] for key in inbound[name]]
        if kind == "InputLayer":
            shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
            width = shape[-1] if shape else None
        elif kind == "Conv2D":
            width = cfg["filters"]
        elif kind == "DepthwiseConv2D":
            width = None if sources[0] is None else sources[0] * cfg.get("depth_multiplier", 1)
        elif is_channelwise(entry) and len(sources) == 1:
            width = sources[0]
        elif kind in ELEMENTWISE and sources and None not in sources:
            width = max(sources)   # a 1-channel input broadcasts
        elif is_channel_concat(entry) and sources and None not in sources:
            width = sum(sources)
        else:
            width = None
        for t in range(_num_outputs(entry)):
            widths[(name, t)] = width
    return widths


def assign_spaces(layers, inbound, widths, excluded):
    """Channel space of every layer output and the union-find holding the groups."""
    spaces = _Spaces()
    space_of = {}
    for entry in layers:
        name, kind = entry["name"], entry["class_name"]
        inputs = [space_of[key] for key in inbound[name]]
        input_widths = [widths[key] for key in inbound[name]]
        if kind == "InputLayer":
            out = spaces.new(fixed=True)
        elif is_prunable_conv(entry):
            out = spaces.new(conv=name, fixed=name in excluded)
        elif name in excluded:
            # An excluded layer that is not a plain convolution keeps every channel it reads.
            out = _keep_whole(spaces, inputs)
        elif (is_channelwise(entry) or is_depthwise(entry)) and len(inputs) == 1:
            out = inputs[0]
            if is_depthwise(entry):
                spaces.add_depthwise(out, name)
        elif (kind in ELEMENTWISE and inputs and None not in input_widths
              and len(set(input_widths)) == 1):
            if any(spaces.is_composite(s) for s in inputs):
                for s in inputs:
                    spaces.fix(s)
            out = spaces.union(inputs)
        elif is_channel_concat(entry) and inputs and None not in input_widths:
            out = spaces.new(children=inputs)
        else:
            # Unknown layer (Dense, Reshape, a grouped conv, a broadcasting Add, a nested
            # model...): it keeps its weights as they are, so everything it reads stays whole.
            out = _keep_whole(spaces, inputs)
        for t in range(_num_outputs(entry)):
            space_of[(name, t)] = out
    return spaces, space_of


def _keep_whole(spaces, inputs):
    for s in inputs:
        spaces.fix(s)
    return spaces.new(fixed=True)


def choose_channels(weights, spaces, normalizer, equalization, threshold, granularity,
                    min_filters):
    """{group root: kept channel indices} for every group of convolutions that may be pruned,
    and the groups as lists of conv names."""
    decisions, groups = {}, []
    for root in spaces.roots():
        convs = spaces.convs[root]
        if not convs:
            continue
        groups.append((root, convs))
        if spaces.fixed[root]:
            continue
        stats = ([rank_filters(weights[c][0], normalizer) for c in convs]
                 + [rank_depthwise_filters(weights[d][0], normalizer) for d in spaces.depthwise[root]])
        merged = stats[0] if len(stats) == 1 else merge_stats(stats, equalization)
        decisions[root] = filters_to_keep(merged, threshold, granularity, min_filters)
    return decisions, groups


def kept_channels(layers, inbound, widths, spaces, space_of, decisions):
    """{(layer name, tensor index): original channel indices kept (None: all, width unknown)}."""
    kept = {}
    for entry in layers:
        name, kind = entry["name"], entry["class_name"]
        sources = [kept[key] for key in inbound[name]]
        for t in range(_num_outputs(entry)):
            root = spaces.find(space_of[(name, t)])
            if root in decisions:
                out = decisions[root]
            elif spaces.is_composite(root):
                if is_channel_concat(entry):
                    in_widths = [widths[key] for key in inbound[name]]
                    offsets = np.cumsum([0] + in_widths[:-1])
                    out = np.concatenate([k + off for k, off in zip(sources, offsets)])
                else:   # a layer passing a concatenation's channels on
                    out = sources[0]
            elif widths[(name, t)] is None:
                out = None
            else:
                out = np.arange(widths[(name, t)])
            kept[(name, t)] = None if out is None else np.asarray(out, dtype=np.int64)
    return kept


def model_weights_check(config, weights):
    """Every prunable conv must have its kernel in `weights` ({layer name: [arrays]})."""
    for entry in config["layers"]:
        if (is_prunable_conv(entry) or is_depthwise(entry)) and not weights.get(entry["name"]):
            raise BpnetError(f"layer {entry['name']!r} ({entry['class_name']}) has no weights")


def plan_pruning(config, weights, threshold=DEFAULT_PRUNE_THRESHOLD, equalization=EQUALIZATIONS[0],
                 granularity=DEFAULT_PRUNE_GRANULARITY, min_filters=DEFAULT_PRUNE_MIN_FILTERS,
                 normalizer=NORMALIZERS[0], excluded_layers=()):
    """The channels every layer keeps, from a functional model's config (`model.get_config()`)
    and weights ({layer name: list of numpy arrays, in `layer.get_weights()` order}).

    `excluded_layers` (and every layer whose output reaches a model output) keep all filters.
    """
    if "layers" not in config or "output_layers" not in config:
        raise BpnetError(f"model {config.get('name')!r} is not a functional Keras model; "
                         "pruning needs the layer graph")
    names = {entry["name"] for entry in config["layers"]}
    unknown = sorted(set(excluded_layers) - names)
    if unknown:
        convs = [entry["name"] for entry in config["layers"]
                 if entry["class_name"] in ("Conv2D", "DepthwiseConv2D")]
        raise BpnetError(f"excluded layers (-el): {', '.join(unknown)} not in the model; "
                         f"its convolution layers are: {', '.join(convs)}")
    model_weights_check(config, weights)
    layers, inbound = model_graph(config)
    widths = tensor_widths(layers, inbound)
    spaces, space_of = assign_spaces(layers, inbound, widths, set(excluded_layers))
    for item in config["output_layers"]:
        spaces.fix(space_of[(item[0], item[2])])
    decisions, groups = choose_channels(weights, spaces, normalizer, equalization, threshold,
                                        granularity, min_filters)
    kept = kept_channels(layers, inbound, widths, spaces, space_of, decisions)
    from bpnet.prune.compensate import bias_shifts   # here: compensate builds on this module
    position = {entry["name"]: k for k, entry in enumerate(layers)}   # groups read in graph order
    return PruningPlan(layers=layers, inbound=inbound, kept=kept, widths=widths,
                       bias_shift=bias_shifts(layers, inbound, kept, widths, weights),
                       groups=sorted((sorted(convs, key=position.get) for _, convs in groups),
                                     key=lambda convs: position[convs[0]]))


def has_bias(entry):
    return bool(entry["config"].get("use_bias", True))


def needs_bias(plan, entry):
    """A bias-free conv that must absorb its removed inputs' constants gets a bias."""
    return is_prunable_conv(entry) and not has_bias(entry) and entry["name"] in plan.bias_shift


def _take(array, index, axis):
    return array if index is None else np.take(array, index, axis=axis)


def sliced_weights(plan, entry, weights):
    """The layer's weights (numpy arrays) restricted to its kept input and output channels."""
    name = entry["name"]
    arrays = weights.get(name) or []
    if not arrays:
        return arrays
    if is_prunable_conv(entry) or is_depthwise(entry):
        in_kept = plan.kept[plan.inbound[name][0]]
        kernel = _take(arrays[0], in_kept, axis=2)
        out_kept = plan.kept[(name, 0)]
        if not is_prunable_conv(entry):
            return [kernel] + [_take(w, out_kept, axis=0) for w in arrays[1:]]
        kernel = _take(kernel, out_kept, axis=3)
        if name not in plan.bias_shift:
            return [kernel] + [_take(w, out_kept, axis=0) for w in arrays[1:]]
        shift = _take(plan.bias_shift[name], out_kept, axis=0)
        bias = _take(arrays[1], out_kept, axis=0) if has_bias(entry) else 0.0
        return [kernel, np.asarray(bias + shift, dtype=kernel.dtype)]
    if is_channelwise(entry) and plan.inbound[name]:
        out_kept = plan.kept[(name, 0)]
        return [_take(w, out_kept, axis=w.ndim - 1) for w in arrays]
    return arrays


def pruned_param_count(plan, weights):
    """Parameters of the pruned model (every weight, trainable or not, as Keras counts them)."""
    return int(sum(w.size for entry in plan.layers for w in sliced_weights(plan, entry, weights)))


def count_params(weights):
    return int(sum(np.asarray(w).size for arrays in weights.values() for w in arrays))
