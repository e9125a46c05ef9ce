"""`bpnet prune -m MODEL -o OUTPUT [-pth 0.1] [-eq union] [-pg 8] [-nf 16] [-n max] [-el ...]
[--dry_run]`

Flags and defaults are TAO's (`tao model bpnet prune`); the seed's workflow prunes with
`-eq union -pth 0.2`."""

from bpnet.limits import (DEFAULT_PRUNE_GRANULARITY, DEFAULT_PRUNE_MIN_FILTERS, DEFAULT_PRUNE_THRESHOLD,
                          EQUALIZATIONS, NORMALIZERS)


def add_arguments(parser):
    from bpnet.commands.tao_flags import add_verbose

    parser.add_argument("-m", "--model", required=True, help="trained BodyPoseNet (.hdf5)")
    parser.add_argument("-o", "--output_file",
                        help="pruned model to write (.hdf5); a report goes to OUTPUT.prune.json "
                             "(required unless --dry_run)")
    parser.add_argument("-pth", "--pruning_threshold", type=float, default=DEFAULT_PRUNE_THRESHOLD,
                        help="remove filters whose normalised L2 norm is below this "
                             f"(default {DEFAULT_PRUNE_THRESHOLD:g}, TAO's; 0 removes only all-zero filters)")
    parser.add_argument("-eq", "--equalization_criterion", default=EQUALIZATIONS[0],
                        help="merge statistics of layers tied by element-wise ops: "
                             f"{', '.join(EQUALIZATIONS)} (default {EQUALIZATIONS[0]}, TAO's and the "
                             "workflow's: a filter stays when any tied layer needs it)")
    parser.add_argument("-pg", "--pruning_granularity", type=int, default=DEFAULT_PRUNE_GRANULARITY,
                        help=f"keep a multiple of this many filters per layer (default {DEFAULT_PRUNE_GRANULARITY})")
    parser.add_argument("-nf", "--min_num_filters", type=int, default=DEFAULT_PRUNE_MIN_FILTERS,
                        help=f"keep at least this many filters per layer (default {DEFAULT_PRUNE_MIN_FILTERS})")
    parser.add_argument("-n", "--normalizer", default=NORMALIZERS[0],
                        help=f"normalise filter norms by the layer's {' or '.join(NORMALIZERS)} norm "
                             f"(default {NORMALIZERS[0]})")
    parser.add_argument("-el", "--excluded_layers", nargs="*", default=[], metavar="LAYER",
                        help="conv layers never to prune (outputs are always excluded)")
    parser.add_argument("--dry_run", action="store_true",
                        help="only print what would be pruned (parameters, layers, tied groups), "
                             "computed from the weights; write nothing")
    parser.add_argument("-r", "--results_dir", default=None,
                        help="TAO: folder for the run's status files; bpnet creates it and writes the "
                             "prune report beside the output file (OUTPUT.prune.json)")
    add_verbose(parser)


def run(args):
    from pathlib import Path

    from bpnet.commands.tao_flags import check_model_file
    from bpnet.errors import BpnetError
    from bpnet.prune import format_summary, preview_pruning, prune_model_file

    check_model_file(args.model)
    options = dict(threshold=args.pruning_threshold, equalization=args.equalization_criterion,
                   granularity=args.pruning_granularity, min_filters=args.min_num_filters,
                   normalizer=args.normalizer, excluded_layers=args.excluded_layers)
    if args.dry_run:
        report = {"input_model": args.model, **preview_pruning(args.model, **options)}
        print(format_summary(report, dry_run=True))
        return 0
    if not args.output_file:
        raise BpnetError("output model (-o): missing; give the pruned model's path "
                         "(or --dry_run to only preview the decision)")
    if args.results_dir:
        Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    report = prune_model_file(
        args.model, args.output_file, **options)
    print(format_summary(report))
    return 0
