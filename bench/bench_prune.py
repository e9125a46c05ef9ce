"""Pruning trade-off on the bundled data: for each -pth, parameters, CNN latency and AP before and
after a short retrain.

    python bench/bench_prune.py [--results DIR] [--train-epochs 100] [--retrain-epochs 4]
                                [--train-spec specs/train_demo.yaml --infer-spec specs/infer_demo.yaml]

1. Train a small BodyPoseNet with L1 kernel regularisation (--train-spec, default
   specs/train_small.yaml, with the epochs, L1 factor and input size given here) on the 80 bundled
   COCO images.
2. For each threshold: `prune_model_file`, then retrain from the pruned graph
   (specs/retrain_small.yaml with pretrained_weights = the pruned model, load_graph: true).
3. AP: pycocotools keypoint AP of `evaluate_model` on the same 80 bundled *training* images (the
   only labelled images here), so it measures fit, not generalisation; it shows how much of what the
   model learned each threshold destroys and how much retraining recovers. The decoder settings
   are --infer-spec's (default: InferSpec's defaults) at --eval-hw.
4. Latency: ONNX Runtime on one thread, batch 1 at --latency-hw, median over --runs runs after a
   warm-up; the unpruned model's median is the reference of the ratio.
A reference row "none" retrains the unpruned model for the same epochs, so "AP retrained" is
compared with equal training. Prints a table and writes DIR/bench_prune.json.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bpnet.fileio import write_json_atomic  # noqa: E402
from bpnet.machine import cpu_line, describe_cpu  # noqa: E402
from bpnet.specs import (InferSpec, TrainSpec, load_infer_spec, load_yaml,  # noqa: E402
                         parse_spec, spec_to_yaml)

THRESHOLDS = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)
TRAIN_SPEC = ROOT / "specs" / "train_small.yaml"
RETRAIN_SPEC = ROOT / "specs" / "retrain_small.yaml"
COCO = ROOT / "data" / "coco-mini"
ANNOTATIONS = COCO / "annotations" / "person_keypoints_train2017.json"
IMAGES = COCO / "train2017"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=ROOT / "results" / "bench_prune")
    p.add_argument("--train-spec", type=Path, default=TRAIN_SPEC,
                   help="training recipe of the base model (its epochs, L1 and input size are overridden)")
    p.add_argument("--base-model", type=Path, default=None,
                   help="skip step 1: prune this model, trained with --train-spec at --eval-hw")
    p.add_argument("--infer-spec", type=Path, default=None,
                   help="decoder settings for AP (input_shape is set to --eval-hw)")
    p.add_argument("--train-epochs", type=int, default=100)
    p.add_argument("--l1", type=float, default=3e-3, help="L1 kernel regularisation factor")
    p.add_argument("--retrain-epochs", type=int, default=4)
    p.add_argument("--retrain-lr", type=float, default=None,
                   help="base learning rate of the retrain (default: specs/retrain_small.yaml's); "
                        "an imported pretrained model needs a small one (docs/pruning.md)")
    p.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    p.add_argument("--granularity", type=int, default=8)
    p.add_argument("--min-filters", type=int, default=8)
    p.add_argument("--eval-hw", type=int, nargs=2, default=[128, 128])
    p.add_argument("--latency-hw", type=int, nargs=2, default=[256, 256])
    p.add_argument("--runs", type=int, default=30)
    return p.parse_args()


def spec_from_file(path, overrides):
    """A TrainSpec from a YAML file with dotted-key overrides; relative paths resolved as
    `load_train_spec` does (against the spec's folder)."""
    data = load_yaml(path, "training spec")
    for dotted, value in overrides.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    for key in ("annotations", "images"):
        data["dataloader"]["dataset"][key] = str((path.parent / data["dataloader"]["dataset"][key])
                                                 .resolve())
    return parse_spec(TrainSpec, data, f"training spec {path}")


def train_once(spec, results_dir):
    """Train unless a finished model from the same spec is already there (re-runs are cheap)."""
    from bpnet.train import train

    model = results_dir / "bpnet_model.hdf5"
    saved = results_dir / "bench_spec.yaml"
    if model.is_file() and saved.is_file() and saved.read_text() == spec_to_yaml(spec):
        return model
    started = time.perf_counter()
    train(spec, results_dir)
    saved.write_text(spec_to_yaml(spec))
    print(f"  trained {results_dir.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return model


def export_for_latency(model_path, onnx_path, latency_hw):
    from bpnet.export import export_onnx

    export_onnx(model_path, onnx_path, latency_hw)
    return onnx_path


def interleaved_latency_ms(onnx_paths, latency_hw, runs):
    """{path: median ms of one batch-1 ONNX Runtime call on one thread}.

    The models take turns run by run, so a change in the machine's load (it is shared) hits every
    model alike instead of biasing the ratios.
    """
    from bpnet.onnx_graph import onnx_session

    sessions = {path: onnx_session(path, threads=1) for path in onnx_paths}
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, *latency_hw, 3)).astype(np.float32)
    times = {path: [] for path in onnx_paths}
    for run in range(runs + 3):
        for path, session in sessions.items():
            started = time.perf_counter()
            session.run(None, {"input": x})
            if run >= 3:   # warm-up
                times[path].append((time.perf_counter() - started) * 1000)
    return {path: statistics.median(t) for path, t in times.items()}


def data_loss(model_path, spec):
    """Mean training loss (masked L2, all stages, no regulariser) per image over the letterboxed,
    un-augmented bundled images: a finer signal than AP for a model this briefly trained."""
    from bpnet.data.pipeline import make_dataset
    from bpnet.losses import bpnet_loss
    from bpnet.model import load_model

    from bpnet.train import follow_model_card
    # An imported base model (and what is pruned/retrained from it) takes its card's input.
    spec = follow_model_card(spec.model_copy(update={"pretrained_weights": Path(model_path)}))
    model = load_model(model_path)
    total, images = 0.0, 0
    for batch, targets in make_dataset(spec, training=False):
        loss, _ = bpnet_loss(model(batch, training=False), targets["heatmaps"], targets["pafs"],
                             targets["mask"])
        total += float(loss) * int(batch.shape[0])
        images += int(batch.shape[0])
    return total / images


def ap_of(model_path, infer_spec, out_dir):
    from bpnet.evaluate import evaluate_model

    return evaluate_model(model_path, ANNOTATIONS, IMAGES, infer_spec, out_dir)["AP"]


def measure_threshold(name, base_model, args, infer_spec, base_params, loss_spec):
    """One row without latency (measured for all models together afterwards)."""
    from bpnet.model import count_params, load_model
    from bpnet.prune import prune_model_file

    work = args.results / name
    if name == "none":
        pruned, params = base_model, base_params
    else:
        pruned = work / "pruned.hdf5"
        report = prune_model_file(base_model, pruned, threshold=float(name),
                                  granularity=args.granularity, min_filters=args.min_filters)
        params = report["params_after"]
    retrain = spec_from_file(RETRAIN_SPEC, {
        "pretrained_weights": str(pruned), "load_graph": True, "num_epoch": args.retrain_epochs,
        "dataloader.image_shape": list(args.eval_hw),
        **({} if args.retrain_lr is None else
           {"optimizer.learning_rate_schedule.base_learning_rate": args.retrain_lr,
            "optimizer.learning_rate_schedule.min_learning_rate": args.retrain_lr / 50})})
    retrained = train_once(retrain, work / "retrain")
    assert count_params(load_model(retrained)) == params
    row = {
        "pth": name, "params": params, "param_ratio": params / base_params,
        "loss_pruned": data_loss(pruned, loss_spec),
        "loss_retrained": data_loss(retrained, loss_spec),
        "ap_pruned": ap_of(pruned, infer_spec, work / "eval_pruned"),
        "ap_retrained": ap_of(retrained, infer_spec, work / "eval_retrained"),
        "onnx": str(export_for_latency(pruned, work / "pruned.onnx", args.latency_hw)),
    }
    print(f"  -pth {name}: {params:,} parameters, loss {row['loss_pruned']:.1f} pruned, "
          f"{row['loss_retrained']:.1f} retrained; AP {row['ap_pruned']:.3f} pruned, "
          f"{row['ap_retrained']:.3f} retrained", flush=True)
    return row


HEADER = (f"{'-pth':>6} {'params':>10} {'ratio':>7} {'CNN ms':>8} {'lat. ratio':>10} "
          f"{'loss pruned':>11} {'loss retr.':>10} {'AP pruned':>9} {'AP retr.':>8}")


def format_row(row):
    return (f"{row['pth']:>6} {row['params']:>10,} {row['param_ratio']:>7.3f} "
            f"{row['latency_ms']:>8.2f} {row['latency_ratio']:>10.3f} "
            f"{row['loss_pruned']:>11.1f} {row['loss_retrained']:>10.1f} "
            f"{row['ap_pruned']:>9.3f} {row['ap_retrained']:>8.3f}")


def main():
    args = parse_args()
    import bpnet  # noqa: F401  (tf-keras before TensorFlow)
    from bpnet.model import count_params, load_model

    args.results.mkdir(parents=True, exist_ok=True)
    if args.base_model is None:
        print(f"training with L1 {args.l1} for {args.train_epochs} epochs ...", flush=True)
    train_spec = spec_from_file(args.train_spec, {
        "num_epoch": args.train_epochs, "model.kernel_regularization_factor": args.l1,
        "model.regularization_type": "l1", "dataloader.image_shape": list(args.eval_hw)})
    base_model = args.base_model or train_once(train_spec, args.results / "train")
    infer_spec = (InferSpec() if args.infer_spec is None else load_infer_spec(args.infer_spec)
                  ).model_copy(update={"input_shape": tuple(args.eval_hw)})
    base_params = count_params(load_model(base_model))
    base_ap = ap_of(base_model, infer_spec, args.results / "eval_base")
    base_loss = data_loss(base_model, train_spec)
    base_onnx = str(export_for_latency(base_model, args.results / "base.onnx", args.latency_hw))
    rows = [measure_threshold(name, base_model, args, infer_spec, base_params, train_spec)
            for name in ["none"] + [f"{t:g}" for t in args.thresholds]]
    latency = interleaved_latency_ms([base_onnx] + [row["onnx"] for row in rows],
                                     args.latency_hw, args.runs)
    for row in rows:
        row["latency_ms"] = latency[row["onnx"]]
        row["latency_ratio"] = row["latency_ms"] / latency[base_onnx]

    print(f"\nbase model: {base_params:,} parameters, loss {base_loss:.1f}, AP {base_ap:.3f}, CNN "
          f"{latency[base_onnx]:.2f} ms at {args.latency_hw[0]}x{args.latency_hw[1]} (ONNX Runtime, "
          f"1 thread, batch 1, median of {args.runs} interleaved runs)")
    print(f"AP: COCO keypoint AP on the {len(list(IMAGES.glob('*.jpg')))} bundled *training* "
          f"images at {args.eval_hw[0]}x{args.eval_hw[1]}; prune -pg {args.granularity} "
          f"-nf {args.min_filters} -eq union -n max; retrain {args.retrain_epochs} epochs "
          "(row 'none': the unpruned model retrained alike); loss: mean masked L2 per image on "
          "the same images, letterboxed\n")
    print(HEADER)
    for row in rows:
        print(format_row(row))
    write_json_atomic(args.results / "bench_prune.json", {
        "base": {"params": base_params, "latency_ms": latency[base_onnx], "ap": base_ap,
                 "loss": base_loss},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows, "machine": describe_cpu(threads=1)})
    print(f"machine: {cpu_line(describe_cpu(threads=1))}")


if __name__ == "__main__":
    main()
