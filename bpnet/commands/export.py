"""`bpnet export -m MODEL -o OUTPUT.onnx -d H,W,3 [--data_type fp32|fp16|int8] [calibration and
TensorRT options]`: see docs/export.md. Every flag of TAO's `bpnet export` is accepted with
TAO's meaning (docs/tao.md)."""

from bpnet.errors import BpnetError
from bpnet.limits import CALIBRATORS, DEFAULT_CALIBRATOR, DEFAULT_EXPORT_HW, DEFAULT_PERCENTILE, PRECISIONS

DEFAULT_INPUT_DIMS = f"{DEFAULT_EXPORT_HW[0]},{DEFAULT_EXPORT_HW[1]},3"
BACKENDS = ("onnx", "tfonnx", "uff")
UFF_REFUSAL = ("-t/--backend uff: UFF was TensorRT's format for TensorFlow 1 graphs; TensorRT 9 "
               "removed its parser and TAO 5 dropped it. Use onnx or tfonnx (both mean ONNX written "
               "by tf2onnx here)")


def add_arguments(parser):
    from bpnet.commands.tao_flags import add_verbose
    from bpnet.export import DEFAULT_UPSAMPLE_RATIO

    parser.add_argument("-m", "--model", required=True, help="trained or pruned BodyPoseNet (.hdf5)")
    parser.add_argument("-o", "--output_file", default=None,
                        help="FP32 ONNX to write (default MODEL.onnx); FP16/INT8 files and "
                             "OUTPUT.export.json go beside it. A TAO name ending in .etlt writes the "
                             "ONNX under the .onnx sibling name (bpnet never writes encrypted files)")
    parser.add_argument("-e", "--experiment_spec", help="training or inference spec, native or TAO "
                        "(normalisation; an inference spec also gives the input size when -d is not given)")
    parser.add_argument("-d", "--input_dims",
                        help=f"H,W,3 of the exported input (C,H,W with --data_format channels_first; "
                             f"multiples of 8). Default: an inference spec's input_shape, else "
                             f"{DEFAULT_INPUT_DIMS}, the workflow's deployment size (TAO's default was 256,256,3)")
    parser.add_argument("--data_type", default="fp32", choices=PRECISIONS,
                        help="fp16 also writes OUTPUT.fp16.onnx; int8 calibrates and writes the cache "
                             "and OUTPUT.int8.onnx (ONNX Runtime) + OUTPUT.int8_trt.onnx (TensorRT >= 11)")
    parser.add_argument("-t", "--backend", default="onnx", choices=BACKENDS,
                        help="onnx or tfonnx (TAO's two ONNX routes; both are tf2onnx here); uff is refused")
    parser.add_argument("-i", "--data_format", default="channels_last", choices=["channels_last", "channels_first"],
                        help="input layout of the exported model: NHWC (default) or NCHW")
    parser.add_argument("--stage", type=int, help="stage whose maps the export outputs (default: the last)")
    parser.add_argument("--static_batch_size", type=int, default=None,
                        help="fix the batch dimension (default, or -1 as in TAO: dynamic)")
    parser.add_argument("-r", "--results_dir", default=None,
                        help="TAO: folder for the run's status files; bpnet creates it (the report goes "
                             "beside the output: OUTPUT.export.json)")
    cal = parser.add_argument_group("INT8 calibration")
    cal.add_argument("--calibrator", default=DEFAULT_CALIBRATOR, choices=CALIBRATORS,
                     help=f"entropy = TensorRT's EntropyCalibration2 (default {DEFAULT_CALIBRATOR})")
    cal.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE, help="for --calibrator percentile")
    cal.add_argument("--cal_image_dir", help="folder of calibration images (see bpnet sample-calibration)")
    cal.add_argument("--cal_data_file", help="preprocessed calibration tensor file: written once, reused "
                     "when it exists. Any name; .npy is a NumPy array, every other name (TAO's "
                     ".tensorfile) TAO's TensorFile layout, so a TAO user's file is reused")
    cal.add_argument("--cal_cache_file", help="TensorRT calibration cache to write (default OUTPUT.cal.bin "
                     "beside the model, so exports never overwrite each other's; TAO's was ./cal.bin)")
    cal.add_argument("--batch_size", type=int, default=1, help="calibration batch size (default 1)")
    cal.add_argument("--batches", type=int, default=10,
                     help="calibration batches; batch_size x batches images are needed (default 10)")
    cal.add_argument("--force_ptq", action="store_true",
                     help="TAO: post-training quantization even for a QAT model. bpnet export always "
                          "calibrates after training (as TAO did for BodyPoseNet)")
    trt = parser.add_argument_group("TensorRT (needs TensorRT and an NVIDIA GPU; without them these are "
                                    "skipped with a note and the ONNX files and cache are still written)")
    trt.add_argument("--engine_file", help="TensorRT engine to build at --data_type")
    trt.add_argument("--max_batch_size", type=int, help="largest batch the engine accepts (default: --batch_size)")
    trt.add_argument("--opt_batch_size", type=int, help="batch the engine is tuned for (default: --max_batch_size)")
    trt.add_argument("--max_workspace_size", type=int, help="builder workspace limit in bytes")
    trt.add_argument("-s", "--strict_type_constraints", action="store_true",
                     help="layers keep --data_type instead of falling back to a faster precision")
    parser.add_argument("--optimize_for", choices=["cpu", "trt"],
                        help="cpu: zero-pad concatenated channels to the CPU kernels' block when measured "
                             "faster (outputs unchanged); trt: leave layouts to TensorRT "
                             "(default: trt with --engine_file, else cpu)")
    sdk = parser.add_argument_group("deployment variant")
    sdk.add_argument("--sdk_compatible_model", action="store_true",
                     help="NCHW input, upsampled NCHW outputs and a max-pool NMS peak map (DeepStream-style)")
    sdk.add_argument("-u", "--upsample_ratio", type=int, default=DEFAULT_UPSAMPLE_RATIO,
                     help=f"output upsampling of the SDK variant (default {DEFAULT_UPSAMPLE_RATIO})")
    add_verbose(parser)


def input_size_and_normalization(args):
    """(H, W) from -d, an inference spec or the default, and the spec's normalisation (None = defaults)."""
    from bpnet.export import parse_input_dims
    from bpnet.specs import InferSpec
    from bpnet.tao_spec import load_any_spec, print_notes

    hw, normalization = None, None
    if args.experiment_spec:
        loaded = load_any_spec(args.experiment_spec)
        print_notes(loaded, brief=True)
        if isinstance(loaded.spec, InferSpec):
            hw, normalization = loaded.spec.input_shape, loaded.spec.normalization
        else:
            normalization = loaded.spec.dataloader.normalization
    dims = args.input_dims or (None if hw else DEFAULT_INPUT_DIMS)
    if dims:
        hw = parse_input_dims(channels_last_dims(dims, args.data_format))
    return tuple(hw), normalization


def channels_last_dims(text, data_format):
    """TAO's -d is C,H,W under channels_first: give H,W,C to the one parser."""
    parts = [p.strip() for p in str(text).split(",")]
    if data_format == "channels_first" and len(parts) == 3:
        if parts[0] != "3":
            raise BpnetError(f"-d/--input_dims {text}: with --data_format channels_first it is C,H,W (C = 3)")
        return ",".join(parts[1:] + parts[:1])
    return text


def output_path(args):
    """The ONNX path to write, from -o (TAO conventions applied) or the model's name."""
    from pathlib import Path

    from bpnet.commands.tao_flags import onnx_name_for

    if not args.output_file:
        return Path(args.model).with_suffix(".onnx")
    path, note = onnx_name_for(args.output_file)
    if note:
        print(note)
    if path.suffix.lower() != ".onnx":
        print(f"note: -o {path} does not end in .onnx: writing {path}.onnx (as TAO does)")
        path = Path(f"{path}.onnx")
    return path


def tensorrt_options(args):
    """The TensorRT-only options, or None for all of them (with a note) where TensorRT is absent."""
    options = {"engine_file": args.engine_file, "max_batch_size": args.max_batch_size,
               "max_workspace_size": args.max_workspace_size, "opt_batch_size": args.opt_batch_size}
    given = [f"--{k}" for k, v in options.items() if v is not None]
    if args.strict_type_constraints:
        given.append("-s/--strict_type_constraints")
    from bpnet.backends.trt_backend import require_tensorrt

    try:
        if given:
            require_tensorrt(", ".join(given))
    except BpnetError as err:
        print(f"note: TensorRT engine skipped: {err}. The ONNX files and the calibration cache are "
              "written; build the engine where TensorRT runs (same command there, or trtexec with "
              "--calib=CACHE)")
        return {k: None for k in options} | {"strict_types": False}
    return options | {"strict_types": args.strict_type_constraints}


def run(args):
    import json
    from pathlib import Path

    from bpnet.commands.tao_flags import check_model_file
    from bpnet.export import export_model

    if args.backend == "uff":
        raise BpnetError(UFF_REFUSAL)
    check_model_file(args.model)
    hw, normalization = input_size_and_normalization(args)
    output = output_path(args)
    if args.results_dir:
        Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    if args.force_ptq:
        print("note: --force_ptq: bpnet export always uses post-training calibration")
    static_batch = None if args.static_batch_size in (None, -1) else args.static_batch_size
    engine = tensorrt_options(args)

    def show(event):
        if event.get("event") == "phase":
            print(event.get("message", ""), flush=True)

    report = export_model(
        args.model, output, hw, data_type=args.data_type, stage=args.stage,
        calibrator=args.calibrator, percentile=args.percentile, cal_image_dir=args.cal_image_dir,
        cal_data_file=args.cal_data_file, cal_cache_file=args.cal_cache_file,
        batch_size=args.batch_size, batches=args.batches, normalization=normalization,
        sdk_compatible=args.sdk_compatible_model, upsample_ratio=args.upsample_ratio,
        static_batch_size=static_batch, progress=show, optimize_for=args.optimize_for,
        channels_first=args.data_format == "channels_first", **engine)
    exported = report["export"]
    print(f"ONNX: {exported['onnx']} (stage {exported['stage']} of {exported['num_stages']}, "
          f"input {hw[0]}x{hw[1]} {exported['input_layout']}, max |ONNX - Keras| = {exported['max_abs_diff']:.1e})")
    padding = report.get("channel_padding", {})
    if padding.get("padded"):
        print(f"channel padding for the CPU: {len(padding['changes'])} concatenations to multiples of "
              f"{padding['block']}, {padding['speedup']}x faster in ONNX Runtime here")
    elif padding:
        print(f"channel padding: none ({padding.get('reason', '')})")
    if "fp16_onnx" in report:
        print(f"FP16 ONNX: {report['fp16_onnx']}")
    if "int8" in report:
        cal = report["int8"]
        source = "reused tensor file" if cal["tensor_file_reused"] else "preprocessed images"
        print(f"INT8 calibration ({cal['calibrator']}, {cal['num_images']} images from {source}, "
              f"{cal['num_tensors']} tensors) took {cal['calibration_seconds']:.1f} s")
        if cal["cal_data_file"]:
            print(f"calibration tensor file: {cal['cal_data_file']}")
        print(f"calibration cache: {cal['cal_cache_file']}")
        print(f"INT8 ONNX (ONNX Runtime, U8S8): {cal['onnx_int8']}")
        print(f"INT8 ONNX (TensorRT >= 11, symmetric Q/DQ): {cal['onnx_int8_tensorrt']}")
    if "engine" in report:
        print(f"TensorRT engine: {json.dumps(report['engine'])}")
    print(f"report: {report['report']}")
    return 0
