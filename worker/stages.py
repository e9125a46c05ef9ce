"""One function per stage kind, each calling one engine verb. Runs inside a worker process only
(this is where TensorFlow gets imported, lazily, by the engine modules).

Each function takes the stage row (its `params`), the parent's output folder and outputs, its own
empty output folder and a progress callback, and returns `(outputs, result, metrics)`:
- outputs: small JSON of file names inside the output folder plus facts children need
  (`model`: the file the next stage reads, `num_stages`);
- result: for evaluate stages, the flat row shown in Compare (else None);
- metrics: name -> number recorded in the metrics table.
"""

import shutil
from pathlib import Path

from bpnet.errors import BpnetError
from bpnet.fileio import write_json_atomic, write_text_atomic

METRIC_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def run_stage(stage, parent_dir, parent_outputs, out_dir, progress):
    runner = RUNNERS.get(stage["kind"])
    if runner is None:
        raise BpnetError(f"stage kind {stage['kind']!r} is not one of {', '.join(RUNNERS)}")
    return runner(stage["params"], parent_dir, parent_outputs or {}, Path(out_dir), progress)


def _parent_model(parent_dir, parent_outputs):
    path = Path(parent_dir) / parent_outputs["model"]
    if not path.is_file():
        raise BpnetError(f"the parent stage's model is missing: {path} (artifacts deleted?)")
    return path


def run_import(params, _parent_dir, _parent_outputs, out_dir, progress):
    from bpnet.model import count_params, load_model, num_stages

    src = Path(params["model"])
    model = load_model(src)   # a clear error when the file is not a BodyPoseNet
    dst = out_dir / "bpnet_model.hdf5"
    shutil.copyfile(src, dst)
    stages, params_count = num_stages(model), count_params(model)
    progress({"stage": "import", "event": "done", "fraction": 1.0,
              "message": f"{src.name}: {stages} stages, {params_count} parameters"})
    return {"model": dst.name, "num_stages": stages}, None, {"params": params_count}


def run_train(params, parent_dir, parent_outputs, out_dir, progress):
    from bpnet.specs import TrainSpec, parse_spec, spec_to_yaml
    from bpnet.train import train

    data = dict(params["train_spec"])
    if parent_outputs.get("model"):
        # retraining: continue from the pruned graph the parent produced
        data["pretrained_weights"] = str(_parent_model(parent_dir, parent_outputs))
        data["load_graph"] = True
    spec = parse_spec(TrainSpec, data, "training spec of this stage")
    write_text_atomic(out_dir / "train_spec.yaml", spec_to_yaml(spec))
    summary = train(spec, out_dir, progress)
    metrics = {k: summary[k] for k in ("final_loss", "loss", "images_per_s", "params")
               if isinstance(summary.get(k), (int, float))}
    stages = parent_outputs.get("num_stages") or spec.model.stages
    return {"model": "bpnet_model.hdf5", "num_stages": stages}, None, metrics


def run_prune(params, parent_dir, parent_outputs, out_dir, progress):
    from bpnet.prune.model_file import prune_model_file

    out = out_dir / "pruned_model.hdf5"
    report = prune_model_file(
        _parent_model(parent_dir, parent_outputs), out, threshold=params["threshold"],
        equalization=params["equalization"], granularity=params["granularity"],
        min_filters=params["min_filters"], normalizer=params["normalizer"],
        excluded_layers=tuple(params["excluded_layers"]), progress=progress)
    metrics = {"params_before": report["params_before"], "params_after": report["params_after"],
               "param_ratio": report["param_ratio"]}
    return {"model": out.name, "num_stages": parent_outputs.get("num_stages")}, None, metrics


def run_export(params, parent_dir, parent_outputs, out_dir, progress):
    from bpnet.export import derived_paths, export_model

    precision = params["precision"]
    onnx_path = out_dir / "model.onnx"
    cal = params.get("calibration") or {}
    report = export_model(
        _parent_model(parent_dir, parent_outputs), onnx_path, tuple(params["input_hw"]),
        data_type=precision, calibrator=cal.get("calibrator", "entropy"),
        cal_image_dir=cal.get("images"),
        cal_data_file=out_dir / "calibration_tensor.npy" if precision == "int8" else None,
        batch_size=cal.get("batch_size", 1), batches=cal.get("batches", 1), progress=progress)
    deployed = {"fp32": onnx_path, "fp16": derived_paths(onnx_path)["fp16"],
                "int8": derived_paths(onnx_path)["int8"]}[precision]
    metrics = {"max_abs_diff": report["export"]["max_abs_diff"]}
    if precision == "int8":
        metrics["calibration_seconds"] = report["int8"]["calibration_seconds"]
    return ({"model": deployed.name, "num_stages": parent_outputs.get("num_stages"),
             "precision": precision}, None, metrics)


def run_evaluate(params, parent_dir, parent_outputs, out_dir, progress):
    from bpnet.benchmark import benchmark_model
    from bpnet.evaluate import evaluate_model
    from bpnet.specs import InferSpec, parse_spec

    model_path = _parent_model(parent_dir, parent_outputs)
    infer = parse_spec(InferSpec, params["infer_spec"], "inference spec of this stage")
    metrics = evaluate_model(model_path, params["annotations"], params["images"], infer, out_dir,
                             max_images=params.get("max_images"), progress=progress)
    bench_opts = params["benchmark"]
    progress({"stage": "benchmark", "event": "start", "message": "measuring latency"})
    bench = benchmark_model(model_path, tuple(params["input_hw"]), bench_opts["batch_size"],
                            bench_opts["runs"], bench_opts["warmup"])
    write_json_atomic(out_dir / "benchmark.json", bench)
    result = result_row(params, parent_outputs, model_path, metrics, bench)
    numbers = {k: v for k, v in result.items()
               if k in METRIC_KEYS + ("latency_ms", "latency_p95_ms", "throughput", "params",
                                      "gflops", "size_bytes") and isinstance(v, (int, float))}
    return {"model": parent_outputs["model"], "metrics": "metrics.json",
            "num_stages": parent_outputs.get("num_stages")}, result, numbers


def _first(d, *names):
    for name in names:
        if d.get(name) is not None:
            return d[name]
    return None


def result_row(params, parent_outputs, model_path, metrics, bench):
    """The Compare row of one evaluated model (artifact ids are added by the executor)."""
    h, w = params["input_hw"]
    timing = metrics.get("timing") or {}
    return {
        **{k: metrics.get(k) for k in METRIC_KEYS},
        "precision": params["precision"],
        "input_hw": [h, w],
        "resolution": f"{h}x{w}",
        "pth": params.get("prune_threshold"),
        "stages": parent_outputs.get("num_stages"),
        "latency_ms": _first(bench, "median_ms", "latency_ms", "latency_median_ms"),
        "latency_p95_ms": _first(bench, "p95_ms", "latency_p95_ms"),
        "throughput": _first(bench, "images_per_s", "throughput"),
        "cnn_ms_per_image": timing.get("cnn_ms_per_image"),
        "decode_ms_per_image": timing.get("decode_ms_per_image"),
        "params": _first(bench, "params", "parameters"),
        "gflops": _first(bench, "gflops", "GFLOPs"),
        "size_bytes": Path(model_path).stat().st_size,
        "backend": _first(bench, "backend") or metrics.get("backend"),
        "device": _first(bench, "device"),
        "num_images": metrics.get("num_images"),
    }


RUNNERS = {"import": run_import, "train": run_train, "retrain": run_train, "prune": run_prune,
           "export": run_export, "evaluate": run_evaluate}
