"""Kind `quantize`: INT8 with accuracy control (`bpnet quantize`): the parent's Keras model
exported to ONNX, calibrated with every calibrator, scored on the evaluation data, and the layers
that cost most AP returned to float by bisection until the drop is within `max_drop`. It stands
where an INT8 `export` would (a run spec's `accuracy_control:` with `int8` in `precisions`), and
its Outputs are an export's, so the evaluate and gate stages after it read it like one."""

from typing import Optional

from bpnet.guide.accuracy_control import AccuracyControlOptions
from bpnet.limits import INT8_METHOD_VERSION
from bpnet.specs import InferSpec
from worker.kinds import export
from worker.kinds.base import StageParams, StageResult, evaluation_work

KIND = "quantize"
REPORT_FILE = "accuracy_control.json"


class Params(StageParams):
    input_hw: tuple[int, int]
    accuracy_control: AccuracyControlOptions
    infer_spec: InferSpec                      # the evaluation's, at this resolution
    annotations: str                           # the evaluation data the AP drop is measured on
    images: str
    # a folder of calibration images other than the evaluation images; None = choose them from
    # the evaluation annotations (stratified) and keep them out of the evaluation subset
    calibration_images: Optional[str] = None
    int8_method: int = INT8_METHOD_VERSION     # see export.CalibrationParams


class Outputs(export.Outputs):
    accuracy_control: str = REPORT_FILE
    # what a TensorRT engine of this stage needs besides the export's files: the layers kept in
    # float (TensorRT 8-10 would otherwise run them in INT8 wherever an input has a scale) and the
    # number of images in the calibration tensor file
    float_layers: tuple[str, ...] = ()
    num_calibration_images: Optional[int] = None


def work(params, result=None):
    """The sure evaluations (float, each calibrator, ranking checks) x evaluation images x
    megapixels; the bisection's share is in the measured rate."""
    from bpnet.guide.cost import quantize_evaluations

    control = params.accuracy_control
    return KIND, quantize_evaluations(len(control.calibrators), control.validate_ranking) * \
        evaluation_work(params.annotations, control.max_eval_images, params.input_hw)


def run(params, parent, out_dir, progress, inputs=None):
    from bpnet.guide.accuracy_control_run import quantize_with_accuracy_control

    infer = params.infer_spec.model_copy(update={"input_shape": tuple(params.input_hw)})
    report = quantize_with_accuracy_control(parent.model(), params.annotations, params.images, infer, out_dir,
                                            params.accuracy_control, cal_image_dir=params.calibration_images,
                                            progress=progress)
    final, artifacts = report["final"], report["artifacts"]
    outputs = Outputs(model="model.int8.onnx", precision="int8", onnx="model.onnx", int8="model.int8.onnx",
                      int8_tensorrt="model.int8_trt.onnx", cal_cache="model.cal.bin",
                      tensor_file="calibration_tensor.npy", num_stages=parent.outputs.num_stages,
                      prune_threshold=parent.outputs.prune_threshold, float_layers=tuple(final["layers"]),
                      num_calibration_images=report["calibration"]["num_images"])
    metrics = {"int8_ap_drop": final["ap_drop"], "float_layers": final["float_layers"],
               "int8_evaluations": report["num_evaluations"], "budget_met": 1.0 if final["met"] else 0.0,
               "cache_tensors": artifacts["cache_tensors"]}
    return StageResult(outputs, None, metrics)
