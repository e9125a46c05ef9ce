"""Resolution and stages explorer: what each stage exit of one model gives at each resolution.

TAO's best practices say resolution is the main lever for bottom-up accuracy and that 2 stages
are faster while 3 are a good balance. This answers both on the user's own model and data without
training anything: every stage exit (the model truncated after stage k, exported with `--stage`)
is evaluated at every requested resolution and precision, next to the decoder's ceiling at that
resolution (the oracle: ground truth encoded as maps and decoded), with the latency split into
pre-processing, CNN and decoding against the number of people in the image.

The pure helpers (`check_plan`, `people_bucket`, `latency_by_people`, `gain_per_step`) take no
TensorFlow; `explore_model` does the work with the existing export and evaluation functions.
"""

import json
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.fileio import write_json_atomic
from bpnet.limits import EXPLORER_CALIBRATOR
from bpnet.preprocess import check_input_hw

PRECISIONS = ("fp32", "fp16", "int8")
# People-per-image groups for the latency split: decoding grows with people, the CNN does not.
PEOPLE_BUCKETS = ((0, 0, "0"), (1, 1, "1"), (2, 3, "2-3"), (4, 6, "4-6"), (7, None, "7+"))
REPORT_NAME = "explorer.json"


# ---------------------------------------------------------------- pure helpers

def check_plan(num_model_stages, stages, resolutions, precisions):
    """Validate the requested grid against the model -> (stages, [(H, W)], precisions).

    `stages` None means every stage exit 1..last; `num_model_stages` None means the model has no
    stage exits to choose from (an ONNX file: only its own output)."""
    if not resolutions:
        raise BpnetError("explorer resolutions: give at least one [H, W]")
    hws = [check_input_hw(r, f"explorer resolutions[{i}]") for i, r in enumerate(resolutions)]
    if len(set(hws)) != len(hws):
        raise BpnetError(f"explorer resolutions: {[list(r) for r in hws]} lists a resolution twice")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise BpnetError(f"explorer precisions: {bad or 'none'} — allowed: {', '.join(PRECISIONS)}")
    if num_model_stages is None:
        if stages:
            raise BpnetError(f"explorer stages: {list(stages)} — this model is an ONNX file with one "
                             "output stage; stage exits need the Keras (.hdf5) model")
        return [None], hws, list(precisions)
    stages = list(range(1, num_model_stages + 1)) if not stages else sorted(set(int(s) for s in stages))
    outside = [s for s in stages if not 1 <= s <= num_model_stages]
    if outside:
        raise BpnetError(f"explorer stages: {outside} beyond this model's stages 1..{num_model_stages}")
    return stages, hws, list(precisions)


def people_bucket(count):
    """The label of the people-per-image group `count` falls in ("0", "1", "2-3", "4-6", "7+")."""
    for low, high, label in PEOPLE_BUCKETS:
        if count >= low and (high is None or count <= high):
            return label
    raise ValueError(f"negative people count {count}")


def latency_by_people(rows):
    """rows: [{"people": n, "read": ms, "prepare": ms, "cnn": ms, "decode": ms}] (one per image)
    -> [{"people": label, "images": k, "pre_ms", "cnn_ms", "decode_ms"}] medians per group, in
    group order, groups without images left out. Pre-processing = reading + letterbox/normalise."""
    out = []
    for _, _, label in PEOPLE_BUCKETS:
        group = [r for r in rows if people_bucket(r["people"]) == label]
        if not group:
            continue
        out.append({"people": label, "images": len(group),
                    "pre_ms": round(float(np.median([r["read"] + r["prepare"] for r in group])), 3),
                    "cnn_ms": round(float(np.median([r["cnn"] for r in group])), 3),
                    "decode_ms": round(float(np.median([r["decode"] for r in group])), 3)})
    return out


def gain_per_step(points, key="APm"):
    """Relative gain of `key` from one resolution to the next larger, per (stage, precision).

    points: dicts with "resolution" [H, W], "stage", "precision" and `key`. Returns dicts
    {stage, precision, from, to, before, after, gain_pct}; gain_pct None when `before` is 0
    (a relative gain from nothing means nothing)."""
    steps = []
    series = {}
    for p in points:
        series.setdefault((p["stage"], p["precision"]), []).append(p)
    for (stage, precision), group in sorted(series.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        group = sorted(group, key=lambda p: p["resolution"][0] * p["resolution"][1])
        for a, b in zip(group, group[1:]):
            before, after = a[key], b[key]
            gain = None if before <= 0 else round(100.0 * (after - before) / before, 1)
            steps.append({"stage": stage, "precision": precision, "from": a["resolution"],
                          "to": b["resolution"], "before": before, "after": after, "gain_pct": gain})
    return steps


def stage_count_of_file(model_path):
    """Stage exits of a Keras HDF5 model read from its stored architecture (h5py + JSON, no
    TensorFlow: run specs check a plan before queueing); None for other formats (an ONNX file
    has one output; a TFLite/GraphDef source is counted when it is imported)."""
    if Path(model_path).suffix.lower() not in (".hdf5", ".h5"):
        return None
    import re

    from bpnet.model_safety import read_model_config

    config = read_model_config(model_path, "explorer model")
    names = re.findall(r'"name": "stage(\d+)_(heatmaps|pafs)"', json.dumps(config))
    found = {}
    for stage, kind in names:
        found.setdefault(int(stage), set()).add(kind)
    stages = sorted(k for k, kinds in found.items() if kinds == {"heatmaps", "pafs"})
    if not stages or stages != list(range(1, len(stages) + 1)):
        raise BpnetError(f"explorer model {model_path}: not a BodyPoseNet (expected output layers "
                         f"stage1_heatmaps, stage1_pafs, ...; found stages {stages or 'none'})")
    return len(stages)


# ---------------------------------------------------------------- the work

def model_stage_count(model_path):
    """Number of stage exits of a Keras model; None for ONNX/engine files (one fixed output)."""
    if Path(model_path).suffix.lower() not in (".hdf5", ".h5"):
        return None
    from bpnet.model import load_model, num_stages

    return num_stages(load_model(model_path))


def explore_model(model_path, annotations, images_dir, infer_spec, resolutions, out_dir,
                  stages=None, precisions=("fp32", "int8"), calibrator=None, cal_image_dir=None,
                  cal_batch_size=4, cal_batches=4, max_images=None, progress=None):
    """Evaluate every (resolution, stage exit, precision) of one model + the oracle per resolution.

    Writes out_dir/explorer.json (also returned): `points` (AP, APm, APl, AP50, latency split per
    grid point, model file), `oracle` (per resolution), `latency_by_people` (per point), and
    `apm_gain_per_step`. INT8 is calibrated on `cal_image_dir` (default: the evaluation images)
    with `calibrator` (default: the model card's `int8_calibrator`, else EXPLORER_CALIBRATOR)."""
    from bpnet.backends import load_backend
    from bpnet.evaluate import BUNDLED_ANNOTATIONS, BUNDLED_NOTE, annotated_samples, evaluate_oracle, \
        load_ground_truth, score_results
    from bpnet.export import export_model
    from bpnet.infer import ImageItem, infer_images
    from bpnet.imports.card import recommended_calibrator
    from bpnet.skeleton import load_skeleton

    model_path, out_dir = Path(model_path), Path(out_dir)
    if not model_path.is_file():
        raise BpnetError(f"explorer model: {model_path} not found")
    stage_list, hws, precisions = check_plan(model_stage_count(model_path), stages, resolutions, precisions)
    calibrator = calibrator or recommended_calibrator(model_path) or EXPLORER_CALIBRATOR
    skeleton = load_skeleton(infer_spec.skeleton)
    coco, category_id = load_ground_truth(annotations, skeleton)
    samples = annotated_samples(coco, category_id, images_dir, skeleton, max_images)
    if not any(len(s.parts) for s in samples):
        raise BpnetError(f"explorer: {annotations} has no annotated people in the images evaluated")
    people = {s.image_id: int(len(s.parts)) for s in samples}
    items = [ImageItem(s.image_id, s.image_path) for s in samples]
    image_ids = [s.image_id for s in samples]
    total = len(hws) * (1 + len(stage_list) * len(precisions))
    done = 0

    def step(message):
        nonlocal done
        done += 1
        emit(progress, "explore", "step", step=done, num_steps=total, fraction=done / total, message=message)

    report = {"model": str(model_path), "annotations": str(annotations), "num_images": len(items),
              "stages": stage_list, "resolutions": [list(r) for r in hws], "precisions": precisions,
              "calibrator": calibrator if "int8" in precisions else None, "points": [], "oracle": [], "latency_by_people": []}
    if Path(annotations).resolve() == BUNDLED_ANNOTATIONS:
        report["note"] = BUNDLED_NOTE
    emit(progress, "explore", "start", num_steps=total,
         message=f"{len(hws)} resolutions x {len(stage_list)} stage exits x {len(precisions)} precisions")
    for hw in hws:
        tag = f"{hw[0]}x{hw[1]}"
        spec = infer_spec.model_copy(update={"input_shape": hw, "output_stage_to_use": None})
        oracle = evaluate_oracle(annotations, images_dir, spec, out_dir / f"oracle_{tag}",
                                 max_images=max_images)
        report["oracle"].append({"resolution": list(hw), **{k: oracle[k] for k in ("AP", "APm", "APl", "AP50")}})
        step(f"oracle {tag}: AP {oracle['AP']:.3f}")
        for stage in stage_list:
            files = export_stage(export_model, model_path, out_dir / f"stage{stage or 'last'}_{tag}", hw,
                                 stage, precisions, calibrator, cal_image_dir or images_dir,
                                 out_dir / f"calibration_{tag}.npy", cal_batch_size, cal_batches)
            for precision in precisions:
                with load_backend(files[precision]) as backend:
                    detections, results, timing = infer_images(backend, items, spec, skeleton)
                stats, _ = score_results(coco, results, category_id, image_ids)
                results_file = Path(files[precision]).parent / f"results.{precision}.json"
                write_json_atomic(results_file, results)   # the detections, for pictures of this point
                rows = [{"people": people[d.item.image_id], **d.timing_ms} for d in detections]
                point = {"resolution": list(hw), "stage": stage, "precision": precision,
                         "model_file": str(files[precision]), "results_file": str(results_file),
                         **{k: stats[k] for k in ("AP", "APm", "APl", "AP50")},
                         "pre_ms": round(timing["read_ms_per_image"] + timing["prepare_ms_per_image"], 3),
                         "cnn_ms": timing["cnn_ms_per_image"], "decode_ms": timing["decode_ms_per_image"]}
                point["latency_ms"] = round(point["pre_ms"] + point["cnn_ms"] + point["decode_ms"], 3)
                report["points"].append(point)
                report["latency_by_people"].append({"resolution": list(hw), "stage": stage,
                                                    "precision": precision, "groups": latency_by_people(rows)})
                step(f"{tag} stage {stage or 'last'} {precision}: AP {stats['AP']:.3f}")
    report["apm_gain_per_step"] = gain_per_step(report["points"], "APm")
    report["apl_gain_per_step"] = gain_per_step(report["points"], "APl")
    write_json_atomic(out_dir / REPORT_NAME, report)
    emit(progress, "explore", "end", message=f"{len(report['points'])} points")
    return report


def export_stage(export_model, model_path, folder, hw, stage, precisions, calibrator, cal_image_dir,
                 cal_data_file, cal_batch_size, cal_batches):
    """One stage exit at one resolution -> {precision: model file}, exported with `bpnet export`'s
    function (`--stage`, INT8 calibrated on a tensor file shared by every stage at this size)."""
    if model_path.suffix.lower() not in (".hdf5", ".h5"):
        if precisions != ["fp32"]:
            raise BpnetError(f"explorer precisions {precisions}: {model_path.name} is not a Keras model; "
                             "explore its FP32 maps here, and export INT8/FP16 from it with `bpnet export`")
        return {"fp32": model_path}
    data_type = "int8" if "int8" in precisions else "fp32"
    report = export_model(model_path, folder / "model.onnx", hw, data_type=data_type, stage=stage,
                          calibrator=calibrator, cal_image_dir=cal_image_dir, cal_data_file=cal_data_file,
                          batch_size=cal_batch_size, batches=cal_batches)
    files = {"fp32": folder / "model.onnx"}
    if "int8" in precisions:
        files["int8"] = Path(report["int8"]["onnx_int8"])
    if "fp16" in precisions:
        from bpnet.export import to_fp16

        files["fp16"] = Path(to_fp16(folder / "model.onnx", folder / "model.fp16.onnx"))
    return files
