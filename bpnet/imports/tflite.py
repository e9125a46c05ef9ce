"""TFLite front end: a .tflite flatbuffer -> SourceGraph.

The flatbuffer is read by tf2onnx's TFLite parser (`tf2onnx.tflite_utils`), which gives every
operator with its options as attributes and every constant as an array; nothing from the file
is executed. Weight-only quantised files (int8 weights behind DEQUANTIZE ops) are dequantised
here: w = (q - zero_point) * scale, per tensor or per channel. Files with quantised activations
(full-integer models) are refused: their float behaviour is not defined by the file.
"""

from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.imports.graph import Node, SourceGraph, infer_channels, keras_name

SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "CONCATENATION", "RESIZE_BILINEAR",
                 "RESIZE_NEAREST_NEIGHBOR", "MAX_POOL_2D", "PAD", "RELU", "RELU6", "DEQUANTIZE")
ACTIVATIONS = {"NONE": "none", "RELU": "relu", "RELU6": "relu6"}
TFLITE_IDENTIFIER = b"TFL3"


def read_tflite(path):
    """Parse a .tflite file into a SourceGraph, or raise a BpnetError naming the file."""
    from onnx import helper, numpy_helper
    from tf2onnx import tflite_utils

    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise BpnetError(f"{path} is not a TFLite file (no 'TFL3' flatbuffer identifier)")
    try:
        graphs, opcodes, model, shapes = tflite_utils.read_tflite_model(str(path))
        parsed = tflite_utils.parse_tflite_graph(graphs[-1], opcodes, model, tensor_shapes_override=shapes)
    except Exception as err:  # a truncated flatbuffer fails anywhere inside the parser
        raise BpnetError(f"{path} could not be read as a TFLite model (truncated or corrupt?): "
                         f"{type(err).__name__}: {err}") from None
    onnx_nodes, _, _, out_shapes, _, inputs, outputs, _ = parsed
    if len(inputs) != 1:
        raise BpnetError(f"{path}: expected one image input, the file has {inputs}")
    constants, ops = {}, []
    for n in onnx_nodes:
        if n.op_type == "Const":
            constants[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
            continue
        attrs = {a.name: _plain(helper.get_attribute_value(a)) for a in n.attribute}
        if n.op_type != "Placeholder":
            ops.append((n.op_type.removeprefix("TFL_"), list(n.input), list(n.output), attrs))
    return _to_graph(path, ops, constants, out_shapes, inputs[0], outputs)


def _plain(value):
    return value.decode() if isinstance(value, bytes) else value


def _to_graph(path, ops, constants, shapes, image, outputs):
    unsupported = [(op, outs[0]) for op, _, outs, _ in ops if op not in SUPPORTED_OPS]
    if unsupported:
        op, node = unsupported[0]
        raise BpnetError(f"{path}: TFLite op {op} (node {node!r}) is not supported; supported ops: "
                         f"{', '.join(SUPPORTED_OPS)}" + (f" ({len(unsupported)} unsupported nodes)"
                                                          if len(unsupported) > 1 else ""))
    taken, nodes = set(), []
    for op, ins, outs, attrs in ops:
        where = f"TFLite {op} {outs[0]!r}"
        if op == "DEQUANTIZE":
            if ins[0] not in constants:
                raise BpnetError(f"{path}: {where} dequantises an activation; full-integer TFLite "
                                 "models are not supported (use a float or weight-only quantised file)")
            constants[outs[0]] = _dequantize(constants[ins[0]], attrs)
            continue
        if any(i in constants for i in ins[:1]):
            raise BpnetError(f"{path}: {where} has a constant data input; not supported")
        nodes.append(_node(path, op, ins, outs[0], attrs, constants, shapes, taken, where))
    input_hw = tuple(shapes[image][1:3]) if shapes.get(image) and len(shapes[image]) == 4 else None
    channels = {image: shapes[image][-1] if shapes.get(image) else 3}
    if channels[image] != 3:
        raise BpnetError(f"{path}: the input {image!r} has {channels[image]} channels; an image (3) expected")
    graph = SourceGraph(image, input_hw, nodes, list(outputs), channels)
    return infer_channels(graph)


def _dequantize(q, attrs):
    scale = np.asarray(attrs["scale"], np.float32)
    zero = np.asarray(attrs["zero_point"], np.float32)
    axis = int(attrs.get("quantized_dimension", 0))
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    return (q.astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape)


def _node(path, op, ins, out, attrs, constants, shapes, taken, where):
    activation = ACTIVATIONS.get(attrs.get("fused_activation_function", "NONE"))
    if activation is None:
        raise BpnetError(f"{path}: {where}: fused activation {attrs['fused_activation_function']} "
                         f"is not supported (only {', '.join(ACTIVATIONS)})")
    if op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        weights = constants.get(ins[1])
        if weights is None:
            raise BpnetError(f"{path}: {where}: its weights are not constant")
        bias = constants[ins[2]].astype(np.float32) if len(ins) > 2 and ins[2] in constants else None
        name = keras_name(ins[1].rsplit("/", 1)[0], taken)
        common = dict(bias=bias, strides=(attrs["stride_h"], attrs["stride_w"]),
                      padding=attrs["padding"].lower(), activation=activation,
                      dilation=(attrs.get("dilation_h_factor", 1), attrs.get("dilation_w_factor", 1)))
        if op == "CONV_2D":   # OHWI -> HWIO
            kernel = np.transpose(weights.astype(np.float32), (1, 2, 3, 0))
            return Node(name, "conv", [ins[0]], out, dict(kernel=kernel, **common), where)
        mult = int(attrs.get("depth_multiplier", 1)) or 1
        kh, kw, total = weights.shape[1:]          # (1, kh, kw, C*mult) -> (kh, kw, C, mult)
        kernel = weights.astype(np.float32).reshape(kh, kw, total // mult, mult)
        return Node(name, "depthwise", [ins[0]], out, dict(kernel=kernel, **common), where)
    name = keras_name(out, taken)
    if op == "ADD":
        return Node(name, "add", ins, out, dict(activation=activation), where)
    if op == "CONCATENATION":
        rank = len(shapes.get(out) or [0, 0, 0, 0])
        if attrs["axis"] not in (-1, rank - 1):
            raise BpnetError(f"{path}: {where}: concatenation on axis {attrs['axis']}; only channels")
        return Node(name, "concat", ins, out, {}, where)
    if op in ("RELU", "RELU6"):
        return Node(name, "relu", ins[:1], out, dict(max_value=6.0 if op == "RELU6" else None), where)
    if op == "MAX_POOL_2D":
        return Node(name, "max_pool", ins[:1], out, dict(
            pool=(attrs["filter_height"], attrs["filter_width"]),
            strides=(attrs["stride_h"], attrs["stride_w"]), padding=attrs["padding"].lower()), where)
    if op == "PAD":
        pads = constants[ins[1]].astype(int)
        if pads[0].any() or pads[3].any():
            raise BpnetError(f"{path}: {where}: padding of the batch or channel axis is not supported")
        return Node(name, "pad", ins[:1], out, dict(pads=(tuple(pads[1]), tuple(pads[2]))), where)
    # RESIZE_*: the size is a constant of the source resolution; we keep the scale factor so the
    # rebuilt model stays fully convolutional.
    in_shape, out_shape = shapes.get(ins[0]), shapes.get(out)
    factor = _resize_factor(in_shape, out_shape)
    if factor is None:
        raise BpnetError(f"{path}: {where}: resize from {in_shape} to {out_shape} is not an integer upsampling")
    if attrs.get("align_corners"):
        raise BpnetError(f"{path}: {where}: resize with align_corners=True is not supported")
    if op == "RESIZE_NEAREST_NEIGHBOR":
        mode = "nearest"
    else:
        mode = "half_pixel_bilinear" if attrs.get("half_pixel_centers") else "legacy_bilinear"
    return Node(name, "resize", ins[:1], out, dict(factor=factor, mode=mode), where)


def _resize_factor(in_shape, out_shape):
    if not in_shape or not out_shape or len(in_shape) != 4 or len(out_shape) != 4:
        return None
    fh, fw = out_shape[1] / in_shape[1], out_shape[2] / in_shape[2]
    if fh != int(fh) or fw != int(fw) or fh < 1:
        return None
    return int(fh), int(fw)


def float_reference(path):
    """The .tflite bytes with every hybrid (int8-weight, float-activation) op's weights
    dequantised to float32, so the TFLite interpreter runs float kernels.

    Weight-only quantised files let CONV_2D read int8 weights directly; TFLite then runs
    "hybrid" kernels that also quantise the activations on the fly, which no float model can
    match. The parity reference is the interpreter on this file with the weights dequantised
    exactly as the import does (explicit DEQUANTIZE ops are left as they are).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    dequantize_codes = {i for i, c in enumerate(model.operatorCodes)
                        if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE}
    for graph in model.subgraphs:
        read_by_dequantize = {op.inputs[0] for op in graph.operators if op.opcodeIndex in dequantize_codes}
        for index, tensor in enumerate(graph.tensors):
            buffer = model.buffers[tensor.buffer]
            if (index in read_by_dequantize or tensor.type != schema.TensorType.INT8
                    or tensor.quantization is None or buffer.data is None or not len(buffer.data)):
                continue
            q = np.frombuffer(bytes(bytearray(buffer.data)), np.int8).reshape(tensor.shape)
            attrs = {"scale": tensor.quantization.scale, "zero_point": tensor.quantization.zeroPoint,
                     "quantized_dimension": tensor.quantization.quantizedDimension}
            buffer.data = np.frombuffer(_dequantize(q, attrs).astype("<f4").tobytes(), np.uint8)
            tensor.type, tensor.quantization = schema.TensorType.FLOAT32, None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
