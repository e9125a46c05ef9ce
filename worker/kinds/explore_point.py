"""Kind `explore_point`: one point of the parent explorer stage (resolution, stage exit,
precision) as a result row, so it is in Compare and the Pareto front like any evaluation. Its
model file stays in the explore stage's folder and is this result's deployable; its detections
are copied here for the pictures. Nothing is computed."""

import shutil
from pathlib import Path
from typing import Literal, Optional

from bpnet.errors import BpnetError
from bpnet.limits import PRECISIONS
from worker.kinds.base import StageOutputs, StageParams, StageResult
from worker.kinds.evaluate import METRIC_KEYS, EvaluationResult

KIND = "explore_point"


class Params(StageParams):
    input_hw: tuple[int, int]
    stage: Optional[int]           # None: an ONNX model's one output
    precision: Literal[PRECISIONS]
    annotations: str               # the evaluation data (Compare's pictures read them)
    images: str


class Outputs(StageOutputs):
    model: str                     # the point's model file, relative to the explore stage's folder
    results: Optional[str] = None  # the COCO detections
    num_stages: Optional[int] = None


def find_point(report, params):
    point = next((p for p in report["points"] if p["resolution"] == list(params.input_hw)
                  and p["stage"] == params.stage and p["precision"] == params.precision), None)
    if point is None:
        raise BpnetError(f"the parent explorer report has no point {list(params.input_hw)} stage "
                         f"{params.stage} {params.precision}")
    return point


def result_row(point, report, model, num_stages):
    h, w = point["resolution"]
    return EvaluationResult(
        **{k: point.get(k) for k in ("AP", "AP50", "APm", "APl")}, precision=point["precision"],
        input_hw=[h, w], resolution=f"{h}x{w}", branch="explore", stages=point["stage"] or num_stages,
        stage_exit=point["stage"],
        # the CNN alone, as `bench` measures every other result; the rest of the split beside it
        latency_ms=point["cnn_ms"], cnn_ms_per_image=point["cnn_ms"], decode_ms_per_image=point["decode_ms"],
        pre_ms_per_image=point["pre_ms"], pipeline_ms_per_image=point["latency_ms"],
        size_bytes=model.stat().st_size if model.is_file() else None,
        backend="onnxruntime" if model.suffix == ".onnx" else None, num_images=report["num_images"])


def run(params, parent, out_dir, progress, inputs=None):
    from bpnet.fileio import read_json

    report = read_json(parent.file(parent.outputs.report, "explorer report"), "explorer report")
    point = find_point(report, params)
    model = Path(point["model_file"])
    try:
        model_name = str(model.resolve().relative_to(Path(parent.dir).resolve()))
    except ValueError:   # an ONNX base model is measured as it is, in the import stage's folder
        model_name = model.name
    results = None
    if point.get("results_file") and Path(point["results_file"]).is_file():
        shutil.copyfile(point["results_file"], out_dir / "results.json")
        results = "results.json"
    row = result_row(point, report, model, parent.outputs.num_stages).model_dump(mode="json")
    numbers = {k: v for k, v in row.items() if k in METRIC_KEYS + ("latency_ms", "size_bytes")
               and isinstance(v, (int, float))}
    progress({"stage": KIND, "event": "done", "fraction": 1.0,
              "message": f"AP {point['AP']:.3f}, CNN {point['cnn_ms']:.1f} ms"})
    outputs = Outputs(model=model_name, results=results, num_stages=row["stages"])
    return StageResult(outputs, row, numbers)
