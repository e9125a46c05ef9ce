"""Running the INT8/FP16 gate and its remedies: the engine functions the CLI and worker call.

`run_gate` evaluates the float parent and the reduced-precision child the same strict way (the
parent's evaluation is reused when it exists), measures per-keypoint localisation errors,
decides pass/fail with `bpnet.guide.gate`, and - for a failed INT8 Q/DQ model when images are
given - ranks layer sensitivity so the "keep layers in FP32" remedy names its layers.
`out_dir/gate.json` holds the report.

Remedies (`run_remedy`): recalibrate with more/different images or another calibrator (through
`bpnet.calibrate`), keep layers in float (`bpnet.guide.sensitivity`). Each returns the path of a
new INT8 model that goes through the gate again. Quantization-aware training
(`bpnet.guide.qat`) runs here too; the job system runs it as an INT8 export option
(`calibration.qat_steps` of a run spec).
"""

from pathlib import Path

from bpnet.data.coco import read_coco_json
from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.fileio import read_json, write_json_atomic
from bpnet.guide.gate import DEFAULT_MAX_OUTPUT_ERROR, DEFAULT_THRESHOLD_AP, gate_report, keypoint_errors
from bpnet.limits import GATE_MAX_RANKED_LAYERS

STAGE = "gate"
SENSITIVE_LAYERS_TO_NAME = 3
RUNNABLE_REMEDIES = ("more_calibration_images", "other_calibrator", "keep_layers_float", "qat")
AGREEMENT_IMAGES = 8          # images (of the evaluation set) on which outputs are compared


def agreement_batch(annotations, images_dir, infer_spec, image_ids, count=AGREEMENT_IMAGES):
    """The first `count` evaluation images, prepared exactly as the evaluation prepares them."""
    from bpnet.preprocess import prepare_batch, read_image

    coco = read_coco_json(annotations)
    names = {img["id"]: img["file_name"] for img in coco["images"]}
    chosen = [i for i in (image_ids or sorted(names)) if i in names][:count]
    if not chosen:
        raise BpnetError(f"no evaluation images of {annotations} to compare the outputs on")
    norm = {"image_scale": infer_spec.normalization.image_scale,
            "image_offset": infer_spec.normalization.image_offset}
    images = [read_image(Path(images_dir) / names[i]) for i in chosen]
    # One image at a time: in adjust mode widths differ, and backends may have a fixed batch.
    return [prepare_batch([img], infer_spec.input_shape, "pad_image_input", **norm)[0] for img in images]


def outputs_agreement(parent_model, child_model, batches, stage=None):
    """`output_error` of the child's (heatmaps, pafs) against the parent's over `batches`."""
    import numpy as np

    from bpnet.backends import load_backend
    from bpnet.guide.sensitivity import output_error

    def predict_all(model_path):
        with load_backend(model_path, stage=stage) as backend:
            outputs = [backend.predict(batch) for batch in batches]
        return [np.concatenate([o[k] for o in outputs]) for k in range(2)]

    return output_error(predict_all(child_model), predict_all(parent_model))


def evaluate_cached(model_path, annotations, images_dir, infer_spec, out_dir, max_images, progress):
    """(metrics, results) of `model_path` (`bpnet.evaluate.evaluate_once`: the parent's evaluation
    is shared by all its INT8/FP16 children)."""
    from bpnet.evaluate import evaluate_once

    metrics = evaluate_once(model_path, annotations, images_dir, infer_spec, out_dir, max_images, progress)
    return metrics, read_json(Path(out_dir) / "results.json", "evaluation results")


def model_precision(model_path):
    path = Path(model_path)
    if path.suffix != ".onnx":
        return "fp32"
    from bpnet.onnx_graph import onnx_precision
    return onnx_precision(path)


def run_gate(parent_model, child_model, annotations, images_dir, infer_spec, out_dir,
             threshold_ap=DEFAULT_THRESHOLD_AP, precision=None, max_images=None, calibrator=None,
             num_calibration_images=None, rank_layers=True, float_onnx=None,
             max_output_error=DEFAULT_MAX_OUTPUT_ERROR, parent_eval_dir=None, progress=None):
    """Gate `child_model` (INT8/FP16) against `parent_model` (float) on the same evaluation.

    With `rank_layers`, a failed INT8 Q/DQ model gets a per-layer sensitivity ranking on the
    comparison images, and the keep-in-FP32 remedy names the worst layers (`float_onnx`, the
    parent exported to ONNX, makes the float path exact). Returns the report (`out_dir/gate.json`).
    """
    for what, path in (("float parent model", parent_model), ("quantized model", child_model)):
        if not Path(path).is_file():
            raise BpnetError(f"{what} not found: {path}")
    out_dir = Path(out_dir)
    precision = precision or model_precision(child_model)
    from bpnet.preprocess import spec_following_card

    # the output comparison prepares its images itself: an imported network's card decides how
    infer_spec = spec_following_card(infer_spec, parent_model, "inference spec normalization")
    emit(progress, STAGE, "start", message=f"evaluating the float parent {parent_model}", fraction=0.0)
    parent_eval_dir = Path(parent_eval_dir) if parent_eval_dir is not None else out_dir / "parent"
    parent_metrics, parent_results = evaluate_cached(parent_model, annotations, images_dir, infer_spec,
                                                     parent_eval_dir, max_images, progress)
    emit(progress, STAGE, "phase", message=f"evaluating the {precision} model {child_model}", fraction=0.4)
    child_metrics, child_results = evaluate_cached(child_model, annotations, images_dir, infer_spec,
                                                   out_dir / "child", max_images, progress)
    coco = read_coco_json(annotations)
    image_ids = parent_metrics.get("image_ids")
    parent_errors = keypoint_errors(coco, parent_results, image_ids)
    child_errors = keypoint_errors(coco, child_results, image_ids)
    emit(progress, STAGE, "phase", message="comparing the outputs on the same images", fraction=0.7)
    batches = agreement_batch(annotations, images_dir, infer_spec, image_ids)
    agreement = outputs_agreement(parent_model, child_model, batches, infer_spec.output_stage_to_use)
    common = dict(calibrator=calibrator, num_calibration_images=num_calibration_images,
                  output_error=agreement, max_output_error=max_output_error)
    report = gate_report(parent_metrics, child_metrics, precision, threshold_ap, parent_errors, child_errors,
                         **common)
    if report["status"] == "failed" and precision == "int8" and rank_layers and Path(child_model).suffix == ".onnx":
        import numpy as np

        from bpnet.guide.sensitivity import layer_sensitivity, load_onnx, most_sensitive, quantized_layers

        count = len(quantized_layers(load_onnx(child_model, "Q/DQ model")))
        if count > GATE_MAX_RANKED_LAYERS:
            skipped = (f"layer ranking skipped: {count} quantized layers (the gate ranks up to "
                       f"{GATE_MAX_RANKED_LAYERS}, one run per layer); `bpnet quantize` ranks them in one "
                       "pass and keeps the worst in float")
            report["sensitivity"] = {"skipped": skipped, "num_layers": count}
            report["warnings"].append(skipped)
            report["remedies"] = [r for r in report["remedies"] if r["kind"] != "keep_layers_float"]
        else:
            emit(progress, STAGE, "phase", message="ranking layers by INT8 sensitivity", fraction=0.8)
            sensitivity = layer_sensitivity(child_model, np.concatenate(batches), float_onnx, progress)
            layers = most_sensitive(sensitivity, count=SENSITIVE_LAYERS_TO_NAME)
            report["sensitivity"] = sensitivity
            report["remedies"] = gate_report(parent_metrics, child_metrics, precision, threshold_ap,
                                             sensitive_layers=layers, **common)["remedies"]
    report.update(parent_model=str(parent_model), child_model=str(child_model),
                  parent_metrics=str(parent_eval_dir / "metrics.json"),
                  child_metrics=str(out_dir / "child" / "metrics.json"))
    write_json_atomic(out_dir / "gate.json", report)
    emit(progress, STAGE, "done", fraction=1.0, passed=report["passed"], message=report["reasons"][0])
    return report


def run_remedy(remedy, float_onnx, output_path, cal_data=None, qdq_model=None, progress=None,
               float_model=None, train_spec=None):
    """Run one remedy of a gate report; returns the new INT8 ONNX path to gate again.

    - more_calibration_images / other_calibrator: `cal_data` (N, H, W, 3) float32 calibration batch
      (new images for the first), calibrator from the remedy's params (default entropy);
    - keep_layers_float: edits `qdq_model`, keeping the remedy's layers in float;
    - qat: fine-tunes `float_model` (Keras HDF5) with fake quantization on `train_spec`'s data for
      the remedy's `steps` param (default: the spec's), then exports it (`bpnet.guide.qat`).
    """
    kind, params = remedy["kind"], remedy.get("params", {})
    emit(progress, STAGE, "remedy", message=f"running remedy {kind}")
    if kind in ("more_calibration_images", "other_calibrator"):
        from bpnet import calibrate

        if cal_data is None:
            raise BpnetError(f"remedy {kind} needs calibration images (cal_data)")
        method = params.get("calibrator", "entropy")
        calibration = calibrate.calibrate_onnx(float_onnx, cal_data, (method,), progress=progress)[method]
        return calibrate.write_qdq_onnx(float_onnx, output_path, calibration, target="ort")
    if kind == "keep_layers_float":
        from bpnet.guide.sensitivity import keep_layers_float

        if qdq_model is None or not params.get("layers"):
            raise BpnetError("remedy keep_layers_float needs the INT8 model and a non-empty 'layers' list "
                             "(run the gate with sensitivity images to get one)")
        return keep_layers_float(qdq_model, output_path, params["layers"], float_path=float_onnx)
    if kind == "qat":
        from bpnet.guide.qat import quantization_aware_finetune

        if float_model is None or train_spec is None:
            raise BpnetError("remedy qat cannot be run here without the float Keras model (float_model) "
                             "and a training spec (train_spec) for its data")
        output_path = Path(output_path)
        work_dir = output_path.with_name(f"{output_path.stem}_qat_run")   # events and summary
        summary = quantization_aware_finetune(float_model, train_spec, work_dir,
                                              steps=params.get("steps"), onnx_path=output_path,
                                              progress=progress)
        return Path(summary["onnx"])
    raise BpnetError(f"remedy kind {kind!r} cannot be run here; runnable kinds: "
                     f"{', '.join(RUNNABLE_REMEDIES)}")
