"""Accuracy-controlled INT8: the decisions, free of TensorFlow and ONNX Runtime.

The loop (run by `bpnet.guide.accuracy_control_run.quantize_with_accuracy_control`):
1. calibrate with each calibrator on the same calibration tensor, evaluate each INT8 model on the
   same evaluation subset, keep the best AP (`best_calibrator`);
2. when its AP drop from the float model exceeds `max_drop` points, rank the quantized layers by
   harm (largest first) and return the top k to float, k found by bisection over 0..N
   (`bisect_float_count`): each step evaluates one model, so N layers cost about log2(N)
   evaluations instead of N. The bisection assumes that more float layers never lose AP; the
   report flags a curve where that does not hold;
3. report everything measured (`curve_points`).

Everything here works on plain numbers and names so the search can be tested with any
`drop_at(k)` function.
"""

from typing import Literal

from pydantic import Field, field_validator

from bpnet.errors import BpnetError
from bpnet.limits import CALIBRATORS, DEFAULT_INT8_MAX_DROP, MAX_AP_DROP_POINTS
from bpnet.specs import Strict

DEFAULT_MAX_DROP = DEFAULT_INT8_MAX_DROP
DEFAULT_CALIBRATORS = ("entropy", "minmax", "percentile:99.99", "percentile:99.999")
CALIBRATOR_METHODS = CALIBRATORS
DEFAULT_MAX_EVAL_IMAGES = 300
MIN_DISJOINT_EVAL_IMAGES = 10     # fewer left after taking out the calibration images: use them too
# Ranking layers one at a time costs one model run per layer; above this many layers "auto" uses
# the one-pass divergence proxy (error each layer adds, FP32 vs INT8 with every tensor marked).
# High because the proxy misranked the bundled MobileNetV2 (201 layers, docs/int8.md): once the
# accumulated error is large, what a late layer adds no longer shows.
MAX_ISOLATED_RANKING_LAYERS = 256
RANKINGS = ("auto", "isolated", "divergence")


class AccuracyControlOptions(Strict):
    """`accuracy_control:` of a run spec, and the `bpnet quantize` flags."""
    max_drop: float = Field(DEFAULT_MAX_DROP, ge=0, le=MAX_AP_DROP_POINTS)        # AP points
    calibrators: tuple[str, ...] = DEFAULT_CALIBRATORS
    max_eval_images: int = Field(DEFAULT_MAX_EVAL_IMAGES, ge=1, le=100000)
    num_calibration_images: int = Field(16, ge=1, le=10000)     # chosen from the annotations if no folder
    ranking_images: int = Field(8, ge=1, le=256)                # images of the per-layer output-error ranking
    ranking: Literal[RANKINGS] = "auto"     # isolated: each layer alone; divergence: one pass
    validate_ranking: int = Field(0, ge=0, le=20)               # top layers whose AP effect is checked alone
    latency_runs: int = Field(10, ge=1, le=1000)

    @field_validator("calibrators")
    @classmethod
    def _known_calibrators(cls, value):
        if not value:
            raise ValueError("give at least one calibrator")
        for label in value:
            parse_calibrator(label)
        return tuple(dict.fromkeys(value))


def ranking_method(requested, num_layers):
    if requested != "auto":
        return requested
    return "isolated" if num_layers <= MAX_ISOLATED_RANKING_LAYERS else "divergence"


def check_max_drop(value, flag="--max_drop"):
    if value is None or not value >= 0:
        raise BpnetError(f"{flag}: {value} must be >= 0 (AP points the INT8 model may lose; default "
                         f"{DEFAULT_MAX_DROP})")
    return float(value)


def parse_calibrator(label):
    """'entropy' | 'minmax' | 'percentile:P' -> (method, percentile or None)."""
    method, _, value = str(label).partition(":")
    if method not in CALIBRATOR_METHODS:
        raise ValueError(f"calibrator {label!r}: allowed are entropy, minmax, percentile:P (0 < P <= 100)")
    if method != "percentile":
        if value:
            raise ValueError(f"calibrator {label!r}: only percentile takes a value")
        return method, None
    try:
        percentile = float(value)
    except ValueError:
        raise ValueError(f"calibrator {label!r}: give the percentile as percentile:P, e.g. percentile:99.99") from None
    if not 0 < percentile <= 100:
        raise ValueError(f"calibrator {label!r}: P must be in (0, 100]")
    return method, percentile


def ap_points(ap):
    """A pycocotools AP fraction in points, None when undefined (-1)."""
    return None if ap is None or ap < 0 else 100.0 * float(ap)


def ap_drop(parent_ap, child_ap):
    """Drop in AP points of the child from the parent (fractions in)."""
    parent, child = ap_points(parent_ap), ap_points(child_ap)
    if parent is None or child is None:
        raise BpnetError("AP is undefined (no ground-truth people in the evaluation subset); accuracy "
                         "control needs an evaluation with people")
    return parent - child


def best_calibrator(candidates):
    """The candidate ({"calibrator", "AP", "latency_ms"}) with the highest AP; ties: lower latency,
    then the order given."""
    if not candidates:
        raise BpnetError("no calibrator was evaluated")
    order = {id(c): k for k, c in enumerate(candidates)}
    return min(candidates, key=lambda c: (-c["AP"], c.get("latency_ms") or 0.0, order[id(c)]))


def bisect_float_count(num_layers, drop_at, max_drop, drop_at_zero):
    """Smallest k in 0..num_layers with drop_at(k) <= max_drop, by bisection.

    `drop_at(k)`: AP drop (points) with the k most harmful layers in float (one evaluation);
    `drop_at_zero`: the drop already measured for k = 0 (no evaluation spent on it). With k = N
    everything quantized computes in float, so the bisection takes it as passing without
    evaluating it, unless the search ends there (then it is measured, for the report).
    Returns {"count", "met", "evaluated": [k in evaluation order], "drops": {k: drop}}.
    """
    max_drop = check_max_drop(max_drop)
    drops = {0: float(drop_at_zero)}
    evaluated = []
    if drops[0] <= max_drop or num_layers == 0:
        return {"count": 0, "met": drops[0] <= max_drop, "evaluated": evaluated, "drops": drops}

    def measure(k):
        evaluated.append(k)
        drops[k] = float(drop_at(k))
        return drops[k]

    low, high = 0, num_layers            # low fails (measured), high passes (assumed until measured)
    while high - low > 1:
        mid = (low + high) // 2
        if measure(mid) <= max_drop:
            high = mid
        else:
            low = mid
    if high not in drops:
        measure(high)
    return {"count": high, "met": drops[high] <= max_drop, "evaluated": evaluated, "drops": drops}


def monotonic_violations(drops):
    """Pairs (k1, k2), k1 < k2, where more float layers lost more AP than fewer did by more than
    half a point: the bisection's assumption does not hold there."""
    ks = sorted(drops)
    return [(a, b) for i, a in enumerate(ks) for b in ks[i + 1:] if drops[b] > drops[a] + 0.5]


def curve_points(parent_ap, measured):
    """The AP/latency-vs-float-layers curve, sorted by k: `measured` is {k: {"AP", "latency_ms",
    "model"}}."""
    return [{"float_layers": k, "AP": m["AP"], "ap_drop": ap_drop(parent_ap, m["AP"]),
             "latency_ms": m.get("latency_ms"), "model": m.get("model")} for k, m in sorted(measured.items())]


def evaluation_subset(coco, exclude_file_names=(), max_images=DEFAULT_MAX_EVAL_IMAGES, min_keypoints=1,
                      source="annotations"):
    """(COCO dict of at most `max_images` images with people, not among `exclude_file_names` when
    at least MIN_DISJOINT_EVAL_IMAGES remain, warnings). Images sorted by file name."""
    people = {}
    for ann in coco.get("annotations", []):
        if not ann.get("iscrowd", 0) and ann.get("num_keypoints", 0) >= min_keypoints:
            people[ann["image_id"]] = people.get(ann["image_id"], 0) + 1
    with_people = sorted((im for im in coco.get("images", []) if people.get(im["id"])),
                         key=lambda im: im["file_name"])
    if not with_people:
        raise BpnetError(f"{source}: no image has a non-crowd person with >= {min_keypoints} labelled keypoints; "
                         f"the INT8 AP drop cannot be measured on it (give annotations with people)")
    exclude = set(exclude_file_names)
    disjoint = [im for im in with_people if im["file_name"] not in exclude]
    warnings = []
    if len(disjoint) >= min(MIN_DISJOINT_EVAL_IMAGES, len(with_people)) and disjoint:
        chosen = disjoint
    else:
        chosen = with_people
        warnings.append(f"only {len(disjoint)} of the {len(with_people)} images with people are not calibration "
                        f"images; the evaluation uses the calibration images too (AP then flatters INT8)")
    chosen = chosen[:max_images]
    ids = {im["id"] for im in chosen}
    subset = {**{k: v for k, v in coco.items() if k not in ("images", "annotations")},
              "images": chosen, "annotations": [a for a in coco.get("annotations", []) if a["image_id"] in ids]}
    return subset, warnings


def check_calibration_people(coco, file_names, source="calibration images"):
    """A clear error when the calibration images the annotations know hold no people at all
    (INT8 ranges measured without people miss the activations people cause)."""
    by_name = {im["file_name"]: im["id"] for im in coco.get("images", [])}
    known = [by_name[f] for f in file_names if f in by_name]
    if not known:
        return {"known": 0, "with_people": None}
    with_people = {a["image_id"] for a in coco.get("annotations", [])
                   if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0}
    count = sum(1 for i in known if i in with_people)
    if count == 0:
        raise BpnetError(f"{source}: none of the {len(known)} calibration images the annotations list holds a "
                         f"person with keypoints; calibrate on images with people (bpnet sample-calibration)")
    return {"known": len(known), "with_people": count}


def cache_tensors_for(float_graph_consumers, tensor_names, float_layers):
    """The calibration-cache tensors that keep exactly the non-float layers INT8 in TensorRT's
    implicit mode: a tensor read only by float layers gets no scale (its readers cannot run INT8).

    `float_graph_consumers`: {tensor: [node names reading it]} of the float ONNX. Returns
    (kept tensor names, [float layers TensorRT may still run in INT8 because an input they read is
    shared with an INT8 layer]) - the Q/DQ model for TensorRT >= 11 has no such ambiguity.
    """
    float_layers = set(float_layers)
    kept, dropped = [], set()
    for name in tensor_names:
        readers = float_graph_consumers.get(name, [])
        if readers and all(r in float_layers for r in readers):
            dropped.add(name)
        else:
            kept.append(name)
    ambiguous = sorted(layer for layer in float_layers if not layer.startswith("output:")
                       and not any(t in dropped for t, readers in float_graph_consumers.items()
                                   if layer in readers))
    return kept, ambiguous


def validate_ranking(single_layer_gain):
    """How far the output-error ranking agrees with AP: `single_layer_gain` is
    [{"layer", "rank", "ap_gain"}] (AP points regained with that one layer float). Returns the
    share of ordered pairs whose AP gains follow the ranking (1 = fully, 0.5 = chance)."""
    pairs = agree = 0
    for i, a in enumerate(single_layer_gain):
        for b in single_layer_gain[i + 1:]:
            if a["ap_gain"] == b["ap_gain"]:
                continue
            pairs += 1
            agree += (a["rank"] < b["rank"]) == (a["ap_gain"] > b["ap_gain"])
    return None if pairs == 0 else agree / pairs


def summary_line(report: dict) -> str:
    """One sentence for the CLI and the dashboard."""
    final = report["final"]
    return (f"{final['calibrator']} + {final['float_layers']} float layer(s): AP {final['AP']:.3f} "
            f"(drop {final['ap_drop']:.2f} points, budget {report['max_drop']:.2f}), "
            f"{report['num_evaluations']} INT8 evaluation(s)" + ("" if final["met"] else "; BUDGET NOT MET"))

