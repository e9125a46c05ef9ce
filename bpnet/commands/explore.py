"""`bpnet explore`: AP and latency of every stage exit at several resolutions, with the oracle.

  bpnet explore -m MODEL.hdf5 -a ANNOTATIONS.json -i IMAGES -e INFER_SPEC.yaml -r OUT \\
      --resolutions 224,320 288,384 320,448 --precisions fp32 int8 [--stages 1 2 3]
"""

from bpnet.errors import BpnetError
from bpnet.limits import CALIBRATORS, EXPLORER_CALIBRATOR


def add_arguments(parser):
    parser.add_argument("-m", "--model", required=True, help="trained or imported model (.hdf5; .onnx: FP32 only)")
    parser.add_argument("-a", "--annotations", required=True, help="COCO person-keypoints JSON")
    parser.add_argument("-i", "--images", required=True, help="folder of the annotated images")
    parser.add_argument("-e", "--inference_spec", required=True,
                        help="inference spec YAML (thresholds, normalisation); its input_shape is replaced "
                             "by each resolution")
    parser.add_argument("-r", "--results_dir", required=True, help="folder for explorer.json and the models")
    parser.add_argument("--resolutions", nargs="+", default=["224,320", "288,384", "320,448"],
                        help="H,W pairs (multiples of 8); default: TAO's three recommended sizes")
    parser.add_argument("--stages", nargs="+", type=int,
                        help="stage exits to measure (default: every stage 1..last)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"], help="fp32, fp16 and/or int8")
    parser.add_argument("--calibrator", default=None, choices=CALIBRATORS,
                        help=f"INT8 calibrator (default: the model card's int8_calibrator, else "
                             f"{EXPLORER_CALIBRATOR}: entropy collapses the bundled network's INT8 maps)")
    parser.add_argument("--cal_image_dir", help="INT8 calibration images (default: the evaluation images)")
    parser.add_argument("--max_images", type=int, help="evaluate only the first N images (by id)")


def parse_resolution(text):
    try:
        h, w = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise BpnetError(f"--resolutions: {text!r} is not H,W (e.g. 288,384)") from None
    return h, w


def run(args):
    from bpnet.events import EventLog
    from bpnet.guide.explorer import explore_model
    from bpnet.specs import load_infer_spec

    if args.max_images is not None and args.max_images < 1:
        raise BpnetError(f"--max_images: {args.max_images} must be at least 1")
    spec = load_infer_spec(args.inference_spec)
    report = explore_model(args.model, args.annotations, args.images, spec,
                           [parse_resolution(r) for r in args.resolutions], args.results_dir,
                           stages=args.stages, precisions=args.precisions, calibrator=args.calibrator,
                           cal_image_dir=args.cal_image_dir, max_images=args.max_images,
                           progress=EventLog(f"{args.results_dir}/events.jsonl"))
    print(format_table(report))
    return 0


def format_table(report):
    """The explorer's points as a text table, oracle rows first per resolution."""
    lines = [f"{'resolution':>10} {'stage':>6} {'precision':>9} {'AP':>6} {'APm':>6} {'APl':>6} "
             f"{'pre ms':>7} {'cnn ms':>7} {'dec ms':>7}"]
    for oracle in report["oracle"]:
        res = "x".join(map(str, oracle["resolution"]))
        lines.append(f"{res:>10} {'oracle':>6} {'-':>9} {oracle['AP']:6.3f} {oracle['APm']:6.3f} "
                     f"{oracle['APl']:6.3f} {'':>7} {'':>7} {'':>7}")
        for p in report["points"]:
            if p["resolution"] == oracle["resolution"]:
                lines.append(f"{res:>10} {str(p['stage'] or 'last'):>6} {p['precision']:>9} {p['AP']:6.3f} "
                             f"{p['APm']:6.3f} {p['APl']:6.3f} {p['pre_ms']:7.2f} {p['cnn_ms']:7.2f} "
                             f"{p['decode_ms']:7.2f}")
    if report.get("note"):
        lines.append(f"note: {report['note']}")
    return "\n".join(lines)
