"""`bpnet quantize -m MODEL -a ANN.json -i IMAGES --infer_spec INFER.yaml -r OUT [--max_drop 1.0]
[--cal_image_dir DIR | --cal_data_file FILE.npy] [--calibrators entropy,minmax,percentile:99.99,...]
[--ranking auto|isolated|divergence]`:
the fastest INT8 model within `--max_drop` AP points (accuracy-controlled quantization)."""

from bpnet.commands.int8_args import add_image_arguments, infer_spec_for
from bpnet.guide.accuracy_control import DEFAULT_CALIBRATORS, DEFAULT_MAX_DROP, DEFAULT_MAX_EVAL_IMAGES


def add_arguments(parser):
    parser.add_argument("-m", "--model", required=True, help="the float model (Keras .hdf5 or FP32 .onnx)")
    parser.add_argument("-a", "--annotations", required=True, help="evaluation annotations (COCO JSON)")
    add_image_arguments(parser, "evaluation images folder")
    parser.add_argument("-r", "--results_dir", required=True, help="folder for the models and the report")
    parser.add_argument("--max_drop", type=float, default=DEFAULT_MAX_DROP,
                        help=f"largest AP drop in points (default {DEFAULT_MAX_DROP})")
    parser.add_argument("--calibrators", default=",".join(DEFAULT_CALIBRATORS),
                        help="calibrators to compare (default: %(default)s)")
    parser.add_argument("--cal_image_dir", default=None,
                        help="calibration images (default: chosen from -a, stratified, kept out of the evaluation)")
    parser.add_argument("--cal_data_file", default=None, help="calibration tensor file (.npy) to reuse")
    parser.add_argument("--num_cal_images", type=int, default=16, help="calibration images (default 16)")
    parser.add_argument("--max_eval_images", type=int, default=DEFAULT_MAX_EVAL_IMAGES,
                        help=f"evaluation images with people (default {DEFAULT_MAX_EVAL_IMAGES})")
    parser.add_argument("--ranking", choices=("auto", "isolated", "divergence"), default="auto",
                        help="layer ranking: each layer alone (isolated, one run per layer), the error each adds "
                             "in one FP32-vs-INT8 pass (divergence), or auto: isolated up to 64 layers")
    parser.add_argument("--ranking_images", type=int, default=8, help="images of the layer ranking (default 8)")
    parser.add_argument("--validate_ranking", type=int, default=0,
                        help="check the layer ranking against AP on this many top layers (default 0)")
    parser.add_argument("--latency_runs", type=int, default=10, help="timed runs per latency (default 10)")


def run(args):
    from pathlib import Path

    from bpnet.events import EventLog
    from bpnet.guide.accuracy_control import AccuracyControlOptions, check_max_drop
    from bpnet.guide.accuracy_control_run import REPORT_NAME, quantize_with_accuracy_control
    from bpnet.specs import parse_spec

    check_max_drop(args.max_drop)
    options = parse_spec(AccuracyControlOptions, {
        "max_drop": args.max_drop, "calibrators": [c.strip() for c in args.calibrators.split(",") if c.strip()],
        "num_calibration_images": args.num_cal_images, "max_eval_images": args.max_eval_images,
        "validate_ranking": args.validate_ranking, "latency_runs": args.latency_runs, "ranking": args.ranking,
        "ranking_images": args.ranking_images}, "bpnet quantize options")
    def show(event):
        if event["stage"] == "quantize" and event["event"] in ("phase", "result") and event.get("message"):
            print(event["message"], flush=True)

    report = quantize_with_accuracy_control(args.model, args.annotations, args.images,
                                            infer_spec_for(args, args.model), args.results_dir, options,
                                            cal_image_dir=args.cal_image_dir, cal_data_file=args.cal_data_file,
                                            progress=EventLog(Path(args.results_dir) / "events.jsonl", forward=show))
    print_report(report)
    print(f"report: {args.results_dir}/{REPORT_NAME}")
    return 0 if report["final"]["met"] else 1


def print_report(report):
    parent = report["parent"]
    print(f"float: AP {parent['AP']:.3f}, {parent['latency_ms']:.2f} ms ({parent['device']}) on "
          f"{report['evaluation']['num_images']} evaluation images")
    print(f"{'calibrator':<20}{'AP':>8}{'drop':>8}{'ms':>9}")
    for row in report["calibrators"]:
        print(f"{row['calibrator']:<20}{row['AP']:>8.3f}{row['ap_drop']:>8.2f}{row['latency_ms']:>9.2f}")
    if len(report["curve"]) > 1:
        print(f"{'float layers':<20}{'AP':>8}{'drop':>8}{'ms':>9}")
        for point in report["curve"]:
            print(f"{point['float_layers']:<20}{point['AP']:>8.3f}{point['ap_drop']:>8.2f}{point['latency_ms']:>9.2f}")
    print(report["summary"])
    if report["final"]["layers"]:
        print(f"float layers: {', '.join(report['final']['layers'])}")
    gate = report["gate"]
    print(f"gate {gate['status']}: {gate['reasons'][0]}")
    for warning in report["warnings"] + (report["calibration"].get("mix_warnings") or []):
        print(f"warning: {warning}")
