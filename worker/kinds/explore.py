"""Kind `explore`: the resolution and stages explorer over the parent's model in one job
(`bpnet explore`, bpnet/guide/explorer.py): every (resolution, stage exit, precision) exported
with `--stage` and evaluated, the oracle per resolution, the latency split by people per image.
Its children (kind `explore_point`) turn each point into a result row."""

from typing import Literal, Optional

from bpnet.limits import PRECISIONS
from bpnet.specs import InferSpec
from worker.kinds.base import StageOutputs, StageParams, StageResult
from worker.kinds.export import CalibrationParams

KIND = "explore"


class Params(StageParams):
    OMIT_WHEN_EMPTY = ("calibration",)
    infer_spec: InferSpec                        # its input_shape is replaced by each resolution
    annotations: str
    images: str
    resolutions: tuple[tuple[int, int], ...]
    stage_exits: tuple[int, ...]                 # checked against the model (explorer.check_plan)
    precisions: tuple[Literal[PRECISIONS], ...]
    calibration: Optional[CalibrationParams] = None   # INT8 only
    max_images: Optional[int] = None


class Outputs(StageOutputs):
    report: str                    # explorer.json: points (with their model files), oracle, latency split
    num_stages: Optional[int] = None


def run(params, parent, out_dir, progress, inputs=None):
    from bpnet.guide.explorer import REPORT_NAME, explore_model

    cal = params.calibration
    report = explore_model(
        parent.model(), params.annotations, params.images, params.infer_spec, list(params.resolutions), out_dir,
        stages=list(params.stage_exits), precisions=list(params.precisions),
        calibrator=cal.calibrator if cal else None, cal_image_dir=cal.images if cal else None,
        cal_batch_size=cal.batch_size if cal else 4, cal_batches=cal.batches if cal else 4,
        max_images=params.max_images, progress=progress)
    metrics = {"points": len(report["points"]), "best_AP": max(p["AP"] for p in report["points"])}
    return StageResult(Outputs(report=REPORT_NAME, num_stages=parent.outputs.num_stages), None, metrics)
