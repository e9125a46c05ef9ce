"""`bpnet bench -m MODEL [-d H,W] [--batch_size B] [--runs N] [--warmup W] [--stage K] [--json OUT]`"""


def add_arguments(parser):
    parser.add_argument("-m", "--model", required=True, help=".hdf5 (Keras), .onnx (ONNX Runtime) or .engine (TensorRT)")
    parser.add_argument("-d", "--input_dims", help="H,W of the input (default: the model's, else 288,384)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20, help="timed runs (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--stage", type=int, help="stage to run (Keras models; default the last)")
    parser.add_argument("--json", help="also write the result to this JSON file")


def run(args):
    from bpnet.benchmark import benchmark_model
    from bpnet.export import parse_input_dims
    from bpnet.fileio import write_json_atomic

    hw = parse_input_dims(args.input_dims) if args.input_dims else None
    result = benchmark_model(args.model, hw, args.batch_size, args.runs, args.warmup, stage=args.stage)
    gflops = f"{result['gflops']:.2f}" if result["gflops"] is not None else "n/a"
    print(f"{result['model']}: {result['backend']} {result['precision']} on {result['device']}, "
          f"input {result['input_hw'][0]}x{result['input_hw'][1]}, batch {result['batch_size']}")
    print(f"latency median {result['median_ms']:.2f} ms, p95 {result['p95_ms']:.2f} ms "
          f"({result['runs']} runs after {result['warmup']} warm-up); {result['images_per_s']:.2f} images/s")
    print(f"params {result['params']}, GFLOPs per image {gflops}")
    if args.json:
        write_json_atomic(args.json, result)
        print(f"written: {args.json}")
    return 0
