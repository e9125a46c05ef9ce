"""Issue 17's table in one run: Keras (compiled) vs ONNX Runtime FP32 (with and without channel
padding) vs ORT INT8, unpruned and pruned, 288x384 batch 1, 1 and 2 threads; end-to-end images/s.

    python bench/bench_perf.py [--out bench_out/perf] [--rounds 3] [--repeats 1] [--stages 3]
                               [--e2e_images 40] [--model M.hdf5] [--threshold 0.1] [--render]

Models: --model M.hdf5 (e.g. the imported bundled network) is pruned directly at --threshold.
Without --model, the full-width BodyPoseNet (VGG backbone, 3 stages: 65.5 GMAC at
288x384) with seeded random weights: latency does not depend on the weight values. The pruned
model: 60% of each hidden conv's filters are scaled by 1e-3 (a stand-in for the dead filters L1
training leaves; random weights have near-equal filter norms) and `prune_model_file` at
--threshold (default 0.1) removes them (granularity 8, union equalisation): the channel counts,
which set the speed, are those of a pruned graph.
INT8: ORT Q/DQ (U8S8), minmax calibration on 4 bundled images.

Latency: each thread count runs in its own process (TensorFlow fixes its thread pool once per
process); inside it, every round times each variant once, in turn (interleaved), and the table
gives the median of rounds. Speed-ups are ratios inside one run. The machine (CPU, instruction
set, threads, load average) is recorded with every table, before and after.
End to end: `benchmark_end_to_end` on the bundled images (read -> letterbox -> CNN -> decode ->
COCO keypoints, pipelined), 2 threads, ORT FP32 and INT8 of both models.
Writes OUT/bench_perf.json and OUT/bench_perf.md (the tables, as pasted into docs/performance.md).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bpnet  # noqa: E402,F401
from bpnet.machine import cpu_line, describe_cpu, under_load  # noqa: E402

HW = (288, 384)
COCO_IMAGES = ROOT / "data" / "coco-mini" / "train2017"
CALIBRATION_IMAGES = 8
VARIANTS = ("keras", "ort_fp32", "ort_fp32_padded", "ort_int8", "ort_int8_padded")


WEAK_FRACTION = 0.6   # of each hidden conv's filters, scaled down before pruning


def weaken_filters(model_path, output_path, fraction, seed=17):
    """A copy of the model where `fraction` of every hidden conv's filters are scaled by 1e-3:
    what L1-regularised training leaves behind for `bpnet prune` to remove. Random weights have
    near-equal filter norms, so pruning them directly removes almost nothing (0.1% at -pth 0.8)."""
    import numpy as np
    import tensorflow as tf

    from bpnet.model import OUTPUT_NAME, load_model

    model = load_model(model_path)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Conv2D) and not OUTPUT_NAME.match(layer.name):
            kernel = layer.kernel.numpy()
            weak = rng.random(kernel.shape[-1]) < fraction
            kernel[..., weak] *= 1e-3
            layer.kernel.assign(kernel)
    model.save(output_path)


def prepare_models(out, model, threshold, stages):
    """Keras files, ONNX FP32 (plain and channel-padded) and INT8 of the unpruned and pruned model."""
    import onnx

    from bpnet import calibrate
    from bpnet.export import export_onnx
    from bpnet.onnx_pad import pad_concat_channels
    from bpnet.prune.model_file import prune_model_file

    out.mkdir(parents=True, exist_ok=True)
    keras = {"unpruned": Path(model) if model else out / "full_width.hdf5", "pruned": out / "pruned.hdf5"}
    if not keras["unpruned"].exists():
        import tensorflow as tf

        from bpnet.model import build_model
        from bpnet.specs import ModelSpec

        tf.keras.utils.set_random_seed(17)
        build_model(ModelSpec(backbone_width=1.0, stages=stages)).save(keras["unpruned"])
    prune_report = {}
    if Path(f"{keras['pruned']}.prune.json").exists():   # pruned by an earlier run into this --out
        prune_report = json.loads(Path(f"{keras['pruned']}.prune.json").read_text())
    if not keras["pruned"].exists():
        source = keras["unpruned"]
        if not model:   # random weights: make the weak filters a trained model has (see weaken_filters)
            source = out / "with_weak_filters.hdf5"
            weaken_filters(keras["unpruned"], source, WEAK_FRACTION)
        prune_report = prune_model_file(source, keras["pruned"], threshold=threshold)
        print(f"pruned: {prune_report['params_before']:,} -> {prune_report['params_after']:,} parameters", flush=True)
    from bpnet.imports.card import model_normalization

    # an imported network calibrates with its card's preprocessing (as `bpnet export` does)
    data, _ = calibrate.calibration_tensor(HW, 1, CALIBRATION_IMAGES, COCO_IMAGES, out / "calibration.npy",
                                           normalization=model_normalization(keras["unpruned"]))
    files = {}
    for name, path in keras.items():
        plain, padded = out / f"{name}.onnx", out / f"{name}.padded.onnx"
        if not plain.exists():
            export_onnx(path, plain, HW)
        if not padded.exists():
            proto = onnx.load(str(plain))
            changes = pad_concat_channels(proto, 16 if "AVX-512" in describe_cpu()["instruction_sets"] else 8)
            onnx.save(proto, str(padded))
            print(f"{name}: padded {len(changes)} concatenations: {changes[:1]}", flush=True)
        for source, key in ((plain, "ort_int8"), (padded, "ort_int8_padded")):
            target = source.with_suffix(".int8.onnx")
            if not target.exists():
                calibration = calibrate.calibrate_onnx(source, data, ("minmax",))["minmax"]
                calibrate.write_qdq_onnx(source, target, calibration, target="ort")
            files[(name, key)] = target
        files[(name, "keras")], files[(name, "ort_fp32")], files[(name, "ort_fp32_padded")] = path, plain, padded
    return {f"{m}/{v}": str(p) for (m, v), p in files.items()}, prune_report


def latency_part(files, threads, rounds, repeats):
    """Interleaved rounds in this process at a fixed thread count; {key: [ms per round]}: each
    round times every variant `repeats` times back to back and keeps the median (one call of a
    small model is a few tens of ms, within a scheduler's time slice of noise)."""
    import numpy as np

    from bpnet.backends import load_backend

    batch = np.random.default_rng(0).uniform(-0.5, 0.5, (1, *HW, 3)).astype(np.float32)
    backends = {key: load_backend(path, threads=threads) for key, path in files.items()}
    for backend in backends.values():
        backend.predict(batch)   # warm-up (and the Keras graph trace)
    times = {key: [] for key in backends}
    for round_index in range(rounds):
        for key, backend in backends.items():
            calls = []
            for _ in range(repeats):
                started = time.perf_counter()
                backend.predict(batch)
                calls.append(time.perf_counter() - started)
            times[key].append(round(1000 * median(calls), 1))
        print(f"threads {threads} round {round_index}: " + json.dumps({k: v[-1] for k, v in times.items()}), flush=True)
    return times


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def latency_table(by_threads, complexity):
    lines = ["| model | threads | Keras compiled ms | ORT FP32 ms | ORT FP32 padded ms | ORT INT8 ms | "
             "ORT INT8 padded ms | Keras / ORT FP32 | padding gain FP32 | INT8 vs ORT FP32 | "
             "best INT8 vs Keras FP32 unpruned |", "|" + "---|" * 11]
    for threads, part in by_threads.items():
        ms = {k: median(v) for k, v in part["times"].items()}
        reference = ms["unpruned/keras"]
        for model in ("unpruned", "pruned"):
            k, o, op, i, ip = (ms[f"{model}/{v}"] for v in VARIANTS)
            best_int8 = min(i, ip)
            lines.append(f"| {model} ({complexity[model]}) | {threads} | {k:.0f} | {o:.0f} | {op:.0f} | {i:.0f} | {ip:.0f} | "
                         f"{k / o:.2f} | {o / op:.2f}x | {o / best_int8:.2f}x | {reference / best_int8:.1f}x |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/perf")
    parser.add_argument("--model", help="unpruned Keras model (default: full-width, random weights)")
    parser.add_argument("--threshold", type=float, default=0.1, help="prune -pth for the pruned model")
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="calls per variant and round (median kept)")
    parser.add_argument("--e2e_images", type=int, default=40)
    parser.add_argument("--latency_part", type=int, help=argparse.SUPPRESS)   # internal: one thread count
    parser.add_argument("--render", action="store_true", help="only rewrite OUT/bench_perf.md from OUT/bench_perf.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render:
        report = json.loads((out / "bench_perf.json").read_text())
        for key, value in (("rounds", args.rounds), ("repeats", args.repeats), ("e2e_images", args.e2e_images)):
            report.setdefault(key, value)   # reports written before these were recorded
        write_tables(out, report)
        return
    if args.latency_part:
        files = json.loads((out / "files.json").read_text())
        machine_before = describe_cpu(args.latency_part)
        times = latency_part(files, args.latency_part, args.rounds, args.repeats)
        (out / f"latency_{args.latency_part}.json").write_text(json.dumps(
            {"times": times, "machine_before": machine_before, "machine": describe_cpu(args.latency_part)}))
        return

    from bpnet.benchmark import benchmark_end_to_end, model_complexity
    from bpnet.specs import InferSpec

    files, prune_report = prepare_models(out, args.model, args.threshold, args.stages)
    (out / "files.json").write_text(json.dumps(files, indent=1))
    complexity = {}
    for model in ("unpruned", "pruned"):
        params, gflops = model_complexity(files[f"{model}/ort_fp32"], HW)
        complexity[model] = f"{params / 1e6:.1f} M params, {gflops / 2:.1f} GMAC"
    by_threads = {}
    for threads in (1, 2):
        subprocess.run([sys.executable, __file__, "--out", str(out), "--rounds", str(args.rounds), "--repeats", str(args.repeats),
                        "--latency_part", str(threads)], check=True)
        by_threads[threads] = json.loads((out / f"latency_{threads}.json").read_text())
    e2e = []
    spec = InferSpec(input_shape=HW)
    for model in ("unpruned", "pruned"):
        for variant in ("ort_fp32", "ort_int8", "ort_fp32_padded", "ort_int8_padded"):
            result = benchmark_end_to_end(files[f"{model}/{variant}"], COCO_IMAGES, spec, threads=2,
                                          max_images=args.e2e_images)
            result["label"] = f"{model} {variant}"
            e2e.append(result)
            print(f"end to end {model} {variant}: {result['images_per_s']} images/s {result['ms_per_image']}", flush=True)
    report = {"files": files, "complexity": complexity, "rounds": args.rounds, "repeats": args.repeats,
              "e2e_images": args.e2e_images, "prune": {k: prune_report.get(k) for k in ("params_before", "params_after")}, "latency": by_threads, "end_to_end": e2e}
    (out / "bench_perf.json").write_text(json.dumps(report, indent=1, default=str))
    write_tables(out, report)


def write_tables(out, report):
    """OUT/bench_perf.md from a report (also re-rendered from OUT/bench_perf.json with --render)."""
    lines = render(report)
    (out / "bench_perf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def render(report):
    """The tables of docs/performance.md; the machine lines say whether the load was above the
    cores (bpnet.machine.under_load, from the recorded load average)."""
    by_threads, e2e = report["latency"], report["end_to_end"]
    loaded = any(under_load(part[key]) for part in by_threads.values() for key in ("machine_before", "machine"))
    lines = [f"Latency, {HW[0]}x{HW[1]}, batch 1, median of {report['rounds']} interleaved rounds "
             f"(each the median of {report['repeats']} calls; ratios inside one run)."
             + (" MEASURED UNDER LOAD on a shared machine." if loaded else ""), ""]
    for threads, part in by_threads.items():
        lines.append(f"- {threads} thread(s): before {cpu_line(part['machine_before'])}; after: load "
                     f"{part['machine']['load_average']}")
    lines += [""] + latency_table(by_threads, report["complexity"])
    lines += ["", "End to end (image file -> COCO keypoints, stages pipelined, 2 threads, "
              f"{report['e2e_images']} bundled images), {cpu_line(e2e[0]['machine'])}", "",
              "| model | images/s | read ms | letterbox ms | CNN ms | decode ms | people found |", "|---|---|---|---|---|---|---|"]
    for r in e2e:
        ms = r["ms_per_image"]
        lines.append(f"| {r['label']} | {r['images_per_s']:.2f} | {ms['read']:.1f} | {ms['prepare']:.1f} | "
                     f"{ms['cnn']:.0f} | {ms['decode']:.1f} | {r['people_found']} |")
    lines += ["", "Split by number of people found (mean ms per image):", "",
              "| model | people | images | read ms | letterbox ms | CNN ms | decode ms |", "|---|---|---|---|---|---|---|"]
    for r in e2e:
        for row in r["by_people"]:
            lines.append(f"| {r['label']} | {row['people']} | {row['images']} | {row['read_ms']:.1f} | "
                         f"{row['prepare_ms']:.1f} | {row['cnn_ms']:.0f} | {row['decode_ms']:.1f} |")
    return lines


if __name__ == "__main__":
    main()
