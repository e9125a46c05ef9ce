"""The guide's engine on real models: the gate on real INT8 exports, the search's prune/retrain loop."""

import json

import numpy as np
import pytest

from conftest import COCO_ANNOTATIONS, COCO_IMAGES, tiny_train_spec_dict

INPUT_HW = (64, 64)
EVAL_IMAGES = 8


@pytest.fixture(scope="module")
def infer_spec():
    from bpnet.specs import InferSpec, parse_spec

    return parse_spec(InferSpec, {"input_shape": list(INPUT_HW)}, "test inference spec")


@pytest.fixture(scope="module")
def int8_models(tiny_trained_model, tmp_path_factory):
    """(float ONNX, INT8 calibrated on real images, INT8 calibrated on blank images)."""
    from bpnet import calibrate
    from bpnet.export import export_onnx

    folder = tmp_path_factory.mktemp("gate_models")
    float_onnx = folder / "float.onnx"
    export_onnx(tiny_trained_model, float_onnx, INPUT_HW)
    real = calibrate.build_calibration_tensor(COCO_IMAGES, INPUT_HW, batch_size=4, batches=2)
    # Grey images (all zeros after normalisation): every activation range is the biases' alone.
    blank = np.zeros_like(real)
    paths = []
    for name, data in (("good", real), ("blank", blank)):
        calibration = calibrate.calibrate_onnx(float_onnx, data, ("entropy",))["entropy"]
        paths.append(calibrate.write_qdq_onnx(float_onnx, folder / f"{name}.int8.onnx", calibration))
    return float_onnx, *paths


@pytest.mark.slow
def test_gate_passes_a_good_calibration_and_fails_a_blank_one(tiny_trained_model, int8_models, infer_spec,
                                                              tmp_path, monkeypatch):
    import bpnet.guide.gate
    from bpnet.guide.gate_run import run_gate, run_remedy

    # The tiny model finds nobody (AP 0), which the gate calls "not meaningful"; this test is about
    # the output-agreement and remedy machinery, so the AP floor is lifted for it.
    monkeypatch.setattr(bpnet.guide.gate, "MEANINGFUL_AP_FLOOR", 0.0)

    from bpnet import calibrate

    float_onnx, good, blank = int8_models
    common = dict(annotations=COCO_ANNOTATIONS, images_dir=COCO_IMAGES, infer_spec=infer_spec,
                  max_images=EVAL_IMAGES, float_onnx=float_onnx, parent_eval_dir=tmp_path / "parent")
    passed = run_gate(tiny_trained_model, good, out_dir=tmp_path / "good", **common)
    failed = run_gate(tiny_trained_model, blank, out_dir=tmp_path / "blank", **common)
    assert passed["passed"], passed["reasons"]
    assert passed["precision"] == "int8" and passed["remedies"] == []
    assert not failed["passed"] and failed["status"] == "failed"
    assert failed["output_error"] > 2 * passed["output_error"]
    saved = json.loads((tmp_path / "blank" / "gate.json").read_text())
    assert saved["status"] == "failed" and "keypoint_errors" in saved
    # The failed INT8 model gets a layer ranking and a runnable keep-in-FP32 remedy.
    keep = next(r for r in failed["remedies"] if r["kind"] == "keep_layers_float")
    assert keep["params"]["layers"] == [r["layer"] for r in failed["sensitivity"]["layers"][:3]]
    # A model with more quantized layers than the gate ranks one by one: verdict and the other
    # remedies at once, no ranking (the bundled network's 201 layers would take 15-60 minutes).
    import bpnet.guide.gate_run
    monkeypatch.setattr(bpnet.guide.gate_run, "GATE_MAX_RANKED_LAYERS", 1)
    large = run_gate(tiny_trained_model, blank, out_dir=tmp_path / "large", **common)
    assert large["status"] == "failed" and "layers" not in large["sensitivity"]
    assert large["sensitivity"]["num_layers"] == len(failed["sensitivity"]["layers"])
    assert any("layer ranking skipped" in w for w in large["warnings"])
    assert {r["kind"] for r in large["remedies"]} == {r["kind"] for r in failed["remedies"]} - {"keep_layers_float"}
    monkeypatch.undo()
    monkeypatch.setattr(bpnet.guide.gate, "MEANINGFUL_AP_FLOOR", 0.0)
    repaired = run_remedy(keep, float_onnx, tmp_path / "repaired.int8.onnx", qdq_model=blank)
    again = run_gate(tiny_trained_model, repaired, out_dir=tmp_path / "repaired", rank_layers=False, **common)
    assert again["output_error"] < failed["output_error"]
    # Another calibrator on real images gives a model that passes.
    data = calibrate.build_calibration_tensor(COCO_IMAGES, INPUT_HW, batch_size=4, batches=2)
    minmax = run_remedy({"kind": "other_calibrator", "params": {"calibrator": "minmax"}}, float_onnx,
                        tmp_path / "minmax.int8.onnx", cal_data=data)
    assert run_gate(tiny_trained_model, minmax, out_dir=tmp_path / "minmax", rank_layers=False,
                    **common)["passed"]


@pytest.mark.slow
def test_search_runs_prune_retrain_evaluate_within_budget_and_reuses_trials(tiny_trained_model, infer_spec,
                                                                            tmp_path, monkeypatch):
    from bpnet.guide.search_run import search_prune_threshold
    from bpnet.specs import TrainSpec, parse_spec

    retrain = parse_spec(TrainSpec, tiny_train_spec_dict(**{"steps_per_epoch": 2}), "retrain spec")
    events = []
    arguments = dict(base_model=tiny_trained_model, train_spec=retrain, annotations=COCO_ANNOTATIONS,
                     images_dir=COCO_IMAGES, infer_spec=infer_spec, out_dir=tmp_path / "search",
                     budget_ap=2.0, max_iters=3, max_images=EVAL_IMAGES,
                     prune_options={"granularity": 2, "min_filters": 2})
    report = search_prune_threshold(**arguments, progress=events.append)
    assert report["status"] == "done" and 1 <= len(report["trials"]) <= 3
    base_ap = report["base"]["ap"]
    for trial in report["trials"]:
        assert trial["artifacts"]["params"] <= report["base"]["size"]
    assert min(t["size"] for t in report["trials"]) < report["base"]["size"]
    if report["chosen"] is not None:
        assert base_ap - report["chosen"]["ap"] <= 2.0
        assert report["chosen_model"].endswith("bpnet_model.hdf5")
    iterations = [e for e in events if e["stage"] == "search" and e["event"] == "iteration"]
    assert len(iterations) == len(report["trials"])
    assert json.loads((tmp_path / "search" / "search.json").read_text())["status"] == "done"

    # The same search again: every trial comes from the cache, nothing is pruned or retrained.
    import bpnet.prune.model_file
    import bpnet.train

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached trial was recomputed")

    monkeypatch.setattr(bpnet.train, "train", must_not_run)
    monkeypatch.setattr(bpnet.prune.model_file, "prune_model_file", must_not_run)
    again = search_prune_threshold(**arguments)
    assert [t["threshold"] for t in again["trials"]] == [t["threshold"] for t in report["trials"]]


def test_search_input_errors_are_named(tiny_train_spec_path_free, tmp_path, infer_spec):
    from bpnet.errors import BpnetError
    from bpnet.guide.search_run import search_prune_threshold

    model = tmp_path / "m.hdf5"
    with pytest.raises(BpnetError, match="base model not found"):
        search_prune_threshold(model, tiny_train_spec_path_free, COCO_ANNOTATIONS, COCO_IMAGES, infer_spec,
                               tmp_path)
    model.write_bytes(b"x")
    for kwargs, message in (({"objective": "flops"}, "objective 'flops'"),
                            ({"objective": "latency"}, "needs latency options"),
                            ({"max_iters": 0}, "max_iters"), ({"budget_ap": -1}, "AP budget")):
        with pytest.raises(BpnetError, match=message):
            search_prune_threshold(model, tiny_train_spec_path_free, COCO_ANNOTATIONS, COCO_IMAGES,
                                   infer_spec, tmp_path, **kwargs)


@pytest.fixture
def tiny_train_spec_path_free():
    from bpnet.specs import TrainSpec, parse_spec

    return parse_spec(TrainSpec, tiny_train_spec_dict(), "spec")


def test_gate_input_errors_are_named(tmp_path, infer_spec):
    from bpnet.errors import BpnetError
    from bpnet.guide.gate_run import run_gate, run_remedy

    with pytest.raises(BpnetError, match="float parent model not found"):
        run_gate(tmp_path / "a.hdf5", tmp_path / "b.onnx", COCO_ANNOTATIONS, COCO_IMAGES, infer_spec, tmp_path)
    with pytest.raises(BpnetError, match="cannot be run here"):
        run_remedy({"kind": "qat"}, tmp_path / "f.onnx", tmp_path / "o.onnx")
    with pytest.raises(BpnetError, match="needs calibration images"):
        run_remedy({"kind": "other_calibrator", "params": {}}, tmp_path / "f.onnx", tmp_path / "o.onnx")
