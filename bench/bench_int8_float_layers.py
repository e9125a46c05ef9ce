"""Latency of accuracy-controlled INT8, interleaved: the float ONNX, every calibrator's plain INT8
model and every point of the float-layers curve of one `bpnet quantize` report.

    python bench/bench_int8_float_layers.py RESULTS_DIR/accuracy_control.json [--rounds 30]

All models are loaded once (ONNX Runtime, CPU) and run one after the other on the same batch in
each round, so load from other processes hits them alike; medians over rounds and ratios to the
float model (>1 = faster) are printed as Markdown tables (calibrators, then the curve), headed by
the CPU, its INT8 instruction set and its load (`bpnet.machine.describe_cpu`).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def models_of(report):
    """[(name, ONNX path)]: the float model, each calibrator's INT8 model, each curve point."""
    rows = [("fp32", report["float_onnx"])]
    rows += [(calibrator_name(c["calibrator"]), c["model"]) for c in report["calibrators"]]
    rows += [(curve_name(report, p["float_layers"]), p["model"]) for p in report["curve"] if p["float_layers"] > 0]
    return rows


def calibrator_name(label):
    return f"int8 {label}"


def curve_name(report, count):
    return f"int8 {report['best_calibrator']} + {count} float"


def interleaved_latency(report, rounds, input_hw):
    """{name: [ms per round]} of every model of `report`, run in turn on one random batch."""
    from bpnet.backends import load_backend

    batch = np.random.default_rng(0).uniform(-0.5, 0.5, (1, *input_hw, 3)).astype(np.float32)
    rows = [(name, path) for name, path in models_of(report) if path and Path(path).is_file()]
    backends = [(name, load_backend(path)) for name, path in rows]
    times = {name: [] for name, _ in backends}
    try:
        for _ in range(2):                                   # warm-up
            for _, backend in backends:
                backend.predict(batch)
        for _ in range(rounds):
            for name, backend in backends:
                start = time.perf_counter()
                backend.predict(batch)
                times[name].append(1000 * (time.perf_counter() - start))
    finally:
        for _, backend in backends:
            backend.close()
    return times


def markdown_tables(report, times):
    """The calibrator table and the float-layers curve table (AP, drop, median ms, x FP32)."""
    from bpnet.guide.accuracy_control import ap_drop

    medians = {name: float(np.median(values)) for name, values in times.items()}
    fp32_ms = medians["fp32"]
    parent = report["parent"]["AP"]

    def cells(ap, name):
        ms = medians.get(name)
        speed = f"{fp32_ms / ms:.2f}" if ms else "-"
        return f"{ap:.3f} | {ap_drop(parent, ap):.2f} | {ms:.1f} | {speed}" if ms else f"{ap:.3f} | {ap_drop(parent, ap):.2f} | - | -"

    lines = ["| calibrator | INT8 AP | drop (points) | median ms | x FP32 |", "|---|---|---|---|---|",
             f"| FP32 | {parent:.3f} | - | {fp32_ms:.1f} | 1.00 |"]
    for c in report["calibrators"]:
        best = "**" if c["calibrator"] == report["best_calibrator"] else ""
        lines.append(f"| {best}{c['calibrator']}{best} | {cells(c['AP'], calibrator_name(c['calibrator']))} |")
    lines += ["", "| float layers | AP | drop (points) | median ms | x FP32 |", "|---|---|---|---|---|"]
    chosen = report["final"]["float_layers"]
    for p in report["curve"]:
        name = curve_name(report, p["float_layers"]) if p["float_layers"] else calibrator_name(report["best_calibrator"])
        mark = " (chosen)" if p["float_layers"] == chosen else ""
        lines.append(f"| {p['float_layers']}{mark} | {cells(p['AP'], name)} |")
    return "\n".join(lines)


def header(report, rounds, input_hw):
    from bpnet.machine import cpu_line, describe_cpu

    return (f"{cpu_line(describe_cpu())}; input {input_hw[0]}x{input_hw[1]}, batch 1, {rounds} interleaved "
            f"rounds, ONNX Runtime CPU; AP on {report['evaluation']['num_images']} evaluation images")


def input_hw_of(report_path):
    metrics = Path(report_path).parent / "fp32" / "eval" / "metrics.json"
    return tuple(json.loads(metrics.read_text())["input_shape"])


def main():
    import bpnet  # noqa: F401

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    report = json.loads(Path(args.report).read_text())
    hw = input_hw_of(args.report)
    times = interleaved_latency(report, args.rounds, hw)
    print(header(report, args.rounds, hw))
    print()
    print(markdown_tables(report, times))


if __name__ == "__main__":
    main()
