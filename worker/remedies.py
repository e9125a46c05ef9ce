"""A failed INT8/FP16 gate's remedy as a follow-up run spec (pure: spec dicts in, a spec dict out).

The follow-up run is the original spec narrowed to the gated result - its model (unpruned, one
prune threshold or the search's choice), its resolution, FP32 (the gate's float reference) and its
precision - with the remedy applied to the calibration options. Every stage upstream of the
export keeps its cache key, so only the repaired model's export, evaluation and gate run.
"""

import copy
import math
from pathlib import Path

from bpnet.errors import BpnetError
from bpnet.guide.gate import QAT_REMEDY_STEPS
from bpnet.image_files import count_images
from worker.store import STAGE_DONE


def offered_remedy(gate, kind, calibrator=None):
    """The remedy of `kind` (and `calibrator`, for other_calibrator) the gate offered."""
    report = gate.get("result") or {}
    if gate["status"] not in STAGE_DONE or not report:
        raise BpnetError(f"gate {gate['label']} has no verdict yet ({gate['status']}); wait for it to finish")
    if report.get("passed"):
        raise BpnetError(f"gate {gate['label']} passed; there is nothing to remedy")
    offered = report.get("remedies") or []
    for remedy in offered:
        if remedy["kind"] == kind and (kind != "other_calibrator" or
                                       remedy["params"].get("calibrator") == calibrator):
            if remedy.get("runnable") is False:
                raise BpnetError(f"remedy {remedy['title']!r} is advice only: it cannot be run from here yet")
            return remedy
    names = ", ".join(f"{r['kind']}" + (f" ({r['params']['calibrator']})" if r["kind"] == "other_calibrator" else "")
                      for r in offered)
    raise BpnetError(f"remedy {kind!r}{f' ({calibrator})' if calibrator else ''} is not one this gate offers; "
                     f"offered: {names or 'none'}")


def narrow_to_result(spec, evaluate):
    """The run spec reduced to the model and resolution of one result (an evaluate stage row),
    FP32 + its precision."""
    spec = copy.deepcopy(spec)
    evaluate_params = evaluate["params"]
    precision = evaluate_params["precision"]
    spec["resolutions"] = [list(evaluate_params["input_hw"])]
    spec["precisions"] = ["fp32"] if precision == "fp32" else ["fp32", precision]
    pth = evaluate_params.get("prune_threshold")
    if evaluate_params.get("branch") == "search":
        spec["evaluate_unpruned"] = False
    elif pth is None:
        spec.update(kind="sweep", prune_thresholds=[], evaluate_unpruned=True)
        spec.pop("search", None)
    else:
        spec.update(prune_thresholds=[pth], evaluate_unpruned=False)
    stages = (evaluate.get("result") or {}).get("stages")   # the evaluated model's stage count
    if spec.get("stages") and stages:
        spec["stages"] = [int(stages)]
    return spec


def more_images(calibration, training_images, wanted):
    """Calibration options reading `wanted` images (as many as there are): the training images when
    another folder was used (different images), more batches of the same folder otherwise."""
    calibration = dict(calibration)
    folder = Path(calibration.get("images") or training_images)
    batch_size = calibration["batch_size"]
    other_folder = folder.resolve() != Path(training_images).resolve()
    if other_folder:
        folder = Path(training_images)
        calibration["images"] = str(folder)
    available = count_images(folder) if folder.is_dir() else 0
    batches = min(math.ceil(wanted / batch_size), available // batch_size)
    if batches < 1 or (batches <= calibration["batches"] and not other_folder):
        raise BpnetError(f"calibration: {folder} holds {available} images, no more than the "
                         f"{batch_size} x {calibration['batches']} already used; add images to it or "
                         f"choose another folder in a new run")
    calibration["batches"] = batches
    return calibration


def remedy_spec(spec, evaluate, gate, kind, calibrator=None):
    """(follow-up run spec, remedy title) for one offered remedy of a failed gate."""
    remedy = offered_remedy(gate, kind, calibrator)
    follow = narrow_to_result(spec, evaluate)
    calibration = dict(follow.get("calibration") or {})
    if kind == "other_calibrator":
        calibration["calibrator"] = remedy["params"]["calibrator"]
    elif kind == "more_calibration_images":
        calibration = more_images(calibration, spec["dataset"]["images"], remedy["params"]["num_images"])
    elif kind == "keep_layers_float":
        layers = remedy["params"].get("layers") or []
        if not layers:
            raise BpnetError("remedy keep_layers_float names no layers (the gate ranks them only for a "
                             "failed INT8 Q/DQ model)")
        calibration["keep_float_layers"] = list(layers)
    elif kind == "qat":
        # the export fine-tunes its parent (the gated result's float model) on the run's training
        # recipe, so the follow-up carries only the step count
        calibration["qat_steps"] = int(remedy["params"].get("steps") or QAT_REMEDY_STEPS)
    else:
        raise BpnetError(f"remedy {kind!r} cannot be run from here")
    follow["calibration"] = calibration
    return follow, remedy["title"]
