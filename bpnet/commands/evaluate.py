"""`bpnet evaluate`: COCO keypoint AP (pycocotools) in three modes.

  bpnet evaluate -m MODEL -a ANNOTATIONS.json -i IMAGE_DIR -e INFER_SPEC.yaml -r OUT_DIR
  bpnet evaluate --results RESULTS.json -a ANNOTATIONS.json -r OUT_DIR
  bpnet evaluate --oracle -a ANNOTATIONS.json -i IMAGE_DIR -e INFER_SPEC.yaml -r OUT_DIR
"""

from bpnet.errors import BpnetError


def add_arguments(parser):
    parser.add_argument("-m", "--model", help="model to run: .hdf5, .onnx (or .engine with TensorRT)")
    parser.add_argument("--results", help="score this COCO keypoint results file instead of a model")
    parser.add_argument("--oracle", action="store_true",
                        help="score the ground truth encoded as targets and decoded (the decoder's ceiling)")
    parser.add_argument("-a", "--annotations", required=True, help="COCO person-keypoints JSON")
    parser.add_argument("-i", "--images", help="folder of the annotated images")
    parser.add_argument("-e", "--inference_spec", help="inference spec YAML (input size, thresholds)")
    parser.add_argument("-r", "--results_dir", required=True,
                        help="folder for results.json, metrics.json, coco_table.txt")
    parser.add_argument("-t", "--train_spec",
                        help="--oracle only: take the target settings (sigma, PAF width) from this training spec")
    parser.add_argument("--max_images", type=int, help="evaluate only the first N images (by id)")


def chosen_mode(args):
    modes = [name for name, on in (("model", args.model), ("results", args.results),
                                   ("oracle", args.oracle)) if on]
    if len(modes) != 1:
        raise BpnetError("evaluate: give exactly one of -m MODEL, --results RESULTS.json, --oracle "
                         f"(got {modes or 'none'})")
    mode = modes[0]
    if mode != "results":
        missing = [flag for flag, value in (("-i IMAGES", args.images), ("-e INFER_SPEC", args.inference_spec))
                   if not value]
        if missing:
            raise BpnetError(f"evaluate {'--oracle' if mode == 'oracle' else '-m'}: also needs {', '.join(missing)}")
    if args.max_images is not None and args.max_images < 1:
        raise BpnetError(f"--max_images: {args.max_images} must be at least 1")
    return mode


def run(args):
    from bpnet import evaluate
    from bpnet.events import EventLog
    from bpnet.specs import load_infer_spec, load_train_spec

    mode = chosen_mode(args)
    if mode == "results":
        metrics = evaluate.evaluate_results(args.results, args.annotations, args.results_dir)
    else:
        spec = load_infer_spec(args.inference_spec)
        log = EventLog(f"{args.results_dir}/events.jsonl")
        if mode == "oracle":
            targets = load_train_spec(args.train_spec).dataloader.targets if args.train_spec else None
            metrics = evaluate.evaluate_oracle(args.annotations, args.images, spec, args.results_dir,
                                               targets, args.max_images, progress=log)
        else:
            metrics = evaluate.evaluate_model(args.model, args.annotations, args.images, spec,
                                              args.results_dir, args.max_images, progress=log)
    print("\n".join(metrics["table"]))
    timing = metrics.get("timing")
    if timing:
        print("timing: " + ", ".join(f"{k} {v:.2f}" for k, v in timing.items()))
    print(f"{metrics['num_images']} images of {metrics['annotations']}; written to {args.results_dir}")
    if "note" in metrics:
        print(f"note: {metrics['note']}")
    return 0
