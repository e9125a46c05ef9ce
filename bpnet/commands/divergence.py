"""`bpnet divergence -r REFERENCE.onnx -m CANDIDATE.onnx -i IMAGES --infer_spec INFER.yaml [-o REPORT.json]
[--num_images 4] [--max_relative_error 0.2] [--min_cosine 0.98] [--candidate_backend tensorrt]`:
where along the graph two versions of one network (FP32 vs INT8/FP16, ONNX Runtime vs TensorRT) part."""

from bpnet.commands.int8_args import add_image_arguments, infer_spec_for
from bpnet.guide.divergence import DEFAULT_MAX_RELATIVE_ERROR, DEFAULT_MIN_COSINE

ROWS_PRINTED = 12


def add_arguments(parser):
    parser.add_argument("-r", "--reference", required=True, help="the reference ONNX (usually FP32)")
    parser.add_argument("-m", "--model", required=True, help="the candidate ONNX (INT8 Q/DQ, FP16, ...)")
    add_image_arguments(parser, "folder of images to compare on")
    parser.add_argument("-o", "--output", default=None, help="write the full report (JSON) here")
    parser.add_argument("--num_images", type=int, default=4, help="images to compare on (default 4)")
    parser.add_argument("--max_relative_error", type=float, default=DEFAULT_MAX_RELATIVE_ERROR,
                        help=f"tolerance on ||b - a|| / ||a|| (default {DEFAULT_MAX_RELATIVE_ERROR})")
    parser.add_argument("--min_cosine", type=float, default=DEFAULT_MIN_COSINE,
                        help=f"tolerance on the cosine similarity (default {DEFAULT_MIN_COSINE})")
    parser.add_argument("--candidate_backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                        help="run the candidate with ONNX Runtime (default) or build it with TensorRT")


def run(args):
    from bpnet.calibrate import build_calibration_tensor
    from bpnet.guide.divergence import find_divergence

    infer = infer_spec_for(args, args.reference)
    data = build_calibration_tensor(args.images, tuple(infer.input_shape), args.num_images, 1, infer.normalization)
    report = find_divergence(args.reference, args.model, data, args.max_relative_error, args.min_cosine,
                             candidate_backend=args.candidate_backend, out_path=args.output)
    print(f"{report['num_compared']} tensors compared on {report['num_images']} images "
          f"({report['reference_backend']} vs {report['candidate_backend']})")
    print(f"{'tensor':<32}{'layer':<32}{'rel.err':>9}{'cosine':>9}")
    for row in report["rows"][:ROWS_PRINTED]:
        print(f"{row['tensor'][:31]:<32}{row['layer'][:31]:<32}{row['relative_error']:>9.4f}{row['cosine']:>9.4f}")
    if len(report["rows"]) > ROWS_PRINTED:
        print(f"... {len(report['rows']) - ROWS_PRINTED} more" + (f" in {args.output}" if args.output else ""))
    first, jump = report["first_divergence"], report["largest_jump"]
    if first is None:
        print("all tensors within tolerance")
    else:
        print(f"first layer beyond tolerance: {first['layer']} (tensor {first['tensor']}: relative error "
              f"{first['relative_error']:.3f}, cosine {first['cosine']:.3f})")
    if jump is not None:
        print(f"largest error increase: {jump['layer']} (+{jump['jump']:.3f})")
    return 0 if first is None else 1
