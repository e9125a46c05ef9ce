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


def run_stage(stage, parent_dir, parent_outputs, out_dir, progress, inputs=None):
    """`inputs`: {name: {"dir", "outputs"}} of other finished stages of the run the stage reads
    (a gate's export and FP32 sibling); only the kinds in READS_INPUTS get them."""
    runner = RUNNERS.get(stage["kind"])
    if runner is None:
        raise BpnetError(f"stage kind {stage['kind']!r} is not one of {', '.join(RUNNERS)}")
    extra = {"inputs": inputs or {}} if stage["kind"] in READS_INPUTS else {}
    return runner(stage["params"], parent_dir, parent_outputs or {}, Path(out_dir), progress, **extra)


def _parent_model(parent_dir, parent_outputs):
    path = Path(parent_dir) / parent_outputs["model"]
    if not path.is_file():
        raise BpnetError(f"the parent stage's model is missing: {path} (artifacts deleted?)")
    return path


def run_import(params, _parent_dir, _parent_outputs, out_dir, progress):
    from bpnet.model import count_params, load_model, num_stages

    src = Path(params["model"])
    dst = out_dir / "bpnet_model.hdf5"
    if src.suffix.lower() in (".tflite", ".pb"):   # a pretrained network: rebuilt, parity-checked
        from bpnet.imports import import_model
        import_model(src, dst, log=lambda message: progress(
            {"stage": "import", "event": "phase", "message": message}))
        model = load_model(dst)
    else:
        model = load_model(src)   # a clear error when the file is not a BodyPoseNet
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


def run_search(params, parent_dir, parent_outputs, out_dir, progress):
    """The AP-budget search from the parent's model; the chosen model (and its evaluation and
    pruning report) is copied into this stage's folder for its children and the downloads."""
    from bpnet.guide.search_run import search_prune_threshold
    from bpnet.specs import InferSpec, TrainSpec, parse_spec

    base = _parent_model(parent_dir, parent_outputs)
    # each trial sets pretrained_weights / load_graph to its pruned model
    retrain = parse_spec(TrainSpec, {**params["retrain_spec"], "load_graph": False},
                         "retraining spec of this search")
    infer = parse_spec(InferSpec, params["infer_spec"], "inference spec of this search")
    link_shared_trial_cache(out_dir)
    report = search_prune_threshold(
        base, retrain, params["annotations"], params["images"], infer, out_dir,
        budget_ap=params["budget_ap"], objective=params["objective"], max_iters=params["max_iters"],
        threshold_range=tuple(params["threshold_range"]), prune_options=_prune_options(params["prune"]),
        latency_options=_latency_options(params.get("latency")), max_images=params.get("max_images"),
        progress=progress)
    chosen = report["chosen"]
    shutil.copyfile(report["chosen_model"], out_dir / "chosen_model.hdf5")
    if chosen is not None:
        shutil.copyfile(chosen["artifacts"]["metrics"], out_dir / "chosen_metrics.json")
        prune_report = Path(f"{chosen['artifacts']['pruned_model']}.prune.json")
        if prune_report.is_file():
            shutil.copyfile(prune_report, out_dir / "chosen_prune_report.json")
    metrics = {"iterations": len(report["trials"]), "base_ap": report["base"]["ap"],
               "base_size": report["base"]["size"]}
    if chosen is not None:
        metrics.update(chosen_threshold=chosen["threshold"], chosen_ap=chosen["ap"], chosen_size=chosen["size"])
    outputs = {"model": "chosen_model.hdf5", "num_stages": parent_outputs.get("num_stages"),
               "prune_threshold": chosen["threshold"] if chosen else None, "search": "search.json"}
    return outputs, None, metrics


SEARCH_TRIALS_DIR = "search-trials"


def link_shared_trial_cache(out_dir):
    """The engine caches trials under out_dir/cache/; pointing that at one folder beside the
    stage folders lets every search (another budget, more iterations) reuse earlier trials. The
    manifest does not descend into the link."""
    shared = out_dir.parent / SEARCH_TRIALS_DIR
    shared.mkdir(exist_ok=True)
    link = out_dir / "cache"
    if not link.exists():
        link.symlink_to(shared.resolve(), target_is_directory=True)


def _prune_options(prune):
    return {**prune, "excluded_layers": tuple(prune.get("excluded_layers") or ())}


def _latency_options(latency):
    if not latency:
        return None
    return {**latency, "input_hw": tuple(latency["input_hw"])}


def run_export(params, parent_dir, parent_outputs, out_dir, progress):
    from bpnet.export import derived_paths, export_model

    precision = params["precision"]
    onnx_path = out_dir / "model.onnx"
    cal = params.get("calibration") or {}
    if precision == "int8" and cal.get("qat_steps"):
        return export_qat(params, parent_dir, parent_outputs, out_dir, progress)
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
        if cal.get("keep_float_layers"):
            keep_float(deployed, onnx_path, cal["keep_float_layers"], progress)
            metrics["layers_kept_float"] = len(cal["keep_float_layers"])
    return ({"model": deployed.name, "num_stages": parent_outputs.get("num_stages"),
             "precision": precision, "prune_threshold": parent_outputs.get("prune_threshold")},
            None, metrics)


def export_qat(params, parent_dir, parent_outputs, out_dir, progress):
    """INT8 by quantization-aware fine-tuning (the gate's QAT remedy): the float ONNX beside it
    (the gate's reference) and the fine-tuned Q/DQ model where calibration would put its own."""
    from bpnet.export import derived_paths, export_model
    from bpnet.guide.gate_run import run_remedy
    from bpnet.specs import TrainSpec, parse_spec

    float_model = _parent_model(parent_dir, parent_outputs)
    onnx_path = out_dir / "model.onnx"
    report = export_model(float_model, onnx_path, tuple(params["input_hw"]), data_type="fp32",
                          progress=progress)
    spec = parse_spec(TrainSpec, params["qat_train_spec"], "QAT training spec of this stage")
    steps = params["calibration"]["qat_steps"]
    int8 = run_remedy({"kind": "qat", "params": {"steps": steps}}, onnx_path, derived_paths(onnx_path)["int8"],
                      float_model=float_model, train_spec=spec, progress=progress)
    return ({"model": Path(int8).name, "num_stages": parent_outputs.get("num_stages"), "precision": "int8",
             "prune_threshold": parent_outputs.get("prune_threshold"), "qat_steps": steps},
            None, {"max_abs_diff": report["export"]["max_abs_diff"], "qat_steps": steps})


def keep_float(int8_path, float_onnx, layers, progress):
    """Replace the INT8 model by a copy whose `layers` compute in float (the gate's remedy)."""
    import os

    from bpnet.guide.sensitivity import keep_layers_float

    progress({"stage": "export", "event": "phase",
              "message": f"keeping {len(layers)} layer(s) in float: {', '.join(layers)}"})
    edited = keep_layers_float(int8_path, int8_path.with_name("model.int8.kept.onnx"), list(layers),
                               float_path=float_onnx)
    os.replace(edited, int8_path)


def run_engine(params, parent_dir, parent_outputs, out_dir, progress):
    """A TensorRT engine of the parent export, built from its ONNX files and calibration (runs
    only on a worker of the `tensorrt` queue; elsewhere `require_tensorrt` explains what is missing)."""
    from bpnet.backends.trt_backend import build_engine
    from bpnet.export import derived_paths

    parent_dir = Path(parent_dir)
    float_onnx = parent_dir / "model.onnx"
    paths = derived_paths(float_onnx)
    precision = params["precision"]
    reduced = {"fp16": paths["fp16"], "int8": paths["int8_tensorrt"] if paths["int8_tensorrt"].is_file()
               else paths["int8"]}.get(precision, float_onnx)
    cal = params.get("calibration") or {}
    cal_data = parent_dir / "calibration_tensor.npy"
    progress({"stage": "engine", "event": "start", "message": f"building a {precision} TensorRT engine"})
    build_engine(float_onnx, reduced, out_dir / "model.engine", precision, tuple(params["input_hw"]),
                        cal_cache_file=paths["cal_cache"] if paths["cal_cache"].is_file() else None,
                        cal_data_file=cal_data if cal_data.is_file() else None,
                        batch_size=cal.get("batch_size", 1), batches=cal.get("batches", 1))
    return ({"model": "model.engine", "num_stages": parent_outputs.get("num_stages"), "precision": precision},
            None, {"engine_bytes": (out_dir / "model.engine").stat().st_size})


def run_gate_stage(params, parent_dir, _parent_outputs, out_dir, progress, inputs):
    """The INT8/FP16 gate of the result evaluated by the parent stage against its float model.

    Evaluations already made by the run are copied in and reused: the parent stage's (the child
    model's) and the FP32 sibling's (the float model's). Without an FP32 sibling the float ONNX
    exported next to the INT8 model is evaluated here.
    """
    from bpnet.guide.gate_run import run_gate
    from bpnet.specs import InferSpec, parse_spec

    export = inputs.get("export")
    if export is None:
        raise BpnetError("the export stage of this result is not finished; the gate has no model to check")
    export_dir = Path(export["dir"])
    child_model = export_dir / export["outputs"]["model"]
    float_onnx = export_dir / "model.onnx"
    reuse_evaluation(parent_dir, child_model, out_dir / "child")
    parent_model, parent_eval_dir = float_onnx, out_dir / "parent"
    float_export, float_evaluate = inputs.get("float_export"), inputs.get("float_evaluate")
    if float_export and float_evaluate:
        candidate = Path(float_export["dir"]) / float_export["outputs"]["model"]
        if reuse_evaluation(float_evaluate["dir"], candidate, parent_eval_dir):
            parent_model = candidate
    infer = parse_spec(InferSpec, params["infer_spec"], "inference spec of this gate")
    report = run_gate(parent_model, child_model, params["annotations"], params["images"], infer, out_dir,
                      threshold_ap=params["threshold_ap"], precision=params["precision"],
                      max_images=params.get("max_images"), calibrator=params.get("calibrator"),
                      num_calibration_images=params.get("num_calibration_images"),
                      float_onnx=float_onnx if float_onnx.is_file() else None,
                      parent_eval_dir=parent_eval_dir, progress=progress)
    ap = report["metrics"]["AP"]
    result = gate_summary(report)
    metrics = {"gate_passed": 1.0 if report["passed"] else 0.0}
    if ap["drop"] is not None:
        metrics["gate_ap_drop"] = ap["drop"]
    if report.get("output_error") is not None:
        metrics["gate_output_error"] = report["output_error"]
    return {"gate": "gate.json", "model": export["outputs"]["model"]}, result, metrics


def gate_summary(report):
    """What the store keeps of a gate report (the full one is the gate.json artifact)."""
    keep = ("passed", "status", "precision", "threshold_ap", "metrics", "output_error",
            "max_output_error", "reasons", "warnings", "remedies")
    return {k: report.get(k) for k in keep}


def reuse_evaluation(src_dir, model_path, dst_dir):
    """Copy an evaluation of `model_path` (metrics.json + results.json) from another stage's
    folder into `dst_dir`, so the gate reads it instead of evaluating again; False when that
    folder holds no evaluation of exactly this model file."""
    import json

    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    metrics, results = src_dir / "metrics.json", src_dir / "results.json"
    if not (metrics.is_file() and results.is_file() and Path(model_path).is_file()):
        return False
    try:
        evaluated = json.loads(metrics.read_text()).get("model")
    except (OSError, ValueError):
        return False
    if evaluated != str(model_path):
        return False
    dst_dir.mkdir(parents=True, exist_ok=True)
    for src in (metrics, results):
        shutil.copyfile(src, dst_dir / src.name)
    return True


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
        "pth": _first(params, "prune_threshold") if params.get("branch") != "search"
        else parent_outputs.get("prune_threshold"),
        "branch": params.get("branch") or ("unpruned" if params.get("prune_threshold") is None else "pruned"),
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
           "export": run_export, "evaluate": run_evaluate, "search": run_search, "gate": run_gate_stage,
           "engine": run_engine}
READS_INPUTS = ("gate",)
