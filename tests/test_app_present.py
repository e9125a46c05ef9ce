"""The dashboard's reading of results (no Streamlit): formatting, guards, config diff,
deployable names, chart helpers and the ground-truth-vs-prediction pictures."""

import json

import numpy as np
import pytest

from app import charts, overlay, present


def test_numbers_read_as_a_user_reads_them():
    assert present.fmt_params(1_220_354) == "1.22 M" and present.fmt_params(45_300) == "45.3 k"
    assert present.fmt_ms(12.41) == "12.4 ms" and present.fmt_ms(1.234) == "1.23 ms"
    assert present.fmt_ap(0.3921) == "0.392" and present.fmt_ap(-1) == "–" and present.fmt_ap(None) == "–"
    assert present.fmt_bytes(4_900_000) == "4.9 MB" and present.fmt_bytes(12_300) == "12 KB"
    row = {"latency_ms": 12.4, "latency_p5_ms": 11.9, "latency_p95_ms": 13.8, "latency_runs": 20}
    assert present.latency_text(row) == "12.4 ms (p5–p95 11.9–13.8, 20 runs)"
    table = present.result_display_rows([{"run_name": "r", "params": 1_220_000, "AP": 0.392, "latency_ms": 12.4,
                                          "resolution": "288x384"}])[0]
    assert table["parameters"] == "1.22 M" and table["AP"] == "0.392" and table["resolution"] == "288×384"
    assert table["latency (median)"] == "12.4 ms"


def test_all_results_at_ap_zero_are_called_untrained_not_charted():
    assert present.untrained_message([{"AP": 0.0}, {"AP": 0.004}, {"AP": None}]).startswith(
        "all results have AP 0 — the base model is untrained")
    assert present.untrained_message([{"AP": 0.0}, {"AP": 0.3}]) is None
    assert present.untrained_message([{"AP": None}]) is None   # nothing evaluated yet: no verdict


def test_a_prune_that_removed_under_one_percent_is_flagged():
    stages = [{"id": "p1", "kind": "prune", "label": "prune s2 pth=0.6"},
              {"id": "p2", "kind": "prune", "label": "prune s2 pth=0.8"},
              {"id": "t", "kind": "train", "label": "train s2"}]
    metrics = [{"stage_id": "p1", "name": "param_ratio", "value": 1.0},
               {"stage_id": "p2", "name": "param_ratio", "value": 0.57},
               {"stage_id": "t", "name": "param_ratio", "value": 1.0}]
    assert present.pruned_nothing(stages, metrics) == [("prune s2 pth=0.6", 1.0)]
    assert "pruned nothing" in present.pruned_nothing_text("prune s2 pth=0.6", 1.0)


def test_config_diff_lists_only_the_fields_that_differ():
    spec = {"train": {"num_epoch": 4, "model": {"stages": 2}}, "precisions": ["fp32", "int8"]}
    other = {"train": {"num_epoch": 8, "model": {"stages": 2}}, "precisions": ["fp32", "int8"]}
    a = present.result_config({"pth": "0.1", "precision": "FP32", "resolution": "64x64"}, spec)
    b = present.result_config({"pth": "0.1", "precision": "INT8", "resolution": "64x64"}, other)
    diff = present.config_diff(a, b)
    assert [d["field"] for d in diff] == ["result.precision", "spec.train.num_epoch"]
    assert diff[1] == {"field": "spec.train.num_epoch", "A": "4", "B": "8"}
    assert present.config_diff(a, a) == []


def test_an_accuracy_controlled_int8_result_reads_as_one():
    from app import jobs

    plain = {"run_name": "r", "pth": None, "resolution": "288x384", "stages": 6, "precision": "int8"}
    controlled = {**plain, "float_layers": 3, "int8_max_drop": 1.0}
    assert jobs.short_result_label(plain).endswith("· INT8")
    assert jobs.short_result_label(controlled).endswith("· INT8 ≤1 AP, 3 float")
    shown = present.result_display_rows(jobs.chart_rows([plain, controlled]))
    assert [r["INT8 float layers"] for r in shown] == ["–", "3"]
    assert present.result_config(controlled, {})["result.float_layers"] == 3


def test_deployables_are_named_by_model_precision_and_resolution():
    row = {"pth": "0.1", "input_h": 288, "input_w": 384, "precision": "INT8"}
    export = [{"name": "model.onnx", "kind": "onnx"}, {"name": "model.int8.onnx", "kind": "int8 onnx"},
              {"name": "cal.cache", "kind": "calibration cache"}, {"name": "calibration_tensor.npy",
                                                                   "kind": "calibration tensor file"}]
    evaluate = [{"name": "metrics.json", "kind": "metrics"}, {"name": "results.json", "kind": "report"}]
    names = [name for _, name in present.deployable_names(row, export, evaluate)]
    assert names == ["bpnet_pth0.1_288x384_fp32.onnx", "bpnet_pth0.1_288x384_int8.onnx",
                     "bpnet_pth0.1_288x384_int8.cal.cache", "bpnet_pth0.1_288x384_int8_metrics.json"]
    assert present.deploy_prefix({"pth": "unpruned", "input_h": 64, "input_w": 64}) == "bpnet_unpruned_64x64"


def test_a_running_stage_without_progress_is_starting_tensorflow():
    rows = present.stage_display_rows([{"label": "train s2", "status": "running", "fraction": 0.0,
                                        "started_at": 0.0, "eta_s": None},
                                       {"label": "prune", "status": "running", "fraction": 0.5,
                                        "message": "ranking filters", "started_at": 0.0, "eta_s": 30.0}],
                                      10.0, lambda s: f"{s:.0f} s" if s is not None else "–")
    assert rows[0]["doing now / error"] == present.STARTING_TEXT and rows[0]["ETA"] == "estimating…"
    assert rows[1]["doing now / error"] == "ranking filters" and rows[1]["ETA"] == "30 s"


def test_ap_axis_starts_at_zero_and_overlapping_points_are_dodged():
    assert charts.ap_axis_range([0.3, 0.5]) == [0.0, pytest.approx(0.55)]
    assert charts.ap_axis_range([0.0]) == [0.0, 0.05]
    offsets = charts.dodge([10.0, 10.0, 20.0], [0.5, 0.5, 0.4], x_span=10.0, y_span=0.5)
    assert offsets[0] == -offsets[1] != 0 and offsets[2] == 0
    rows = [{"stage_id": "e1", "run_id": "r", "latency_ms": 10.0, "latency_p95_ms": 12.0, "AP": 0.5,
             "precision": "FP32"},
            {"stage_id": "e2", "run_id": "r", "latency_ms": 10.0, "AP": 0.5, "precision": "INT8"}]
    spec = charts.ap_vs_latency_spec(rows)
    layer = spec["layer"][0]["encoding"]
    assert layer["y"]["scale"]["domain"][0] == 0
    fp32, int8 = spec["data"]["values"]
    assert fp32["x"] != int8["x"] and fp32["x"] + int8["x"] == pytest.approx(20.0)   # dodged apart, centred
    assert fp32["high"] - fp32["x"] == pytest.approx(2.0) and fp32["low"] == fp32["x"]   # p95 bar only
    assert (fp32["stage_id"], fp32["run_id"]) == ("e1", "r")


def test_a_clicked_point_names_its_run_and_result():
    event = {"selection": {charts.PICK: [{"run_id": "r9", "stage_id": "e9"}]}}
    assert charts.selected_result(event) == ("r9", "e9")
    assert charts.selected_result({"selection": {charts.PICK: []}}) is None
    assert charts.selected_result({"selection": {}}) is None
    assert charts.selected_result(None) is None


def test_parallel_coordinates_cover_every_setting():
    rows = [{"pth": p, "input_h": 64, "input_w": 64, "stages": 2, "precision": prec, "params": 1e6,
             "latency_ms": 3.0, "AP": ap} for p, prec, ap in (("unpruned", "FP32", 0.5), ("0.1", "INT8", 0.4))]
    fig = charts.parallel_coordinates_figure(rows).to_dict()
    labels = [d["label"] for d in fig["data"][0]["dimensions"]]
    assert labels == ["prune threshold", "resolution", "stages", "precision", "parameters (M)", "latency (ms)", "AP"]


def test_sensitivity_chart_puts_the_worst_layer_on_top():
    fig = charts.sensitivity_figure({"layers": [{"layer": "conv_a", "op_type": "Conv", "error": 0.4},
                                                {"layer": "conv_b", "op_type": "Conv", "error": 0.1}],
                                     "full_int8_error": 0.5}).to_dict()
    assert fig["data"][0]["y"][-1].startswith("conv_a")


def test_ground_truth_against_prediction_with_oks_per_person(tmp_path):
    xyv = np.zeros((17, 3))
    xyv[:, 0], xyv[:, 1], xyv[:, 2] = np.linspace(20, 60, 17), np.linspace(10, 90, 17), 2
    gt = {1: [{"xyv": xyv, "area": 2000.0}, {"xyv": xyv + [200, 0, 0], "area": 2000.0}], 2: [{"xyv": xyv, "area": 2000.0}]}
    exact = xyv.copy()
    exact[:, 2] = 0.9
    exact[0, 2] = 0.01            # the nose below the confidence floor: lost
    found = {1: [{"keypoints": exact.ravel().tolist(), "score": 0.8}], 2: []}
    scores, matched = overlay.person_oks(gt[1], found[1])
    assert scores[0] == pytest.approx(1.0) and scores[1] == 0.0 and matched == [0, None]
    assert overlay.worst_images(gt, found, 2) == [(2, 0.0), (1, 0.5)]
    assert overlay.images_with_annotated_people(gt, 1) == [1]
    assert overlay.lost_keypoints(xyv, exact.ravel(), 0.1).tolist() == [True] + [False] * 16
    picture, oks = overlay.draw_truth_and_prediction(np.zeros((120, 320, 3), np.uint8), gt[1], found[1], 0.1)
    assert picture.shape == (120, 320, 3) and oks[1] == 0.0
    green = (picture[..., 1] > 150) & (picture[..., 0] < 100)
    magenta = (picture[..., 0] > 200) & (picture[..., 2] > 150) & (picture[..., 1] < 120)
    assert green.any() and magenta.any()


def test_detections_and_ground_truth_files_are_read_with_clear_errors(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 3, "keypoints": [1.0] * 51, "score": 0.7},
                                   {"image_id": 4, "keypoints": "broken"}]))
    assert list(overlay.read_detections(results)) == [3]
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps({   # a COCO file (bpnet.data.coco.read_coco_json checks its structure)
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": 8, "width": 8} for i in (3, 4)],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "keypoints": [1] * 51, "num_keypoints": 17,
                         "area": 10}, {"id": 2, "image_id": 4, "category_id": 1, "keypoints": [0] * 51,
                                       "num_keypoints": 0, "area": 1}]}))
    assert list(overlay.read_ground_truth(annotations)) == [3]
    annotations.write_text("{")
    with pytest.raises(Exception, match="cannot be read for its people"):
        overlay.read_ground_truth(annotations)


def test_a_map_is_placed_back_on_the_image_and_lost_points_found():
    grid = np.zeros((8, 8), np.float32)
    grid[1, 2] = 1.0                          # one peak in the top-left quarter
    # a 100x200 image letterboxed into 64x64: scale 0.32, the image fills the top 32 rows
    on_image = overlay.map_on_image(grid, 0.32, (100, 200), (64, 64))
    assert on_image.shape == (100, 200)
    y, x = np.unravel_index(np.argmax(on_image), on_image.shape)
    assert abs(x - (2.5 * 8 / 0.32)) < 15 and abs(y - (1.5 * 8 / 0.32)) < 15
    assert overlay.lost_parts(on_image, [(x, y), (190, 90)], 0.1) == [False, True]
    pafs = np.zeros((8, 8, 4), np.float32)
    pafs[..., 2], pafs[..., 3] = 0.3, 0.4
    assert np.allclose(overlay.paf_magnitude(pafs, 1), 0.5) and np.allclose(overlay.paf_magnitude(pafs, 0), 0)


def test_prune_preview_notes_read_without_stray_separators():
    rows = [{"threshold": 0.05, "params_after": 995, "params_before": 1000, "kept": 0.995},
            {"threshold": 0.1, "params_after": 940, "params_before": 1000, "kept": 0.94},
            {"threshold": 0.5, "params_after": 250, "params_before": 1000, "kept": 0.25}]
    notes = [r["note"] for r in present.prune_preview_rows(rows, chosen=(0.05, 0.1))]
    assert notes == ["prunes nothing · yours", "yours", ""]
