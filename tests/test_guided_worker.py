"""Issue 8 in the job system on the real engine, stages run in this process (no Celery): an
AP-budget search run whose chosen model is exported to FP32 and INT8, the INT8 gate failing a
calibration made from blank images on measured output agreement, and its one-click remedy (a
follow-up run) passing. Budget about a minute: 64x64, width 0.125, one search iteration (the
lowest threshold: tiny models score AP 0, so a second iteration would pick the most pruned model,
whose two-filter layers no calibration can quantize)."""

import json

import cv2
import numpy as np
import pytest

from tests.conftest import COCO_ANNOTATIONS, COCO_IMAGES, TINY_RUN_TRAIN as TINY_TRAIN
from worker import client
from worker.config import load_config
from worker.execution import execute_stage

pytestmark = pytest.mark.slow


def blank_images(folder, count=4):
    """Uniform grey pictures: after normalisation every pixel is 0, so calibration sees only the
    biases' activation ranges - a deliberately broken calibration set."""
    folder.mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / f"grey_{i}.png"), np.full((96, 96, 3), 128, np.uint8))
    return folder


def search_run_spec(calibration_images):
    return {
        "name": "guided search", "kind": "search",
        "dataset": {"annotations": str(COCO_ANNOTATIONS), "images": str(COCO_IMAGES)},
        "train": TINY_TRAIN, "resolutions": [[64, 64]], "retrain_epochs": 1,
        "prune": {"min_filters": 2, "granularity": 2},
        "search": {"budget_ap": 2.0, "max_iters": 1},
        "evaluate_unpruned": False, "precisions": ["fp32", "int8"],
        "calibration": {"images": str(calibration_images), "batch_size": 2, "batches": 2},
        "benchmark": {"runs": 2, "warmup": 1}, "eval_max_images": 6,
    }


def drain(config, queue):
    """Run queued stages one at a time, as a single worker would."""
    store = client.get_store(config)
    while queue:
        stage = queue.pop(0)
        execute_stage(store, config, stage["id"], stage["attempts"], "test-worker", queue.append)


def submit_and_run(config, queue, spec=None, remedy=None):
    import worker.client as worker_client

    original = worker_client._enqueue_with
    worker_client._enqueue_with = lambda _config: queue.append
    try:
        run_id = client.submit_run(spec, config=config) if spec else client.submit_remedy(*remedy, config=config)
    finally:
        worker_client._enqueue_with = original
    drain(config, queue)
    return run_id


def test_search_run_gate_failure_and_remedy(tmp_path, monkeypatch):
    # A one-minute model scores AP 0, where the gate answers "not meaningful" and offers no
    # remedy (tests/test_guide_gate.py); this test is about the output-agreement verdict and the
    # remedy run, so it lowers the floor (the stages run in this process).
    import bpnet.guide.gate
    monkeypatch.setattr(bpnet.guide.gate, "MEANINGFUL_AP_FLOOR", 0.0)
    config = load_config({"BPNET_STUDIO_HOME": str(tmp_path / "studio")})
    queue = []
    run_id = submit_and_run(config, queue, spec=search_run_spec(blank_images(tmp_path / "blank")))
    run = client.get_run(run_id, config=config)
    failed = [(s["label"], s["error"]) for s in run["stages"] if s["status"] != "completed"]
    assert run["status"] == "completed", failed

    # the search: iterations stored as they finished, the report, the chosen model downloadable
    [search] = client.search_progress(run_id, config=config)
    report = search["report"]
    assert report["status"] == "done" and [t["threshold"] for t in report["trials"]] == [0.05]
    assert [i["threshold"] for i in search["iterations"]] == [t["threshold"] for t in report["trials"]]
    if report["chosen"] is not None:
        assert report["base"]["ap"] - report["chosen"]["ap"] <= 2.0
    names = {a["name"] for a in run["artifacts"] if a["stage_label"] == search["label"]}
    assert {"search.json", "chosen_model.hdf5"} <= names
    assert any(m["kind"] == "search" for m in client.list_models(config=config))

    # the gate: INT8 calibrated on blank images fails on its measured output agreement
    rows = {r["precision"]: r for r in client.list_results([run_id], config=config)}
    assert rows["fp32"]["gate"] is None and rows["fp32"]["branch"] == "search"
    int8 = rows["int8"]
    assert int8["gate"] == "failed", int8["gate_reasons"]
    assert any("output error" in reason and "over" in reason for reason in int8["gate_reasons"])
    assert rows["int8"]["annotations"] == str(COCO_ANNOTATIONS)
    gate_stage = next(s for s in run["stages"] if s["kind"] == "gate")
    gate_files = {a["name"] for a in run["artifacts"] if a["stage_id"] == gate_stage["id"]}
    assert "gate.json" in gate_files
    # the FP32 sibling's and the INT8 result's evaluations were reused, not recomputed
    assert not any(e["verb"] == "evaluate" and e["event"] == "start" and e["stage_id"] == gate_stage["id"]
                   for e in client.run_events(run_id, stage_id=gate_stage["id"], config=config))
    kinds = [r["kind"] for r in int8["gate_remedies"]]
    assert "more_calibration_images" in kinds and "keep_layers_float" in kinds
    qat = next(r for r in int8["gate_remedies"] if r["kind"] == "qat")
    assert qat.get("runnable", True) and qat["params"]["steps"] >= 1

    # one click: calibrate on the training images instead; only the INT8 branch is recomputed
    follow = submit_and_run(config, queue, remedy=(int8["gate_stage_id"], "more_calibration_images"))
    stages = client.get_run(follow, config=config)["stages"]
    computed = {s["kind"] for s in stages if s["status"] == "completed"}
    assert computed == {"export", "evaluate", "gate"}, [(s["label"], s["status"]) for s in stages]
    assert {s["status"] for s in stages if s["kind"] in ("train", "search")} == {"cached"}
    repaired = next(r for r in client.list_results([follow], config=config) if r["precision"] == "int8")
    assert repaired["gate"] == "passed", repaired["gate_reasons"]
    spec = client.get_run(follow, config=config)["spec"]
    assert spec["calibration"]["images"] == str(COCO_IMAGES) and spec["calibration"]["batches"] > 2
    assert json.loads(json.dumps(spec))["kind"] == "search"
