"""The table of docs/pretrained.md: the bundled pretrained network on the bundled images.

For prune thresholds 0 / 0.1 / 0.3 / 0.5, without and with the short retrain of
specs/retrain_pretrained.yaml: parameters, FP32 AP at 288x384 (strict) and at the card's 368x432,
INT8 AP at 288x384 (ONNX Runtime, entropy calibration on 16 bundled images) and the FP32 CNN
latency (ONNX Runtime, batch 1, mean over the 80 evaluation images). Every model is evaluated on
all 80 bundled COCO train2017 images (which may have been in the network's training data).

    PYTHONPATH=. python bench/pretrained_table.py --work /tmp/pretrained_table [--model IMPORTED.hdf5]
"""

import argparse
import json
import platform
import time
from pathlib import Path

import bpnet  # noqa: F401
from bpnet.evaluate import evaluate_model
from bpnet.export import export_model
from bpnet.imports import import_model
from bpnet.model import count_params, load_model
from bpnet.prune import prune_model_file
from bpnet.specs import load_infer_spec, load_train_spec
from bpnet.train import train

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "data" / "models" / "mobilenet_v2_pose_dm14_368_432_weight_quant.tflite"
ANNOTATIONS = ROOT / "data" / "coco-mini" / "annotations" / "person_keypoints_train2017.json"
IMAGES = ROOT / "data" / "coco-mini" / "train2017"
THRESHOLDS = (0.0, 0.1, 0.3, 0.5)
STRICT, CARD_HW = (288, 384), (368, 432)


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def isa():
    flags = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")), "")
    return "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else "other"


def evaluate(model, hw, work, tag, data_type="fp32"):
    spec = load_infer_spec(ROOT / "specs" / "infer_strict_288x384.yaml").model_copy(update={"input_shape": hw})
    out = work / f"{tag}_{hw[0]}x{hw[1]}"
    report = export_model(model, out / "m.onnx", hw, data_type=data_type, cal_image_dir=IMAGES,
                          batch_size=4, batches=4)
    onnx = report["int8"]["onnx_int8"] if data_type == "int8" else report["export"]["onnx"]
    metrics = evaluate_model(onnx, ANNOTATIONS, IMAGES, spec, out / f"eval_{data_type}")
    return metrics["AP"], metrics["timing"]["cnn_ms_per_image"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--model", help="an imported .hdf5 (default: import the bundled .tflite)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = Path(args.model) if args.model else work / "base.hdf5"
    if not base.is_file():
        import_model(SOURCE, base)
    rows = []
    for pth in THRESHOLDS:
        pruned = base if pth == 0 else work / f"pruned_{pth:g}.hdf5"
        if pth and not pruned.is_file():
            prune_model_file(base, pruned, threshold=pth, granularity=8, min_filters=8)
        for retrain in (False, True):
            model = pruned
            started = time.time()
            if retrain:
                spec = load_train_spec(ROOT / "specs" / "retrain_pretrained.yaml").model_copy(
                    update={"pretrained_weights": pruned})
                model = Path(train(spec, work / f"retrain_{pth:g}")["model_path"])
            tag = f"pth{pth:g}_{'retrained' if retrain else 'pruned'}"
            ap_strict, latency = evaluate(model, STRICT, work, tag)
            ap_card, _ = evaluate(model, CARD_HW, work, tag)
            ap_int8, _ = evaluate(model, STRICT, work, tag, "int8")
            row = {"threshold": pth, "retrained": retrain, "params": count_params(load_model(model)),
                   "ap_fp32_288x384": ap_strict, "ap_fp32_368x432": ap_card, "ap_int8_288x384": ap_int8,
                   "int8_drop_points": round(100 * (ap_strict - ap_int8), 2),
                   "fp32_cnn_ms_288x384": latency, "seconds": round(time.time() - started)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (work / "table.json").write_text(json.dumps({"cpu": cpu_name(), "isa": isa(), "rows": rows}, indent=2))
    print(f"CPU: {cpu_name()} ({isa()}); the machine was shared (under load)")
    print("| threshold | retrain | parameters | AP FP32 288x384 | AP FP32 368x432 | AP INT8 288x384 | INT8 drop (points) | FP32 CNN ms (ORT) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threshold']:g} | {'8 steps' if r['retrained'] else '—'} | {r['params']:,} | "
              f"{r['ap_fp32_288x384']:.3f} | {r['ap_fp32_368x432']:.3f} | {r['ap_int8_288x384']:.3f} | "
              f"{r['int8_drop_points']:+.1f} | {r['fp32_cnn_ms_288x384']:.0f} |")


if __name__ == "__main__":
    main()
