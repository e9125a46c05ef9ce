"""`bpnet gate -p FLOAT.hdf5 -m INT8.onnx -a ANN.json -i IMAGES --infer_spec INFER.yaml -r OUT
[--threshold 2]`: compare a reduced-precision model with its float parent; exit 1 when it fails."""


def add_evaluation_arguments(parser):
    """The evaluation data, spec and output folder: shared by `bpnet gate` and `bpnet search`."""
    parser.add_argument("-a", "--annotations", required=True, help="evaluation annotations (COCO JSON)")
    parser.add_argument("-i", "--images", required=True, help="evaluation images folder")
    parser.add_argument("--infer_spec", required=True, help="inference spec used for every evaluation")
    parser.add_argument("-r", "--results_dir", required=True, help="folder for evaluations and reports")
    parser.add_argument("--max_images", type=int, default=None, help="evaluate on the first N images only")


def add_arguments(parser):
    parser.add_argument("-p", "--parent", required=True, help="the float parent model (.hdf5 or .onnx)")
    parser.add_argument("-m", "--model", required=True, help="the INT8 or FP16 model (.onnx or .engine)")
    add_evaluation_arguments(parser)
    parser.add_argument("--threshold", type=float, default=2.0, help="largest AP drop in points (default 2)")
    parser.add_argument("--max_output_error", type=float, default=0.3,
                        help="largest output error relative to the float outputs' variation (default 0.3)")
    parser.add_argument("--float_onnx", default=None, help="the parent exported to ONNX (exact float path "
                                                           "for the per-layer sensitivity ranking)")


def run(args):
    from bpnet.guide.gate_run import run_gate
    from bpnet.specs import load_infer_spec

    report = run_gate(args.parent, args.model, args.annotations, args.images, load_infer_spec(args.infer_spec),
                      args.results_dir, threshold_ap=args.threshold, max_images=args.max_images,
                      float_onnx=args.float_onnx, max_output_error=args.max_output_error)
    print(f"gate {report['status']}:")
    for line in report["reasons"] + report["warnings"]:
        print(f"  - {line}")
    for remedy in report["remedies"]:
        print(f"  remedy: {remedy['title']} - {remedy['why']}")
    return 0 if report["passed"] else 1
