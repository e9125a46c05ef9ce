"""Issue 8 on the dashboard (Streamlit AppTest, no browser, no TensorFlow): guidance on New run,
a search run's iteration chart, a failed INT8 gate in red with its runnable remedies on Run detail
and Compare. Stores are seeded through the job system's API with synthetic numbers."""

import json
import time

from bench import seed_store
from tests.html_tables import table_with_column
from tests.test_app_pages import config, figures, open_page, texts, vega_points  # noqa: F401  (fixture)
from worker import artifacts
from worker.store import open_store

FAILED_GATE = {
    "passed": False, "status": "failed", "precision": "int8", "threshold_ap": 2.0,
    "metrics": {"AP": {"parent": 60.0, "child": 59.0, "drop": 1.0}}, "output_error": 1.9,
    "max_output_error": 0.3, "warnings": [],
    "reasons": ["AP 59.00 vs float 60.00: drop 1.00 points within the threshold of 2",
                "output error 1.900 (relative to the float outputs' variation) over the limit of 0.3"],
    "remedies": [{"kind": "more_calibration_images", "title": "Calibrate on more or different images",
                  "why": "w", "params": {"num_images": 100}},
                 {"kind": "other_calibrator", "title": "Calibrate with minmax", "why": "w",
                  "params": {"calibrator": "minmax"}},
                 {"kind": "qat", "title": "Quantization-aware training", "why": "w", "params": {"steps": 3}},
                 {"kind": "qat", "title": "Advice", "why": "w", "params": {}, "runnable": False}]}


def seed_failed_gate(config):
    """A finished FP32 + INT8 run whose INT8 gate failed; returns (run id, gate stage id)."""
    run_id = seed_store.seed_finished_run(config, name="synthetic gated", thresholds=(0.1,))
    store = open_store(config.database_url)
    gates = [s for s in store.stages(run_id) if s["kind"] == "gate"]
    for gate in gates:
        store.update_stage(gate["id"], result=FAILED_GATE)
    return run_id, gates[0]["id"]


def test_new_run_shows_dataset_statistics_recommendations_and_ranges(config):
    at = open_page("views/new_run.py")
    stats = table_with_column(at, "quantity")
    assert "small / medium / large people" in list(stats["quantity"])
    shown = texts(at.info)
    assert "Recommended input resolution" in shown and "medium or small" in shown
    at.radio(key="base").set_value("train").run()    # the stages slider belongs to "train from scratch"
    captions = texts(at.caption)
    assert "recommended: 0.05 (0.05–3 work)" in captions and "recommended: 3 (2–7 work)" in captions
    assert "FP32, FP16 or INT8; recommended: INT8" in captions and "INT8 within 2-3 AP points" in captions
    assert "Regularization" not in captions          # not a field of this form: no advice for it
    assert at.slider(key="stages").value == 3        # the default is the recommendation
    at.pills(key="precisions").set_value(["FP32", "INT8"]).run()
    assert "at least that many" in texts(at.caption)            # calibration images advice
    assert at.number_input(key="gate_max_ap_drop").value == 2.0


def test_new_run_submits_an_ap_budget_search(config):
    seed_store.register_worker(config)
    at = open_page("views/new_run.py")
    at.radio(key="kind").set_value("search").run()
    at.number_input(key="budget_ap").set_value(1.5).run()
    at.number_input(key="max_iters").set_value(2).run()
    at.pills(key="precisions").set_value(["FP32"]).run()   # the pretrained default adds INT8
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["results"] == "2"        # the unpruned model and the search's choice
    at.button(key="submit").click().run()
    assert not at.exception
    run = open_store(config.database_url).list_runs()[0]
    spec = open_store(config.database_url).get_run(run["id"])["spec"]
    assert spec["kind"] == "search" and spec["search"]["budget_ap"] == 1.5 and spec["search"]["max_iters"] == 2
    assert spec["prune_thresholds"] == []


def test_run_detail_shows_a_failed_gate_in_red_and_runs_a_remedy(config):
    run_id, gate_id = seed_failed_gate(config)
    at = open_page("views/run_detail.py", {"run": run_id})
    errors = texts(at.error)
    assert "❌ failed" in errors and "output error 1.900" in errors
    assert not at.button(key=f"remedy-{gate_id}-2").disabled      # QAT: runnable
    assert at.button(key=f"remedy-{gate_id}-3").disabled          # a remedy marked advice only
    at.button(key=f"remedy-{gate_id}-1").click().run()             # calibrate with minmax
    assert not at.exception, [e.value for e in at.exception]
    assert "Remedy submitted" in texts(at.success), texts(at.error)
    store = open_store(config.database_url)
    follow = next(r for r in store.list_runs() if r["id"] != run_id)
    spec = store.get_run(follow["id"])["spec"]
    assert spec["calibration"]["calibrator"] == "minmax" and spec["precisions"] == ["fp32", "int8"]
    assert "remedy: Calibrate with minmax" in follow["name"]


def test_compare_marks_failed_gates(config):
    seed_failed_gate(config)
    at = open_page("views/compare.py")
    assert "Gate failed" in texts(at.error)
    table = table_with_column(at, "INT8/FP16 gate")
    assert set(table["INT8/FP16 gate"]) == {"–", "❌ failed"}
    points = vega_points(at)
    assert {p["precision"] for p in points if p["gate_failed"]} == {"INT8"}   # ringed in red
    assert not any(p["gate_failed"] for p in points if p["precision"] == "FP32")


def test_run_detail_charts_the_search_iterations(config):
    spec = seed_store.tiny_run_spec("synthetic search", thresholds=(), precisions=("fp32",))
    spec.update(kind="search", search={"budget_ap": 2.0, "max_iters": 3})
    run_id = seed_store.create_run(config, spec)
    store = open_store(config.database_url)
    search = next(s for s in store.stages(run_id) if s["kind"] == "search")
    out = artifacts.prepare_stage_dir(config.artifact_root, "search", search["key"])
    trials = [{"threshold": 0.05, "ap": 59.5, "size": 9e5, "ap_drop": 0.5, "within_budget": True},
              {"threshold": 1.0, "ap": 40.0, "size": 1e5, "ap_drop": 20.0, "within_budget": False}]
    report = {"status": "running", "objective": "params", "budget_ap": 2.0, "base": {"ap": 60.0, "size": 1e6},
              "trials": trials, "chosen": None}
    (out / "search.json").write_text(json.dumps(report))
    store.set_run_status(run_id, "running")
    store.update_stage(search["id"], status="running", started_at=time.time())
    for i, t in enumerate(trials, start=1):
        store.add_event(run_id, search["id"], {"stage": "search", "event": "iteration", "step": i,
                                               "threshold": t["threshold"], "ap": t["ap"], "size": t["size"],
                                               "within_budget": t["within_budget"]})
    at = open_page("views/run_detail.py", {"run": run_id})
    search_figures = [f for f in figures(at) if f["layout"].get("title", {}).get("text") == "AP-budget search"]
    assert len(search_figures) == 1
    assert search_figures[0]["data"][0]["y"] == [59.5, 40.0]
    assert list(table_with_column(at, "within budget")["threshold"]) == ["0.05", "1"]
