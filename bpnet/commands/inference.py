"""`bpnet inference -m MODEL -i IMAGES -e INFER_SPEC.yaml -r OUT_DIR [--dump_visualizations]`

TAO's command line works too: `--inference_spec infer_spec.yaml --model_filename MODEL
--input_type json --input images.json --results_dir OUT --dump_visualizations`."""

from bpnet.errors import BpnetError

INPUT_TYPES = ("image", "dir", "json")


def add_arguments(parser):
    from bpnet.commands.tao_flags import add_log_level

    parser.add_argument("-m", "--model", "--model_filename", dest="model",
                        help="model: .hdf5, .onnx (or .engine with TensorRT); default: the TAO "
                             "inference spec's model_path")
    parser.add_argument("-i", "--images",
                        help="an image, a folder of images, a COCO JSON, or a JSON list of image paths; "
                             "a .yaml here is read as the inference spec (TAO's -i)")
    parser.add_argument("--input", help="TAO's name for the images (same as -i/--images)")
    parser.add_argument("--input_type", choices=INPUT_TYPES, default=None,
                        help="TAO: what --input is (image, dir, json); checked against it (default: "
                             "told from the path)")
    parser.add_argument("--images_dir", "--image_root_path", dest="images_dir",
                        help="folder that relative image names of a JSON are under (default: the "
                             "COCO JSON's folder; the current folder for a list of paths)")
    parser.add_argument("-e", "--inference_spec", help="inference spec YAML (native or TAO's infer_spec*.yaml)")
    parser.add_argument("-r", "--results_dir", required=True, help="folder for results.json and drawn images")
    parser.add_argument("--dump_visualizations", action="store_true",
                        help="also write every image with the skeletons drawn (images_annotated/)")
    add_log_level(parser)


def check_input_type(images, input_type):
    from pathlib import Path

    if input_type is None:
        return
    path = Path(images)
    fits = {"dir": path.is_dir(), "json": path.suffix.lower() == ".json" and path.is_file(),
            "image": path.is_file() and path.suffix.lower() not in (".json", ".yaml", ".yml")}[input_type]
    if not fits:
        raise BpnetError(f"--input_type {input_type}: {images} is not "
                         f"{ {'dir': 'a folder', 'json': 'a JSON file', 'image': 'an image file'}[input_type] }")


def run(args):
    from bpnet.commands.evaluate import spec_given_as_images
    from bpnet.commands.tao_flags import check_model_file
    from bpnet.events import EventLog
    from bpnet.infer import run_inference
    from bpnet.tao_spec import load_infer_spec_any, print_notes

    spec_given_as_images(args)
    if args.input:
        if args.images:
            raise BpnetError(f"inference: give the images once: -i {args.images} or --input {args.input}")
        args.images = args.input
    if not args.inference_spec:
        raise BpnetError("inference: give the inference spec: -e/--inference_spec SPEC.yaml")
    if not args.images:
        raise BpnetError("inference: give the images: -i/--input (an image, a folder or a JSON list)")
    check_input_type(args.images, args.input_type)
    loaded = load_infer_spec_any(args.inference_spec)
    print_notes(loaded)
    model = args.model or loaded.model_path
    if model is None:
        raise BpnetError("inference: give the model: -m/--model_filename (or model_path in a TAO inference spec)")
    if not args.model:
        print(f"note: no -m/--model_filename: using the inference spec's model_path {model} (as TAO)")
    check_model_file(model, "-m/--model_filename")
    summary = run_inference(model, args.images, loaded.spec, args.results_dir, args.dump_visualizations,
                            args.images_dir, progress=EventLog(f"{args.results_dir}/events.jsonl"))
    timing = summary["timing"]
    print(f"{summary['num_people']} people in {summary['num_images']} images "
          f"({summary['backend']}, {summary['precision']}); cnn {timing['cnn_ms_per_image']:.2f} ms/image, "
          f"decode {timing['decode_ms_per_image']:.2f} ms/image; written to {args.results_dir}")
    return 0
