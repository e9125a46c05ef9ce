"""A preview of what a run will cost, from measured times of past runs on the same worker kind.

Pure functions. Each past stage is one record {"kind", "worker_kind", "seconds", "work"}, where
`work` is the stage's amount of computation in a unit that scales its time:
- train / retrain: images seen x input megapixels x stages (`training_work`);
- evaluate / calibrate: images x input megapixels (`inference_work`);
- quantize (accuracy-controlled INT8): the evaluations it is sure to make (float model, each
  calibrator, the ranking checks; `quantize_evaluations`) x images x megapixels; the bisection's
  share depends on how far over budget the model is, so it is in the measured rate, not the work;
- prune / export: 1 per model (their time barely depends on the data).
A planned stage's estimate is its work times the median seconds-per-work of past stages of the
same kind on the same worker kind, with the 25-75% range of past rates as the uncertainty. No
history for a pair means no estimate (never a made-up number).
"""

import numpy as np

from bpnet.errors import BpnetError


def input_megapixels(input_hw):
    return input_hw[0] * input_hw[1] / 1e6


def training_work(num_images, epochs, input_hw, stages):
    """Images seen x megapixels x stages: the refinement stages dominate the head's cost."""
    return float(num_images) * epochs * input_megapixels(input_hw) * stages


def inference_work(num_images, input_hw):
    return float(num_images) * input_megapixels(input_hw)


def quantize_evaluations(num_calibrators, validate_ranking=0):
    """Accuracy-controlled INT8's sure evaluations: the float model, one per calibrator and one
    per ranking check (the bisection's depend on the model: they are in the measured rate)."""
    return 1 + num_calibrators + validate_ranking


def rates_by_kind(history):
    """{(kind, worker_kind): [seconds per unit of work]} from past stage records."""
    rates = {}
    for i, record in enumerate(history):
        for key in ("kind", "worker_kind", "seconds", "work"):
            if key not in record:
                raise BpnetError(f"run history record {i} has no {key!r} field (has {sorted(record)})")
        if record["work"] <= 0 or record["seconds"] < 0:
            continue   # an aborted or empty stage says nothing about speed
        rates.setdefault((record["kind"], record["worker_kind"]), []).append(record["seconds"] / record["work"])
    return rates


def estimate_stage(rates, kind, worker_kind, work):
    """{"seconds", "low", "high", "samples"} for one planned stage, or None without history."""
    samples = rates.get((kind, worker_kind))
    if not samples:
        return None
    rate = np.asarray(samples)
    return {"seconds": float(np.median(rate) * work), "low": float(np.percentile(rate, 25) * work),
            "high": float(np.percentile(rate, 75) * work), "samples": len(samples)}


def preview_cost(history, planned, worker_kind):
    """Per planned stage ({"name", "kind", "work"}) its estimate, plus the total of the estimated.

    Returns {"stages": [...], "total_seconds", "total_low_seconds", "total_high_seconds" (sums of
    the estimated stages' 25-75% ranges), "unknown": [names without history]}.
    """
    rates = rates_by_kind(history)
    stages, unknown, total, low, high = [], [], 0.0, 0.0, 0.0
    for stage in planned:
        estimate = estimate_stage(rates, stage["kind"], worker_kind, stage["work"])
        stages.append({**stage, "estimate": estimate})
        if estimate is None:
            unknown.append(stage["name"])
        else:
            total += estimate["seconds"]
            low += estimate["low"]
            high += estimate["high"]
    return {"stages": stages, "total_seconds": total, "total_low_seconds": low, "total_high_seconds": high,
            "unknown": unknown, "worker_kind": worker_kind}
