"""CPU latency, side by side: Keras FP32, ONNX Runtime FP32, ONNX Runtime INT8 (entropy, minmax).

    python bench/bench_latency.py [--quick] [--model M.hdf5] [--pruned P.hdf5] [--out DIR]

Grid: input 224x320, 288x384, 320x448 x stages 2/3/4 x batch 1 and 8 on this machine's CPU.
Without --model, a full-width (backbone_width 1.0) 4-stage BodyPoseNet with random weights is
built: latency does not depend on the weights, and INT8 calibration runs on the bundled COCO
images either way. With --pruned, the pruned model's INT8 ONNX is also timed at 288x384, batch 1,
against the unpruned Keras FP32 model (the 10x target). Ratios are speed-ups (>1 = faster):
ORT/Keras = Keras ms / ORT FP32 ms; INT8 x = ORT FP32 ms / INT8 ms.
Writes every row to DIR/bench_latency.json as it goes and prints the table at the end.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bpnet.benchmark import benchmark_model  # noqa: E402

RESOLUTIONS = ((224, 320), (288, 384), (320, 448))
STAGES = (2, 3, 4)
BATCHES = (1, 8)
CALIBRATION_IMAGES = ROOT / "data" / "coco-mini" / "train2017"


def build_full_width_model(path):
    import bpnet  # noqa: F401
    from bpnet.model import build_model
    from bpnet.specs import ModelSpec

    build_model(ModelSpec(backbone_width=1.0, stages=4)).save(path)


def export_variants(model, stage, hw, out_dir, num_images):
    """FP32 ONNX and the INT8 Q/DQ files of both calibrators from one statistics pass."""
    from bpnet import calibrate
    from bpnet.export import export_onnx

    base = out_dir / f"s{stage}_{hw[0]}x{hw[1]}"
    onnx_path = Path(f"{base}.onnx")
    export_onnx(model, onnx_path, hw, stage=stage)
    data, _ = calibrate.calibration_tensor(hw, num_images, 1, CALIBRATION_IMAGES, out_dir / f"cal_{hw[0]}x{hw[1]}.npy")
    started = time.perf_counter()
    calibrations = calibrate.calibrate_onnx(onnx_path, data, ("entropy", "minmax"))
    seconds = time.perf_counter() - started
    paths = {"ort_fp32": onnx_path}
    for method, calibration in calibrations.items():
        paths[f"int8_{method}"] = Path(f"{base}.int8_{method}.onnx")
        calibrate.write_qdq_onnx(onnx_path, paths[f"int8_{method}"], calibration, target="ort")
    return paths, seconds


def time_one(model, hw, batch, stage, runs, warmup):
    result = benchmark_model(model, hw, batch, runs, warmup, stage=stage)
    return result["median_ms"], result


def format_table(rows):
    head = (f"{'input':>8} {'stage':>5} {'batch':>5} | {'keras ms':>9} {'ort ms':>8} {'int8 ent':>9} "
            f"{'int8 mm':>8} | {'ORT/Keras':>9} {'INT8e x':>7} {'INT8m x':>7} | {'GFLOPs':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        k, o, e, m = r["keras_ms"], r["ort_fp32_ms"], r["int8_entropy_ms"], r["int8_minmax_ms"]
        lines.append(f"{r['input']:>8} {r['stage']:>5} {r['batch']:>5} | {k:9.1f} {o:8.1f} {e:9.1f} {m:8.1f} | "
                     f"{k / o:9.2f} {o / e:7.2f} {o / m:7.2f} | {r['gflops']:7.1f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Keras .hdf5 (default: a full-width 4-stage model, random weights)")
    parser.add_argument("--pruned", help="a pruned .hdf5 to time as INT8 at 288x384, batch 1")
    parser.add_argument("--out", default="bench_out", help="folder for models, ONNX files and the JSON")
    parser.add_argument("--quick", action="store_true", help="2 timed runs after 1 warm-up, 4 calibration images")
    parser.add_argument("--pruned_only", action="store_true", help="skip the grid; only the --pruned comparison")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    runs, warmup, num_images = (2, 1, 4) if args.quick else (args.runs, args.warmup, 16)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else out_dir / "bpnet_full_width.hdf5"
    if not args.model and not model.exists():
        build_full_width_model(model)

    rows, calibration_seconds = [], {}
    for hw in () if args.pruned_only else RESOLUTIONS:
        for stage in STAGES:
            paths, seconds = export_variants(model, stage, hw, out_dir, num_images)
            calibration_seconds[f"{hw[0]}x{hw[1]} stage {stage}"] = round(seconds, 1)
            for batch in BATCHES:
                row = {"input": f"{hw[0]}x{hw[1]}", "stage": stage, "batch": batch}
                row["keras_ms"], keras = time_one(model, hw, batch, stage, runs, warmup)
                for key, path in paths.items():
                    row[f"{key}_ms"], _ = time_one(path, hw, batch, None, runs, warmup)
                row["gflops"], row["params"] = keras["gflops"], keras["params"]
                rows.append(row)
                print(json.dumps(row), flush=True)
                write_results(out_dir, rows, calibration_seconds, runs, warmup, None)

    pruned = None
    if args.pruned:
        pruned = pruned_comparison(model, Path(args.pruned), out_dir, num_images, runs, warmup)
    write_results(out_dir / ("pruned" if args.pruned_only else "."), rows, calibration_seconds, runs, warmup, pruned)
    from bpnet.machine import cpu_line, describe_cpu

    print(f"\nlatency on {cpu_line(describe_cpu())}, median of {runs} runs after {warmup} warm-up;"
          " Keras is the compiled (tf.function) forward pass")
    print(format_table(rows))
    print("\ncalibration (statistics + entropy and minmax thresholds), seconds:", calibration_seconds)
    if pruned:
        print("\npruned + INT8 vs unpruned Keras FP32 at 288x384 batch 1:", json.dumps(pruned))


def pruned_comparison(model, pruned_model, out_dir, num_images, runs, warmup):
    hw = (288, 384)
    paths, _ = export_variants(pruned_model, None, hw, out_dir / "pruned", num_images)
    keras_ms, _ = time_one(model, hw, 1, None, runs, warmup)
    result = {"keras_fp32_unpruned_ms": keras_ms}
    for key in ("ort_fp32", "int8_entropy", "int8_minmax"):
        result[f"pruned_{key}_ms"], _ = time_one(paths[key], hw, 1, None, runs, warmup)
        result[f"speedup_{key}"] = round(keras_ms / result[f"pruned_{key}_ms"], 2)
    return result


def write_results(out_dir, rows, calibration_seconds, runs, warmup, pruned):
    from bpnet.fileio import write_json_atomic

    from bpnet.machine import describe_cpu

    write_json_atomic(out_dir / "bench_latency.json", {
        "runs": runs, "warmup": warmup, "rows": rows, "calibration_seconds": calibration_seconds,
        "pruned": pruned, "machine": describe_cpu()})


if __name__ == "__main__":
    main()
