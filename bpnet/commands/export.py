"""`bpnet export -m MODEL -o OUTPUT.onnx -d H,W,3 [--data_type fp32|fp16|int8] [calibration and
TensorRT options]`: see docs/export.md."""

from bpnet.limits import CALIBRATORS, DEFAULT_CALIBRATOR, DEFAULT_PERCENTILE, PRECISIONS


def add_arguments(parser):
    parser.add_argument("-m", "--model", required=True, help="trained or pruned BodyPoseNet (.hdf5)")
    parser.add_argument("-o", "--output_file", required=True,
                        help="FP32 ONNX to write (.onnx); FP16/INT8 files and OUTPUT.export.json go beside it")
    parser.add_argument("-e", "--experiment_spec", help="training or inference spec (normalisation; "
                        "input size when -d is not given)")
    parser.add_argument("-d", "--input_dims", help="H,W,3 of the exported input (multiples of 8), e.g. 288,384,3")
    parser.add_argument("--data_type", default="fp32", choices=PRECISIONS,
                        help="fp16 also writes OUTPUT.fp16.onnx; int8 calibrates and writes the cache "
                             "and OUTPUT.int8.onnx (ONNX Runtime) + OUTPUT.int8_trt.onnx (TensorRT >= 11)")
    parser.add_argument("--stage", type=int, help="stage whose maps the export outputs (default: the last)")
    parser.add_argument("--static_batch_size", type=int,
                        help="fix the batch dimension (default: dynamic)")
    cal = parser.add_argument_group("INT8 calibration")
    cal.add_argument("--calibrator", default=DEFAULT_CALIBRATOR, choices=CALIBRATORS,
                     help=f"entropy = TensorRT's EntropyCalibration2 (default {DEFAULT_CALIBRATOR})")
    cal.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE, help="for --calibrator percentile")
    cal.add_argument("--cal_image_dir", help="folder of calibration images (see bpnet sample-calibration)")
    cal.add_argument("--cal_data_file", help="preprocessed calibration tensor file (.npy): written once, "
                     "reused when it exists")
    cal.add_argument("--cal_cache_file", help="TensorRT calibration cache to write (default OUTPUT.cal.bin)")
    cal.add_argument("--batch_size", type=int, default=1, help="calibration batch size (default 1)")
    cal.add_argument("--batches", type=int, default=10,
                     help="calibration batches; batch_size x batches images are needed (default 10)")
    trt = parser.add_argument_group("TensorRT (needs TensorRT and an NVIDIA GPU)")
    trt.add_argument("--engine_file", help="TensorRT engine to build at --data_type")
    trt.add_argument("--max_batch_size", type=int, help="largest batch the engine accepts (default: --batch_size)")
    trt.add_argument("--max_workspace_size", type=int, help="builder workspace limit in bytes")
    parser.add_argument("--optimize_for", choices=["cpu", "trt"],
                        help="cpu: zero-pad concatenated channels to the CPU kernels' block when measured "
                             "faster (outputs unchanged); trt: leave layouts to TensorRT "
                             "(default: trt with --engine_file, else cpu)")
    sdk = parser.add_argument_group("deployment variant")
    sdk.add_argument("--sdk_compatible_model", action="store_true",
                     help="NCHW input, upsampled NCHW outputs and a max-pool NMS peak map (DeepStream-style)")
    sdk.add_argument("--upsample_ratio", type=int, default=4, help="output upsampling of the SDK variant (default 4)")


def input_size_and_normalization(args):
    """(H, W) from -d or the spec, and the spec's normalisation (None = the defaults)."""
    from bpnet.errors import BpnetError
    from bpnet.export import parse_input_dims
    from bpnet.specs import InferSpec, TrainSpec, load_yaml, parse_spec

    hw, normalization = None, None
    if args.experiment_spec:
        data = load_yaml(args.experiment_spec)
        if "dataloader" in data:
            spec = parse_spec(TrainSpec, data, f"training spec {args.experiment_spec}")
            hw, normalization = spec.dataloader.image_shape, spec.dataloader.normalization
        else:
            spec = parse_spec(InferSpec, data, f"inference spec {args.experiment_spec}")
            hw, normalization = spec.input_shape, spec.normalization
    if args.input_dims:
        hw = parse_input_dims(args.input_dims)
    if hw is None:
        raise BpnetError("-d/--input_dims: give the exported input size, e.g. -d 288,384,3 (or -e SPEC)")
    return tuple(hw), normalization


def run(args):
    import json

    from bpnet.export import export_model

    hw, normalization = input_size_and_normalization(args)

    def show(event):
        if event.get("event") == "phase":
            print(event.get("message", ""), flush=True)

    report = export_model(
        args.model, args.output_file, hw, data_type=args.data_type, stage=args.stage,
        calibrator=args.calibrator, percentile=args.percentile, cal_image_dir=args.cal_image_dir,
        cal_data_file=args.cal_data_file, cal_cache_file=args.cal_cache_file,
        batch_size=args.batch_size, batches=args.batches, normalization=normalization,
        engine_file=args.engine_file, max_batch_size=args.max_batch_size,
        max_workspace_size=args.max_workspace_size, sdk_compatible=args.sdk_compatible_model,
        upsample_ratio=args.upsample_ratio, static_batch_size=args.static_batch_size,
        optimize_for=args.optimize_for, progress=show)
    exported = report["export"]
    print(f"ONNX: {exported['onnx']} (stage {exported['stage']} of {exported['num_stages']}, "
          f"input {hw[0]}x{hw[1]}, max |ONNX - Keras| = {exported['max_abs_diff']:.1e})")
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
        print(f"calibration cache: {cal['cal_cache_file']}")
        print(f"INT8 ONNX (ONNX Runtime, U8S8): {cal['onnx_int8']}")
        print(f"INT8 ONNX (TensorRT >= 11, symmetric Q/DQ): {cal['onnx_int8_tensorrt']}")
    if "engine" in report:
        print(f"TensorRT engine: {json.dumps(report['engine'])}")
    print(f"report: {report['report']}")
    return 0
