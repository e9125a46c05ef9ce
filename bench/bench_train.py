"""Training throughput on this machine: images/s of the training step and of the input pipeline.

    python bench/bench_train.py [--steps 3] [--batch 2] [--quick] [--out DIR]

Models: "small" = specs/train_small.yaml's model (backbone_width 0.25, 2 stages) and "default" =
the TLT-style default (backbone_width 1.0, 3 stages), each at 256x256 and 288x384 input.
For every row, real batches of the bundled COCO images (augmentation on) are made by the
project's pipeline and kept in memory; then `--steps` training steps (the same compiled step
`bpnet train` runs: forward, masked L2 over all stages, L1 regularisation, Adam update) are
timed after one warm-up step that traces the graph. "train img/s" is the training compute alone;
"pipeline img/s" is the input pipeline alone (decode, augment, targets; 2 parallel workers), so
the slower of the two bounds `bpnet train`. --quick times only 256x256.
Prints the table (and writes DIR/bench_train.json with --out DIR).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bpnet.specs import TrainSpec, parse_spec  # noqa: E402

MODELS = {"small": {"backbone_width": 0.25, "stages": 2},
          "default": {"backbone_width": 1.0, "stages": 3}}
RESOLUTIONS = ((256, 256), (288, 384))
COCO = ROOT / "data" / "coco-mini"


def bench_spec(model_fields, input_hw, batch):
    return parse_spec(TrainSpec, {
        "random_seed": 0,
        "model": {**model_fields, "regularization_type": "l1",
                  "kernel_regularization_factor": 1e-5},
        "dataloader": {
            "batch_size": batch, "image_shape": list(input_hw), "num_parallel_calls": 2,
            "dataset": {"annotations": str(COCO / "annotations" / "person_keypoints_train2017.json"),
                        "images": str(COCO / "train2017"),
                        "include_images_without_people": False}},
        "optimizer": {"type": "adam",
                      "learning_rate_schedule": {"base_learning_rate": 1e-4,
                                                 "min_learning_rate": 1e-6}},
    }, "bench spec")


def time_pipeline(spec, num_batches):
    """(batches in memory, pipeline images/s) for `num_batches` batches after the first."""
    from bpnet.data.pipeline import make_dataset

    iterator = iter(make_dataset(spec, training=True))
    batches = [next(iterator)]   # the first batch includes the COCO index and thread start-up
    started = time.perf_counter()
    batches += [next(iterator) for _ in range(num_batches)]
    seconds = time.perf_counter() - started
    return batches, num_batches * spec.dataloader.batch_size / seconds


def time_training(spec, batches):
    """(median step seconds, parameter count) over all batches but the warm-up one."""
    import tensorflow as tf

    from bpnet.model import build_model, count_params
    from bpnet.train import make_optimizer, make_train_step

    model = build_model(spec.model, spec.dataloader.image_shape)
    optimizer = make_optimizer(spec.optimizer)
    step = make_train_step(model, optimizer, tf.distribute.get_strategy())
    float(step(batches[0])[0])   # traces and compiles
    seconds = []
    for batch in batches[1:]:
        started = time.perf_counter()
        float(step(batch)[0])    # float() waits for the step to finish
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), count_params(model)


def run_row(name, input_hw, batch, steps):
    spec = bench_spec(MODELS[name], input_hw, batch)
    batches, pipeline_rate = time_pipeline(spec, steps)
    step_s, params = time_training(spec, batches)
    return {"model": name, **MODELS[name], "input_hw": list(input_hw), "batch": batch,
            "params": params, "steps_timed": steps, "step_ms": step_s * 1000,
            "train_images_per_s": batch / step_s, "pipeline_images_per_s": pipeline_rate}


def format_table(rows):
    header = (f"{'model':8} {'width':>5} {'stages':>6} {'input':>8} {'batch':>5} {'params':>11} "
              f"{'step ms':>9} {'train img/s':>11} {'pipeline img/s':>14}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['model']:8} {r['backbone_width']:>5} {r['stages']:>6} "
            f"{r['input_hw'][0]}x{r['input_hw'][1]:<4} {r['batch']:>5} {r['params']:>11,} "
            f"{r['step_ms']:>9.0f} {r['train_images_per_s']:>11.2f} "
            f"{r['pipeline_images_per_s']:>14.1f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (default 3)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    parser.add_argument("--quick", action="store_true", help="256x256 only")
    parser.add_argument("--out", type=Path, default=None, help="also write DIR/bench_train.json")
    args = parser.parse_args(argv)

    import tensorflow as tf

    rows = []
    for input_hw in RESOLUTIONS[:1] if args.quick else RESOLUTIONS:
        for name in MODELS:
            rows.append(run_row(name, input_hw, args.batch, args.steps))
            print(f"done: {name} {input_hw[0]}x{input_hw[1]}", file=sys.stderr, flush=True)
    from bpnet.machine import cpu_line, describe_cpu

    machine = {**describe_cpu(), "tensorflow": tf.__version__}
    print(f"machine: {cpu_line(machine)}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_train.json").write_text(
            json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"Training throughput on {os.cpu_count()} CPU core(s), TensorFlow {tf.__version__}, "
          f"1-min load average {machine['load_average'][0]:.1f} at the end:")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
