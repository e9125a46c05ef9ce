"""`bpnet prune -m MODEL -o OUTPUT [-pth 0.1] [-eq union] [-pg 8] [-nf 16] [-n max] [-el ...]`"""

from bpnet.limits import DEFAULT_PRUNE_THRESHOLD, EQUALIZATIONS, NORMALIZERS


def add_arguments(parser):
    parser.add_argument("-m", "--model", required=True, help="trained BodyPoseNet (.hdf5)")
    parser.add_argument("-o", "--output_file", required=True,
                        help="pruned model to write (.hdf5); a report goes to OUTPUT.prune.json")
    parser.add_argument("-pth", "--pruning_threshold", type=float, default=DEFAULT_PRUNE_THRESHOLD,
                        help="remove filters whose normalised L2 norm is below this "
                             f"(default {DEFAULT_PRUNE_THRESHOLD:g}; 0 removes only all-zero filters)")
    parser.add_argument("-eq", "--equalization_criterion", default=EQUALIZATIONS[0],
                        help="merge statistics of layers tied by element-wise ops: "
                             f"{', '.join(EQUALIZATIONS)} (default {EQUALIZATIONS[0]})")
    parser.add_argument("-pg", "--pruning_granularity", type=int, default=8,
                        help="keep a multiple of this many filters per layer (default 8)")
    parser.add_argument("-nf", "--min_num_filters", type=int, default=16,
                        help="keep at least this many filters per layer (default 16)")
    parser.add_argument("-n", "--normalizer", default=NORMALIZERS[0],
                        help=f"normalise filter norms by the layer's {' or '.join(NORMALIZERS)} norm "
                             f"(default {NORMALIZERS[0]})")
    parser.add_argument("-el", "--excluded_layers", nargs="*", default=[], metavar="LAYER",
                        help="conv layers never to prune (outputs are always excluded)")


def run(args):
    from bpnet.prune import format_summary, prune_model_file

    report = prune_model_file(
        args.model, args.output_file, threshold=args.pruning_threshold,
        equalization=args.equalization_criterion, granularity=args.pruning_granularity,
        min_filters=args.min_num_filters, normalizer=args.normalizer,
        excluded_layers=args.excluded_layers)
    print(format_summary(report))
    return 0
