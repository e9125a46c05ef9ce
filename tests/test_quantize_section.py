"""Run detail's accuracy-control section: figures and tables from a report (no Streamlit run)."""

import json

from app.views import quantize_section as section


def mix(cal_sizes, eval_sizes):
    def one(sizes):
        persons = sum(sizes.values())
        return {"images": 4, "persons": persons, "images_without_people": 0,
                "people_per_image": {"1": 1.0, "2-3": 0.0, "4+": 0.0},
                "person_size": {k: (v / persons if persons else 0.0) for k, v in sizes.items()},
                "person_size_counts": sizes, "visible_keypoints": {"1-5": 0.5, "6-11": 0.5, "12-17": 0.0}}
    return {"calibration": one(cal_sizes), "evaluation": one(eval_sizes)}


def report(bisection=True):
    rows = [{"tensor": f"t{i}", "layer": f"conv{i}", "op_type": "Conv", "relative_error": e, "cosine": 1 - e / 10}
            for i, e in enumerate([0.01, 0.03, 0.5, 0.6])]
    divergence = {"rows": rows, "tolerance": {"max_relative_error": 0.2, "min_cosine": 0.98},
                  "first_divergence": rows[2]}
    return {"max_drop": 1.0, "parent_AP": 0.40, "best_calibrator": "minmax", "summary": "minmax + 1 float layer",
            "calibrators": [{"calibrator": "entropy", "AP": 0.36, "ap_drop": 4.0, "latency_ms": 3.0},
                            {"calibrator": "minmax", "AP": 0.38, "ap_drop": 2.0, "latency_ms": 3.1}],
            "curve": [{"float_layers": 0, "AP": 0.38, "ap_drop": 2.0, "latency_ms": 3.1},
                      {"float_layers": 1, "AP": 0.395, "ap_drop": 0.5, "latency_ms": 3.4}],
            "bisection": {"count": 1} if bisection else None,
            "final": {"float_layers": 1, "layers": ["conv2"], "met": True, "AP": 0.395, "ap_drop": 0.5},
            "divergence": {"plain": divergence}, "evaluation": {"num_images": 20, "source": "ann.json"},
            "calibration": {"mix": mix({"small": 0, "medium": 3, "large": 1}, {"small": 2, "medium": 5, "large": 1})}}


def test_figures_show_calibrators_curve_and_divergence():
    r = report()
    cal = section.calibrator_figure(r)
    assert list(cal.data[0].x) == ["entropy", "minmax"] and list(cal.data[0].y) == [0.36, 0.38]
    assert cal.data[0].marker.color[1] != cal.data[0].marker.color[0]          # the best stands out
    curve = section.curve_figure(r)
    assert list(curve.data[0].x) == [0, 1] and list(curve.data[1].y) == [3.1, 3.4]
    assert any("chosen: 1" in a.text for a in curve.layout.annotations)
    div = section.divergence_figure(r["divergence"]["plain"], "t")
    assert any("first: conv2" in a.text for a in div.layout.annotations)


def test_mix_rows_and_missing_size_warning():
    r = report()
    rows = section.mix_rows(r)
    small = next(x for x in rows if x["class"] == "small")
    assert small["calibration %"] == 0.0 and small["evaluation %"] == 25.0
    assert section.mix_warnings(r) == ["the calibration set has no small people (the evaluation set has 2)"]
    r["calibration"]["mix"] = mix({"small": 0, "medium": 0, "large": 0}, {"small": 0, "medium": 5, "large": 1})
    assert section.mix_warnings(r) == ["the calibration set holds no people"]
    assert section.mix_rows({"calibration": {"source": "cal.npy"}}) == []


def test_report_artifacts_found_by_name():
    run = {"stages": [{"id": "s1", "label": "int8 128x160"}],
           "artifacts": [{"id": 7, "stage_id": "s1", "name": "accuracy_control.json"},
                         {"id": 8, "stage_id": "s1", "name": "model.int8.onnx"}]}
    assert section.report_artifacts(run) == [("s1", "int8 128x160", 7)]
    assert section.calibrator_rows(report())[1]["chosen"] == "✓"


def test_section_renders_in_streamlit(tmp_path):
    from streamlit.testing.v1 import AppTest

    path = tmp_path / "accuracy_control.json"
    data = report()
    data["warnings"] = ["only 3 of the 20 images with people are not calibration images"]
    data["gate"] = {"status": "passed", "reasons": ["AP drop 0.5 within 1"]}
    path.write_text(json.dumps(data))

    def page(report_path):
        from pathlib import Path

        from app.views import quantize_section

        run = {"stages": [{"id": "s1", "label": "quantize 64x64 int8"}],
               "artifacts": [{"id": 1, "stage_id": "s1", "name": "accuracy_control.json"}]}
        quantize_section.render(run, lambda _id: Path(report_path))

    at = AppTest.from_function(page, args=(str(path),), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "INT8 with accuracy control · quantize 64x64 int8" in [s.value for s in at.subheader]
    assert len(at.get("plotly_chart")) == 3                  # calibrators, curve, divergence
    warnings = " | ".join(w.value for w in at.warning)
    assert "no small people" in warnings and "only 3 of the 20" in warnings
    assert "`conv2`" in " ".join(m.value for m in at.markdown)


def test_rescaled_concat_inputs_are_named_in_one_sentence():
    r = report()
    assert section.equalized_text(r) == ""
    r["equalized_concat_inputs"] = [{"concat": "c2", "input": "s1_pafs:0", "producer": "stage1_pafs", "scale": 31.2},
                                    {"concat": "c2", "input": "s1_hm:0", "producer": "stage1_heatmaps", "scale": 45.7}]
    text = section.equalized_text(r)
    assert "2 concat input(s)" in text and "x31-46" in text and "stage1_pafs" in text
