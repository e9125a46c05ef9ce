"""Issue 8 in the job system without TensorFlow: run-spec fields, the gate and search stages in the
DAG, the scheduler waiting for a gate's FP32 sibling, engine routing, remedy specs, the cost
preview per worker kind, and the client rows the dashboard reads."""

import time

import pytest

from bpnet.errors import BpnetError
from tests.conftest import COCO_ANNOTATIONS, COCO_IMAGES, ROOT
from tests.test_runs import env, fake_compute, run_spec_dict, submit  # noqa: F401  (fixture)
from worker import client, costs, scheduler
from worker.config import load_config
from worker.remedies import remedy_spec
from worker.runs import expand_run, parse_run_spec

FAILED = {"passed": False, "status": "failed", "reasons": ["output error 1.9 over the limit of 0.3"],
          "warnings": [], "remedies": [
              {"kind": "more_calibration_images", "title": "more images", "why": "", "params": {"num_images": 100}},
              {"kind": "other_calibrator", "title": "Calibrate with minmax", "why": "",
               "params": {"calibrator": "minmax"}},
              {"kind": "keep_layers_float", "title": "keep", "why": "", "params": {"layers": ["conv1"]}},
              {"kind": "qat", "title": "QAT", "why": "", "params": {"steps": 3}}]}
ADVICE_ONLY = {**FAILED, "remedies": [{"kind": "qat", "title": "QAT", "why": "", "params": {}, "runnable": False}]}


def by_label(nodes):
    return {n["label"]: n for n in nodes}


def test_search_kind_expands_to_a_search_stage_and_rejects_thresholds():
    with pytest.raises(BpnetError, match="picks the thresholds itself"):
        parse_run_spec(run_spec_dict(kind="search"))
    with pytest.raises(BpnetError, match="retrains every trial"):
        parse_run_spec(run_spec_dict(kind="search", prune_thresholds=[], retrain_epochs=0))
    with pytest.raises(BpnetError, match="search.max_iters"):
        parse_run_spec(run_spec_dict(kind="search", prune_thresholds=[], search={"max_iters": 0}))
    spec = parse_run_spec(run_spec_dict(kind="search", prune_thresholds=[], evaluate_unpruned=False,
                                        search={"budget_ap": 1.5, "objective": "latency", "max_iters": 4}))
    nodes = expand_run(spec)
    assert [n["kind"] for n in nodes] == ["train", "search", "export", "evaluate"]
    search = nodes[1]["params"]
    assert search["budget_ap"] == 1.5 and search["max_iters"] == 4 and search["latency"]["input_hw"] == [64, 64]
    assert search["retrain_spec"]["load_graph"] and nodes[3]["params"]["branch"] == "search"
    # another budget is another stage, but the same base model
    other = expand_run(parse_run_spec(run_spec_dict(kind="search", prune_thresholds=[], evaluate_unpruned=False)))
    assert other[0]["key"] == nodes[0]["key"] and other[1]["key"] != nodes[1]["key"]


def test_every_reduced_precision_result_gets_a_gate_reading_its_fp32_sibling():
    nodes = expand_run(parse_run_spec(run_spec_dict(prune_thresholds=[0.1], precisions=["int8", "fp32", "fp16"],
                                                    int8_gate_max_ap_drop=1.0)))
    labels = by_label(nodes)
    gates = [n for n in nodes if n["kind"] == "gate"]
    assert sorted(n["label"] for n in gates) == sorted(
        f"gate s2{tag} 64x64 {p}" for tag in ("", " pth=0.1") for p in ("int8", "fp16"))
    gate = labels["gate s2 pth=0.1 64x64 int8"]
    assert nodes[gate["parent"]]["label"] == "evaluate s2 pth=0.1 64x64 int8"
    assert gate["params"]["inputs"] == {"export": labels["export s2 pth=0.1 64x64 int8"]["key"],
                                        "float_export": labels["export s2 pth=0.1 64x64 fp32"]["key"],
                                        "float_evaluate": labels["evaluate s2 pth=0.1 64x64 fp32"]["key"]}
    assert gate["params"]["threshold_ap"] == 1.0 and gate["params"]["calibrator"] == "entropy"
    # without FP32 the gate evaluates the float model itself
    alone = [n for n in expand_run(parse_run_spec(run_spec_dict(precisions=["int8"]))) if n["kind"] == "gate"]
    assert all(set(n["params"]["inputs"]) == {"export"} for n in alone)


def test_the_gate_waits_for_its_fp32_sibling(env):  # noqa: F811
    store, config, sent = env
    run_id = submit(store, config, sent, run_spec_dict(prune_thresholds=[], precisions=["int8", "fp32"]))
    fake_compute(store, config, store.stage(sent.pop(0)["id"]), sent)          # train
    exports = [s for s in sent if s["kind"] == "export"]
    sent.clear()
    for export in exports:
        fake_compute(store, config, store.stage(export["id"]), sent)
    evaluates = {store.stage(s["id"])["label"]: s for s in sent}
    sent.clear()
    fake_compute(store, config, store.stage(evaluates["evaluate s2 64x64 int8"]["id"]), sent)
    assert sent == []          # INT8 evaluated, but the FP32 sibling is not: the gate waits
    fake_compute(store, config, store.stage(evaluates["evaluate s2 64x64 fp32"]["id"]), sent)
    assert [s["kind"] for s in sent] == ["gate"]
    fake_compute(store, config, store.stage(sent.pop()["id"]), sent)
    assert store.run_status(run_id) == "completed"


def test_engines_only_with_a_tensorrt_worker_and_on_its_queue(tmp_path):
    spec = parse_run_spec(run_spec_dict(prune_thresholds=[], precisions=["fp16"], engines=True))
    assert "engine" not in {n["kind"] for n in expand_run(spec)}
    engines = [n for n in expand_run(spec, tensorrt=True) if n["kind"] == "engine"]
    assert [n["label"] for n in engines] == ["engine s2 64x64 fp16"]
    assert scheduler.choose_queue("engine", []) == "tensorrt"
    assert scheduler.choose_queue("evaluate", []) == "cpu"
    from bench import seed_store
    config = load_config({"BPNET_STUDIO_HOME": str(tmp_path)})
    seed_store.register_worker(config)
    preview = client.preview_run(run_spec_dict(prune_thresholds=[], precisions=["fp16"], engines=True), config=config)
    assert "engine" not in {s["kind"] for s in preview["stages"]}
    assert any("TensorRT engines will not be built" in w for w in preview["warnings"])
    store = client.get_store(config)
    store.register_worker("trt-worker@test", "h", 1, ["cpu", "tensorrt"], {"tensorrt": True})
    preview = client.preview_run(run_spec_dict(prune_thresholds=[], precisions=["fp16"], engines=True), config=config)
    assert [s["label"] for s in preview["stages"] if s["kind"] == "engine"] == ["engine s2 64x64 fp16"]


def gate_and_evaluate(pth=0.1, precision="int8"):
    spec = parse_run_spec(run_spec_dict(prune_thresholds=[0.1, 0.5], precisions=["fp32", "int8"],
                                        stages=[2, 3])).model_dump(mode="json")
    evaluate = {"params": {"precision": precision, "input_hw": [64, 64], "prune_threshold": pth,
                           "stages_label": "s3"}, "result": {"stages": 3}}
    gate = {"label": "gate", "status": "completed", "result": FAILED}
    return spec, evaluate, gate


def test_remedies_narrow_the_run_to_the_gated_result(tmp_path):
    spec, evaluate, gate = gate_and_evaluate()
    follow, title = remedy_spec(spec, evaluate, gate, "other_calibrator", "minmax")
    assert title == "Calibrate with minmax" and follow["calibration"]["calibrator"] == "minmax"
    assert follow["prune_thresholds"] == [0.1] and not follow["evaluate_unpruned"]
    assert follow["precisions"] == ["fp32", "int8"] and follow["stages"] == [3]
    keep, _ = remedy_spec(spec, evaluate, gate, "keep_layers_float")
    assert keep["calibration"]["keep_float_layers"] == ["conv1"]
    # the narrowed run reuses the base, prune and retrain stages of the original
    original = {n["key"] for n in expand_run(parse_run_spec(spec))}
    narrowed = expand_run(parse_run_spec(follow))
    upstream = [n for n in narrowed if n["kind"] in ("train", "prune", "retrain")]
    assert upstream and all(n["key"] in original for n in upstream)
    assert any(n["kind"] == "export" and n["key"] not in original for n in narrowed)
    # more images: the training folder instead of another one, or more batches of the same one
    spec["calibration"]["images"] = str(tmp_path)
    more, _ = remedy_spec(spec, evaluate, gate, "more_calibration_images")
    assert more["calibration"]["images"] == str(COCO_IMAGES) and more["calibration"]["batches"] == 40
    unpruned, _ = remedy_spec(spec, gate_and_evaluate(pth=None)[1], gate, "other_calibrator", "minmax")
    assert unpruned["prune_thresholds"] == [] and unpruned["evaluate_unpruned"]


def test_qat_remedy_reruns_only_the_int8_branch_with_a_qat_export():
    spec, evaluate, gate = gate_and_evaluate()
    follow, title = remedy_spec(spec, evaluate, gate, "qat")
    assert title == "QAT" and follow["calibration"]["qat_steps"] == 3
    original = expand_run(parse_run_spec(spec))
    narrowed = expand_run(parse_run_spec(follow))
    keys = {n["key"] for n in original}
    # train, prune, retrain and the FP32 export + evaluate are the original's; INT8 is new
    assert all(n["key"] in keys for n in narrowed if n["kind"] in ("train", "prune", "retrain"))
    assert all(n["key"] in keys for n in narrowed if n["params"].get("precision") == "fp32")
    int8 = next(n for n in narrowed if n["kind"] == "export" and n["params"]["precision"] == "int8")
    assert int8["key"] not in keys and int8["params"]["calibration"]["qat_steps"] == 3
    retrain = narrowed[int8["parent"]]
    assert retrain["kind"] == "retrain" and retrain["label"] == "retrain s3 pth=0.1"   # the float model
    qat_train = int8["params"]["qat_train_spec"]
    assert qat_train["dataloader"]["image_shape"] == [64, 64] and not qat_train["load_graph"]
    base_rate = narrowed[0]["params"]["train_spec"]["optimizer"]["learning_rate_schedule"]["base_learning_rate"]
    assert qat_train["optimizer"]["learning_rate_schedule"]["base_learning_rate"] == pytest.approx(base_rate / 10)
    gate_node = next(n for n in narrowed if n["kind"] == "gate")
    assert narrowed[gate_node["parent"]]["parent"] == narrowed.index(int8)
    # without qat_steps the export keeps the keys it had before the option existed
    assert "qat_steps" not in next(n for n in original if n["kind"] == "export" and
                                   n["params"]["precision"] == "int8")["params"]["calibration"]


@pytest.mark.parametrize("kind, calibrator, gate_status, result, message", [
    ("qat", None, "completed", ADVICE_ONLY, "advice only"),
    ("other_calibrator", "percentile", "completed", FAILED, "not one this gate offers"),
    ("other_calibrator", "minmax", "running", None, "no verdict yet"),
    ("other_calibrator", "minmax", "completed", {"passed": True, "remedies": []}, "nothing to remedy"),
])
def test_remedies_that_cannot_run_are_refused_with_the_reason(kind, calibrator, gate_status, result, message):
    spec, evaluate, gate = gate_and_evaluate()
    gate.update(status=gate_status, result=result)
    with pytest.raises(BpnetError, match=message):
        remedy_spec(spec, evaluate, gate, kind, calibrator)


def evaluate_params(input_hw, max_images=None):
    """Stored params of an evaluate stage (what `expand_run` writes)."""
    from bpnet.specs import InferSpec
    from worker.kinds import evaluate

    return evaluate.Params(infer_spec=InferSpec(input_shape=input_hw), annotations=str(COCO_ANNOTATIONS),
                           images=str(COCO_IMAGES), benchmark=evaluate.BenchmarkOptions(), precision="fp32",
                           max_images=max_images, input_hw=input_hw, stages_label="s2").key_dict()


def test_cost_preview_scales_past_rates_by_work_on_the_same_worker_kind():
    train = {"num_epoch": 10, "steps_per_epoch": 5, "model": {"stages": 2},
             "dataloader": {"batch_size": 4, "image_shape": [64, 64],
                            "dataset": {"annotations": str(COCO_ANNOTATIONS), "images": str(COCO_IMAGES)}}}
    history = [{"kind": "train", "queue": "cpu", "params": {"train_spec": train}, "result": None, "duration_s": 100.0},
               {"kind": "train", "queue": "gpu", "params": {"train_spec": train}, "result": None, "duration_s": 5.0},
               {"kind": "evaluate", "queue": "cpu", "params": evaluate_params((64, 64)),
                "result": {"num_images": 10}, "duration_s": 2.0}]
    planned = [{"kind": "retrain", "label": "retrain", "params": {"train_spec": {**train, "num_epoch": 5}}},
               {"kind": "evaluate", "label": "eval", "params": evaluate_params((128, 128), max_images=20)},
               {"kind": "prune", "label": "prune", "params": {"threshold": 0.1}}]
    cpu = costs.estimate_run(planned, history, lambda kind: "cpu")
    assert cpu["estimate_s"] == pytest.approx(50.0 + 2.0 * 2 * 4)     # half the epochs; 2x images, 4x pixels
    assert cpu["unknown"] == ["prune"] and "prune" in cpu["basis"]
    gpu = costs.estimate_run(planned, history, lambda kind: "gpu" if kind == "retrain" else "cpu")
    assert gpu["estimate_s"] == pytest.approx(2.5 + 16.0)
    assert costs.estimate_run(planned[2:], history, lambda kind: "cpu")["estimate_s"] is None


def test_cost_preview_estimates_a_quantize_stage_from_past_ones():
    from bpnet.guide.accuracy_control import AccuracyControlOptions

    from worker.kinds import quantize

    def params(hw, **control):
        return quantize.Params(input_hw=hw, accuracy_control=AccuracyControlOptions(**control), infer_spec={},
                               annotations=str(COCO_ANNOTATIONS), images=str(COCO_IMAGES)).key_dict()

    history = [{"kind": "quantize", "queue": "cpu", "params": params([64, 64]), "result": None, "duration_s": 50.0}]
    # float + 4 calibrators before; float + 1 calibrator + 2 ranking checks now, at 4x the pixels
    planned = [{"kind": "quantize", "label": "q", "params": params([128, 128], calibrators=["minmax"],
                                                                    validate_ranking=2)}]
    estimate = costs.estimate_run(planned, history, lambda kind: "cpu")
    assert estimate["estimate_s"] == pytest.approx(50.0 * 4 / 5 * 4)
    assert estimate["unknown"] == []


def test_client_rows_carry_gate_evaluation_data_models_and_eta(tmp_path):
    from bench import seed_store
    config = load_config({"BPNET_STUDIO_HOME": str(tmp_path)})
    run_id = seed_store.seed_finished_run(config, thresholds=(0.1,))
    store = client.get_store(config)
    gate = next(s for s in store.stages(run_id) if s["kind"] == "gate" and "pth=0.1" in s["label"])
    store.update_stage(gate["id"], result=FAILED)
    rows = client.list_results([run_id], config=config)
    failed = [r for r in rows if r["gate"] == "failed"]
    assert len(failed) == 1 and failed[0]["precision"] == "int8" and failed[0]["pth"] == 0.1
    assert failed[0]["gate_reasons"] == FAILED["reasons"] and failed[0]["gate_stage_id"] == gate["id"]
    assert {r["gate"] for r in rows if r["precision"] == "fp32"} == {None}
    assert {(r["annotations"], r["images"]) for r in rows} == {(str(COCO_ANNOTATIONS), str(COCO_IMAGES))}
    models = client.list_models(config=config)
    assert {m["kind"] for m in models} == {"train", "retrain"} and all(m["path"].is_file() for m in models)
    # a running stage's ETA (from its progress events) is the run's
    running = seed_store.create_run(config, seed_store.tiny_run_spec("synthetic running"))
    first = store.stages(running)[0]
    store.update_stage(first["id"], status="running", eta_s=42.0, started_at=time.time())
    etas = {r["id"]: r["eta_s"] for r in client.list_runs(config=config)}
    assert etas[running] == 42.0 and etas[run_id] is None


def test_the_new_run_fields_default_to_the_old_behaviour():
    spec = parse_run_spec(run_spec_dict(), base_dir=ROOT)
    assert spec.kind == "sweep" and spec.int8_gate_max_ap_drop == 2.0 and not spec.engines
