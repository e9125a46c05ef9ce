"""Keras BodyPoseNet -> ONNX (FP32, FP16, INT8 Q/DQ) and, where TensorRT exists, engines.

`export_onnx` converts one stage of a trained (or pruned) model with tf2onnx: input `input`
(N, H, W, 3) float32 with a dynamic batch and the fixed H, W given at export, outputs `heatmaps`
(N, H/8, W/8, 19) and `pafs` (N, H/8, W/8, 38), and checks the ONNX outputs against Keras.
`export_model` is the whole `bpnet export` verb: FP32 ONNX, then the FP16 copy, or INT8
calibration (cache + Q/DQ models), then the optional TensorRT engine.

The deployment variant (`sdk_compatible=True`, TAO's `--sdk_compatible_model`) appends fixed,
non-trainable post-processing to the graph for pipelines such as DeepStream; see `make_sdk_model`.
"""

import time
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.fileio import atomic_path, write_json_atomic
from bpnet.image_files import list_images
from bpnet.limits import CALIBRATORS, DEFAULT_CALIBRATOR, DEFAULT_PERCENTILE, STRIDE, calibration_count_problem
from bpnet.onnx_graph import onnx_session, sort_nodes_topologically
from bpnet.preprocess import check_input_hw

OPSET = 17
PARITY_TOLERANCE = 1e-3       # an export whose outputs differ more than this from Keras is refused
DATA_TYPES = ("fp32", "fp16", "int8")
DEFAULT_UPSAMPLE_RATIO = 4


def parse_input_dims(text):
    """'H,W,3' or 'H,W' -> (H, W), both positive multiples of the stride (8)."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise BpnetError(f"-d/--input_dims: {text!r} is not 'H,W,3' (integers)") from None
    if len(values) == 3 and values[2] != 3:
        raise BpnetError(f"-d/--input_dims: {text!r} has {values[2]} channels; BodyPoseNet takes 3 (H,W,3)")
    if len(values) not in (2, 3):
        raise BpnetError(f"-d/--input_dims: {text!r} is not 'H,W,3'")
    return check_input_hw(values[:2], "-d/--input_dims")


# ---------------------------------------------------------------- Keras -> ONNX

def keras_stage_model(model_path, stage=None):
    """(Keras model with outputs heatmaps, pafs of `stage`, number of stages of the file)."""
    from bpnet.model import load_model

    return stage_of(load_model(model_path), stage)


def stage_of(model, stage=None):
    from bpnet.model import num_stages, stage_model

    return stage_model(model, stage), num_stages(model)


def keras_to_onnx(keras_model, input_hw, batch_size=None, opset=OPSET):
    """tf2onnx conversion of a two-output stage model; the batch dimension is named `batch`."""
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec((batch_size, *input_hw, 3), tf.float32, name="input")]
    model_proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=spec, opset=opset)
    if batch_size is None:
        for value in list(model_proto.graph.input) + list(model_proto.graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    names = [o.name for o in model_proto.graph.output]
    if names != ["heatmaps", "pafs"]:
        raise BpnetError(f"ONNX conversion produced outputs {names}, expected ['heatmaps', 'pafs']")
    return model_proto


def parity_batch(input_hw, batch=2, seed=0):
    """Inputs in the range normalised images take (about -0.5..0.5)."""
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (batch, *input_hw, 3)).astype(np.float32)


def max_output_difference(keras_model, model_proto, batch):
    session = onnx_session(model_proto)
    onnx_out = session.run(["heatmaps", "pafs"], {"input": batch})
    keras_out = [np.asarray(o) for o in keras_model(batch, training=False)]
    return float(max(np.abs(a - b).max() for a, b in zip(onnx_out, keras_out)))


def export_onnx(model_path, output_path, input_hw, stage=None, batch_size=None, opset=OPSET,
                sdk_compatible=False, upsample_ratio=DEFAULT_UPSAMPLE_RATIO, progress=None,
                channels_first=False):
    """Write the ONNX of one stage of the Keras model at `model_path`; returns a summary dict
    (with `max_abs_diff`, the largest output difference from Keras on a test batch)."""
    from bpnet.model import load_model

    emit(progress, "export", "phase", message="loading the Keras model")
    from bpnet.imports.card import read_model_card

    if Path(model_path).suffix.lower() == ".onnx":   # an ONNX import (bpnet import)
        from bpnet.imports.onnx_source import export_imported_onnx
        return export_imported_onnx(model_path, output_path, input_hw, stage, sdk_compatible)
    summary = export_keras(load_model(model_path), output_path, input_hw, stage, batch_size, opset,
                           sdk_compatible, upsample_ratio, progress, channels_first,
                           card=read_model_card(model_path))
    return {"model": str(model_path), **summary}


def export_keras(model, output_path, input_hw, stage=None, batch_size=None, opset=OPSET,
                 sdk_compatible=False, upsample_ratio=DEFAULT_UPSAMPLE_RATIO, progress=None,
                 channels_first=False, card=None):
    """`export_onnx` for a BodyPoseNet already in memory (all stages; `stage` picks one).
    `channels_first` (TAO's `--data_format channels_first`) makes the input NCHW (N, 3, H, W);
    the SDK variant is always NCHW. `card`: the model card of an imported network, stored in
    the ONNX metadata."""
    import onnx

    input_hw = check_input_hw(input_hw, "input_hw")
    started = time.perf_counter()
    keras_model, stages = stage_of(model, stage)
    emit(progress, "export", "phase", message="converting to ONNX")
    proto = keras_to_onnx(keras_model, input_hw, batch_size, opset)
    diff = max_output_difference(keras_model, proto, parity_batch(input_hw, batch=batch_size or 2))
    if diff > PARITY_TOLERANCE:
        raise BpnetError(f"ONNX export differs from Keras by {diff:.2e} (allowed "
                         f"{PARITY_TOLERANCE:.0e}); the conversion is wrong for this model")
    if sdk_compatible:
        proto = make_sdk_model(proto, upsample_ratio)
    elif channels_first:
        nchw_input(proto.graph)
    # The ONNX Runtime backend reads which stage the file holds from here.
    onnx.helper.set_model_props(proto, {"bpnet_stage": str(stage or stages),
                                        "bpnet_input_hw": f"{input_hw[0]},{input_hw[1]}",
                                        "bpnet_sdk_compatible": str(bool(sdk_compatible)).lower()})
    if card is not None:
        from bpnet.imports.card import set_onnx_card
        set_onnx_card(proto, card)
    with atomic_path(output_path) as tmp:
        onnx.save(proto, str(tmp))
    return {"onnx": str(output_path), "input_hw": list(input_hw), "stage": stage or stages,
            "num_stages": stages, "opset": opset, "batch_size": batch_size or "dynamic",
            "max_abs_diff": diff, "sdk_compatible": bool(sdk_compatible),
            "input_layout": "NCHW" if sdk_compatible or channels_first else "NHWC",
            "seconds": round(time.perf_counter() - started, 3)}


# ---------------------------------------------------------------- FP16

def to_fp16(onnx_path, output_path):
    """An FP16 copy (weights and compute in float16, float32 input/outputs kept so it is a
    drop-in replacement for the FP32 file)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    # The converter appends the input/output Casts at the end of the node list.
    sort_nodes_topologically(model.graph)
    with atomic_path(output_path) as tmp:
        onnx.save(model, str(tmp))
    return Path(output_path)


# ---------------------------------------------------------------- deployment (SDK) variant

def make_sdk_model(model_proto, upsample_ratio=DEFAULT_UPSAMPLE_RATIO):
    """Append DeepStream-style post-processing to an exported stage graph.

    Changes (all fixed, non-trainable):
      - input `input` becomes NCHW (N, 3, H, W), the layout DeepStream's nvinfer feeds by default;
      - outputs become NCHW and upsampled by `upsample_ratio` (nearest, as TAO's identity-kernel
        transposed convolution does): `paf_out` (N, 2L, rH/8, rW/8), `heatmap_out` (N, P+1, ...),
        with the channel counts of the exported outputs (the skeleton's, 38 and 19 for COCO's 18 parts);
      - `heatmap_peaks`: `heatmap_out` where it is the maximum of its 3x3 neighbourhood, else 0
        (the max-pool NMS the pipeline's parser would otherwise run on the CPU).
    """
    import onnx
    from onnx import TensorProto, helper

    ratio = int(upsample_ratio)
    if not 1 <= ratio <= 8:
        raise BpnetError(f"--upsample_ratio: {upsample_ratio} is not an integer in 1..8")
    graph = model_proto.graph
    # (N, H/8, W/8, C) outputs: C was set by the model from its skeleton
    channels_of = {o.name: o.type.tensor_type.shape.dim[3].dim_value for o in graph.output}
    batch, height, width = nchw_input(graph)
    new_nodes = []
    graph.initializer.append(helper.make_tensor("sdk_scales", TensorProto.FLOAT, [4], [1.0, 1.0, ratio, ratio]))
    outputs = []
    for source, name in (("pafs", "paf_out"), ("heatmaps", "heatmap_out")):
        new_nodes += [
            helper.make_node("Transpose", [source], [f"{source}_nchw"], perm=[0, 3, 1, 2], name=f"sdk_{source}_to_nchw"),
            helper.make_node("Resize", [f"{source}_nchw", "", "sdk_scales"], [name], mode="nearest",
                             coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                             name=f"sdk_{source}_upsample"),
        ]
        outputs.append((name, channels_of[source]))
    new_nodes += [
        helper.make_node("MaxPool", ["heatmap_out"], ["heatmap_pooled"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], strides=[1, 1], name="sdk_nms_maxpool"),
        helper.make_node("Equal", ["heatmap_out", "heatmap_pooled"], ["heatmap_is_peak"], name="sdk_nms_equal"),
        helper.make_node("Cast", ["heatmap_is_peak"], ["heatmap_peak_mask"], to=TensorProto.FLOAT, name="sdk_nms_cast"),
        helper.make_node("Mul", ["heatmap_out", "heatmap_peak_mask"], ["heatmap_peaks"], name="sdk_nms_mul"),
    ]
    outputs.append(("heatmap_peaks", channels_of["heatmaps"]))
    graph.node.extend(new_nodes)
    out_hw = [height // STRIDE * ratio, width // STRIDE * ratio]
    del graph.output[:]
    for name, channels in outputs:
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, channels, *out_hw]))
    onnx.checker.check_model(model_proto)
    return model_proto


def nchw_input(graph):
    """Make the graph's NHWC input `input` an NCHW one (a Transpose in front); returns (N, H, W)."""
    from onnx import TensorProto, helper

    old_input = graph.input[0]
    dims = [d.dim_param or d.dim_value for d in old_input.type.tensor_type.shape.dim]   # (N, H, W, 3)
    nhwc_name = "input_nhwc"
    for node in graph.node:
        node.input[:] = [nhwc_name if name == old_input.name else name for name in node.input]
    graph.node.insert(0, helper.make_node("Transpose", ["input"], [nhwc_name], perm=[0, 2, 3, 1],
                                          name="sdk_input_to_nhwc"))
    batch, height, width = dims[0], dims[1], dims[2]
    graph.input.remove(old_input)
    graph.input.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, height, width]))
    return batch, height, width


# ---------------------------------------------------------------- the whole verb

def derived_paths(output_path):
    """Where the companions of `OUTPUT.onnx` go unless named on the command line."""
    output_path = Path(output_path)
    stem = output_path.with_suffix("")
    return {"fp16": Path(f"{stem}.fp16.onnx"), "int8": Path(f"{stem}.int8.onnx"),
            "int8_tensorrt": Path(f"{stem}.int8_trt.onnx"), "cal_cache": Path(f"{stem}.cal.bin"),
            "report": Path(f"{stem}.export.json")}


def export_model(model_path, output_path, input_hw, data_type="fp32", stage=None,
                 calibrator=DEFAULT_CALIBRATOR, percentile=DEFAULT_PERCENTILE, cal_image_dir=None, cal_data_file=None,
                 cal_cache_file=None, batch_size=1, batches=10, normalization=None,
                 engine_file=None, max_batch_size=None, max_workspace_size=None,
                 sdk_compatible=False, upsample_ratio=DEFAULT_UPSAMPLE_RATIO,
                 static_batch_size=None, progress=None, channels_first=False, strict_types=False,
                 opt_batch_size=None, optimize_for=None):
    """`bpnet export`: every check that needs no work first, then ONNX -> FP16/INT8 -> engine.
    `optimize_for` "cpu" pads channel counts when that measurably speeds ONNX Runtime up
    (bpnet.onnx_pad), "trt" leaves the layout to TensorRT; None = "trt" with --engine_file, else "cpu".
    Returns the report (also written to OUTPUT.export.json)."""
    from bpnet.onnx_pad import OPTIMIZE_FOR, choose_padding

    optimize_for = optimize_for or ("trt" if engine_file is not None else "cpu")
    if optimize_for not in OPTIMIZE_FOR:
        raise BpnetError(f"--optimize_for: {optimize_for!r} is not one of {', '.join(OPTIMIZE_FOR)}")
    if data_type not in DATA_TYPES:
        raise BpnetError(f"--data_type: {data_type!r} is not one of {', '.join(DATA_TYPES)}")
    input_hw = check_input_hw(input_hw, "-d/--input_dims")
    if not Path(model_path).is_file():
        raise BpnetError(f"model not found: {model_path}")
    if Path(output_path).suffix != ".onnx":
        raise BpnetError(f"-o/--output_file: {output_path} must end in .onnx")
    tensorrt_options = {"--engine_file": engine_file, "--max_batch_size": max_batch_size,
                        "--max_workspace_size": max_workspace_size}
    if any(v is not None for v in tensorrt_options.values()):
        from bpnet.backends.trt_backend import require_tensorrt
        require_tensorrt(", ".join(k for k, v in tensorrt_options.items() if v is not None))
    paths = derived_paths(output_path)
    cal_cache_file = Path(cal_cache_file) if cal_cache_file else paths["cal_cache"]
    if data_type == "int8":
        if calibrator not in CALIBRATORS:
            raise BpnetError(f"--calibrator: {calibrator!r} is not one of {', '.join(CALIBRATORS)}")
        has_data_file = cal_data_file is not None and Path(cal_data_file).is_file()
        if cal_image_dir is None and not has_data_file:
            raise BpnetError("--data_type int8 needs calibration images: give --cal_image_dir "
                             "(or an existing --cal_data_file)")
        if not has_data_file:
            problem = calibration_count_problem(len(list_images(cal_image_dir, "--cal_image_dir")),
                                                batch_size, batches)
            if problem:
                raise BpnetError(f"--cal_image_dir: {cal_image_dir} {problem}; add images or lower the batches")

    report = {"model": str(model_path), "data_type": data_type}
    report["export"] = export_onnx(model_path, output_path, input_hw, stage, static_batch_size,
                                   sdk_compatible=sdk_compatible, upsample_ratio=upsample_ratio,
                                   progress=progress, channels_first=channels_first)
    if sdk_compatible:   # an NCHW DeepStream graph: TensorRT's, not ONNX Runtime's
        report["channel_padding"] = {"optimize_for": optimize_for, "padded": False,
                                     "reason": "the SDK variant is for TensorRT/DeepStream"}
    else:
        emit(progress, "export", "phase", message=f"channel layout for {optimize_for}")
        report["channel_padding"] = choose_padding(output_path, optimize_for,
                                                   batch_size=static_batch_size or 1)
    engine_source = Path(output_path)
    if data_type == "fp16":
        report["fp16_onnx"] = str(to_fp16(output_path, paths["fp16"]))
        engine_source = paths["fp16"]
    if data_type == "int8":
        normalization = _card_normalization(model_path, normalization)
        report["int8"] = int8_artifacts(output_path, input_hw, calibrator, percentile, cal_image_dir,
                                        cal_data_file, cal_cache_file, batch_size, batches,
                                        normalization, paths, progress, channels_first)
        engine_source = paths["int8_tensorrt"]
    if engine_file is not None:
        from bpnet.backends.trt_backend import build_engine
        emit(progress, "export", "phase", message="building the TensorRT engine")
        report["engine"] = build_engine(
            onnx_path=output_path, qdq_or_fp16_onnx_path=engine_source, engine_path=engine_file,
            precision=data_type, input_hw=input_hw, max_batch_size=max_batch_size or max(1, int(batch_size)),
            max_workspace_size=max_workspace_size, cal_cache_file=cal_cache_file,
            cal_data_file=cal_data_file, batch_size=batch_size, batches=batches,
            nchw_input=sdk_compatible or channels_first, stage=report["export"]["stage"],
            strict_types=strict_types, opt_batch_size=opt_batch_size)
    made = {"fp16": [paths["fp16"]], "int8": [paths["int8"], paths["int8_tensorrt"]]}.get(data_type, [])
    _copy_card_to_derived(output_path, made)
    write_json_atomic(paths["report"], report)
    report["report"] = str(paths["report"])
    return report


def _copy_card_to_derived(onnx_path, derived):
    """FP16/INT8 files get the FP32 file's model card (converters drop metadata)."""
    import onnx

    from bpnet.imports.card import read_model_card, set_onnx_card

    card = read_model_card(onnx_path)
    for path in derived:
        if card is None or not Path(path).is_file():
            continue
        proto = onnx.load(str(path))
        set_onnx_card(proto, card)
        with atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))


def _card_normalization(model_path, normalization):
    """Calibration images are prepared as the model card says (imported networks)."""
    from bpnet.imports.card import model_normalization
    from bpnet.preprocess import normalization_for

    card = model_normalization(model_path)
    if card is None:
        return normalization
    return normalization_for(normalization or card, card, "export normalization (-e SPEC)")


def int8_artifacts(onnx_path, input_hw, calibrator, percentile, cal_image_dir, cal_data_file,
                   cal_cache_file, batch_size, batches, normalization, paths, progress=None,
                   channels_first=False):
    """Calibration tensor (reused if it exists) -> thresholds -> cache + Q/DQ ONNX models."""
    from bpnet.calibrate.graph_stats import calibrate_onnx
    from bpnet.calibrate.qdq import write_qdq_onnx
    from bpnet.calibrate.tensor_file import calibration_tensor
    from bpnet.calibrate.trt_cache import write_trt_cache

    started = time.perf_counter()
    data, reused = calibration_tensor(input_hw, batch_size, batches, cal_image_dir, cal_data_file,
                                      normalization, progress, channels_first)
    prepared = time.perf_counter() - started
    # equalize: the FP32 ONNX beside the INT8 files gets its concat inputs rescaled (same outputs),
    # so TensorRT's cache, the Q/DQ files and a float-layer fallback all read the same graph
    calibration = calibrate_onnx(onnx_path, data, (calibrator,), percentile, progress=progress,
                                 equalize=True)[calibrator]
    write_trt_cache(cal_cache_file, calibration)
    write_qdq_onnx(onnx_path, paths["int8"], calibration, target="ort")
    write_qdq_onnx(onnx_path, paths["int8_tensorrt"], calibration, target="tensorrt")
    return {"calibrator": calibrator, "num_images": int(len(data)), "tensor_file_reused": reused,
            "cal_data_file": str(cal_data_file) if cal_data_file else None,
            "cal_cache_file": str(cal_cache_file), "num_tensors": len(calibration.amax),
            "equalized_concat_inputs": calibration.extra["equalized"],
            "preprocess_seconds": round(prepared, 3), "calibration_seconds": round(calibration.seconds, 3),
            "onnx_int8": str(paths["int8"]), "onnx_int8_tensorrt": str(paths["int8_tensorrt"])}
