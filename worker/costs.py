"""What a run will cost, for the dashboard's preview (no TensorFlow): each stage's amount of work
from its kind (`work(params, result)` in worker/kinds/<kind>.py: train and retrain images seen x
input megapixels x stages, evaluate and gate images x megapixels, INT8 export calibration images x
megapixels, search its iteration limit x one trial's retraining, anything else one unit per model)
and past stages' seconds per unit of work on the same worker kind, the queue a stage ran on
(`cpu`, `gpu`, `tensorrt`), turned into estimates by `bpnet.guide.cost` (the one cost model, pure).
"""

from bpnet.errors import BpnetError
from bpnet.guide.cost import preview_cost
from worker.kinds import KINDS


def stage_work(kind, params, result=None):
    """(cost kind, work) of one stage from its stored parameters (validated into its kind's
    Params) and its result once evaluated: the kind's `work`, else one unit per model."""
    module = KINDS.get(kind)
    work = getattr(module, "work", None)
    if work is None:
        return kind, 1.0
    return work(module.Params.model_validate(params or {}), result)


def history_records(rows):
    """Store rows (`Store.stage_history`) -> `bpnet.guide.cost` records."""
    records = []
    for row in rows:
        try:
            kind, work = stage_work(row["kind"], row["params"] or {}, row.get("result"))
        except (BpnetError, KeyError, TypeError, ValueError):   # pydantic's ValidationError is a ValueError
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
