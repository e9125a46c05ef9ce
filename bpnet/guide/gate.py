"""The INT8 (and FP16) gate: a reduced-precision result against its float parent.

Both models are evaluated the same strict way (same images, same inference spec). The gate
compares AP, AP medium and AP large, and the per-keypoint localisation error of matched people,
and fails when the AP drop exceeds the user's threshold (default 2 AP points: the seed expects
INT8 within 2-3 points, FP16 none or minimal). A second criterion guards what AP cannot see on a
small evaluation set or with a weak parent (AP near 0 has no room to drop): the output agreement,
how far the child's heatmaps and PAFs move from the parent's on the same images, relative to how
much the parent's outputs vary (`bpnet.guide.sensitivity.output_error`); above
`max_output_error` (default 0.3) the outputs no longer follow the image and the gate fails.
A failed gate comes with remedies that the job system can run.

Pure functions here (metrics dicts, COCO dicts and detection lists in, plain dicts out); running
the evaluations is `bpnet.guide.gate_run.run_gate`.
Metrics follow pycocotools: AP values are fractions in [0, 1], -1 when a size range has no
ground truth; the gate reports them in AP points (x 100).
"""

import numpy as np

from bpnet.errors import BpnetError
from bpnet.limits import DEFAULT_GATE_MAX_AP_DROP

DEFAULT_THRESHOLD_AP = DEFAULT_GATE_MAX_AP_DROP
DEFAULT_MAX_OUTPUT_ERROR = 0.3
GATED_METRICS = ("AP", "APm", "APl")
# COCO's per-keypoint OKS sigmas (17 keypoints, COCO order).
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62,
                        1.07, 1.07, .87, .87, .89, .89]) / 10.0
COCO_KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear",
                       "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
                       "left_wrist", "right_wrist", "left_hip", "right_hip",
                       "left_knee", "right_knee", "left_ankle", "right_ankle")
# Below this float AP (a fraction, pycocotools) the parent finds (almost) nobody: comparing a
# quantized model to it says nothing, so the gate gives no verdict and offers no remedy.
MEANINGFUL_AP_FLOOR = 0.02
MIN_OKS_TO_MATCH = 0.1           # below this a detection is not the same person
KEYPOINT_ERROR_RISE = 0.25       # a keypoint whose error rises by > 25% is named in the report
# Fine-tuning steps of the QAT remedy: the same as bpnet.guide.qat's default (not imported, so
# this module stays free of TensorFlow)
QAT_REMEDY_STEPS = 200


def to_points(value):
    """A pycocotools AP (fraction, -1 = undefined) in AP points, or None when undefined."""
    if value is None or value < 0:
        return None
    return 100.0 * float(value)


def metric_deltas(parent_metrics, child_metrics, names=GATED_METRICS):
    """{name: {parent, child, drop}} in AP points; drop None when either side is undefined."""
    deltas = {}
    for name in names:
        for who, metrics in (("parent", parent_metrics), ("child", child_metrics)):
            if name not in metrics:
                raise BpnetError(f"{who} metrics have no {name!r} field (have {sorted(metrics)})")
        parent, child = to_points(parent_metrics[name]), to_points(child_metrics[name])
        drop = None if parent is None or child is None else parent - child
        deltas[name] = {"parent": parent, "child": child, "drop": drop}
    return deltas


def oks(gt_xyv, det_xy, area):
    """COCO's object keypoint similarity of one detection to one ground-truth person."""
    labelled = gt_xyv[:, 2] > 0
    if not labelled.any():
        return 0.0
    d2 = np.sum((gt_xyv[:, :2] - det_xy) ** 2, axis=1)
    e = d2 / (2 * (2 * COCO_SIGMAS) ** 2 * (area + np.spacing(1)))
    return float(np.mean(np.exp(-e[labelled])))


def match_people(gt_people, detections):
    """Greedy COCO-style matching, highest detection score first: [(gt_index, det_index)]."""
    order = np.argsort([-d["score"] for d in detections], kind="stable")
    taken, pairs = set(), []
    for d in order:
        det_xy = np.asarray(detections[d]["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2]
        best, best_oks = None, MIN_OKS_TO_MATCH
        for g, gt in enumerate(gt_people):
            if g in taken:
                continue
            similarity = oks(gt["xyv"], det_xy, gt["area"])
            if similarity > best_oks:
                best, best_oks = g, similarity
        if best is not None:
            taken.add(best)
            pairs.append((best, int(d)))
    return pairs


def people_by_image(coco, image_ids=None):
    """{image_id: [{"xyv": (17, 3), "area"}]} of the labelled, non-crowd people of a COCO dict
    (of `image_ids` only, when given): the form `match_people` takes."""
    from bpnet.data.coco import labelled_people

    people = {}
    for ann in labelled_people(coco):
        if image_ids is None or ann["image_id"] in image_ids:
            people.setdefault(ann["image_id"], []).append(
                {"xyv": np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3),
                 "area": float(ann.get("area", 0.0))})
    return people


def keypoint_errors(coco_gt, detections, image_ids=None):
    """Per-keypoint localisation error of matched people, normalised by the person's size.

    error = distance(detected, labelled) / sqrt(area), averaged over matched people where the
    keypoint is labelled (so 0.1 = a tenth of the person's size). Also the share of labelled
    people that no detection matched.
    """
    wanted = set(image_ids) if image_ids is not None else {img["id"] for img in coco_gt["images"]}
    gt_by_image, det_by_image = people_by_image(coco_gt, wanted), {}
    for det in detections:
        if det["image_id"] in wanted:
            det_by_image.setdefault(det["image_id"], []).append(det)
    sums, counts = np.zeros(len(COCO_SIGMAS)), np.zeros(len(COCO_SIGMAS))
    num_gt = num_matched = 0
    for image_id, gt_people in gt_by_image.items():
        detections_here = det_by_image.get(image_id, [])
        num_gt += len(gt_people)
        for g, d in match_people(gt_people, detections_here):
            num_matched += 1
            gt = gt_people[g]
            det_xy = np.asarray(detections_here[d]["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2]
            labelled = gt["xyv"][:, 2] > 0
            distance = np.linalg.norm(gt["xyv"][:, :2] - det_xy, axis=1) / np.sqrt(max(gt["area"], 1.0))
            sums[labelled] += distance[labelled]
            counts[labelled] += 1
    per_keypoint = {name: (float(sums[k] / counts[k]) if counts[k] else None)
                    for k, name in enumerate(COCO_KEYPOINT_NAMES)}
    return {"per_keypoint": per_keypoint, "num_people": num_gt, "num_matched": num_matched,
            "missed_fraction": (1 - num_matched / num_gt) if num_gt else None}


def keypoint_error_changes(parent_errors, child_errors, rise=KEYPOINT_ERROR_RISE):
    """Keypoints whose localisation error grew by more than `rise` (relative), worst first."""
    worse = []
    for name, parent in parent_errors["per_keypoint"].items():
        child = child_errors["per_keypoint"].get(name)
        if parent is None or child is None:
            continue
        if child > parent * (1 + rise):
            worse.append({"keypoint": name, "parent": parent, "child": child,
                          "relative_change": child / parent - 1 if parent else None})
    return sorted(worse, key=lambda w: -(w["child"] - w["parent"]))


def decide(deltas, threshold_ap=DEFAULT_THRESHOLD_AP, output_error=None,
           max_output_error=DEFAULT_MAX_OUTPUT_ERROR):
    """(passed, reasons, warnings): fail when the AP drop exceeds the threshold, or the outputs
    disagree with the parent's by more than `max_output_error` (when measured).

    AP decides; APm / APl drops over the threshold are reported as warnings because on a small
    evaluation set a size range may hold only a few people.
    """
    if threshold_ap < 0:
        raise BpnetError(f"gate threshold must be >= 0 AP points, got {threshold_ap}")
    if max_output_error <= 0:
        raise BpnetError(f"max_output_error must be > 0, got {max_output_error}")
    reasons, warnings = [], []
    ap = deltas["AP"]
    if ap["drop"] is None:
        raise BpnetError("the gate needs AP of both models; the evaluation set has no scored people")
    ap_ok = ap["drop"] <= threshold_ap
    reasons.append(f"AP {ap['child']:.2f} vs float {ap['parent']:.2f}: drop {ap['drop']:.2f} points "
                   f"{'within' if ap_ok else 'over'} the threshold of {threshold_ap:g}")
    outputs_ok = output_error is None or output_error <= max_output_error
    if output_error is not None:
        reasons.append(f"output error {output_error:.3f} (relative to the float outputs' variation) "
                       f"{'within' if outputs_ok else 'over'} the limit of {max_output_error:g}")
    for name in GATED_METRICS[1:]:
        d = deltas.get(name)
        if d and d["drop"] is not None and d["drop"] > threshold_ap:
            warnings.append(f"{name} dropped {d['drop']:.2f} points ({d['parent']:.2f} -> {d['child']:.2f})")
    if ap["parent"] < threshold_ap:
        warnings.append(f"the float parent's AP ({ap['parent']:.2f}) is below the threshold, so an AP drop "
                        f"cannot show; the output agreement is the meaningful check here")
    return ap_ok and outputs_ok, reasons, warnings


def remedies(precision, calibrator=None, num_calibration_images=None, sensitive_layers=()):
    """What to try when the gate fails, most direct first; each names the run that does it."""
    options = []
    if precision == "int8":
        options.append({"kind": "more_calibration_images",
                        "title": "Calibrate on more or different images",
                        "why": "the activation ranges come from the calibration images; too few, or "
                               "images unlike the evaluation data (blank, no people), give wrong scales",
                        "params": {"num_images": max(2 * (num_calibration_images or 0), 100)}})
        for other in ("minmax", "percentile", "entropy"):
            if other != calibrator:
                options.append({"kind": "other_calibrator", "title": f"Calibrate with {other}",
                                "why": "another way to pick each tensor's range: minmax keeps every "
                                       "outlier, percentile clips the top 0.01%, entropy minimises "
                                       "the information lost",
                                "params": {"calibrator": other}})
        options.append({"kind": "keep_layers_float",
                        "title": "Keep the most sensitive layers in FP32",
                        "why": "quantizing one layer at a time shows which layers lose the most; "
                               "leaving them in float recovers most of the accuracy at a small speed cost",
                        "params": {"layers": list(sensitive_layers)}})
        options.append({"kind": "qat", "title": "Quantization-aware training",
                        "why": "fine-tunes the model with simulated INT8 (TensorFlow Model "
                               "Optimization) so the weights adapt to the quantization; the "
                               "slowest remedy (a short training run)",
                        "params": {"steps": QAT_REMEDY_STEPS}})
    else:
        options.append({"kind": "keep_layers_float", "title": "Keep the most sensitive layers in FP32",
                        "why": "an FP16 drop usually comes from a few layers whose values overflow "
                               "or lose precision in half floats",
                        "params": {"layers": list(sensitive_layers)}})
    return options


def gate_report(parent_metrics, child_metrics, precision, threshold_ap=DEFAULT_THRESHOLD_AP,
                parent_keypoint_errors=None, child_keypoint_errors=None, calibrator=None,
                num_calibration_images=None, sensitive_layers=(), output_error=None,
                max_output_error=DEFAULT_MAX_OUTPUT_ERROR):
    """The full gate decision as a JSON-ready dict (what the store and the UI show)."""
    if precision not in ("fp16", "int8", "fp32"):
        raise BpnetError(f"precision must be one of fp32, fp16, int8, got {precision!r}")
    deltas = metric_deltas(parent_metrics, child_metrics)
    if deltas["AP"]["parent"] is not None and not is_meaningful(parent_metrics):
        return not_meaningful_report(deltas, precision, threshold_ap, output_error, max_output_error)
    passed, reasons, warnings = decide(deltas, threshold_ap, output_error, max_output_error)
    report = {"passed": passed, "status": "passed" if passed else "failed", "precision": precision,
              "threshold_ap": threshold_ap, "metrics": deltas, "output_error": output_error,
              "max_output_error": max_output_error, "reasons": reasons, "warnings": warnings}
    if parent_keypoint_errors is not None and child_keypoint_errors is not None:
        worse = keypoint_error_changes(parent_keypoint_errors, child_keypoint_errors)
        report["keypoint_errors"] = {"parent": parent_keypoint_errors, "child": child_keypoint_errors,
                                     "worse": worse}
        warnings.extend(f"{w['keypoint']} error {w['parent']:.3f} -> {w['child']:.3f}" for w in worse[:3])
    report["remedies"] = [] if passed else remedies(precision, calibrator, num_calibration_images,
                                                     sensitive_layers)
    return report


def is_meaningful(parent_metrics, floor=None):
    """Whether the float parent finds people at all (AP at or above `floor`, a fraction;
    default MEANINGFUL_AP_FLOOR, read at call time)."""
    floor = MEANINGFUL_AP_FLOOR if floor is None else floor
    ap = parent_metrics.get("AP")
    return ap is not None and ap >= floor


def not_meaningful_report(deltas, precision, threshold_ap, output_error, max_output_error):
    """The gate's answer when the float model finds nobody: no verdict, no remedy (no
    calibration or quantization change can fix a model that never learned)."""
    parent = deltas["AP"]["parent"] or 0.0
    return {"passed": False, "status": "not_meaningful", "precision": precision, "threshold_ap": threshold_ap,
            "metrics": deltas, "output_error": output_error, "max_output_error": max_output_error,
            "reasons": [f"not meaningful: the float model finds nobody (AP {parent / 100:.3f} < "
                        f"{MEANINGFUL_AP_FLOOR:g}); no remedy is offered: train the base model longer or start from a "
                        "pretrained one before judging its INT8/FP16 copy"],
            "warnings": [], "remedies": []}
