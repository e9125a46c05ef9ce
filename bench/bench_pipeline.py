"""Training input pipeline throughput: images/s at 368x368 with augmentation, 1 and 2 workers,
worker processes (now) vs threads (before), interleaved rounds on the bundled COCO images.

    python bench/bench_pipeline.py [--images 96] [--rounds 3] [--size 368] [--out bench_out]

Each round times every configuration once, in turn, so load changes on a shared machine hit all
of them alike; the table gives the median over rounds and the 1 -> 2 worker scaling of each mode.
Wall-clock images/s and the machine (CPU, instruction set, load average) are recorded in
OUT/bench_pipeline.json. Pool start-up (spawning) is excluded: the first batch is untimed.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bpnet  # noqa: E402,F401
from bpnet.machine import cpu_line, describe_cpu  # noqa: E402

COCO = ROOT / "data" / "coco-mini"
BATCH = 8


def median(values):
    return sorted(values)[len(values) // 2]


def pipeline_spec(size, workers):
    from bpnet.specs import TrainSpec, parse_spec

    return parse_spec(TrainSpec, {
        "random_seed": 7, "model": {"backbone_width": 0.125, "stages": 2},
        "dataloader": {"batch_size": BATCH, "image_shape": [size, size], "num_parallel_calls": workers,
                       "dataset": {"annotations": str(COCO / "annotations" / "person_keypoints_train2017.json"),
                                   "images": str(COCO / "train2017")}},
    }, "bench spec")


def process_cpu_seconds(pid):
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pids(spec, mode):
    from bpnet.data.pipeline import worker_pool

    if mode != "processes" or spec.dataloader.num_parallel_calls < 2:
        return []
    return list(worker_pool(spec, spec.dataloader.num_parallel_calls).executor._processes)


def images_per_second(dataset, images, pids=list):
    """(images/s wall, parent CPU ms per example, worker processes' CPU ms per example).
    A fresh iterator per timing: a live one keeps prefetching in the background and would
    steal CPU from the configuration being timed (and start it with batches already made)."""
    dataset_iter = iter(dataset)
    next(dataset_iter)   # untimed: pool start-up, tf.data warm-up
    pids = pids()   # after the warm-up: the executor starts its processes on first use
    batches = max(1, images // BATCH)
    workers_before = sum(process_cpu_seconds(pid) for pid in pids)
    cpu_before, started = time.process_time(), time.perf_counter()
    for _ in range(batches):
        next(dataset_iter)
    wall, parent = time.perf_counter() - started, time.process_time() - cpu_before
    workers = sum(process_cpu_seconds(pid) for pid in pids) - workers_before
    del dataset_iter
    count = batches * BATCH
    return count / wall, 1000 * parent / count, 1000 * workers / count


def cpu_ms_per_example(spec, count, before=False):
    """CPU milliseconds one worker spends per example (process CPU time, in this process): the
    load-independent figure; 1000 / it is the images/s one free core would make.
    before=True: with the previous per-limb targets and per-pixel normalisation (the reference
    copies kept in tests/test_targets_reference.py), for the before/after comparison."""
    import contextlib
    from unittest import mock

    from bpnet.data import pipeline
    from bpnet.skeleton import load_skeleton

    samples, skeleton = pipeline.load_samples(spec), load_skeleton(spec.dataloader.skeleton)
    patches = contextlib.ExitStack()
    if before:
        sys.path.insert(0, str(ROOT / "tests"))
        from test_targets_reference import reference_heatmaps, reference_pafs

        def old_targets(parts, skel, input_hw, target_spec, stride=8):
            grid = (input_hw[0] // stride, input_hw[1] // stride)
            parts = np.asarray(parts, np.float32).reshape(-1, skel.num_parts, 3)
            return (reference_heatmaps(parts, grid, stride, target_spec.heatmap_sigma_px),
                    reference_pafs(parts, skel.limbs, grid, stride, target_spec.paf_width_px))

        def old_normalize(images, scale, offset):
            return np.asarray(images, np.float32) / np.asarray(scale, np.float32) - np.asarray(offset, np.float32)

        patches.enter_context(mock.patch.object(pipeline, "make_targets", old_targets))
        patches.enter_context(mock.patch.object(pipeline, "normalize", old_normalize))
    with patches:
        started = time.process_time()
        for i in range(count):
            pipeline.make_example(samples[i % len(samples)], spec, skeleton,
                                  pipeline.example_rng(spec.random_seed, i, i % len(samples)))
        return 1000.0 * (time.process_time() - started) / count


def main(argv=None):
    from bpnet.data.pipeline import close_worker_pools, make_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="timed images per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=368)
    parser.add_argument("--out", default="bench_out")
    args = parser.parse_args(argv)
    configs = [(mode, workers) for workers in (1, 2) for mode in ("processes", "threads")]
    configs = [c for c in configs if not (c[1] == 1 and c[0] == "threads")]   # 1 worker: in-process either way
    machine_before = describe_cpu()
    results = {f"{mode} x{workers}": [] for mode, workers in configs}
    cpu_split = {f"{mode} x{workers}": [] for mode, workers in configs}   # [parent ms, workers ms]
    datasets = {(mode, workers): make_dataset(pipeline_spec(args.size, workers), training=True,
                                              processes=mode == "processes") for mode, workers in configs}
    pids = {(mode, workers): (lambda m=mode, w=workers: worker_pids(pipeline_spec(args.size, w), m))
            for mode, workers in configs}
    cpu_ms, cpu_ms_before = [], []
    for round_index in range(args.rounds):
        cpu_ms.append(round(cpu_ms_per_example(pipeline_spec(args.size, 1), args.images // 2), 2))
        cpu_ms_before.append(round(cpu_ms_per_example(pipeline_spec(args.size, 1), args.images // 2, before=True), 2))
        print(f"round {round_index}: {cpu_ms[-1]:.2f} CPU ms per example in one worker "
              f"(before: {cpu_ms_before[-1]:.2f})", flush=True)
        for mode, workers in configs:
            rate, parent_ms, workers_ms = images_per_second(datasets[(mode, workers)], args.images,
                                                            pids[(mode, workers)])
            results[f"{mode} x{workers}"].append(round(rate, 1))
            cpu_split[f"{mode} x{workers}"].append([round(parent_ms, 2), round(workers_ms, 2)])
            print(f"round {round_index}: {mode} x{workers}: {rate:.1f} images/s, CPU ms per example: "
                  f"{parent_ms:.2f} main process + {workers_ms:.2f} worker processes", flush=True)
    close_worker_pools()
    machine = describe_cpu()
    medians = {k: median(v) for k, v in results.items()}
    one = "processes x1"   # one worker: made in the calling process whichever the mode
    scaling = {k: median([r / base for r, base in zip(v, results[one])]) for k, v in results.items()}
    table = [f"input pipeline, {args.size}x{args.size} with augmentation, batch {BATCH}, "
             f"median of {args.rounds} interleaved rounds of {args.images} images; scaling = median over "
             "rounds of (rate / the same round's 1-worker rate)",
             f"machine before: {cpu_line(machine_before)}",
             f"machine after: {cpu_line(machine)}",
             f"{'workers':>8} | {'threads img/s':>13} {'scaling':>7} | {'processes img/s':>15} {'scaling':>7}",
             f"{1:>8} | {medians[one]:13.1f} {1.0:7.2f} | {medians[one]:15.1f} {1.0:7.2f}",
             f"{2:>8} | {medians['threads x2']:13.1f} {scaling['threads x2']:7.2f} | "
             f"{medians['processes x2']:15.1f} {scaling['processes x2']:7.2f}"]
    for key, split in cpu_split.items():
        parent, workers = (median(values) for values in zip(*split))
        table.append(f"{key}: CPU ms per example (median of rounds, all threads) {parent:.2f} main process"
                     + (f" + {workers:.2f} worker processes = {parent + workers:.2f}" if workers else ""))
    per_example, before = median(cpu_ms), median(cpu_ms_before)
    table.append(f"one worker: {per_example:.2f} CPU ms per example (median of rounds) = "
                 f"{1000 / per_example:.0f} images/s per free core; before (loop targets, per-pixel "
                 f"normalise): {before:.2f} ms = {1000 / before:.0f} images/s ({before / per_example:.2f}x)")
    print("\n" + "\n".join(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_pipeline.json").write_text(json.dumps(
        {"input_hw": [args.size, args.size], "batch_size": BATCH, "images_per_round": args.images,
         "rounds": results, "cpu_ms_main_and_workers": cpu_split, "medians": medians, "scaling": scaling, "cpu_ms_per_example": cpu_ms, "cpu_ms_per_example_before": cpu_ms_before, "machine_before": machine_before, "machine": machine,
         "table": table}, indent=1))


if __name__ == "__main__":
    main()
