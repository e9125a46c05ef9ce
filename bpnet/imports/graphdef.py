"""Frozen TensorFlow graph front end: a GraphDef `.pb` -> SourceGraph.

The protobuf is parsed as data (`GraphDef.ParseFromString`); constants are read with
`tensor_util.MakeNdarray`; nothing from the file runs while importing. Constant-only
sub-expressions (an unfused batch norm's rsqrt(variance + eps) * gamma, ...) are evaluated with
numpy for a small set of arithmetic ops; a per-channel Mul/Add/Sub/BiasAdd after a conv is
folded into its filters, and a ReLU/ReLU6 into the op before it when nothing else reads that
op's output. The parity check later runs the graph in TensorFlow, but only after every node has
been checked to be one of the supported (pure arithmetic) ops.
"""

from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.imports.graph import Node, SourceGraph, infer_channels, keras_name

LAYER_OPS = ("Conv2D", "DepthwiseConv2dNative", "FusedBatchNorm", "FusedBatchNormV2",
             "FusedBatchNormV3", "Relu", "Relu6", "Add", "AddV2", "BiasAdd", "Mul", "Sub",
             "ConcatV2", "MaxPool", "ResizeBilinear", "ResizeNearestNeighbor", "Pad")
ALIAS_OPS = ("Identity", "StopGradient")
CONST_OPS = {"Rsqrt": lambda a: 1 / np.sqrt(a), "Sqrt": np.sqrt, "Reciprocal": lambda a: 1 / a,
             "Mul": np.multiply, "Add": np.add, "AddV2": np.add, "Sub": np.subtract,
             "RealDiv": np.divide}
SUPPORTED_OPS = ("Placeholder", "Const") + ALIAS_OPS + LAYER_OPS + tuple(CONST_OPS)
HANDLERS = {"Conv2D": "_conv2d", "DepthwiseConv2dNative": "_depthwise", "FusedBatchNorm": "_batch_norm",
            "FusedBatchNormV2": "_batch_norm", "FusedBatchNormV3": "_batch_norm", "Relu": "_relu",
            "Relu6": "_relu6", "Add": "_add", "AddV2": "_add", "BiasAdd": "_add", "Mul": "_mul",
            "Sub": "_sub", "ConcatV2": "_concat", "MaxPool": "_maxpool", "ResizeBilinear": "_resize",
            "ResizeNearestNeighbor": "_resize_nearest", "Pad": "_pad"}


def parse_graphdef(path):
    """The GraphDef protobuf of a .pb file, or a BpnetError naming the file."""
    import bpnet  # noqa: F401
    from tensorflow.core.framework import graph_pb2
    from google.protobuf.message import DecodeError

    path = Path(path)
    graph_def = graph_pb2.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as err:
        raise BpnetError(f"{path} could not be read as a frozen TensorFlow graph (GraphDef .pb; "
                         f"truncated or corrupt?): {err}") from None
    if not graph_def.node:
        raise BpnetError(f"{path} holds no graph nodes (not a frozen GraphDef .pb)")
    return graph_def


def check_ops(path, graph_def):
    bad = [(n.op, n.name) for n in graph_def.node if n.op not in SUPPORTED_OPS]
    if bad:
        op, name = bad[0]
        raise BpnetError(f"{path}: TensorFlow op {op} (node {name!r}) is not supported; supported ops: "
                         f"{', '.join(SUPPORTED_OPS)}" + (f" ({len(bad)} unsupported nodes)" if len(bad) > 1 else ""))


def read_graphdef(path, output_name=None, fallback_hw=None):
    """Parse a frozen graph into a SourceGraph whose output is `output_name` (default: the one
    node nothing else reads)."""
    from tensorflow.python.framework import tensor_util

    path = Path(path)
    graph_def = parse_graphdef(path)
    check_ops(path, graph_def)
    nodes = {n.name: n for n in graph_def.node}
    inputs = [n for n in graph_def.node if n.op == "Placeholder"]
    if len(inputs) != 1:
        raise BpnetError(f"{path}: expected one image input (Placeholder), found {[n.name for n in inputs]}")
    image = inputs[0].name
    dims = [d.size for d in inputs[0].attr["shape"].shape.dim]
    input_hw = tuple(dims[1:3]) if len(dims) == 4 and min(dims[1:3]) > 0 else fallback_hw
    if input_hw is None:
        raise BpnetError(f"{path}: the input has no fixed size; give input.training_hw in the model card")
    output = output_name or _sink(graph_def)

    reader = _Reader(path, nodes, image, tensor_util)
    reader.visit(output)
    graph = SourceGraph(image, tuple(input_hw), reader.nodes, [reader.resolve(output)], {image: dims[-1] if dims else 3})
    _fold_activations(graph)
    resize_factors(graph)
    infer_channels(graph)
    return graph


def _sink(graph_def):
    read = {_base(i) for n in graph_def.node for i in n.input}
    sinks = [n.name for n in graph_def.node if n.name not in read and n.op not in ("Const", "Placeholder")]
    if len(sinks) != 1:
        raise BpnetError(f"the graph has several outputs {sinks}: name the one holding heatmaps "
                         "and PAFs in the model card (output.tensor)")
    return sinks[0]


def _base(name):
    return name.lstrip("^").split(":")[0]


class _Reader:
    """Walks the graph from the output, turning TF nodes into SourceGraph nodes (inputs first)."""

    def __init__(self, path, nodes, image, tensor_util):
        self.path, self.tf_nodes, self.image, self.tensor_util = path, nodes, image, tensor_util
        self.nodes, self.constants, self.alias, self.done, self.taken = [], {}, {}, set(), set()
        self.sizes = {}   # tensor -> (H, W)

    def resolve(self, name):
        name = _base(name)
        while name in self.alias:
            name = self.alias[name]
        return name

    def constant(self, name):
        name = self.resolve(name)
        return self.constants.get(name)

    def visit(self, name):
        stack = [_base(name)]
        while stack:
            current = stack[-1]
            if current in self.done:
                stack.pop()
                continue
            if current not in self.tf_nodes:
                raise BpnetError(f"{self.path}: node {current!r} is referenced but not in the graph")
            pending = [_base(i) for i in self.tf_nodes[current].input
                       if not i.startswith("^") and _base(i) not in self.done]
            if pending:
                stack += pending
                continue
            stack.pop()
            self.convert(self.tf_nodes[current])
            self.done.add(current)

    def convert(self, tf_node):
        op, name = tf_node.op, tf_node.name
        ins = [_base(i) for i in tf_node.input if not i.startswith("^")]
        where = f"TensorFlow {op} {name!r}"
        if op == "Placeholder":
            return
        if op == "Const":
            self.constants[name] = self.tensor_util.MakeNdarray(tf_node.attr["value"].tensor)
            return
        if op in ALIAS_OPS:
            self.alias[name] = ins[0]
            return
        values = [self.constant(i) for i in ins]
        if op in CONST_OPS and all(v is not None for v in values):
            self.constants[name] = CONST_OPS[op](*[v.astype(np.float32) for v in values])
            return
        if op not in LAYER_OPS:
            raise BpnetError(f"{self.path}: {where}: op {op} on activations is not supported")
        data = [self.resolve(i) for i, v in zip(ins, values) if v is None]
        handler = getattr(self, HANDLERS[op])
        handler(tf_node, name, ins, data, values, where)

    # -- helpers
    def _attr_str(self, tf_node, key, default=""):
        return tf_node.attr[key].s.decode() if key in tf_node.attr else default

    def _nhwc(self, tf_node, where):
        fmt = self._attr_str(tf_node, "data_format", "NHWC")
        if fmt != "NHWC":
            raise BpnetError(f"{self.path}: {where}: data_format {fmt} is not supported (NHWC only)")

    def _add_node(self, kind, tf_name, inputs, params, where):
        node = Node(keras_name(tf_name, self.taken), kind, inputs, tf_name, params, where)
        self.nodes.append(node)
        return node

    def _producer(self, tensor):
        return next((n for n in self.nodes if n.output == tensor), None)

    def _readers(self, tensor):
        """TF nodes reading `tensor`, not counting those already folded into it (aliases)."""
        return [n for n in self.tf_nodes.values() if self.resolve(n.name) != tensor
                and tensor in [self.resolve(i) for i in n.input]]

    # -- layers
    def _conv2d(self, tf_node, name, ins, data, values, where, kind="conv"):
        self._nhwc(tf_node, where)
        kernel = values[1]
        if kernel is None or len(data) != 1:
            raise BpnetError(f"{self.path}: {where}: its filter is not a constant")
        padding = self._attr_str(tf_node, "padding")
        if padding not in ("SAME", "VALID"):
            raise BpnetError(f"{self.path}: {where}: padding {padding} is not supported (SAME, VALID)")
        strides = list(tf_node.attr["strides"].list.i) or [1, 1, 1, 1]
        dil = list(tf_node.attr["dilations"].list.i) or [1, 1, 1, 1]
        self._add_node(kind, name, data, dict(kernel=kernel.astype(np.float32), bias=None,
                                              strides=(strides[1], strides[2]), padding=padding.lower(),
                                              dilation=(dil[1], dil[2]), activation="none"), where)

    def _depthwise(self, *args):
        self._conv2d(*args, kind="depthwise")

    def _batch_norm(self, tf_node, name, ins, data, values, where):
        self._nhwc(tf_node, where)
        if tf_node.attr["is_training"].b:
            raise BpnetError(f"{self.path}: {where}: is_training=True; freeze the graph for inference")
        gamma, beta, mean, var = (v.astype(np.float32) if v is not None else None for v in values[1:5])
        if any(v is None for v in (gamma, beta, mean, var)):
            raise BpnetError(f"{self.path}: {where}: its parameters are not constants")
        self._add_node("batch_norm", name, data[:1], dict(gamma=gamma, beta=beta, mean=mean, variance=var,
                                                          epsilon=float(tf_node.attr["epsilon"].f or 1e-3)), where)

    def _relu(self, tf_node, name, ins, data, values, where):
        self._add_node("relu", name, data, dict(max_value=None), where)

    def _relu6(self, tf_node, name, ins, data, values, where):
        self._add_node("relu", name, data, dict(max_value=6.0), where)

    def _add(self, tf_node, name, ins, data, values, where):
        if len(data) == 2:
            self._add_node("add", name, data, dict(activation="none"), where)
        else:
            self._affine(name, data, values, where, scale=None, shift=next(v for v in values if v is not None))

    def _sub(self, tf_node, name, ins, data, values, where):
        if len(data) != 1 or values[1] is None:
            raise BpnetError(f"{self.path}: {where}: only activation - constant is supported")
        self._affine(name, data, values, where, scale=None, shift=-values[1])

    def _mul(self, tf_node, name, ins, data, values, where):
        if len(data) != 1:
            raise BpnetError(f"{self.path}: {where}: a product of two activations is not supported")
        self._affine(name, data, values, where, scale=next(v for v in values if v is not None), shift=None)

    def _affine(self, name, data, values, where, scale, shift):
        """x * scale or x + shift per channel: folded into the conv before it when only this op
        reads the conv, else a 1x1 depthwise conv (exact)."""
        tensor = data[0]
        producer = self._producer(tensor)
        foldable = (producer is not None and producer.kind in ("conv", "depthwise")
                    and producer.params["activation"] == "none" and len(self._readers(tensor)) == 1)
        if foldable:
            p = producer.params
            out = p["kernel"].shape[3] if producer.kind == "conv" else p["kernel"].shape[2] * p["kernel"].shape[3]
            bias = p["bias"] if p["bias"] is not None else np.zeros(out, np.float32)
            if scale is not None:
                s = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (out,))
                shape = p["kernel"].shape   # conv: cout is the last axis; depthwise: C * mult
                p["kernel"] = (p["kernel"].reshape(*shape[:2], -1) * s if producer.kind == "depthwise"
                               else p["kernel"] * s).reshape(shape)
                bias = bias * s
            if shift is not None:
                bias = bias + np.broadcast_to(np.asarray(shift, np.float32).reshape(-1), (out,))
            p["bias"] = bias.astype(np.float32)
            self.alias[name] = tensor
            return
        raise BpnetError(f"{self.path}: {where}: a per-channel scale/shift that does not follow a "
                         "conv is not supported")

    def _concat(self, tf_node, name, ins, data, values, where):
        axis = values[-1]
        if axis is None or int(axis) not in (3, -1):
            raise BpnetError(f"{self.path}: {where}: concatenation on axis {axis}; only channels (3)")
        self._add_node("concat", name, data, {}, where)

    def _maxpool(self, tf_node, name, ins, data, values, where):
        self._nhwc(tf_node, where)
        k, s = list(tf_node.attr["ksize"].list.i), list(tf_node.attr["strides"].list.i)
        self._add_node("max_pool", name, data, dict(pool=(k[1], k[2]), strides=(s[1], s[2]),
                                                    padding=self._attr_str(tf_node, "padding").lower()), where)

    def _pad(self, tf_node, name, ins, data, values, where):
        pads = values[1].astype(int)
        if pads[0].any() or pads[3].any():
            raise BpnetError(f"{self.path}: {where}: padding of the batch or channel axis is not supported")
        self._add_node("pad", name, data, dict(pads=(tuple(pads[1]), tuple(pads[2]))), where)

    def _resize(self, tf_node, name, ins, data, values, where, nearest=False):
        if tf_node.attr["align_corners"].b:
            raise BpnetError(f"{self.path}: {where}: align_corners=True is not supported")
        size = values[1]
        if size is None:
            raise BpnetError(f"{self.path}: {where}: the output size is not a constant")
        half = tf_node.attr["half_pixel_centers"].b
        mode = "nearest" if nearest else ("half_pixel_bilinear" if half else "legacy_bilinear")
        self._add_node("resize", name, data, dict(size=tuple(int(v) for v in size), mode=mode), where)

    def _resize_nearest(self, *args):
        self._resize(*args, nearest=True)


def _fold_activations(graph):
    """ReLU/ReLU6 into the conv/depthwise/add before it when nothing else reads that output."""
    readers = {}
    for n in graph.nodes:
        for i in n.inputs:
            readers[i] = readers.get(i, 0) + 1
    by_output = {n.output: n for n in graph.nodes}
    kept = []
    for node in graph.nodes:
        src = by_output.get(node.inputs[0]) if node.kind == "relu" else None
        if (src is not None and src.kind in ("conv", "depthwise", "add")
                and src.params.get("activation") == "none" and readers.get(src.output) == 1
                and node.output not in graph.outputs):
            src.params["activation"] = "relu6" if node.params["max_value"] == 6.0 else "relu"
            _rename_input(graph, node.output, src.output)
            continue
        kept.append(node)
    graph.nodes[:] = kept


def _rename_input(graph, old, new):
    for n in graph.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]


def resize_factors(graph):
    """Turn each resize's constant output size into an integer factor, from the spatial sizes
    the graph has at its own input size."""
    sizes = {graph.input: graph.input_hw}
    for node in graph.nodes:
        h, w = sizes[node.inputs[0]]
        p = node.params
        if node.kind in ("conv", "depthwise", "max_pool"):
            k = p["kernel"].shape[:2] if node.kind != "max_pool" else p["pool"]
            d = p.get("dilation", (1, 1))
            s = p["strides"]
            if p["padding"] == "same":
                h, w = -(-h // s[0]), -(-w // s[1])
            else:
                h = -(-(h - (k[0] - 1) * d[0]) // s[0])
                w = -(-(w - (k[1] - 1) * d[1]) // s[1])
        elif node.kind == "pad":
            (t, b), (l, r) = p["pads"]
            h, w = h + t + b, w + l + r
        elif node.kind == "resize":
            out_h, out_w = p.pop("size")
            if out_h % h or out_w % w or out_h // h != out_w // w:
                raise BpnetError(f"{node.source_op}: resize from {h}x{w} to {out_h}x{out_w} is not an "
                                 "integer upsampling")
            p["factor"] = (out_h // h, out_w // w)
            h, w = out_h, out_w
        sizes[node.output] = (h, w)
    return graph
