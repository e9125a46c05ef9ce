"""The docs/int8.md table of the bundled pretrained network: accuracy-controlled INT8 within one AP
point, the calibrator comparison, the float-layers curve and the interleaved latency.

    PYTHONPATH=. python bench/int8_pretrained_table.py --work /tmp/int8_pretrained [--rounds 20]

1. imports data/models/*dm14*.tflite (once, into WORK; `bpnet import`);
2. runs `bpnet quantize` on it (`quantize_with_accuracy_control`) at 288x384 with the decoder of
   specs/infer_strict_288x384.yaml on the bundled COCO images: 8 stratified calibration images,
   the AP drop measured on the other images with people (skipped when WORK/quantize already holds
   its report: delete it to measure again);
3. times FP32, every calibrator's INT8 model and every point of the curve interleaved
   (bench/bench_int8_float_layers.py) and prints the Markdown tables with the CPU line.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pretrained_table import ANNOTATIONS, IMAGES, INFER_SPEC, SOURCE  # noqa: E402  (the same bundled files)


def imported(work):
    from bpnet.imports import import_model

    model = Path(work) / "dm14.hdf5"
    if not model.is_file():
        import_model(SOURCE, model)
    return model


def quantized(model, work, options):
    from bpnet.guide.accuracy_control_run import REPORT_NAME, quantize_with_accuracy_control
    from bpnet.preprocess import spec_following_card
    from bpnet.specs import load_infer_spec

    out = Path(work) / "quantize"
    if (out / REPORT_NAME).is_file():
        return json.loads((out / REPORT_NAME).read_text()), out / REPORT_NAME
    infer = spec_following_card(load_infer_spec(INFER_SPEC), model)
    report = quantize_with_accuracy_control(model, ANNOTATIONS, IMAGES, infer, out, options,
                                            progress=lambda e: e.get("message") and print(e["message"], flush=True))
    return report, out / REPORT_NAME


def main():
    import bpnet  # noqa: F401
    from bench.bench_int8_float_layers import header, input_hw_of, interleaved_latency, markdown_tables
    from bpnet.guide.accuracy_control import AccuracyControlOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder for the imported model and the quantize run")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved latency rounds (default 20)")
    parser.add_argument("--num_cal_images", type=int, default=8)
    parser.add_argument("--max_drop", type=float, default=1.0)
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    options = AccuracyControlOptions(max_drop=args.max_drop, num_calibration_images=args.num_cal_images)
    report, report_path = quantized(imported(args.work), args.work, options)
    hw = input_hw_of(report_path)
    times = interleaved_latency(report, args.rounds, hw)
    print(header(report, args.rounds, hw))
    print()
    print(markdown_tables(report, times))
    print()
    print(report["summary"])
    if report["final"]["layers"]:
        print("float layers: " + ", ".join(f"`{name}`" for name in report["final"]["layers"]))
    print(f"gate {report['gate']['status']}: {report['gate']['reasons'][0]}")


if __name__ == "__main__":
    main()
