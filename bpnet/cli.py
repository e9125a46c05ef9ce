"""`bpnet` command line: one sub-command per verb, following the TLT workflow.

Each verb lives in `bpnet/commands/<verb>.py` with `add_arguments(parser)` and `run(args)`;
those modules import nothing heavy at the top, so `bpnet --help` is instant and TensorFlow is
loaded only by the verbs that need it. A `BpnetError` is printed as `error: ...` with exit 2.
"""

import argparse
import importlib
import gc
import sys

from bpnet.errors import BpnetError, RunCancelled

VERBS = {
    "train": "Train a BodyPoseNet model from a spec (-e SPEC -r RESULTS_DIR).",
    "prune": "Remove low-magnitude filters from a trained model.",
    "export": "Export to ONNX (FP32/FP16/INT8) and, with TensorRT, build engines.",
    "sample-calibration": "Choose calibration images by persons/keypoints per image.",
    "evaluate": "COCO keypoint AP of a model, a results file, or the ground truth (--oracle).",
    "inference": "Run a model on images; write COCO results and drawn skeletons.",
    "bench": "Latency and throughput of a model on a backend.",
    "dataset-stats": "People, keypoints and sizes of a COCO dataset, with recommended settings.",
    "search": "Find the smallest pruned model within an AP budget (prune-retrain-evaluate loop).",
    "gate": "Check an INT8/FP16 model against its float parent; exit 1 when it lost too much.",
    "quantize": "The fastest INT8 model within an AP budget (calibrator comparison, layers back to float).",
    "divergence": "Per-layer agreement of two versions of one network; the first layer that parts.",
    "explore": "AP and latency of every stage exit at several resolutions and precisions, with the oracle.",
    "dataset_convert": "TAO's TFRecord conversion is not needed (bpnet reads COCO directly): "
                       "checks the data of a coco_spec.json instead.",
    "import": "Import a pretrained pose network (TFLite, frozen .pb, ONNX, TAO .hdf5) with its model card.",
    "spec": "Show a spec as bpnet reads it; --from-tao FILE prints the native spec of a TAO spec file.",
}
# TAO's spellings of our verbs, so its command lines and scripts find them.
ALIASES = {"sample-calibration": ["sample_calibration", "sample_calibration_images"],
           "dataset-stats": ["dataset_stats"], "dataset_convert": ["dataset-convert"]}
MODULE_NAMES = {"import": "import_"}   # `import` is a Python keyword


def _module(verb):
    name = MODULE_NAMES.get(verb, verb.replace("-", "_"))
    return importlib.import_module(f"bpnet.commands.{name}")


def build_parser():
    from bpnet.commands.tao_flags import add_launcher_arguments

    parser = argparse.ArgumentParser(prog="bpnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, help_text in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text, aliases=ALIASES.get(verb, []))
        p.set_defaults(verb_module=verb)
        _module(verb).add_arguments(p)
        add_launcher_arguments(p)
    return parser


def main(argv=None):
    from bpnet.commands.tao_flags import log_file_copy

    args = build_parser().parse_args(argv)
    try:
        with log_file_copy(getattr(args, "log_file", None)):
            code = _run(args)
    except BpnetError as err:      # the log file itself (_run reports the verb's errors)
        print(f"error: {err}", file=sys.stderr)
        code = 2
    # An error raised inside tf.data keeps its input pipeline alive through a reference cycle
    # (exception -> traceback -> frames); collected only at interpreter shutdown, its threads then
    # hang or abort the process (SIGABRT, exit 134). Collect it now, while Python is whole.
    gc.collect()
    return code


def _run(args):
    from bpnet.commands.tao_flags import apply_launcher_arguments

    try:
        apply_launcher_arguments(args)
        return _module(args.verb_module).run(args) or 0
    except BpnetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunCancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
