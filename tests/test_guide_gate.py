"""The INT8/FP16 gate's decision, keypoint errors and remedies (pure parts)."""

import json

import numpy as np
import pytest

from bpnet.errors import BpnetError
from bpnet.guide.gate import gate_report, keypoint_error_changes, keypoint_errors, match_people

PARENT = {"AP": 0.600, "APm": 0.550, "APl": 0.700}


def test_a_result_within_the_threshold_passes():
    report = gate_report(PARENT, {"AP": 0.590, "APm": 0.545, "APl": 0.69}, "int8", threshold_ap=2.0)
    assert report["passed"] and report["status"] == "passed"
    assert report["metrics"]["AP"]["drop"] == pytest.approx(1.0)
    assert report["remedies"] == []
    json.dumps(report)


def test_a_result_over_the_threshold_fails_with_remedies():
    report = gate_report(PARENT, {"AP": 0.570, "APm": 0.50, "APl": 0.69}, "int8", threshold_ap=2.0,
                         calibrator="entropy", num_calibration_images=40, sensitive_layers=["conv3"])
    assert not report["passed"] and report["status"] == "failed"
    assert "over the threshold" in report["reasons"][0]
    kinds = [r["kind"] for r in report["remedies"]]
    assert kinds[0] == "more_calibration_images"
    assert {"other_calibrator", "keep_layers_float", "qat"} <= set(kinds)
    calibrators = [r["params"]["calibrator"] for r in report["remedies"] if r["kind"] == "other_calibrator"]
    assert sorted(calibrators) == ["minmax", "percentile"]
    assert report["remedies"][0]["params"]["num_images"] == 100
    assert any("APm dropped" in w for w in report["warnings"])


def test_the_threshold_is_the_users():
    child = {"AP": 0.570, "APm": 0.55, "APl": 0.70}
    assert not gate_report(PARENT, child, "int8", threshold_ap=2.0)["passed"]
    assert gate_report(PARENT, child, "int8", threshold_ap=3.5)["passed"]


def test_undefined_size_ranges_do_not_break_the_gate():
    report = gate_report({"AP": 0.5, "APm": -1, "APl": 0.5}, {"AP": 0.5, "APm": -1, "APl": 0.5}, "fp16")
    assert report["passed"] and report["metrics"]["APm"]["drop"] is None


@pytest.mark.parametrize("parent, child, precision, threshold, message", [
    ({"AP": 0.5}, {"AP": 0.5, "APm": 0, "APl": 0}, "int8", 2, "parent metrics have no 'APm'"),
    (PARENT, PARENT, "int4", 2, "precision must be one of"),
    (PARENT, PARENT, "int8", -1, "threshold must be >= 0"),
    ({"AP": -1, "APm": -1, "APl": -1}, PARENT, "int8", 2, "no scored people"),
])
def test_bad_gate_inputs_are_named(parent, child, precision, threshold, message):
    with pytest.raises(BpnetError, match=message):
        gate_report(parent, child, precision, threshold_ap=threshold)


def person_keypoints(x0, y0, scale=1.0):
    xs = x0 + scale * np.arange(17) * 3.0
    ys = y0 + scale * np.arange(17) * 5.0
    return np.stack([xs, ys, np.full(17, 2.0)], axis=1)


def coco_with_two_people():
    anns = [{"id": 1, "image_id": 7, "iscrowd": 0, "num_keypoints": 17, "area": 100.0 ** 2,
             "keypoints": person_keypoints(10, 10).ravel().tolist()},
            {"id": 2, "image_id": 7, "iscrowd": 0, "num_keypoints": 17, "area": 100.0 ** 2,
             "keypoints": person_keypoints(300, 20).ravel().tolist()}]
    return {"images": [{"id": 7, "width": 640, "height": 480}], "annotations": anns}


def detection(xyv, score=0.9, image_id=7):
    return {"image_id": image_id, "category_id": 1, "score": score, "keypoints": np.ravel(xyv).tolist()}


def test_keypoint_errors_measure_offsets_relative_to_person_size():
    coco = coco_with_two_people()
    shifted = person_keypoints(10, 10)
    shifted[9, 0] += 20.0                      # left_wrist 20 px off on a 100-px person
    dets = [detection(person_keypoints(300, 20)), detection(shifted, score=0.8)]
    errors = keypoint_errors(coco, dets)
    assert errors["num_people"] == 2 and errors["num_matched"] == 2 and errors["missed_fraction"] == 0
    assert errors["per_keypoint"]["left_wrist"] == pytest.approx(0.1)    # (20 / 100) / 2 people
    assert errors["per_keypoint"]["nose"] == pytest.approx(0.0)


def test_unmatched_people_count_as_missed_and_far_detections_do_not_match():
    coco = coco_with_two_people()
    errors = keypoint_errors(coco, [detection(person_keypoints(10, 10)),
                                    detection(person_keypoints(5000, 5000))])
    assert errors["num_matched"] == 1 and errors["missed_fraction"] == pytest.approx(0.5)


def test_matching_prefers_the_higher_score():
    gt = [{"xyv": person_keypoints(10, 10), "area": 1e4}]
    dets = [detection(person_keypoints(11, 10), score=0.3), detection(person_keypoints(12, 10), score=0.9)]
    assert match_people(gt, dets) == [(0, 1)]


def test_keypoints_that_got_worse_are_named_in_the_report():
    coco = coco_with_two_people()
    parent = keypoint_errors(coco, [detection(person_keypoints(10, 10)), detection(person_keypoints(301, 20))])
    worse_xy = person_keypoints(301, 20)
    worse_xy[0, 1] += 30.0
    child = keypoint_errors(coco, [detection(person_keypoints(10, 10)), detection(worse_xy)])
    changes = keypoint_error_changes(parent, child)
    assert changes[0]["keypoint"] == "nose"
    report = gate_report(PARENT, PARENT, "int8", parent_keypoint_errors=parent, child_keypoint_errors=child)
    assert report["passed"] and any("nose" in w for w in report["warnings"])


def test_outputs_that_no_longer_follow_the_image_fail_even_without_an_ap_drop():
    weak = {"AP": 0.03, "APm": 0.03, "APl": 0.03}   # finds some people, too few for AP to show a drop
    broken = gate_report(weak, weak, "int8", threshold_ap=5.0, output_error=0.9, max_output_error=0.3)
    assert not broken["passed"] and "output error 0.900" in broken["reasons"][1]
    assert any("below the threshold" in w for w in broken["warnings"])
    good = gate_report(weak, weak, "int8", threshold_ap=5.0, output_error=0.1, max_output_error=0.3)
    assert good["passed"]
    with pytest.raises(BpnetError, match="max_output_error"):
        gate_report(weak, weak, "int8", output_error=0.1, max_output_error=0)


@pytest.mark.parametrize("output_error", [None, 0.05, 0.9])
def test_a_float_model_that_finds_nobody_gets_no_verdict_and_no_remedy(output_error):
    untrained = {"AP": 0.004, "APm": 0.0, "APl": 0.01}
    report = gate_report(untrained, {"AP": 0.0, "APm": 0.0, "APl": 0.0}, "int8", output_error=output_error)
    assert report["status"] == "not_meaningful" and not report["passed"]
    assert report["reasons"][0].startswith("not meaningful: the float model finds nobody (AP 0.004")
    assert report["remedies"] == []
    assert gate_report({"AP": 0.02, "APm": 0.02, "APl": 0.02}, PARENT, "fp16")["status"] != "not_meaningful"
