"""The importers' common language: a source network as a list of layer-like nodes with numpy weights.

Every front end (TFLite, frozen GraphDef) turns its file into a `SourceGraph`; one builder
(bpnet.imports.keras_build) turns that into our Keras model. Between the two, pure numpy steps
find the stage output convs and fold the model card's channel map into their filters:

    file --front end--> SourceGraph --find_heads, apply_channel_map--> SourceGraph --> Keras

Node kinds and their params (weights as float32 numpy arrays, HWIO like Keras):
  conv       kernel (kh, kw, cin, cout), bias (cout,) | None, strides, padding, dilation, activation
  depthwise  kernel (kh, kw, cin, mult), bias | None, strides, padding, dilation, activation
  batch_norm gamma, beta, mean, variance, epsilon
  add        activation                       concat  (channels-last axis only)
  relu       max_value (None | 6.0)           max_pool  pool, strides, padding
  resize     factor, mode ("legacy_bilinear" | "half_pixel_bilinear" | "nearest")
  pad        pads ((top, bottom), (left, right))
`activation` is "none", "relu" or "relu6".
"""

from dataclasses import dataclass, field

import numpy as np

from bpnet.errors import BpnetError

KINDS = ("conv", "depthwise", "batch_norm", "add", "concat", "relu", "max_pool", "resize", "pad")


@dataclass
class Node:
    name: str            # a Keras-safe layer name taken from the source
    kind: str
    inputs: list         # activation tensor names (constants are already in params)
    output: str
    params: dict = field(default_factory=dict)
    source_op: str = ""  # the source's op type and node name, for error messages

    @property
    def out_channels(self):
        if self.kind == "conv":
            return self.params["kernel"].shape[-1]
        if self.kind == "depthwise":
            return self.params["kernel"].shape[2] * self.params["kernel"].shape[3]
        return None


@dataclass
class SourceGraph:
    input: str                 # the image input tensor
    input_hw: tuple            # (H, W) the source was built for, or None
    nodes: list                # topological order
    outputs: list              # the source's output tensors
    channels: dict             # tensor -> number of channels, where known

    def producer(self, tensor):
        return next((n for n in self.nodes if n.output == tensor), None)

    def consumers(self, tensor):
        return [n for n in self.nodes if tensor in n.inputs]


def keras_name(source_name, taken):
    """A unique Keras layer name from a source tensor/op name ('a/b:0' -> 'a_b')."""
    base = source_name.split(":")[0].replace("/", "_").replace(" ", "_").strip("_") or "layer"
    base = "".join(c if c.isalnum() or c in "_.-" else "_" for c in base)
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def infer_channels(graph):
    """Fill graph.channels for every node output (needs the input's channels)."""
    ch = graph.channels
    for node in graph.nodes:
        if node.out_channels is not None:
            ch[node.output] = node.out_channels
        elif node.kind == "concat":
            ch[node.output] = sum(ch[i] for i in node.inputs)
        else:
            ch[node.output] = ch[node.inputs[0]]
    return graph


# ---------------------------------------------------------------- stage outputs

@dataclass(frozen=True)
class Heads:
    heatmaps: tuple   # node names of the heatmap output convs, stage 1 first
    pafs: tuple


def find_heads(graph, num_heatmaps, num_pafs, output_tensor=None):
    """The stage output convs: convs without activation whose channel counts are the card's.

    The source's output (a concat of the last heatmap and PAF convs, or those convs themselves)
    must be reached by the last pair, so a non-pose network fails here with a clear message.
    """
    output = output_tensor or (graph.outputs[0] if len(graph.outputs) == 1 else None)
    if output is None:
        raise BpnetError(f"the source has several outputs {graph.outputs}: name the one holding "
                         "heatmaps and PAFs in the model card (output.tensor)")
    if output not in graph.channels:
        raise BpnetError(f"model card output.tensor {output!r} is not a tensor of the source "
                         f"(outputs: {graph.outputs})")
    want = num_heatmaps + num_pafs
    if graph.channels[output] != want:
        raise BpnetError(f"source output {output!r} has {graph.channels[output]} channels; the model "
                         f"card describes {num_heatmaps} heatmaps + {num_pafs} PAF channels = {want}. "
                         "Is this a pose network of the kind the card describes?")
    linear_convs = [n for n in graph.nodes if n.kind == "conv" and n.params["activation"] == "none"]
    heat = [n.name for n in linear_convs if n.out_channels == num_heatmaps]
    paf = [n.name for n in linear_convs if n.out_channels == num_pafs]
    if not heat or len(heat) != len(paf):
        raise BpnetError(f"could not find the stage outputs: expected pairs of linear convs with "
                         f"{num_heatmaps} and {num_pafs} channels, found {len(heat)} and {len(paf)}")
    last = {graph.producer(t).name for t in _concat_sources(graph, output)}
    if not {heat[-1], paf[-1]} <= last:
        raise BpnetError(f"source output {output!r} is not made of the last heatmap conv {heat[-1]!r} "
                         f"and PAF conv {paf[-1]!r}")
    return Heads(tuple(heat), tuple(paf))


def _concat_sources(graph, tensor):
    node = graph.producer(tensor)
    if node is not None and node.kind == "concat":
        return [t for i in node.inputs for t in _concat_sources(graph, i)]
    return [tensor]


def output_offsets(graph, output_tensor, heads):
    """Channel offset of the last heatmap and PAF conv inside the source output."""
    offsets, position = {}, 0
    for t in _concat_sources(graph, output_tensor):
        offsets[graph.producer(t).name] = position
        position += graph.channels[t]
    return offsets[heads.heatmaps[-1]], offsets[heads.pafs[-1]]


# ---------------------------------------------------------------- channel maps folded into weights

def apply_channel_map(graph, tensor, perm, sign):
    """Reorder/negate the channels of `tensor` to new[j] = sign[j] * old[perm[j]], exactly.

    The producer's filters (a conv) or the graph input (for a colour swap) change, and every
    consumer is compensated: a conv absorbs the change in its input weights; a depthwise conv
    or batch norm absorbs the sign and passes the reordering on; concat, ReLU, pooling, resize
    and pad pass a pure reordering on. Anything else is an error naming the node.
    """
    perm = np.asarray(perm, np.int64)
    sign = np.asarray(sign, np.float32)
    producer = graph.producer(tensor)
    if producer is not None:
        if producer.kind != "conv":
            raise BpnetError(f"channel map: {tensor!r} is made by {producer.source_op}, not a conv")
        p = producer.params
        p["kernel"] = p["kernel"][..., perm] * sign
        if p["bias"] is not None:
            p["bias"] = p["bias"][perm] * sign
    _compensate(graph, tensor, perm, sign)


def _compensate(graph, tensor, perm, sign):
    if np.array_equal(perm, np.arange(len(perm))) and np.all(sign == 1):
        return
    for node in graph.consumers(tensor):
        p = node.params
        if node.kind == "conv":
            p["kernel"] = p["kernel"][:, :, perm, :] * sign[:, None]
        elif node.kind == "depthwise":
            p["kernel"] = p["kernel"][:, :, perm, :] * sign[:, None]
            if p["bias"] is not None:
                mult = p["kernel"].shape[3]
                p["bias"] = p["bias"].reshape(-1, mult)[perm].reshape(-1)
            mult = p["kernel"].shape[3]
            out_perm = (perm[:, None] * mult + np.arange(mult)).reshape(-1)
            _compensate(graph, node.output, out_perm, np.ones(len(out_perm), np.float32))
        elif node.kind == "batch_norm":
            p["gamma"], p["mean"] = p["gamma"][perm] * sign, p["mean"][perm] * sign
            p["beta"], p["variance"] = p["beta"][perm], p["variance"][perm]
            _compensate(graph, node.output, perm, np.ones(len(perm), np.float32))
        elif node.kind == "concat":
            offset = sum(graph.channels[i] for i in node.inputs[:node.inputs.index(tensor)])
            total = graph.channels[node.output]
            full_perm, full_sign = np.arange(total), np.ones(total, np.float32)
            full_perm[offset:offset + len(perm)] = offset + perm
            full_sign[offset:offset + len(perm)] = sign
            _compensate(graph, node.output, full_perm, full_sign)
        elif node.kind in ("relu", "max_pool", "resize", "pad") and np.all(sign == 1):
            _compensate(graph, node.output, perm, sign)
        else:
            raise BpnetError(f"channel map: the channels of {tensor!r} are also used by "
                             f"{node.source_op} ({node.kind}), which cannot absorb a "
                             f"{'sign flip' if np.any(sign != 1) else 'reordering'}; "
                             "this network needs the source's own channel order")
