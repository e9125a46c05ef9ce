"""ONNX imports stay ONNX: the source graph, wrapped so it speaks our contract.

The wrapper adds nodes around the untouched source graph: an NHWC BGR input named `input`
(Transpose to NCHW and a colour Gather when the source wants that), and after the source's
output a Gather + Mul per map that apply the card's channel map, giving outputs `heatmaps` and
`pafs` (N, H/8, W/8, C) as every backend expects. There is no trainable graph: pruning,
retraining and QAT refuse it (bpnet.model.load_keras_model); export, INT8, evaluate, gate and
bench work on it like on an exported file.
"""

import time
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.fileio import atomic_path, write_json_atomic, write_text_atomic
from bpnet.imports import parity
from bpnet.imports.card import (bgr_normalization, card_path_for, card_to_yaml, map_source_output,
                                set_onnx_card, skeleton_map)
from bpnet.skeleton import load_skeleton

INPUT, HEATMAPS, PAFS = "input", "heatmaps", "pafs"


def load_source(path):
    import onnx

    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as err:  # onnx raises DecodeError, ValidationError, ... for bad files
        raise BpnetError(f"{path} could not be read as an ONNX model (truncated or corrupt?): "
                         f"{type(err).__name__}: {err}") from None
    return proto


def _dims(value_info):
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value_info.type.tensor_type.shape.dim]


def source_layout(proto, path):
    """'NHWC' or 'NCHW' from the one image input's shape."""
    init = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    if len(inputs) != 1 or len(_dims(inputs[0])) != 4:
        raise BpnetError(f"{path}: expected one 4-D image input, found {[(i.name, _dims(i)) for i in inputs]}")
    dims = _dims(inputs[0])
    if dims[3] == 3:
        return inputs[0].name, "NHWC"
    if dims[1] == 3:
        return inputs[0].name, "NCHW"
    raise BpnetError(f"{path}: input {inputs[0].name!r} has shape {dims}; expected 3 colour channels "
                     "first (NCHW) or last (NHWC)")


def wrap(proto, card, skeleton, path):
    """A copy of `proto` with our input and outputs (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    source_input, layout = source_layout(model, path)
    outputs = [o.name for o in graph.output]
    out_name = card.output.tensor or (outputs[0] if len(outputs) == 1 else None)
    if out_name not in outputs:
        raise BpnetError(f"{path}: the source's outputs are {outputs}; name the one holding heatmaps "
                         "and PAFs in the model card (output.tensor)")
    out_dims = _dims(next(o for o in graph.output if o.name == out_name))
    channels = out_dims[1] if layout == "NCHW" else out_dims[-1]
    if channels is not None and channels != card.num_source_channels:
        raise BpnetError(f"{path}: output {out_name!r} has {channels} channels; the model card describes "
                         f"{card.num_source_channels} (heatmaps + PAFs). Is this a pose network of that kind?")
    heat_src, heat_sign, paf_src, paf_sign = skeleton_map(card, skeleton)

    nodes, inits = [], []
    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name
    x = INPUT
    if card.input.colour_order == "RGB":
        nodes.append(helper.make_node("Gather", [x, const("bpnet_bgr_to_rgb", np.array([2, 1, 0], np.int64))],
                                      ["bpnet_input_rgb"], axis=3))
        x = "bpnet_input_rgb"
    if layout == "NCHW":
        nodes.append(helper.make_node("Transpose", [x], ["bpnet_input_nchw"], perm=[0, 3, 1, 2]))
        x = "bpnet_input_nchw"
    nodes.append(helper.make_node("Identity", [x], [source_input]))
    y = out_name
    if layout == "NCHW":
        nodes_after = [helper.make_node("Transpose", [y], ["bpnet_output_nhwc"], perm=[0, 2, 3, 1])]
        y = "bpnet_output_nhwc"
    else:
        nodes_after = []
    for name, src, sign in ((HEATMAPS, heat_src, heat_sign), (PAFS, paf_src, paf_sign)):
        nodes_after += [
            helper.make_node("Gather", [y, const(f"bpnet_{name}_channels", src.astype(np.int64))],
                             [f"bpnet_{name}_gathered"], axis=3),
            helper.make_node("Mul", [f"bpnet_{name}_gathered", const(f"bpnet_{name}_signs", sign.astype(np.float32))],
                             [name])]
    # Our input has the source's sizes (fixed or symbolic), in NHWC order.
    dims = _dims(next(i for i in graph.input if i.name == source_input))
    n, h, w = (dims[0], dims[2], dims[3]) if layout == "NCHW" else dims[:3]
    # The batch stays open (calibration and evaluation batch images); the source's own shape
    # hints are dropped so ONNX Runtime infers them again for any batch size.
    shape = ["N", h or "H", w or "W", 3]
    del graph.value_info[:]
    old_inputs = [i for i in graph.input if i.name != source_input]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, shape)] + old_inputs)
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body + nodes_after)
    graph.initializer.extend(inits)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(name, TensorProto.FLOAT, [shape[0], "h", "w", channels])
                         for name, channels in ((HEATMAPS, len(heat_src)), (PAFS, len(paf_src)))])
    return model, out_name, layout, source_input


def run_onnx(proto, feeds, outputs):
    """Outputs for a batch, one image at a time (sources often fix the batch to 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (name, batch), = feeds.items()
    per_image = [session.run(outputs, {name: batch[i:i + 1]}) for i in range(len(batch))]
    return [np.concatenate([r[k] for r in per_image]) for k in range(len(outputs))]


def import_onnx(source, output, card, log=print):
    start = time.perf_counter()
    skeleton = load_skeleton(card.skeleton)
    proto = load_source(source)
    wrapped, out_name, layout, source_input = wrap(proto, card, skeleton, source)
    log(f"read {source}: {len(proto.graph.node)} ONNX nodes ({layout} input), kept as ONNX")
    hw = tuple(card.input.training_hw)
    check = parity.bundled_check_images(skeleton)
    batch, boxes = parity.prepare(check.images, hw, bgr_normalization(card))
    source_batch = batch[..., [2, 1, 0]] if card.input.colour_order == "RGB" else batch
    if layout == "NCHW":
        source_batch = source_batch.transpose(0, 3, 1, 2)
    raw = run_onnx(proto, {source_input: np.ascontiguousarray(source_batch, np.float32)}, [out_name])[0]
    if layout == "NCHW":
        raw = raw.transpose(0, 2, 3, 1)
    theirs = map_source_output(raw, card, skeleton)
    ours = run_onnx(wrapped, {INPUT: batch.astype(np.float32)}, [HEATMAPS, PAFS])
    diff = parity.check_parity(ours, theirs, f"ONNX Runtime on {source}")
    log(f"parity with ONNX Runtime on {len(batch)} real images at {hw[0]}x{hw[1]}: max |diff| = {diff:.2e}")
    response = parity.check_response(
        parity.keypoint_response(theirs[0], boxes, check.parts, card.input.stride), "the model card")
    log(f"keypoint response with the card's preprocessing: {response:.3f} on {check.source}")
    set_onnx_card(wrapped, card)
    report = {"source": str(source), "source_kind": "onnx", "source_sha256": card.source_sha256,
              "output": str(output), "layout": layout,
              "parity": {"max_abs_diff": diff, "tolerance": parity.PARITY_TOLERANCE, "input_hw": list(hw),
                         "images": check.source, "runtime": "onnxruntime"},
              "keypoint_response": response, "seconds": round(time.perf_counter() - start, 1)}
    output = Path(output)
    write_json_atomic(output.with_name(output.stem + ".import.json"), report)
    write_text_atomic(card_path_for(output), card_to_yaml(card))
    import onnx
    with atomic_path(output) as tmp:
        onnx.save(wrapped, str(tmp))
    log(f"wrote {output} (+ {card_path_for(output).name})")
    return report


def export_imported_onnx(model_path, output_path, input_hw, stage=None, sdk_compatible=False):
    """`bpnet export` of an ONNX import: the FP32 file is the import itself (checked to run at
    `input_hw`), ready for FP16/INT8 like any export."""
    import onnx

    if sdk_compatible:
        raise BpnetError(f"--sdk_compatible_model: not available for the ONNX import {model_path}")
    if stage is not None:
        raise BpnetError(f"--stage {stage}: the ONNX import {model_path} exposes only its final maps")
    proto = load_source(model_path)
    outputs = [o.name for o in proto.graph.output]
    if outputs != [HEATMAPS, PAFS]:
        raise BpnetError(f"{model_path}: outputs {outputs}; import ONNX sources with `bpnet import` first")
    batch = np.zeros((1, *input_hw, 3), np.float32)
    try:
        run_onnx(proto, {INPUT: batch}, outputs)
    except Exception as err:  # ONNX Runtime's own error types: a size the graph cannot take
        raise BpnetError(f"{model_path} does not run at {input_hw[0]}x{input_hw[1]}: {err}") from None
    keep = {p.key: p.value for p in proto.metadata_props}
    keep.update({"bpnet_input_hw": f"{input_hw[0]},{input_hw[1]}", "bpnet_sdk_compatible": "false"})
    onnx.helper.set_model_props(proto, keep)
    with atomic_path(output_path) as tmp:
        onnx.save(proto, str(tmp))
    return {"model": str(model_path), "onnx": str(output_path), "input_hw": list(input_hw), "stage": None,
            "num_stages": 1, "opset": proto.opset_import[0].version, "batch_size": "dynamic",
            "max_abs_diff": 0.0, "sdk_compatible": False, "seconds": 0.0}
