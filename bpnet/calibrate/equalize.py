"""Exact rescaling of a float ONNX graph so that per-tensor INT8 activations keep small signals.

A Concat gives all its inputs one quantization scale, its output's. In an OpenPose/BodyPoseNet
head every refinement stage reads concat(previous PAFs, previous heatmaps, backbone features):
on the bundled MobileNetV2 the features span about +-36 and the PAFs +-1 (99% of them within
+-0.11), so uint8 steps of 72/255 = 0.28 turn the PAFs and heatmaps each stage passes on into
zeros and single steps - the later stages refine from noise.

The fix changes no float result: a concat input computed by a Conv that feeds nothing else is
multiplied by s (that Conv's weights and bias), and every reader of the Concat - Convs, which
weigh each input channel separately (depthwise: one filter per channel) - divides its weights of
those channels by s. With s = (largest input's |x| max) / (this input's), every input spans the
concat's range and keeps its share of the 256 levels. Zero padding stays zero, so any kernel
size and padding is exact. Readers of another kind (or grouped convs other than depthwise) leave
the concat as it is.

`equalize_concat_inputs(model, abs_max)` edits a ModelProto in place (pure numpy on its
initializers) and returns what it scaled.
"""

import numpy as np

MIN_GAIN = 2.0       # rescale an input only when it gains at least this factor in levels


def _graph_maps(graph):
    producers = {out: node for node in graph.node for out in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producers, consumers


def _attribute(node, name, default):
    for attr in node.attribute:
        if attr.name == name:
            return attr.i
    return default


def _conv_weight(node, inits):
    """(weight name, bias name or None) of a Conv whose weight (and bias) are initializers."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias not in inits:
        return None
    return node.input[1], bias


def _channel_slices(node, inits, offsets):
    """How reader `node` (a Conv) weighs concat channels [start, stop): a function
    (weights, start, stop, factor) -> weights, or None when the channels cannot be rescaled."""
    names = _conv_weight(node, inits)
    if names is None:
        return None
    weight = inits[names[0]]
    group = _attribute(node, "group", 1)
    channels = offsets[-1]
    if group == 1 and weight.shape[1] == channels:
        def scale(w, start, stop, factor):
            w[:, start:stop] *= factor
        return scale
    if group == channels and weight.shape[1] == 1:              # depthwise, any channel multiplier
        multiplier = weight.shape[0] // channels

        def scale(w, start, stop, factor):
            w[start * multiplier:stop * multiplier] *= factor
        return scale
    return None


def equalize_concat_inputs(model, abs_max, min_gain=MIN_GAIN):
    """Rescale the Conv-computed inputs of every channel Concat of `model` (NCHW, axis 1) up to
    the range of its widest input; `abs_max`: {tensor name: max |x| on calibration data}.
    Returns [{"concat", "input", "producer", "scale"}] of what was rescaled."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {init.name: numpy_helper.to_array(init).astype(np.float32) for init in graph.initializer}
    uses = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    producers, consumers = _graph_maps(graph)
    outputs = {o.name for o in graph.output}
    changed, done = set(), []
    for concat in [n for n in graph.node if n.op_type == "Concat" and _attribute(n, "axis", 0) in (1, -3)]:
        widths = [_channels(name, producers, inits) for name in concat.input]
        readers = consumers.get(concat.output[0], [])
        if None in widths or not readers or concat.output[0] in outputs:
            continue
        offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
        scalers = [_channel_slices(reader, inits, offsets) for reader in readers]
        if any(s is None for s in scalers):
            continue
        target = max(abs_max.get(name, 0.0) for name in concat.input)
        for index, name in enumerate(concat.input):
            producer = producers.get(name)
            amax = abs_max.get(name, 0.0)
            names = _conv_weight(producer, inits) if producer is not None else None
            if names is None or amax <= 0 or target / amax < min_gain or name in outputs \
                    or len(consumers.get(name, [])) != 1 or any(uses[n] != 1 for n in names if n):
                continue
            factor = float(target / amax)
            weight, bias = names
            inits[weight] *= factor
            if bias is not None:
                inits[bias] *= factor
            for reader, scale in zip(readers, scalers):
                own = _own_weight(reader, inits, uses, graph, changed)
                scale(inits[own], offsets[index], offsets[index + 1], 1.0 / factor)
                changed.add(own)
            changed.update(n for n in names if n)
            done.append({"concat": concat.name, "input": name, "producer": producer.name, "scale": factor})
    for init in graph.initializer:
        if init.name in changed:
            init.CopyFrom(numpy_helper.from_array(inits[init.name], init.name))
    return done


def _own_weight(reader, inits, uses, graph, changed):
    """The reader's weight initializer, copied first when another node shares it."""
    from onnx import numpy_helper

    name = reader.input[1]
    if uses.get(name, 0) > 1:
        copy = f"{name}__equalized_{reader.name}"
        inits[copy] = inits[name].copy()
        graph.initializer.append(numpy_helper.from_array(inits[copy], copy))
        uses[name] -= 1
        uses[copy] = 1
        reader.input[1] = copy
        return copy
    return name


def _channels(name, producers, inits):
    """Channel count of tensor `name` from its producer's weights (Conv) or, for a Concat, the
    sum of its inputs'; None when unknown."""
    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "Conv":
        names = _conv_weight(node, inits)
        return None if names is None else int(inits[names[0]].shape[0])
    if node.op_type == "Concat" and _attribute(node, "axis", 0) in (1, -3):
        parts = [_channels(i, producers, inits) for i in node.input]
        return None if None in parts else int(sum(parts))
    if node.op_type in ("Relu", "Clip", "Add", "MaxPool", "AveragePool", "Resize", "Identity"):
        return _channels(node.input[0], producers, inits)
    return None


def equalize_onnx_file(onnx_path, data, chunk_size=2, progress=None):
    """One statistics pass of the float ONNX at `onnx_path` over `data`; when rescaling concat
    inputs gains levels the file is rewritten with them (atomically; the same outputs) and its
    statistics are collected again. Returns (statistics of the file as it now is, [rescaled])."""
    import onnx

    from bpnet.calibrate.graph_stats import collect_stats
    from bpnet.fileio import atomic_path

    stats = collect_stats(onnx_path, data, chunk_size, progress)
    model = onnx.load(str(onnx_path))
    scaled = equalize_concat_inputs(model, {name: s.abs_max for name, s in stats.items()})
    if not scaled:
        return stats, scaled
    with atomic_path(onnx_path) as tmp:
        onnx.save(model, str(tmp))
    return collect_stats(onnx_path, data, chunk_size, progress), scaled
