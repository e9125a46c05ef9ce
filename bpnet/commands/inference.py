"""`bpnet inference -m MODEL -i IMAGES -e INFER_SPEC.yaml -r OUT_DIR [--dump_visualizations]`"""


def add_arguments(parser):
    parser.add_argument("-m", "--model", required=True, help="model: .hdf5, .onnx (or .engine with TensorRT)")
    parser.add_argument("-i", "--images", required=True, help="a folder of images or a COCO JSON listing them")
    parser.add_argument("--images_dir", help="with a COCO JSON: folder of its images (default: the JSON's folder)")
    parser.add_argument("-e", "--inference_spec", required=True, help="inference spec YAML")
    parser.add_argument("-r", "--results_dir", required=True, help="folder for results.json and drawn images")
    parser.add_argument("--dump_visualizations", action="store_true",
                        help="also write every image with the skeletons drawn (images_annotated/)")


def run(args):
    from bpnet.events import EventLog
    from bpnet.infer import run_inference
    from bpnet.specs import load_infer_spec

    spec = load_infer_spec(args.inference_spec)
    summary = run_inference(args.model, args.images, spec, args.results_dir, args.dump_visualizations,
                            args.images_dir, progress=EventLog(f"{args.results_dir}/events.jsonl"))
    timing = summary["timing"]
    print(f"{summary['num_people']} people in {summary['num_images']} images "
          f"({summary['backend']}, {summary['precision']}); cnn {timing['cnn_ms_per_image']:.2f} ms/image, "
          f"decode {timing['decode_ms_per_image']:.2f} ms/image; written to {args.results_dir}")
    return 0
