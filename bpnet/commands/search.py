"""`bpnet search -m BASE.hdf5 -e RETRAIN_SPEC.yaml -a ANN.json -i IMAGES --infer_spec INFER.yaml -r OUT
[--budget 2] [--objective params|latency] [--max_iters 6]`: the smallest model within an AP budget."""


def add_arguments(parser):
    from bpnet.commands.gate import add_evaluation_arguments
    from bpnet.limits import DEFAULT_AP_BUDGET, DEFAULT_SEARCH_ITERS

    parser.add_argument("-m", "--model", required=True, help="the unpruned trained model (.hdf5)")
    parser.add_argument("-e", "--retrain_spec", required=True, help="training spec used to retrain each pruned model")
    add_evaluation_arguments(parser)
    parser.add_argument("--budget", type=float, default=DEFAULT_AP_BUDGET,
                        help=f"largest AP drop in points (default {DEFAULT_AP_BUDGET:g})")
    parser.add_argument("--objective", default="params", help="params or latency (default params)")
    parser.add_argument("--latency_hw", default=None, help="H,W for the latency objective")
    parser.add_argument("--max_iters", type=int, default=DEFAULT_SEARCH_ITERS,
                        help=f"iteration limit (default {DEFAULT_SEARCH_ITERS})")


def run(args):
    from bpnet.events import EventLog
    from bpnet.guide.search_run import search_prune_threshold
    from bpnet.preprocess import check_input_hw
    from bpnet.specs import load_infer_spec, load_train_spec

    latency = None
    if args.latency_hw:
        latency = {"input_hw": check_input_hw(args.latency_hw.split(","), "--latency_hw")}

    def show(event):
        if event["stage"] == "search" and event["event"] in ("iteration", "done"):
            print(event["message"], flush=True)

    report = search_prune_threshold(
        args.model, load_train_spec(args.retrain_spec), args.annotations, args.images,
        load_infer_spec(args.infer_spec), args.results_dir, budget_ap=args.budget,
        objective=args.objective, max_iters=args.max_iters, latency_options=latency,
        max_images=args.max_images, progress=EventLog(f"{args.results_dir}/events.jsonl", forward=show))
    print(f"chosen model: {report['chosen_model']} ({report['reason']})")
    return 0
