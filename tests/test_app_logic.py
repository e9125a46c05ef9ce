"""Dashboard logic without Streamlit: form validation, Pareto front, figures, skeleton overlays."""

import json

import numpy as np
import pytest

from app import charts, forms, overlay
from bpnet.errors import BpnetError


# ---------------------------------------------------------------- form validation

TEMPLATE = {"num_epoch": 1, "checkpoint_n_epoch": 1}   # a new base model's training spec (a stand-in)


def new_run(**changes):
    """(run spec or None, {widget: message}) of good_form() with `changes`, as the page gets them."""
    from app import jobs

    return jobs.new_run_spec(good_form(**changes), None, TEMPLATE)


def test_custom_resolutions_join_the_presets_without_repeats():
    assert forms.collect_resolutions(["288×384", "224×320"], (288, 384)) == [[288, 384], [224, 320]]
    assert forms.collect_resolutions([], ("224", "320.0")) == [[224, 320]]
    with pytest.raises(BpnetError, match="unknown preset"):
        forms.collect_resolutions(["300×300"])
    with pytest.raises(BpnetError, match="custom resolution H: 'abc' is not a number"):
        forms.collect_resolutions([], ("abc", 64))


@pytest.mark.parametrize("h, w, fragment", [(290, 384, "290x384 (e.g. 288x384)"), (288, 383, "288x383"),
                                            (0, 64, "0x64"), (4096, 64, "4096x64"), (288.5, 384, "288.5")])
def test_a_custom_resolution_is_refused_by_the_run_specs_rule_under_its_widget(h, w, fragment):
    spec, errors = new_run(use_custom=True, custom_h=h, custom_w=w)
    assert spec is None and set(errors) == {"resolution"} and fragment in errors["resolution"]


def test_no_resolution_is_the_run_specs_refusal():
    _, errors = new_run(presets=[])
    assert "give at least one resolution" in errors["resolution"]


def test_thresholds_parse_sorted_unique_and_the_run_spec_judges_their_range():
    assert forms.parse_thresholds("0.2, 0.05;0.1 0.1") == [0.05, 0.1, 0.2]
    for text, fragment in (("", "empty"), ("  ,  ", "empty"), ("0.1, x", "'x' is not a number")):
        with pytest.raises(BpnetError, match=fragment):
            forms.parse_thresholds(text)
    for text in ("-0.1", "0", "11", "nan"):
        _, errors = new_run(thresholds=text)
        assert set(errors) == {"thresholds"} and "out of range" in errors["thresholds"]


def test_calibration_follows_the_seed_rule(coco_mini, tmp_path):
    spec, errors = new_run(cal_images=str(coco_mini[1]), cal_batches=10, cal_batch_size=8)
    assert errors == {} and spec["calibration"] == {"images": str(coco_mini[1]), "batch_size": 8, "batches": 10}
    for changes, fragment in (({"cal_batches": 9, "cal_batch_size": 9}, "80 images, fewer than .* 9 x 9 = 81"),
                              ({"cal_images": str(tmp_path / "none")}, "calibration.images: folder not found"),
                              ({"cal_batches": 0}, "calibration.batches: value 0 is invalid")):
        _, errors = new_run(**changes)
        assert set(errors) == {"calibration"}
        assert __import__("re").search(fragment, errors["calibration"])


def test_bundled_dataset_inspection_counts_people(coco_mini):
    info = forms.inspect_dataset(*coco_mini)
    assert (info.num_images, info.num_people_with_keypoints, info.num_images_with_keypoints) == (80, 86, 28)


def test_images_folder_defaults_to_coco_layout(coco_mini):
    info = forms.inspect_dataset(coco_mini[0], "")
    assert info.images == coco_mini[1].resolve()


def test_dataset_errors_name_the_path(tmp_path, coco_mini):
    with pytest.raises(BpnetError, match="does not exist"):
        forms.inspect_dataset(tmp_path / "nope.json", coco_mini[1])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BpnetError, match="not valid JSON"):
        forms.inspect_dataset(bad, coco_mini[1])
    bad.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(BpnetError, match="field 'categories' must be a list"):
        forms.inspect_dataset(bad, coco_mini[1])
    with pytest.raises(BpnetError, match="image folder .* does not exist"):
        forms.inspect_dataset(coco_mini[0], tmp_path / "no-images")
    with pytest.raises(BpnetError, match="missing from"):
        forms.inspect_dataset(coco_mini[0], tmp_path)


def good_form(**changes):
    form = {"dataset": "bundled", "base": "train", "train_epochs": 2, "presets": ["288×384"],
            "use_custom": False, "stages": 2, "thresholds": "0.1, 0.5", "precisions": ["FP32", "INT8"],
            "cal_images": "", "cal_batches": 2, "cal_batch_size": 8, "retrain_epochs": 1}
    form.update(changes)
    return form


def test_valid_form_gives_a_run_spec_with_one_result_per_model_and_precision():
    from worker.runs import expand_run, parse_run_spec

    spec, errors = new_run()
    assert errors == {}
    assert spec["prune_thresholds"] == [0.1, 0.5] and spec["precisions"] == ["fp32", "int8"] and spec["name"]
    assert spec["stages"] == [2] and spec["train"]["num_epoch"] == 2
    assert spec["calibration"]["images"] == str(forms.BUNDLED_IMAGES.resolve())   # defaults to the training images
    evaluations = [n for n in expand_run(parse_run_spec(spec, "form")) if n["kind"] == "evaluate"]
    assert len(evaluations) == 6   # (unpruned + 2 thresholds) x 2 precisions


def test_invalid_form_reports_every_field_at_once(tmp_path):
    _, errors = new_run(dataset="path", annotations=str(tmp_path / "missing.json"), use_custom=True, custom_h=100,
                        custom_w=64, thresholds="0", stages=9, precisions=[])
    assert set(errors) == {"dataset", "resolution", "thresholds", "stages", "precisions"}
    assert "does not exist" in errors["dataset"] and "100x64" in errors["resolution"]
    _, errors = new_run(base="existing")
    assert set(errors) == {"base"} and "none picked" in errors["base"]
    # a refused field does not hide the rules across fields nor the file checks of the others
    _, errors = new_run(kind="search", retrain_epochs=0, use_custom=True, custom_h=290, custom_w=64, cal_batches=20)
    assert set(errors) == {"resolution", "retrain_epochs", "calibration"}
    assert "fewer than batch_size x batches = 8 x 20 = 160" in errors["calibration"]


def test_rules_across_fields_land_under_the_field_they_name():
    _, errors = new_run(kind="search", retrain_epochs=0)
    assert set(errors) == {"retrain_epochs"} and "kind 'search' retrains every trial" in errors["retrain_epochs"]
    _, errors = new_run(kind="explore")   # base "train": the explorer measures an existing model
    assert set(errors) == {"base"} and "kind 'explore' measures one existing model" in errors["base"]


def test_accuracy_control_field_becomes_a_quantize_stage():
    from worker.runs import expand_run, parse_run_spec

    spec, errors = new_run(int8_max_drop=0.5)
    assert errors == {} and spec["accuracy_control"] == {"max_drop": 0.5, "num_calibration_images": 16}
    nodes = expand_run(parse_run_spec(spec, "form"))
    quantized = [n for n in nodes if n["kind"] == "quantize"]
    assert len(quantized) == 3 and not [n for n in nodes if n["kind"] == "export" and n["params"]["precision"] == "int8"]
    assert quantized[0]["params"]["accuracy_control"]["max_drop"] == 0.5
    # FP32 only: no INT8, so the field is not read; out of range: refused with the allowed range
    assert "accuracy_control" not in new_run(precisions=["FP32"], int8_max_drop=-1)[0]
    _, errors = new_run(int8_max_drop=-1)
    assert "accuracy_control.max_drop: value -1 is invalid: Input should be greater than or equal to 0" \
        == errors["int8_max_drop"]
    assert "accuracy_control" not in new_run()[0]


def test_calibration_is_only_checked_for_int8():
    _, errors = new_run(precisions=["FP32"], cal_batches=100)
    assert errors == {}
    _, errors = new_run(cal_batches=100)
    assert "800" in errors["calibration"]


# ---------------------------------------------------------------- charts

def test_pareto_front_keeps_only_undominated_points():
    points = [(10, 0.5), (5, 0.4), (20, 0.6), (12, 0.45), (5, 0.3), (30, 0.6)]
    assert charts.pareto_front(points) == [1, 0, 2]
    assert charts.pareto_front([]) == []
    assert charts.pareto_front([(1, 0.1), (1, 0.1)]) == [0]


def result_row(label, latency, ap, precision="FP32", **extra):
    row = {"label": label, "pth": 0.1, "input_h": 288, "input_w": 384, "stages": 2, "precision": precision,
           "latency_ms": latency, "AP": ap, "APm": ap and ap * 0.8, "APl": ap and ap * 1.1, "params": 1e6,
           "model_size_mb": 4.0}
    row.update(extra)
    return row


def test_ap_vs_latency_chart_highlights_the_front_and_skips_missing_values():
    rows = [result_row("a", 10, 0.5), result_row("b", 5, 0.4, "INT8"), result_row("c", 12, 0.45),
            result_row("pending", None, None)]
    spec = charts.ap_vs_latency_spec(rows)
    points = spec["data"]["values"]
    assert [p["label"] for p in points] == ["a", "b", "c"]
    assert sorted((p["x"], p["AP"]) for p in points if p["front"]) == [(5, 0.4), (10, 0.5)]
    assert points[0]["pth"] == "0.1" and points[0]["stages"] == "2" and points[0]["resolution"] == "288×384"
    color = spec["layer"][2]["encoding"]["color"]["scale"]
    assert color == {"domain": ["FP32", "INT8"], "range": [charts.PRECISION_COLORS["FP32"], charts.PRECISION_COLORS["INT8"]]}
    picks = [param for layer in spec["layer"] for param in layer.get("params", [])]
    assert picks == [{"name": charts.PICK, "select": {"type": "point", "fields": ["run_id", "stage_id"], "on": "click"}}]


def test_other_figures_build_from_rows():
    rows = [result_row("a", 10, 0.5), result_row("b", 5, 0.4, "INT8", params=2e5)]
    area = charts.ap_by_area_figure(rows)
    assert [t.name for t in area.data] == ["AP medium", "AP large"]
    size = charts.size_vs_ap_figure(rows)
    assert sorted(size.data[0].x) == [1.0]   # millions of parameters
    latency = charts.latency_by_precision_figure(rows)
    assert [t.name for t in latency.data] == ["FP32", "INT8"]
    loss = charts.loss_curve_figure([{"step": 2, "loss": 1.0}, {"step": 1, "loss": 2.0},
                                     {"step": 1, "loss": 3.0, "stage": "retrain"}])
    assert list(loss.data[1].y) == [2.0, 1.0]


def test_dag_nodes_are_named_by_their_own_params_not_their_ancestors():
    assert charts.short_stage_label("prune s2 pth=0.1", "prune", {"threshold": 0.1}) == "prune pth=0.1"
    assert charts.short_stage_label("export s3 pth=0.5 288x384 int8", "export",
                                    {"input_hw": [288, 384], "precision": "int8"}) == "export 288x384 int8"
    assert charts.short_stage_label("evaluate s2 pth=0.1 64x64 fp32", "evaluate", {}) == "evaluate"
    assert charts.short_stage_label("train s2", "train", {}) == "train s2"
    dot = charts.dag_dot([{"id": "p", "label": "prune s2 pth=0.1", "kind": "prune", "params": {"threshold": 0.1},
                           "status": "queued", "parents": []}])
    assert 'label="prune pth=0.1\\nqueued"' in dot and 'tooltip="prune s2 pth=0.1"' in dot


def test_dag_dot_has_every_stage_and_edge():
    dot = charts.dag_dot([{"id": "t", "label": "train", "status": "completed", "parents": []},
                          {"id": "p", "label": "prune 0.1", "status": "failed", "parents": ["t"]}])
    assert '"t" -> "p"' in dot and "failed" in dot and charts.STATUS_COLORS["failed"] in dot


# ---------------------------------------------------------------- overlays

def test_a_drawn_person_has_its_limbs_and_joints():
    image = np.zeros((100, 100, 3), np.uint8)
    person = np.zeros((17, 3), np.float64)
    person[5] = (30, 40, 2)   # left shoulder
    person[7] = (30, 80, 2)   # left elbow
    drawn, oks = overlay.draw_truth_and_prediction(image, [{"xyv": person, "area": 400.0}], [])
    assert drawn.shape == (100, 100, 3) and oks == [0.0]
    assert drawn[60, 30].any()          # on the upper arm, between the two joints
    assert not drawn[95, 90].any()      # nothing far away
    assert not overlay.draw_truth_and_prediction(image, [], [])[0].any()


def test_read_detections_groups_by_image_and_rejects_garbage(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"image_id": 3, "keypoints": [1.0] * 51, "score": 0.9},
                                {"image_id": 3, "keypoints": [2.0] * 51, "score": 0.5},
                                {"image_id": 4, "keypoints": "broken"}]))
    people = overlay.read_detections(path)
    assert list(people) == [3] and [p["score"] for p in people[3]] == [0.9, 0.5]
    path.write_text("{")
    with pytest.raises(BpnetError, match="not valid JSON"):
        overlay.read_detections(path)


def test_loss_points_keep_per_step_loss_and_epoch_means_apart():
    from app.jobs import loss_points

    raw = [{"stage_label": "train s2", "event": "step", "epoch": 1, "step": 1, "loss": 3.0, "time": 1},
           {"stage_label": "train s2", "event": "step", "epoch": 1, "step": 2, "loss": 2.0, "time": 2},
           {"stage_label": "train s2", "event": "epoch_end", "epoch": 1, "step": 2, "loss": 2.5, "time": 3},
           {"stage_label": "train s2", "event": "step", "epoch": 2, "step": 1, "loss": 1.0, "time": 4},
           {"stage_label": "train s2", "event": "done", "epoch": 2, "step": None, "loss": 1.5, "time": 5},
           {"stage_label": "retrain", "epoch": 1, "step": None, "loss": 0.5, "time": 6}]
    points = loss_points(raw)
    assert [(p["stage"], p["step"], p["loss"]) for p in points] == [
        ("train s2 · loss per step", 1, 3.0), ("train s2 · loss per step", 2, 2.0),
        ("train s2 · epoch mean", 2, 2.5), ("train s2 · loss per step", 4, 1.0),
        ("retrain · loss per step", 1, 0.5)]


def test_a_held_out_evaluation_set_goes_into_the_run_spec(coco_mini, tmp_path):
    spec, errors = new_run(dataset="path", annotations=str(coco_mini[0]), images="",
                           eval_annotations=str(coco_mini[0]), eval_images="")
    assert errors == {}
    assert spec["dataset"]["eval_annotations"] == str(coco_mini[0].resolve())
    assert spec["dataset"]["eval_images"] == str(coco_mini[1].resolve())   # the COCO layout's folder
    _, errors = new_run(dataset="path", annotations=str(coco_mini[0]), eval_annotations=str(tmp_path / "val.json"))
    assert "val.json does not exist" in errors["eval_dataset"]


def test_the_new_run_defaults_are_the_pretrained_run_the_docs_measure():
    """New run opens on the bundled pretrained network: one prune threshold that removes parameters
    while it still finds people (docs/pretrained.md), a short retrain, FP32 and INT8 (min-max) at
    288x384; bench/pretrained_table.py times exactly this run."""
    from app import jobs
    from worker.runs import expand_run, parse_run_spec

    spec, errors = jobs.new_run_spec(forms.default_new_run_form(), None, TEMPLATE)
    assert errors == {}
    assert spec["model"] == str(forms.PRETRAINED_MODEL) and "train" not in spec
    assert spec["prune_thresholds"] == [0.1] and spec["retrain_epochs"] == 1
    assert spec["precisions"] == ["fp32", "int8"] and spec["resolutions"] == [[288, 384]]
    assert spec["calibration"]["calibrator"] == "minmax"
    assert len([n for n in expand_run(parse_run_spec(spec, "form")) if n["kind"] == "evaluate"]) == 4
