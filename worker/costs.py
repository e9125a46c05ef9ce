"""What a run will cost: each stage's amount of work, and past stages' measured seconds per unit of
work on the same worker kind (`bpnet.guide.cost`, pure). No TensorFlow: the dashboard's preview.

Work units (they scale a stage's time, so runs of other sizes are estimated from the same rates):
- train / retrain: images seen x input megapixels x model stages;
- evaluate and gate: evaluation images x megapixels; INT8 export: calibration images x megapixels;
- search: its iteration limit x the retraining work of one trial (an upper bound: it may stop early);
- prune, FP32/FP16 export, import, engine: one per model.
The worker kind is the queue a stage ran on (`cpu`, `gpu`, `tensorrt`).
"""

import json
from pathlib import Path

from bpnet.guide.cost import inference_work, preview_cost, training_work

_ANNOTATED = {}


def annotated_images(annotations):
    """Images with at least one labelled person in a COCO file (memoised on path, size, mtime)."""
    path = Path(annotations)
    try:
        st = path.stat()
    except OSError:
        return 0
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _ANNOTATED:
        try:
            data = json.loads(path.read_text())
            _ANNOTATED[memo] = len({a["image_id"] for a in data.get("annotations", [])
                                    if not a.get("iscrowd") and a.get("num_keypoints", 0) > 0})
        except (OSError, ValueError, KeyError, TypeError):
            _ANNOTATED[memo] = 0
    return _ANNOTATED[memo]


def _evaluation_images(params, result=None):
    if result and result.get("num_images"):
        return result["num_images"]
    count = annotated_images(params.get("annotations", ""))
    limit = params.get("max_images")
    return min(count, limit) if limit else count


def _training_work(train_spec):
    loader = train_spec.get("dataloader") or {}
    epochs = train_spec.get("num_epoch") or 1
    steps = train_spec.get("steps_per_epoch")
    if steps:
        images = steps * (loader.get("batch_size") or 1)
    else:
        images = annotated_images((loader.get("dataset") or {}).get("annotations", ""))
    stages = (train_spec.get("model") or {}).get("stages") or 2
    return training_work(images, epochs, loader.get("image_shape") or (368, 368), stages)


def stage_work(kind, params, result=None):
    """(cost kind, work) of one stage from its parameters (and its result, once evaluated)."""
    if kind in ("train", "retrain"):
        return "train", _training_work(params.get("train_spec") or {})
    if kind in ("evaluate", "gate"):
        return kind, inference_work(_evaluation_images(params, result), params["input_hw"]
                                    if "input_hw" in params else params["infer_spec"]["input_shape"])
    if kind == "export" and params.get("precision") == "int8":
        cal = params.get("calibration") or {}
        return "export-int8", inference_work(cal.get("batch_size", 1) * cal.get("batches", 1),
                                             params["input_hw"])
    if kind == "search":
        return "search", params["max_iters"] * _training_work(params.get("retrain_spec") or {})
    return kind, 1.0


def history_records(rows):
    """Store rows (`Store.stage_history`) -> `bpnet.guide.cost` records."""
    records = []
    for row in rows:
        try:
            kind, work = stage_work(row["kind"], row["params"] or {}, row.get("result"))
        except (KeyError, TypeError, ValueError):
            continue   # a stage of an older format says nothing reliable about its cost
        records.append({"kind": kind, "worker_kind": row["queue"], "seconds": row["duration_s"], "work": work})
    return records


def estimate_run(nodes, history_rows, queue_of):
    """Estimate of the stages in `nodes` to compute; `queue_of(kind)` is the queue each would go to.

    {estimate_s (None when no stage has history), low_s, high_s, stages: [{name, kind, worker_kind,
    estimate}], unknown: [labels], basis: a sentence}."""
    history = history_records(history_rows)
    by_queue = {}
    for node in nodes:
        kind, work = stage_work(node["kind"], node["params"])
        by_queue.setdefault(queue_of(node["kind"]), []).append({"name": node["label"], "kind": kind, "work": work})
    stages, unknown, unknown_kinds, total, low, high = [], [], set(), 0.0, 0.0, 0.0
    for queue, planned in by_queue.items():
        preview = preview_cost(history, planned, queue)
        stages += [{**st, "worker_kind": queue} for st in preview["stages"]]
        unknown_kinds |= {st["kind"] for st in preview["stages"] if st["estimate"] is None}
        total += preview["total_seconds"]
        low += preview["total_low_seconds"]
        high += preview["total_high_seconds"]
        unknown += preview["unknown"]
    known = len(stages) - len(unknown)
    if nodes and not known:
        basis = "no finished stages of these kinds on these workers yet"
        return {"estimate_s": None, "low_s": None, "high_s": None, "stages": stages, "unknown": unknown,
                "basis": basis}
    basis = (f"measured seconds per unit of work of {len(history)} past stages on the same worker kind "
             f"(25-75% range {_minutes(low)}-{_minutes(high)})")
    if unknown:
        basis += (f"; no history for {len(unknown)} stage(s) ({', '.join(sorted(unknown_kinds))}), "
                  f"not counted")
    return {"estimate_s": total, "low_s": low, "high_s": high, "stages": stages, "unknown": unknown,
            "basis": basis}


def _minutes(seconds):
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
