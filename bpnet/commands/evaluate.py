"""`bpnet evaluate`: COCO keypoint AP (pycocotools) in three modes.

  bpnet evaluate -m MODEL -a ANNOTATIONS.json -i IMAGE_DIR -e INFER_SPEC.yaml -r OUT_DIR
  bpnet evaluate --results RESULTS.json -a ANNOTATIONS.json -r OUT_DIR
  bpnet evaluate --oracle -a ANNOTATIONS.json -i IMAGE_DIR -e INFER_SPEC.yaml -r OUT_DIR

TAO's command line works too: `--inference_spec infer_spec.yaml --model_filename MODEL
--dataset_spec coco_spec.json --results_dir OUT` (the images and annotations are the dataset
spec's test_data; the model may come from the inference spec's model_path, as in TAO).
"""

from pathlib import Path

from bpnet.errors import BpnetError

SPEC_SUFFIXES = (".yaml", ".yml")


def add_arguments(parser):
    from bpnet.commands.tao_flags import add_log_level

    parser.add_argument("-m", "--model", "--model_filename", dest="model",
                        help="model to run: .hdf5, .onnx (or .engine with TensorRT)")
    parser.add_argument("--results", help="score this COCO keypoint results file instead of a model")
    parser.add_argument("--oracle", action="store_true",
                        help="score the ground truth encoded as targets and decoded (the decoder's ceiling)")
    parser.add_argument("-a", "--annotations", help="COCO person-keypoints JSON (or give -d/--dataset_spec)")
    parser.add_argument("-i", "--images", help="folder of the annotated images; a .yaml here is read as "
                                               "the inference spec (TAO's -i)")
    parser.add_argument("-e", "--inference_spec", help="inference spec YAML (input size, thresholds); "
                                                       "native or TAO's infer_spec*.yaml")
    parser.add_argument("-d", "--dataset_spec", help="TAO's coco_spec.json: annotations and images of its "
                                                     "test_data (when -a/-i are not given)")
    parser.add_argument("--dataset", default="coco", choices=["coco"], help="TAO: dataset kind (coco only)")
    parser.add_argument("-r", "--results_dir", required=True,
                        help="folder for results.json, metrics.json, coco_table.txt")
    parser.add_argument("-t", "--train_spec",
                        help="--oracle only: take the target settings (sigma, PAF width) from this training spec")
    parser.add_argument("--max_images", type=int, help="evaluate only the first N images (by id)")
    add_log_level(parser)


def spec_given_as_images(args):
    """TAO's `-i` is the inference spec; ours is the image folder. A YAML file there is a spec."""
    if args.images and Path(args.images).suffix.lower() in SPEC_SUFFIXES:
        if args.inference_spec:
            raise BpnetError(f"-i {args.images} looks like an inference spec, and -e/--inference_spec "
                             f"{args.inference_spec} is given too; -i takes the image folder")
        args.inference_spec, args.images = args.images, None


def dataset_from_spec(args):
    """-a/-i from TAO's dataset spec (its test_data) where they are not given."""
    if not args.dataset_spec:
        return
    from bpnet.tao_spec import coco_spec_dataset

    annotations, images, _ = coco_spec_dataset(args.dataset_spec, "test")
    args.annotations = args.annotations or str(annotations)
    args.images = args.images or str(images)


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
    from bpnet.commands.tao_flags import check_model_file
    from bpnet.events import EventLog
    from bpnet.tao_spec import load_infer_spec_any, load_train_spec_any, print_notes

    spec_given_as_images(args)
    dataset_from_spec(args)
    if not args.annotations:
        raise BpnetError("evaluate: give -a ANNOTATIONS.json (or TAO's -d/--dataset_spec coco_spec.json)")
    loaded = load_infer_spec_any(args.inference_spec) if args.inference_spec else None
    if loaded is not None:
        print_notes(loaded)
        if not (args.model or args.results or args.oracle) and loaded.model_path:
            args.model = str(loaded.model_path)
            print(f"note: no -m/--model_filename: using the inference spec's model_path {args.model} (as TAO)")
    mode = chosen_mode(args)
    if mode == "results":
        metrics = evaluate.evaluate_results(args.results, args.annotations, args.results_dir)
    else:
        spec = loaded.spec
        log = EventLog(f"{args.results_dir}/events.jsonl")
        if mode == "oracle":
            targets = load_train_spec_any(args.train_spec).spec.dataloader.targets if args.train_spec else None
            metrics = evaluate.evaluate_oracle(args.annotations, args.images, spec, args.results_dir,
                                               targets, args.max_images, progress=log)
        else:
            check_model_file(args.model, "-m/--model_filename")
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
