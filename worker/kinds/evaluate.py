"""Kind `evaluate`: COCO keypoint AP of the parent's deployed model (`bpnet evaluate`) and its
latency (`bpnet bench`), summarised in one `EvaluationResult`: the row the store keeps, the
client returns and the Compare page charts."""

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from bpnet.fileio import read_json, write_json_atomic
from bpnet.limits import PRECISIONS
from bpnet.specs import InferSpec, Strict
from worker.kinds.base import StageOutputs, StageParams, StageResult, evaluation_work

KIND = "evaluate"
METRIC_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
BRANCHES = ("unpruned", "pruned", "search", "explore")


class BenchmarkOptions(Strict):
    """The latency measurement of a run spec (`benchmark:`)."""
    batch_size: int = Field(1, ge=1, le=256)
    runs: int = Field(20, ge=1, le=10000)
    warmup: int = Field(3, ge=0, le=1000)


class Params(StageParams):
    OMIT_WHEN_EMPTY = ("branch",)
    infer_spec: InferSpec
    annotations: str
    images: str
    benchmark: BenchmarkOptions
    precision: Literal[PRECISIONS]
    max_images: Optional[int] = None
    input_hw: tuple[int, int]
    prune_threshold: Optional[float] = None     # the sweep's threshold; None: unpruned or search
    stages_label: str                           # the base model's part of stage labels ("s3", "model")
    branch: Optional[Literal["search"]] = None  # set for the search's chosen model

    def result_branch(self):
        if self.branch == "search":
            return "search"
        return "unpruned" if self.prune_threshold is None else "pruned"


class Outputs(StageOutputs):
    model: str                       # the evaluated file's name in the parent's folder
    metrics: str = "metrics.json"
    results: str = "results.json"    # the COCO detections
    benchmark: Optional[str] = None
    num_stages: Optional[int] = None


class EvaluationResult(BaseModel):
    """One evaluated model: what Compare shows and charts. Artifact ids are added by the executor."""
    model_config = ConfigDict(extra="ignore")
    AP: Optional[float] = None
    AP50: Optional[float] = None
    AP75: Optional[float] = None
    APm: Optional[float] = None
    APl: Optional[float] = None
    AR: Optional[float] = None
    AR50: Optional[float] = None
    AR75: Optional[float] = None
    ARm: Optional[float] = None
    ARl: Optional[float] = None
    precision: Optional[str] = None
    input_hw: Optional[list[int]] = None
    resolution: Optional[str] = None             # "HxW"
    pth: Optional[float] = None                  # prune threshold; None = unpruned
    branch: Optional[Literal[BRANCHES]] = None
    stages: Optional[int] = None
    latency_ms: Optional[float] = None           # median of the benchmark
    latency_p5_ms: Optional[float] = None        # when the benchmark reports it (error bars)
    latency_p95_ms: Optional[float] = None
    latency_runs: Optional[int] = None           # timed runs behind the latency figures
    throughput: Optional[float] = None           # images per second
    cnn_ms_per_image: Optional[float] = None
    decode_ms_per_image: Optional[float] = None
    params: Optional[int] = None
    gflops: Optional[float] = None
    size_bytes: Optional[int] = None
    backend: Optional[str] = None
    device: Optional[str] = None
    num_images: Optional[int] = None
    # an explorer point (kind explore_point): the stage exit measured (`stages` is then the same)
    # and the rest of the per-image split beside cnn/decode (latency_ms is the CNN, as `bench`)
    stage_exit: Optional[int] = None
    # INT8 by accuracy control (parent kind quantize): the layers it kept in float and its budget
    float_layers: Optional[int] = None
    int8_max_drop: Optional[float] = None
    pre_ms_per_image: Optional[float] = None
    pipeline_ms_per_image: Optional[float] = None
    model_artifact_id: Optional[str] = None
    artifact_ids: Optional[list[str]] = None


RESULT_FIELDS = tuple(EvaluationResult.model_fields)
NUMERIC_METRICS = METRIC_KEYS + ("latency_ms", "latency_p95_ms", "throughput", "params", "gflops", "size_bytes")


def result_row(params, parent, model_path, metrics, bench):
    """The Compare row of one evaluated model."""
    h, w = params.input_hw
    timing = metrics.get("timing") or {}
    searched = params.branch == "search"
    return EvaluationResult(
        **{k: metrics.get(k) for k in METRIC_KEYS},
        precision=params.precision, input_hw=[h, w], resolution=f"{h}x{w}",
        pth=parent.outputs.prune_threshold if searched else params.prune_threshold,
        branch=params.result_branch(), stages=parent.outputs.num_stages,
        latency_ms=bench.get("median_ms"), latency_p5_ms=bench.get("p5_ms"), latency_p95_ms=bench.get("p95_ms"),
        latency_runs=bench.get("runs"),
        throughput=bench.get("images_per_s"),
        cnn_ms_per_image=timing.get("cnn_ms_per_image"), decode_ms_per_image=timing.get("decode_ms_per_image"),
        params=bench.get("params"), gflops=bench.get("gflops"), size_bytes=Path(model_path).stat().st_size,
        backend=bench.get("backend") or metrics.get("backend"), device=bench.get("device"),
        num_images=metrics.get("num_images"), **accuracy_control_fields(parent))


def accuracy_control_fields(parent):
    """float_layers and int8_max_drop of a model made by accuracy control (empty otherwise)."""
    if parent.kind != "quantize":
        return {}
    report = read_json(parent.file(parent.outputs.accuracy_control, "accuracy-control report"),
                       "accuracy-control report")
    return {"float_layers": report["final"]["float_layers"], "int8_max_drop": report["max_drop"]}


def work(params, result=None):
    return "evaluate", evaluation_work(params.annotations, params.max_images, params.input_hw, result)


def run(params, parent, out_dir, progress, inputs=None):
    from bpnet.benchmark import benchmark_model
    from bpnet.evaluate import evaluate_model

    model_path = parent.model()
    metrics = evaluate_model(model_path, params.annotations, params.images, params.infer_spec, out_dir,
                             max_images=params.max_images, progress=progress)
    bench_opts = params.benchmark
    progress({"stage": "benchmark", "event": "start", "message": "measuring latency"})
    bench = benchmark_model(model_path, params.input_hw, bench_opts.batch_size, bench_opts.runs, bench_opts.warmup)
    write_json_atomic(out_dir / "benchmark.json", bench)
    from bpnet.sample_maps import SAMPLE_MAPS, save_sample_maps
    # raw maps of a few images with people, for the dashboard's heatmap/PAF overlays
    save_sample_maps(model_path, params.annotations, params.images, params.infer_spec, out_dir / SAMPLE_MAPS)
    result = result_row(params, parent, model_path, metrics, bench).model_dump(mode="json")
    numbers = {k: v for k, v in result.items() if k in NUMERIC_METRICS and isinstance(v, (int, float))}
    outputs = Outputs(model=parent.outputs.model, benchmark="benchmark.json", num_stages=parent.outputs.num_stages)
    return StageResult(outputs, result, numbers)
