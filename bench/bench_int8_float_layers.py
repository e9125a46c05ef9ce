"""Latency of accuracy-controlled INT8, interleaved: the float ONNX, every calibrator's plain INT8
model and every point of the float-layers curve of one `bpnet quantize` report.

    python bench/bench_int8_float_layers.py RESULTS_DIR/accuracy_control.json [--rounds 30]

All models are loaded once (ONNX Runtime, CPU) and run one after the other on the same batch in
each round, so load from other processes hits them alike; medians over rounds and ratios to the
float model (>1 = faster) are printed as a Markdown table. Name the CPU and its load with it.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def models_of(report):
    """[(name, ONNX path)]: the float model, each calibrator's INT8 model, each curve point."""
    rows = [("fp32", report["float_onnx"])]
    rows += [(f"int8 {c['calibrator']}", c["model"]) for c in report["calibrators"]]
    rows += [(f"int8 {report['best_calibrator']} + {p['float_layers']} float", p["model"])
             for p in report["curve"] if p["float_layers"] > 0]
    return rows


def cpu_flags():
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return ", ".join(f for f in ("avx512_vnni", "avx512f", "avx_vnni", "avx2") if f in flags) or "unknown"


def main():
    import bpnet  # noqa: F401
    from bpnet.backends import load_backend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    report = json.loads(Path(args.report).read_text())
    base = Path(args.report).parent
    hw = tuple(json.loads((base / "fp32" / "eval" / "metrics.json").read_text())["input_shape"])
    batch = np.random.default_rng(0).uniform(-0.5, 0.5, (1, *hw, 3)).astype(np.float32)
    rows = [(name, path) for name, path in models_of(report) if path and Path(path).is_file()]
    backends = [(name, load_backend(path)) for name, path in rows]
    times = {name: [] for name, _ in backends}
    for _ in range(2):                                   # warm-up
        for _, backend in backends:
            backend.predict(batch)
    for _ in range(args.rounds):
        for name, backend in backends:
            start = time.perf_counter()
            backend.predict(batch)
            times[name].append(1000 * (time.perf_counter() - start))
    for _, backend in backends:
        backend.close()
    ap = {"fp32": report["parent"]["AP"]}
    ap.update({f"int8 {c['calibrator']}": c["AP"] for c in report["calibrators"]})
    ap.update({f"int8 {report['best_calibrator']} + {p['float_layers']} float": p["AP"] for p in report["curve"]})
    float_ms = float(np.median(times["fp32"]))
    print(f"{platform.processor() or platform.machine()} ({cpu_flags()}), input {hw[0]}x{hw[1]}, batch 1, "
          f"{args.rounds} interleaved rounds, ONNX Runtime CPU")
    print("| model | AP | median ms | x fp32 |")
    print("|---|---|---|---|")
    for name, _ in backends:
        median = float(np.median(times[name]))
        print(f"| {name} | {ap.get(name, float('nan')):.3f} | {median:.1f} | {float_ms / median:.2f} |")


if __name__ == "__main__":
    main()
