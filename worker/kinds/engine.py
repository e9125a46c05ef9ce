"""Kind `engine`: a TensorRT engine of the parent export (or accuracy-controlled `quantize`
stage), built from the ONNX files and the calibration its Outputs name (runs only on a worker of
the `tensorrt` queue; elsewhere `require_tensorrt` explains what is missing). After a quantize
stage the layers it kept in float stay float in the engine too. A leaf: results are measured on
ONNX Runtime."""

from typing import Literal, Optional

from bpnet.limits import PRECISIONS
from worker.kinds import export
from worker.kinds.base import StageOutputs, StageResult

KIND = "engine"
ENGINE_FILE = "model.engine"

Params = export.Params       # the export's own parameters: the engine is built at the same settings


class Outputs(StageOutputs):
    model: str
    precision: Literal[PRECISIONS]
    num_stages: Optional[int] = None


def existing(parent, name):
    """The parent's file `name` when it names one that exists, else None."""
    path = parent.dir / name if name else None
    return path if path is not None and path.is_file() else None


def calibration_batches(params, files):
    """(batch size, batches) of the calibration tensor file, should TensorRT 8-10 have to calibrate
    (only when the cache is missing): a quantize stage's file holds its own number of images."""
    count = getattr(files, "num_calibration_images", None)
    if count:
        return 1, count
    cal = params.calibration
    return (cal.batch_size, cal.batches) if cal else (1, 1)


def run(params, parent, out_dir, progress, inputs=None):
    from bpnet.backends.trt_backend import build_engine

    files = parent.outputs
    float_onnx = parent.file(files.onnx, "float ONNX")
    reduced = {"fp16": existing(parent, files.fp16),
               "int8": existing(parent, files.int8_tensorrt) or existing(parent, files.int8)}.get(params.precision)
    batch_size, batches = calibration_batches(params, files)
    float_layers = getattr(files, "float_layers", ())
    progress({"stage": "engine", "event": "start", "message": f"building a {params.precision} TensorRT engine"
              + (f" ({len(float_layers)} layer(s) kept in float)" if float_layers else "")})
    build_engine(float_onnx, reduced or float_onnx, out_dir / ENGINE_FILE, params.precision, params.input_hw,
                 cal_cache_file=existing(parent, files.cal_cache), cal_data_file=existing(parent, files.tensor_file),
                 batch_size=batch_size, batches=batches, float_layers=float_layers)
    outputs = Outputs(model=ENGINE_FILE, precision=params.precision, num_stages=files.num_stages)
    return StageResult(outputs, None, {"engine_bytes": (out_dir / ENGINE_FILE).stat().st_size})
