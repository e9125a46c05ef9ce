"""`bpnet bench -m MODEL [-d H,W] [--batch_size B] [--runs N] [--warmup W] [--stage K] [--threads T] [--json OUT]`
and `bpnet bench -m MODEL --end_to_end [-e INFER_SPEC] [--images DIR|FILE|COCO.json] [--max_images N]`."""

from pathlib import Path

# The bundled COCO sample, used by --end_to_end when no --images are given (a source checkout).
BUNDLED_IMAGES = Path(__file__).resolve().parents[2] / "data" / "coco-mini" / "train2017"


def add_arguments(parser):
    parser.add_argument("-m", "--model", required=True, help=".hdf5 (Keras), .onnx (ONNX Runtime) or .engine (TensorRT)")
    parser.add_argument("-d", "--input_dims", help="H,W of the input (default: the model's, else 288,384)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20, help="timed runs (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--stage", type=int, help="stage to run (Keras models; default the last)")
    parser.add_argument("--threads", type=int, help="CPU threads of the runtime (default: the runtime's)")
    parser.add_argument("--json", help="also write the result to this JSON file")
    e2e = parser.add_argument_group("end to end (images/s from image files to COCO keypoints)")
    e2e.add_argument("--end_to_end", action="store_true",
                     help="read -> letterbox -> CNN -> decode -> COCO keypoints, stages pipelined across threads")
    e2e.add_argument("-e", "--experiment_spec", help="inference spec (input size, decoder settings; default: defaults)")
    e2e.add_argument("--images", help="image folder, image or COCO JSON (default: the bundled COCO sample)")
    e2e.add_argument("--max_images", type=int, help="use the first N images")
    e2e.add_argument("--sequential", action="store_true", help="run the stages one after another (no pipelining)")


def run(args):
    from bpnet.fileio import write_json_atomic

    result = end_to_end(args) if args.end_to_end else latency(args)
    if args.json:
        write_json_atomic(args.json, result)
        print(f"written: {args.json}")
    return 0


def latency(args):
    from bpnet.benchmark import benchmark_model
    from bpnet.export import parse_input_dims
    from bpnet.machine import cpu_line

    hw = parse_input_dims(args.input_dims) if args.input_dims else None
    result = benchmark_model(args.model, hw, args.batch_size, args.runs, args.warmup, stage=args.stage,
                             threads=args.threads)
    gflops = f"{result['gflops']:.2f}" if result["gflops"] is not None else "n/a"
    print(f"{result['model']}: {result['backend']} {result['precision']} on {result['device']}, "
          f"input {result['input_hw'][0]}x{result['input_hw'][1]}, batch {result['batch_size']}")
    print(f"latency median {result['median_ms']:.2f} ms, p95 {result['p95_ms']:.2f} ms "
          f"({result['runs']} runs after {result['warmup']} warm-up); {result['images_per_s']:.2f} images/s")
    print(f"params {result['params']}, GFLOPs per image {gflops}")
    print(f"machine: {cpu_line(result['machine'])}")
    return result


def end_to_end(args):
    from bpnet.benchmark import benchmark_end_to_end
    from bpnet.errors import BpnetError
    from bpnet.machine import cpu_line
    from bpnet.specs import InferSpec, load_yaml, parse_spec

    spec = parse_spec(InferSpec, load_yaml(args.experiment_spec), f"inference spec {args.experiment_spec}") \
        if args.experiment_spec else InferSpec()
    if args.input_dims:
        from bpnet.export import parse_input_dims
        spec = spec.model_copy(update={"input_shape": parse_input_dims(args.input_dims)})
    if args.stage is not None:
        spec = spec.model_copy(update={"output_stage_to_use": args.stage})
    images = args.images or BUNDLED_IMAGES
    if args.images is None and not BUNDLED_IMAGES.is_dir():
        raise BpnetError("--images: give an image folder (the bundled COCO sample is not here)")
    result = benchmark_end_to_end(args.model, images, spec, threads=args.threads, max_images=args.max_images,
                                  pipelined=not args.sequential)
    ms = result["ms_per_image"]
    mode = "pipelined across threads" if result["pipelined"] else "one stage after another"
    print(f"{result['model']}: {result['backend']} {result['precision']}, input "
          f"{result['input_hw'][0]}x{result['input_hw'][1]}, {result['images']} images, {mode}")
    print(f"end to end: {result['images_per_s']:.2f} images/s (image file -> COCO keypoints); "
          f"{result['people_found']} people found")
    print(f"per image: read {ms['read']:.1f} ms, letterbox+normalise {ms['prepare']:.1f} ms, "
          f"CNN {ms['cnn']:.1f} ms, decode {ms['decode']:.1f} ms")
    print(f"{'people':>7} {'images':>6} | {'read':>7} {'prepare':>7} {'cnn':>7} {'decode':>7}  (ms per image)")
    for row in result["by_people"]:
        print(f"{row['people']:>7} {row['images']:>6} | {row['read_ms']:7.1f} {row['prepare_ms']:7.1f} "
              f"{row['cnn_ms']:7.1f} {row['decode_ms']:7.1f}")
    print(f"machine: {cpu_line(result['machine'])}")
    return result
