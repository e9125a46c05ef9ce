"""Kind `gate`: the INT8/FP16 verdict on the result its parent (an evaluate stage) measured,
against the float model (bpnet.guide.gate_run). Besides its parent it reads other stages of the
same run, named by key in `inputs`: the export of the gated model and, when the run has one, the
FP32 sibling's export and evaluation, whose evaluation is reused instead of computed again."""

import shutil
from typing import Literal, Optional

from bpnet.errors import BpnetError
from bpnet.limits import CALIBRATORS, PRECISIONS
from bpnet.specs import InferSpec
from worker.kinds.base import StageOutputs, StageParams, StageResult, evaluation_work

KIND = "gate"
GATED_PRECISIONS = ("int8", "fp16")
# What the store keeps of a gate report (the full one is the gate.json artifact).
SUMMARY_KEYS = ("passed", "status", "precision", "threshold_ap", "metrics", "output_error",
                "max_output_error", "reasons", "warnings", "remedies")


class Params(StageParams):
    precision: Literal[PRECISIONS]
    threshold_ap: float
    infer_spec: InferSpec
    annotations: str
    images: str
    max_images: Optional[int] = None
    calibrator: Optional[Literal[CALIBRATORS]] = None        # INT8: how it was calibrated
    num_calibration_images: Optional[int] = None
    # stages of the same run this one reads, by key: export, float_export, float_evaluate
    inputs: dict[Literal["export", "float_export", "float_evaluate"], str]


class Outputs(StageOutputs):
    gate: str = "gate.json"
    model: str                       # the gated model's name in the export's folder


def reuse_evaluation(evaluation, export, dst_dir):
    """Copy the evaluation (metrics + results) an evaluate stage made of `export`'s deployed model
    into `dst_dir`; False when that stage evaluated another file or its files are gone."""
    if evaluation is None or export is None or evaluation.outputs.model != export.outputs.model:
        return False
    files = [evaluation.dir / evaluation.outputs.metrics, evaluation.dir / evaluation.outputs.results]
    if not all(f.is_file() for f in files):
        return False
    dst_dir.mkdir(parents=True, exist_ok=True)
    for src in files:
        shutil.copyfile(src, dst_dir / src.name)
    return True


def work(params, result=None):
    return "gate", evaluation_work(params.annotations, params.max_images, params.infer_spec.input_shape, result)


def run(params, parent, out_dir, progress, inputs=None):
    from bpnet.guide.gate_run import run_gate

    inputs = inputs or {}
    export = inputs.get("export")
    if export is None:
        raise BpnetError("the export stage of this result is not finished; the gate has no model to check")
    child_model = export.model()
    float_onnx = export.dir / export.outputs.onnx
    reuse_evaluation(parent, export, out_dir / "child")
    parent_model, parent_eval_dir = float_onnx, out_dir / "parent"
    float_export = inputs.get("float_export")
    if float_export and reuse_evaluation(inputs.get("float_evaluate"), float_export, parent_eval_dir):
        parent_model = float_export.model()
    report = run_gate(parent_model, child_model, params.annotations, params.images, params.infer_spec, out_dir,
                      threshold_ap=params.threshold_ap, precision=params.precision, max_images=params.max_images,
                      calibrator=params.calibrator, num_calibration_images=params.num_calibration_images,
                      float_onnx=float_onnx if float_onnx.is_file() else None,
                      parent_eval_dir=parent_eval_dir, progress=progress)
    ap = report["metrics"]["AP"]
    metrics = {"gate_passed": 1.0 if report["passed"] else 0.0}
    if ap["drop"] is not None:
        metrics["gate_ap_drop"] = ap["drop"]
    if report.get("output_error") is not None:
        metrics["gate_output_error"] = report["output_error"]
    summary = {k: report.get(k) for k in SUMMARY_KEYS}
    return StageResult(Outputs(model=export.outputs.model), summary, metrics)
