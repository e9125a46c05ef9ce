"""Kind `export`: the parent's Keras model as ONNX at one resolution and precision
(`bpnet export`): FP32, FP16, or INT8 by post-training calibration (cache + Q/DQ models) or, with
`calibration.qat_steps`, by quantization-aware fine-tuning. Outputs name every file it wrote."""

import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from bpnet.limits import (CALIBRATORS, DEFAULT_CALIBRATOR, INT8_METHOD_VERSION, MAX_CALIBRATION_BATCH_SIZE,
                          MAX_CALIBRATION_BATCHES, PRECISIONS)
from bpnet.specs import Strict, TrainSpec
from worker.kinds.base import StageOutputs, StageParams, StageResult

KIND = "export"
ONNX_FILE = "model.onnx"
TENSOR_FILE = "calibration_tensor.npy"
QAT_INT8_FILE = "model.int8.onnx"


class CalibrationOptions(Strict):
    """The INT8 options of a run spec (`calibration:`)."""
    images: Optional[Path] = None          # default: the training images
    batch_size: int = Field(8, ge=1, le=MAX_CALIBRATION_BATCH_SIZE)
    batches: int = Field(10, ge=1, le=MAX_CALIBRATION_BATCHES)
    calibrator: Literal[CALIBRATORS] = DEFAULT_CALIBRATOR
    # Q/DQ nodes of these layers are removed after calibration (the gate's FP32-fallback remedy)
    keep_float_layers: tuple[str, ...] = ()
    # > 0: INT8 by quantization-aware fine-tuning of the float model for this many steps instead
    # of post-training calibration (the gate's QAT remedy)
    qat_steps: int = Field(0, ge=0, le=100000)


class CalibrationParams(CalibrationOptions, StageParams):
    # left out of the key while empty: keeps the keys of runs made before these options existed
    OMIT_WHEN_EMPTY = ("keep_float_layers", "qat_steps")
    images: str                            # resolved: the folder the images are read from
    # not an option: the INT8 method this stage computes with, so a newer one is not served an
    # older one's cached result (bpnet.limits.INT8_METHOD_VERSION)
    int8_method: int = INT8_METHOD_VERSION


class Params(StageParams):
    OMIT_WHEN_EMPTY = ("calibration", "qat_train_spec", "stage")
    input_hw: tuple[int, int]
    precision: Literal[PRECISIONS]
    stage: Optional[int] = None      # the stage exit exported (run spec `output_stage`); None = the last
    calibration: Optional[CalibrationParams] = None     # INT8 only
    qat_train_spec: Optional[TrainSpec] = None          # INT8 by QAT only: the fine-tuning recipe

    @model_validator(mode="after")
    def _int8_is_calibrated(self):
        if self.precision == "int8" and self.calibration is None:
            raise ValueError("an INT8 export needs calibration options")
        return self

    @property
    def by_qat(self):
        return self.precision == "int8" and self.calibration.qat_steps > 0


# The files the export stage wrote before its Outputs named them (rows cached by older versions).
LEGACY_FILES = {"onnx": ONNX_FILE, "report": "model.export.json", "fp16": "model.fp16.onnx",
                "int8": "model.int8.onnx", "int8_tensorrt": "model.int8_trt.onnx",
                "cal_cache": "model.cal.bin", "tensor_file": TENSOR_FILE}
LEGACY_BY_PRECISION = {"fp32": (), "fp16": ("fp16",), "int8": ("int8", "int8_tensorrt", "cal_cache", "tensor_file")}


class Outputs(StageOutputs):
    model: str                             # the deployed file: the ONNX of `precision`
    precision: Literal[PRECISIONS]
    onnx: str                              # the FP32 ONNX (the gate's float reference)
    report: Optional[str] = None           # bpnet export's report (.export.json)
    fp16: Optional[str] = None
    int8: Optional[str] = None             # Q/DQ for ONNX Runtime (U8S8)
    int8_tensorrt: Optional[str] = None    # symmetric Q/DQ for TensorRT >= 11
    cal_cache: Optional[str] = None        # TensorRT calibration cache (TensorRT 8-10)
    tensor_file: Optional[str] = None      # the preprocessed calibration images
    num_stages: Optional[int] = None
    prune_threshold: Optional[float] = None
    qat_steps: Optional[int] = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_row(cls, data):
        if isinstance(data, dict) and "onnx" not in data and data.get("precision") in LEGACY_BY_PRECISION:
            names = ("onnx", "report") + LEGACY_BY_PRECISION[data["precision"]]
            data = {**{n: LEGACY_FILES[n] for n in names}, **data}
        return data


def _name(path):
    return Path(path).name if path else None


def work(params, result=None):
    """INT8 calibration runs the model on its images; FP32/FP16 export is one unit per model."""
    if params.precision != "int8":
        return KIND, 1.0
    from bpnet.guide.cost import inference_work

    return "export-int8", inference_work(params.calibration.batch_size * params.calibration.batches, params.input_hw)


def run(params, parent, out_dir, progress, inputs=None):
    from bpnet.export import export_model

    if params.by_qat:
        return run_qat(params, parent, out_dir, progress)
    cal, int8 = params.calibration, params.precision == "int8"
    report = export_model(
        parent.model(), out_dir / ONNX_FILE, params.input_hw, data_type=params.precision,
        calibrator=cal.calibrator if cal else DEFAULT_CALIBRATOR, cal_image_dir=cal.images if cal else None,
        cal_data_file=out_dir / TENSOR_FILE if int8 else None,
        batch_size=cal.batch_size if cal else 1, batches=cal.batches if cal else 1, stage=params.stage,
        progress=progress)
    files = {"onnx": _name(report["export"]["onnx"]), "report": _name(report.get("report")),
             "fp16": _name(report.get("fp16_onnx"))}
    metrics = {"max_abs_diff": report["export"]["max_abs_diff"]}
    if int8:
        calibrated = report["int8"]
        files.update(int8=_name(calibrated["onnx_int8"]), int8_tensorrt=_name(calibrated["onnx_int8_tensorrt"]),
                     cal_cache=_name(calibrated["cal_cache_file"]), tensor_file=_name(calibrated["cal_data_file"]))
        metrics["calibration_seconds"] = calibrated["calibration_seconds"]
    deployed = {"fp32": files["onnx"], "fp16": files["fp16"], "int8": files.get("int8")}[params.precision]
    if int8 and cal.keep_float_layers:
        keep_float(out_dir / deployed, out_dir / files["onnx"], cal.keep_float_layers, progress)
        metrics["layers_kept_float"] = len(cal.keep_float_layers)
    # an exported stage exit k is a k-stage model
    outputs = Outputs(model=deployed, precision=params.precision, num_stages=params.stage or parent.outputs.num_stages,
                      prune_threshold=parent.outputs.prune_threshold, **files)
    return StageResult(outputs, None, metrics)


def run_qat(params, parent, out_dir, progress):
    """INT8 by quantization-aware fine-tuning (the gate's QAT remedy): the float ONNX beside it
    (the gate's reference) and the fine-tuned Q/DQ model."""
    from bpnet.export import export_model
    from bpnet.guide.gate_run import run_remedy

    float_model = parent.model()
    report = export_model(float_model, out_dir / ONNX_FILE, params.input_hw, data_type="fp32", progress=progress)
    steps = params.calibration.qat_steps
    int8 = run_remedy({"kind": "qat", "params": {"steps": steps}}, out_dir / ONNX_FILE, out_dir / QAT_INT8_FILE,
                      float_model=float_model, train_spec=params.qat_train_spec, progress=progress)
    outputs = Outputs(model=Path(int8).name, precision="int8", onnx=ONNX_FILE, int8=Path(int8).name,
                      report=_name(report.get("report")), num_stages=parent.outputs.num_stages,
                      prune_threshold=parent.outputs.prune_threshold, qat_steps=steps)
    return StageResult(outputs, None, {"max_abs_diff": report["export"]["max_abs_diff"], "qat_steps": steps})


def keep_float(int8_path, float_onnx, layers, progress):
    """Replace the INT8 model by a copy whose `layers` compute in float (the gate's remedy)."""
    from bpnet.guide.sensitivity import keep_layers_float

    progress({"stage": "export", "event": "phase",
              "message": f"keeping {len(layers)} layer(s) in float: {', '.join(layers)}"})
    edited = keep_layers_float(int8_path, int8_path.with_name("model.int8.kept.onnx"), list(layers),
                               float_path=float_onnx)
    os.replace(edited, int8_path)
