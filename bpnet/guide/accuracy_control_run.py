"""Accuracy-controlled INT8 quantization: the fastest INT8 model within `max_drop` AP points.

`quantize_with_accuracy_control` (what `bpnet quantize` and the worker's int8 stage with
`accuracy_control` run):
- the float model is exported to ONNX (or taken as given) and evaluated on an evaluation subset:
  up to `max_eval_images` annotated images with people, none of them calibration images when
  enough others exist;
- calibration images come from a folder, a tensor file, or are chosen from the annotations by
  `bpnet.sampling` (stratified by people per image and person size);
- `control_loop` then calibrates with every calibrator from one statistics pass, scores each
  INT8 model, keeps the best, and when it is over budget returns the layers with the largest
  output error (`bpnet.guide.sensitivity.layer_sensitivity`) to float, k of them, k found by
  bisection (`bpnet.guide.accuracy_control.bisect_float_count`);
- the chosen model is written as `model.int8.onnx` (ONNX Runtime), `model.int8_trt.onnx`
  (symmetric Q/DQ for TensorRT >= 11) with the same layers in float, `model.cal.bin` (TensorRT
  8-10 calibration cache holding scales only for tensors INT8 layers read), then gated
  (`bpnet.guide.gate_run.run_gate`) against the float ONNX with `threshold_ap = max_drop`.
`out_dir/accuracy_control.json` holds the report (calibrators, curve, chosen layers, gate).

`control_loop` takes the scoring function as an argument, so the search is exercised on tiny
graphs with any measurable score; the real one is COCO keypoint AP plus measured latency.
"""

import shutil
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.fileio import read_json, write_json_atomic
from bpnet.image_files import IMAGE_SUFFIXES, list_images
from bpnet.guide.accuracy_control import (AccuracyControlOptions, ap_drop, best_calibrator, bisect_float_count,
                                          cache_tensors_for, check_calibration_people, curve_points,
                                          evaluation_subset, monotonic_violations, parse_calibrator,
                                          ranking_method, summary_line, validate_ranking)

STAGE = "quantize"
REPORT_NAME = "accuracy_control.json"
DIVERGENCE_IMAGES = 4


def slug(label):
    return label.replace(":", "_").replace(".", "p")


# ---------------------------------------------------------------- the loop (any score)

def control_loop(float_onnx, cal_data, ranking_data, score, work_dir, options, parent_ap, progress=None):
    """Calibrator comparison + float-layer bisection on `float_onnx`.

    `score(model_path, key) -> {"AP": fraction, "latency_ms": float, ...}` evaluates one INT8
    model (`key`: a short relative folder name for its evaluation files); `parent_ap` is the float
    model's AP on the same data. Returns the loop's report with `final` = {"model", "calibrator",
    "float_layers", "layers", "AP", "ap_drop", "met", "latency_ms"} and `num_evaluations`.
    """
    from bpnet import calibrate
    from bpnet.guide.sensitivity import keep_layers_float

    work_dir = Path(work_dir)
    emit(progress, STAGE, "phase", message=f"calibration statistics on {len(cal_data)} images", fraction=0.05)
    # the float ONNX gets its concat inputs rescaled (same outputs) before any candidate is made,
    # so every Q/DQ model, float fallback and TensorRT file comes from the one graph
    stats, equalized = calibrate.equalize_onnx_file(float_onnx, cal_data)
    calibrations, candidates, evaluations = {}, [], []
    for k, label in enumerate(options.calibrators):
        method, percentile = parse_calibrator(label)
        calibration = calibrate.calibration_from_stats(stats, method, percentile or calibrate.DEFAULT_PERCENTILE,
                                                       num_images=len(cal_data))
        calibrations[label] = calibration
        key = f"calibrators/{slug(label)}"
        path = work_dir / key / "model.int8.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        calibrate.write_qdq_onnx(float_onnx, path, calibration, target="ort")
        emit(progress, STAGE, "phase", message=f"scoring calibrator {label}",
             fraction=0.1 + 0.3 * k / len(options.calibrators))
        measured = score(path, key)
        evaluations.append(key)
        candidates.append({"calibrator": label, "model": str(path), **measured,
                           "ap_drop": ap_drop(parent_ap, measured["AP"])})
    best = best_calibrator(candidates)
    report = {"max_drop": options.max_drop, "parent_AP": parent_ap, "calibrators": candidates,
              "equalized_concat_inputs": equalized,
              "best_calibrator": best["calibrator"], "ranking": None, "bisection": None,
              "curve": [], "ranking_validation": None}
    measured = {0: best}
    layers = []

    def score_with_float(float_layers, key):
        path = work_dir / key / "model.int8.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        keep_layers_float(best["model"], path, float_layers, float_path=float_onnx)
        result = score(path, key)
        evaluations.append(key)
        return {**result, "model": str(path), "calibrator": best["calibrator"]}

    if best["ap_drop"] > options.max_drop:
        emit(progress, STAGE, "phase", message=f"{best['calibrator']} loses {best['ap_drop']:.2f} AP points "
             f"(budget {options.max_drop}); ranking layers by output error", fraction=0.45)
        ranking = rank_layers(best["model"], ranking_data, float_onnx, options.ranking, progress)
        ranked = [r["layer"] for r in ranking["layers"]]
        report["ranking"] = ranking

        def drop_at(k):
            emit(progress, STAGE, "phase", message=f"scoring with the {k} most harmful layer(s) in float",
                 fraction=0.6)
            measured[k] = score_with_float(ranked[:k], f"float_layers/k{k:03d}")
            return ap_drop(parent_ap, measured[k]["AP"])

        search = bisect_float_count(len(ranked), drop_at, options.max_drop, best["ap_drop"])
        report["bisection"] = {**search, "num_layers": len(ranked),
                               "non_monotonic": monotonic_violations(search["drops"])}
        layers = ranked[:search["count"]]
        if options.validate_ranking:
            report["ranking_validation"] = check_ranking(ranked, options.validate_ranking, score_with_float, best)
    chosen = measured[len(layers)]
    drop = ap_drop(parent_ap, chosen["AP"])
    report["curve"] = curve_points(parent_ap, measured)
    report["final"] = {"model": chosen["model"], "calibrator": best["calibrator"], "float_layers": len(layers),
                       "layers": layers, "AP": chosen["AP"], "ap_drop": drop,
                       "latency_ms": chosen.get("latency_ms"), "met": drop <= options.max_drop}
    report["num_evaluations"] = len(evaluations)
    report["_calibration"] = calibrations[best["calibrator"]]
    return report


def rank_layers(qdq_model, data, float_onnx, requested, progress=None):
    """The quantized layers, most harmful first: {"layers": [{"layer", "op_type", "error"}],
    "method", "num_images"}. `isolated`: the output error of each layer quantized alone (one
    run per layer, `bpnet.guide.sensitivity`); `divergence`: the error each layer adds along the
    graph in one FP32-vs-INT8 pass (`bpnet.guide.divergence.layer_harm`)."""
    from bpnet.guide.divergence import find_divergence, layer_harm
    from bpnet.guide.sensitivity import OUTPUT_PREFIX, layer_sensitivity, load_onnx, quantized_layers

    model = load_onnx(qdq_model, "Q/DQ model")
    layers = quantized_layers(model)
    method = ranking_method(requested, len(layers))
    if method == "isolated":
        return {**layer_sensitivity(qdq_model, data, float_onnx, progress), "method": method}
    report = find_divergence(float_onnx, qdq_model, data)
    harm = layer_harm(report["rows"])
    by_tensor = {r["tensor"]: r["jump"] for r in report["rows"]}
    op_types = {n.name: n.op_type for n in model.graph.node}

    def harm_of(layer):
        if layer.startswith(OUTPUT_PREFIX):
            return by_tensor.get(layer[len(OUTPUT_PREFIX):], 0.0)
        return harm.get(layer, 0.0)

    rows = [{"layer": layer, "op_type": op_types.get(layer, "Output"), "error": harm_of(layer)} for layer in layers]
    rows.sort(key=lambda r: -r["error"])
    return {"layers": rows, "method": method, "num_images": int(len(data)), "full_int8_error": None}


def check_ranking(ranked, count, score_with_float, best):
    """AP regained by each of the top `count` layers (and the last-ranked one) alone in float:
    does the output-error proxy order layers as AP does?"""
    picks = list(dict.fromkeys(list(range(min(count, len(ranked)))) + [len(ranked) - 1]))
    rows = []
    for rank in picks:
        result = score_with_float([ranked[rank]], f"ranking_check/r{rank:03d}")
        rows.append({"layer": ranked[rank], "rank": rank, "AP": result["AP"],
                     "ap_gain": 100.0 * (result["AP"] - best["AP"])})
    return {"layers": rows, "agreement": validate_ranking(rows)}


# ---------------------------------------------------------------- final artifacts

def write_final_artifacts(report, float_onnx, out_dir):
    """model.int8.onnx, model.int8_trt.onnx and model.cal.bin for exactly the chosen layers."""
    import onnx

    from bpnet import calibrate
    from bpnet.guide.sensitivity import keep_layers_float, quantized_layers

    out_dir = Path(out_dir)
    final, calibration = report["final"], report.pop("_calibration")
    ort_model = out_dir / "model.int8.onnx"
    shutil.copyfile(final["model"], ort_model)
    trt_model = out_dir / "model.int8_trt.onnx"
    calibrate.write_qdq_onnx(float_onnx, trt_model, calibration, target="tensorrt")
    trt_layers = set(quantized_layers(onnx.load(str(trt_model))))
    in_trt = [name for name in final["layers"] if name in trt_layers]
    if in_trt:
        keep_layers_float(trt_model, trt_model, in_trt, float_path=float_onnx)
    graph = onnx.load(str(float_onnx)).graph
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    kept, ambiguous = cache_tensors_for(consumers, list(calibration.amax), final["layers"])
    restricted = calibrate.Calibration(calibration.method, {n: calibration.amax[n] for n in kept},
                                       {n: calibration.ranges[n] for n in kept}, calibration.num_images)
    calibrate.write_trt_cache(out_dir / "model.cal.bin", restricted)
    return {"onnx_int8": str(ort_model), "onnx_int8_tensorrt": str(trt_model),
            "cal_cache_file": str(out_dir / "model.cal.bin"), "cache_tensors": len(kept),
            "cache_tensors_dropped": len(calibration.amax) - len(kept),
            "tensorrt_qdq_float_layers": in_trt,
            "tensorrt_cache_ambiguous_layers": ambiguous}


# ---------------------------------------------------------------- COCO AP around the loop

def quantize_with_accuracy_control(model_path, annotations, images_dir, infer_spec, out_dir, options=None,
                                   cal_image_dir=None, cal_data_file=None, progress=None):
    """The whole stage; returns the report (also `out_dir/accuracy_control.json`)."""
    from bpnet.benchmark import benchmark_model
    from bpnet.evaluate import evaluate_model
    from bpnet.guide.gate import MEANINGFUL_AP_FLOOR, is_meaningful
    from bpnet.guide.gate_run import agreement_batch, run_gate
    from bpnet.preprocess import spec_following_card

    options = options or AccuracyControlOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    input_hw = tuple(infer_spec.input_shape)
    coco = read_json(annotations, "annotations")
    if not isinstance(coco, dict) or "images" not in coco:
        raise BpnetError(f"-a/--annotations: {annotations} is not a COCO file (no 'images' list)")
    if not Path(model_path).is_file():
        raise BpnetError(f"-m/--model: {model_path} not found")
    # calibration and ranking images are prepared here, not by a backend: an imported network's
    # card decides their normalisation (calibrating pixels 0..255 on x/256 - 0.5 inputs collapses it)
    infer_spec = spec_following_card(infer_spec, model_path, "--infer_spec normalization")
    # the data first: a bad evaluation or calibration set fails before any export
    evaluation_subset(coco, (), 1, source=f"-a/--annotations {annotations}")     # people at all?
    cal_names, cal_info, cal_image_dir = calibration_images(coco, annotations, images_dir, out_dir, options,
                                                            cal_image_dir, cal_data_file)
    subset, warnings = evaluation_subset(coco, cal_names, options.max_eval_images,
                                         source=f"-a/--annotations {annotations}")
    subset_path = out_dir / "eval_annotations.json"
    write_json_atomic(subset_path, subset)
    if cal_names:
        from bpnet.sampling import compare_mix, mix_warnings

        cal_info["mix"] = compare_mix(coco, cal_names, subset)        # against what is scored
        cal_info["mix_warnings"] = mix_warnings(cal_info["mix"]["calibration"], cal_info["mix"]["evaluation"])
    float_onnx = float_onnx_of(model_path, out_dir / "model.onnx", input_hw, infer_spec.output_stage_to_use,
                               progress)
    data_file = Path(cal_data_file) if cal_data_file else out_dir / "calibration_tensor.npy"
    num_cal = cal_info["num_images"] or options.num_calibration_images
    from bpnet import calibrate

    cal_data, _ = calibrate.calibration_tensor(input_hw, num_cal, 1, cal_image_dir, data_file,
                                               infer_spec.normalization, progress)

    def score(path, key):
        folder = out_dir / key / "eval"
        metrics = evaluate_model(path, subset_path, images_dir, infer_spec, folder, progress=progress)
        bench = benchmark_model(path, input_hw, 1, options.latency_runs, warmup=2)
        write_json_atomic(folder / "benchmark.json", bench)
        emit(progress, STAGE, "result", message=f"{key}: AP {metrics['AP']:.3f}, {bench['median_ms']:.1f} ms")
        return {"AP": metrics["AP"], "APm": metrics.get("APm"), "APl": metrics.get("APl"),
                "latency_ms": bench["median_ms"], "device": bench["device"], "metrics": str(folder / "metrics.json")}

    emit(progress, STAGE, "start", message=f"evaluating the float model on {len(subset['images'])} images",
         fraction=0.0)
    parent = score(float_onnx, "fp32")
    if not is_meaningful(parent):
        warnings.append(f"the float model scores AP {parent['AP']:.3f} (< {MEANINGFUL_AP_FLOOR:g}) on the evaluation "
                        "subset: it finds (almost) nobody, so an AP drop cannot mean anything (untrained model, "
                        "or evaluation images it cannot see people in)")
    image_ids = [im["id"] for im in subset["images"]]
    ranking_data = np.concatenate(agreement_batch(subset_path, images_dir, infer_spec, image_ids,
                                                  count=options.ranking_images))
    report = control_loop(float_onnx, cal_data, ranking_data, score, out_dir, options, parent["AP"], progress)
    report["divergence"] = divergences(report, float_onnx, ranking_data[:DIVERGENCE_IMAGES], out_dir)
    report["artifacts"] = write_final_artifacts(report, float_onnx, out_dir)
    report.update(model=str(model_path), float_onnx=str(float_onnx), parent=parent,
                  evaluation={"annotations": str(subset_path), "images": str(images_dir),
                              "num_images": len(subset["images"]), "source": str(annotations)},
                  calibration=cal_info, warnings=warnings)
    report["gate"] = final_gate(report, float_onnx, subset_path, images_dir, infer_spec, out_dir, run_gate,
                                progress)
    report["summary"] = summary_line(report)
    write_json_atomic(out_dir / REPORT_NAME, report)
    emit(progress, STAGE, "done", fraction=1.0, message=report["summary"])
    return report


def divergences(report, float_onnx, data, out_dir):
    """Layer-by-layer agreement with the float model of the plain best INT8 model and, when
    layers went back to float, of the chosen one (full reports beside the summary)."""
    from bpnet.guide.divergence import find_divergence, summary

    plain = next(c["model"] for c in report["calibrators"] if c["calibrator"] == report["best_calibrator"])
    found = {"plain": summary(find_divergence(float_onnx, plain, data, out_path=out_dir / "divergence_plain.json"))}
    if report["final"]["float_layers"]:
        found["final"] = summary(find_divergence(float_onnx, report["final"]["model"], data,
                                                 out_path=out_dir / "divergence_final.json"))
    return found


def float_onnx_of(model_path, onnx_path, input_hw, stage, progress):
    """The float ONNX every INT8 candidate is derived from, at `onnx_path`: exported when given
    Keras, a copy of a given ONNX (calibration rescales its concat inputs in place)."""
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        from bpnet.onnx_graph import onnx_precision

        if onnx_precision(model_path) != "fp32":
            raise BpnetError(f"-m/--model: {model_path} is already {onnx_precision(model_path)}; give the float "
                             "model (Keras .hdf5 or FP32 ONNX)")
        if model_path.resolve() != Path(onnx_path).resolve():
            shutil.copyfile(model_path, onnx_path)
        return Path(onnx_path)
    from bpnet.export import export_onnx

    export_onnx(model_path, onnx_path, input_hw, stage=stage, progress=progress)
    return Path(onnx_path)


def calibration_images(coco, annotations, images_dir, out_dir, options, cal_image_dir, cal_data_file):
    """(calibration file names, info, image folder): a folder given, a tensor file given, or
    images chosen from the annotations (stratified, symlinked into out_dir/calibration_images)."""
    if cal_data_file is not None and Path(cal_data_file).is_file():
        data = np.load(cal_data_file, mmap_mode="r", allow_pickle=False)
        return [], {"source": str(cal_data_file), "num_images": int(data.shape[0]), "files": None,
                    "note": "tensor file: its images are unknown, so they cannot be kept out of the evaluation"}, None
    if cal_image_dir is not None:
        names = [p.name for p in list_images(cal_image_dir, "--cal_image_dir")]
        if not names:
            raise BpnetError(f"--cal_image_dir: {cal_image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        people = check_calibration_people(coco, names, f"--cal_image_dir {cal_image_dir}")
        names = names[:options.num_calibration_images]
        return names, {"source": str(cal_image_dir), "num_images": len(names), "files": names, **people}, cal_image_dir
    from bpnet.sampling import sample_calibration

    folder = Path(out_dir) / "calibration_images"
    if folder.is_dir():
        shutil.rmtree(folder)
    chosen = sample_calibration(annotations, images_dir, folder, options.num_calibration_images, stratify=True,
                                link=True)
    if chosen["chosen"] == 0:
        raise BpnetError(f"-a/--annotations: {annotations} has no image with people to calibrate on")
    names = [f["file_name"] for f in chosen["files"]]
    return names, {"source": f"chosen from {annotations} (stratified)", "num_images": len(names), "files": names,
                   "mix": chosen["mix"], "mix_warnings": chosen["warnings"]}, folder


def final_gate(report, float_onnx, subset_path, images_dir, infer_spec, out_dir, run_gate, progress):
    """The INT8 gate of the chosen model at threshold max_drop, reusing the loop's evaluations."""
    gate_dir = Path(out_dir) / "gate"
    child = Path(report["artifacts"]["onnx_int8"])
    final = report["final"]
    evaluated = Path(final["model"]).parent / "eval"      # score() writes there for every INT8 model
    (gate_dir / "child").mkdir(parents=True, exist_ok=True)
    metrics = read_json(evaluated / "metrics.json", "metrics")
    # model.int8.onnx is a byte copy of the evaluated file: its evaluation is that one
    write_json_atomic(gate_dir / "child" / "metrics.json", {**metrics, "model": str(child),
                                                            "evaluated_as": metrics.get("model")})
    shutil.copyfile(evaluated / "results.json", gate_dir / "child" / "results.json")
    gate = run_gate(float_onnx, child, subset_path, images_dir, infer_spec, gate_dir,
                    threshold_ap=report["max_drop"], precision="int8", calibrator=final["calibrator"],
                    num_calibration_images=report["calibration"]["num_images"], rank_layers=False,
                    parent_eval_dir=Path(report["parent"]["metrics"]).parent, progress=progress)
    return {k: gate.get(k) for k in ("passed", "status", "reasons", "warnings", "output_error", "metrics")}
