"""COCO keypoint AP of the demo recipe as it trains: does the bundled-data model find people?

    python bench/bench_demo_ap.py [--spec specs/train_demo.yaml] [--infer specs/infer_demo.yaml]
                                  [--epochs 100 200] [--results DIR] [--also-eval 288x384 ...]

1. Train with `--spec`, once per value of `--epochs` (each a fresh run in its own folder, since
   the learning-rate schedule depends on the length); a folder already holding a finished run of
   the same spec is reused, so re-running the bench only evaluates.
2. After each, `bpnet.evaluate.evaluate_model` with `--infer` (pycocotools keypoint AP) on the
   bundled 80 coco-mini images, which are the images the recipe trains on: this measures how well
   the model fits them, not accuracy on unseen images.
3. `--also-eval HxW` evaluates the last model at other input sizes too (same decoder settings),
   e.g. 288x384 shows what a scale mismatch between training and inference costs; the decoder's
   ceiling (`evaluate_oracle`: ground truth -> targets -> decode) is printed for every size.
Prints a table and writes DIR/bench_demo_ap.json. Minutes are the run's wall-clock training time
(`time_s` of its summary; the machine may be shared: the load average is printed with the table).
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bpnet.errors import BpnetError  # noqa: E402
from bpnet.fileio import read_json, write_json_atomic, write_text_atomic  # noqa: E402
from bpnet.specs import load_infer_spec, load_train_spec, spec_to_yaml  # noqa: E402

COCO = ROOT / "data" / "coco-mini"
ANNOTATIONS = COCO / "annotations" / "person_keypoints_train2017.json"
IMAGES = COCO / "train2017"
STATS = ("AP", "AP50", "APm", "APl", "AR")


def parse_hw(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 288x384, got {text!r}") from None
    return h, w


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=ROOT / "specs" / "train_demo.yaml")
    p.add_argument("--infer", type=Path, default=ROOT / "specs" / "infer_demo.yaml")
    p.add_argument("--epochs", type=int, nargs="+", default=None,
                   help="evaluate after these epoch counts (default: the spec's num_epoch)")
    p.add_argument("--results", type=Path, default=ROOT / "results" / "bench_demo_ap")
    p.add_argument("--also-eval", type=parse_hw, nargs="*", default=[], metavar="HxW")
    return p.parse_args()


def train_once(spec, results_dir):
    """Train `spec` into `results_dir` unless a finished run of the same spec is there."""
    from bpnet.train import train

    summary_path = results_dir / "training_summary.json"
    saved = results_dir / "bench_spec.yaml"
    if summary_path.is_file() and saved.is_file() and saved.read_text() == spec_to_yaml(spec):
        return read_json(summary_path, "training summary")
    summary = train(spec, results_dir)
    write_text_atomic(saved, spec_to_yaml(spec))
    return summary


def evaluate(model_path, infer_spec, out_dir):
    from bpnet.evaluate import evaluate_model

    return evaluate_model(model_path, ANNOTATIONS, IMAGES, infer_spec, out_dir)


def oracle_ap(infer_spec, target_spec, out_dir):
    from bpnet.evaluate import evaluate_oracle

    return evaluate_oracle(ANNOTATIONS, IMAGES, infer_spec, out_dir, target_spec)["AP"]


def row_for(summary, input_hw, metrics, ceiling):
    return {"epochs": summary["epochs"], "steps": summary["steps"], "minutes": summary["time_s"] / 60.0,
            "loss": summary["final_loss"], "input_hw": list(input_hw), "oracle_AP": ceiling,
            **{k: metrics[k] for k in STATS}, "num_images": metrics["num_images"]}


HEADER = (f"{'epochs':>6} {'steps':>6} {'min':>6} {'loss':>7} {'eval HxW':>9} {'AP':>6} {'AP50':>6} "
          f"{'APm':>6} {'APl':>6} {'AR':>6} {'oracle AP':>9}")


def format_row(row):
    hw = "x".join(str(v) for v in row["input_hw"])
    return (f"{row['epochs']:>6} {row['steps']:>6} {row['minutes']:>6.1f} {row['loss']:>7.1f} {hw:>9} "
            + " ".join(f"{row[k]:>6.3f}" for k in STATS) + f" {row['oracle_AP']:>9.3f}")


def main():
    try:
        run(parse_args())
    except BpnetError as err:
        sys.exit(f"error: {err}")


def run(args):
    spec = load_train_spec(args.spec)
    infer_spec = load_infer_spec(args.infer)
    epochs = sorted(args.epochs or [spec.num_epoch])
    args.results.mkdir(parents=True, exist_ok=True)
    targets = spec.dataloader.targets
    ceilings = {}

    def ceiling(hw):
        if hw not in ceilings:
            ceilings[hw] = oracle_ap(infer_spec.model_copy(update={"input_shape": hw}), targets,
                                     args.results / f"oracle_{hw[0]}x{hw[1]}")
        return ceilings[hw]

    rows = []
    for num_epoch in epochs:
        print(f"training {args.spec.name} for {num_epoch} epochs ...", flush=True)
        train_dir = args.results / f"train_e{num_epoch}"
        summary = train_once(spec.model_copy(update={"num_epoch": num_epoch}), train_dir)
        model = train_dir / "bpnet_model.hdf5"
        metrics = evaluate(model, infer_spec, train_dir / "eval")
        rows.append(row_for(summary, infer_spec.input_shape, metrics,
                            ceiling(tuple(infer_spec.input_shape))))
        print("  " + format_row(rows[-1]), flush=True)
    for hw in args.also_eval:
        other = infer_spec.model_copy(update={"input_shape": hw})
        metrics = evaluate(model, other, train_dir / f"eval_{hw[0]}x{hw[1]}")
        rows.append(row_for(summary, hw, metrics, ceiling(hw)))
        print("  " + format_row(rows[-1]), flush=True)

    train_hw = "x".join(str(v) for v in spec.dataloader.image_shape)
    print(f"\n{args.spec.name}: trained at {train_hw}, evaluated with {args.infer.name} on the "
          f"{rows[0]['num_images']} bundled coco-mini images (the training images: a fit, not "
          f"accuracy on unseen images); min = training wall time; oracle AP = the decoder's ceiling "
          f"at that input size; load average {os.getloadavg()[0]:.1f} at the end\n")
    print(HEADER)
    for row in rows:
        print(format_row(row))
    write_json_atomic(args.results / "bench_demo_ap.json", {
        "train_spec": str(args.spec), "infer_spec": str(args.infer), "rows": rows,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S")})


if __name__ == "__main__":
    main()
