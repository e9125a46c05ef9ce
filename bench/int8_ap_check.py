"""INT8 accuracy check: COCO keypoint AP of the FP32 model and its INT8 ONNX models (entropy and
minmax calibration) on the bundled data, strict 288x384 mode.

    python bench/int8_ap_check.py -m results/train/bpnet_model.hdf5 [--spec specs/infer_strict_288x384.yaml]
        [--cal_images DIR] [--num_cal 16] [--out DIR]

Calibration images default to the people-holding images of the bundled sample chosen by
`bpnet sample-calibration` rules (>= 1 person with >= 5 keypoints); the bundled data is also the
evaluation set, so this checks quantisation error, not generalisation. Besides AP it prints how
far the INT8 maps are from the FP32 ones on the evaluation images.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ANNOTATIONS = ROOT / "data" / "coco-mini" / "annotations" / "person_keypoints_train2017.json"
IMAGES = ROOT / "data" / "coco-mini" / "train2017"


def map_agreement(fp32_path, int8_path, data):
    """Max and mean |INT8 - FP32| of the heatmaps and PAFs on `data`, with the FP32 range."""
    import numpy as np

    from bpnet.onnx_graph import onnx_session

    ref = onnx_session(fp32_path).run(["heatmaps", "pafs"], {"input": data})
    got = onnx_session(int8_path).run(["heatmaps", "pafs"], {"input": data})
    return {name: {"max_abs": round(float(np.abs(g - r).max()), 4), "mean_abs": round(float(np.abs(g - r).mean()), 5),
                   "fp32_max": round(float(np.abs(r).max()), 4)}
            for name, g, r in zip(("heatmaps", "pafs"), got, ref)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--spec", default=str(ROOT / "specs" / "infer_strict_288x384.yaml"))
    parser.add_argument("--cal_images", help="calibration image folder (default: chosen from the bundled sample)")
    parser.add_argument("--num_cal", type=int, default=16)
    parser.add_argument("--out", default="int8_ap_out")
    args = parser.parse_args(argv)

    from bpnet import calibrate
    from bpnet.image_files import list_images
    from bpnet.evaluate import evaluate_model
    from bpnet.export import export_onnx
    from bpnet.sampling import sample_calibration
    from bpnet.specs import load_infer_spec

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = load_infer_spec(args.spec)
    hw = tuple(spec.input_shape)
    cal_dir = Path(args.cal_images) if args.cal_images else out / "calibration_images"
    if not args.cal_images and not cal_dir.exists():
        sample_calibration(ANNOTATIONS, IMAGES, cal_dir, args.num_cal, min_persons=1, min_keypoints=5)
    num_cal = min(args.num_cal, len(list_images(cal_dir)))
    fp32 = out / "model.onnx"
    export_onnx(args.model, fp32, hw, stage=spec.output_stage_to_use)
    data, _ = calibrate.calibration_tensor(hw, num_cal, 1, cal_dir, out / "cal.npy", spec.normalization)
    calibrations = calibrate.calibrate_onnx(fp32, data, ("entropy", "minmax"))
    models = {"keras fp32": Path(args.model), "ort fp32": fp32}
    for method, calibration in calibrations.items():
        models[f"ort int8 {method}"] = calibrate.write_qdq_onnx(fp32, out / f"model.int8_{method}.onnx", calibration)
    results = {}
    for name, path in models.items():
        metrics = evaluate_model(path, ANNOTATIONS, IMAGES, spec, out / name.replace(" ", "_"))
        results[name] = {k: metrics[k] for k in ("AP", "AP50", "AP75", "AR")}
        results[name]["cnn_ms_per_image"] = metrics["timing"]["cnn_ms_per_image"]
    eval_batch, _ = calibrate.calibration_tensor(hw, 8, 1, IMAGES, None, spec.normalization)
    for method in calibrations:
        results[f"ort int8 {method}"]["maps_vs_fp32"] = map_agreement(fp32, models[f"ort int8 {method}"], eval_batch)
    (out / "int8_ap.json").write_text(json.dumps(results, indent=2))
    print(f"{'model':<18} {'AP':>6} {'AP50':>6} {'AR':>6} {'cnn ms':>7}")
    for name, r in results.items():
        print(f"{name:<18} {r['AP']:6.3f} {r['AP50']:6.3f} {r['AR']:6.3f} {r['cnn_ms_per_image']:7.1f}")
    for name, r in results.items():
        if "maps_vs_fp32" in r:
            print(f"{name}: maps vs FP32 {json.dumps(r['maps_vs_fp32'])}")


if __name__ == "__main__":
    main()
