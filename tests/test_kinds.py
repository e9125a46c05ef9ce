"""The stage-kind contracts (worker/kinds): typed Params whose dump is the stored, hashed params,
Outputs naming the files children read. No TensorFlow."""

import json

import pytest

from bpnet.errors import BpnetError
from bpnet.limits import INT8_METHOD_VERSION
from tests.test_runs import run_spec_dict
from worker import client
from worker.kinds import KINDS, Parent, kind_module, parse_outputs, parse_params
from worker.kinds import evaluate, export, gate, prune
from worker.runs import cache_key, expand_run, parse_run_spec


def test_every_kind_module_has_params_outputs_and_run():
    for name, module in KINDS.items():
        assert module.KIND == name
        assert callable(module.run) and module.Params.model_config["extra"] == "forbid"
        # gate gives a verdict, explore a report of many exported models; every other kind a model
        assert "model" in module.Outputs.model_fields or name in ("gate", "explore")
    with pytest.raises(BpnetError, match="stage kind 'nope' is not one of import, train"):
        kind_module("nope")


def test_stored_params_validate_back_to_themselves():
    """The runner validates a stored row into its Params; dumping that gives the row again, so
    the key a worker would compute is the key the run was planned with."""
    nodes = expand_run(parse_run_spec(run_spec_dict(stages=[2, 3], precisions=["fp32", "fp16", "int8"],
                                                    calibration={"batch_size": 2, "batches": 2,
                                                                 "keep_float_layers": ["conv1"]},
                                                    engines=True)), tensorrt=True)
    assert {n["kind"] for n in nodes} == {"train", "prune", "retrain", "export", "engine", "evaluate", "gate"}
    nodes += expand_run(parse_run_spec(run_spec_dict(kind="search", prune_thresholds=[], precisions=["fp32"],
                                                     search={"objective": "latency"})))
    assert "search" in {n["kind"] for n in nodes}
    for node in nodes:
        assert parse_params(node["kind"], node["params"]).key_dict() == node["params"], node["label"]


def test_keys_are_those_of_the_untyped_params_of_earlier_versions():
    # Dicts as the code before worker/kinds stored them, with the keys it computed for them.
    legacy_prune = {"threshold": 0.1, "equalization": "union", "granularity": 8, "min_filters": 16,
                    "normalizer": "max", "excluded_layers": []}
    assert prune.Params(threshold=0.1).key_dict() == legacy_prune
    assert cache_key("prune", legacy_prune, "parent-key") == \
        "bd176f6f6c9f1240322bfcdc3e94b71b98914c7dcde16c886a53e2f1577e24e2"
    int8 = export.Params(input_hw=(64, 64), precision="int8", calibration=export.CalibrationParams(
        images="/data/cal", batch_size=2, batches=2))
    legacy_int8 = int8.key_dict()
    del legacy_int8["calibration"]["int8_method"]
    assert cache_key("export", legacy_int8, "p", ("fp",)) == \
        "befe15e3d3459bc2367e86168f398bd78afbc3e6eb7a7b968c8bb4ce478b8f0d"
    # ... but INT8 stages carry the INT8 method they compute with: an older method's results
    # (bpnet.limits.INT8_METHOD_VERSION) are not served for a newer one
    assert int8.key_dict()["calibration"]["int8_method"] == INT8_METHOD_VERSION
    assert cache_key("export", int8.key_dict(), "p", ("fp",)) != cache_key("export", legacy_int8, "p", ("fp",))
    # options added later stay out of the key while unused
    assert export.Params(input_hw=(64, 64), precision="fp32").key_dict() == {"input_hw": [64, 64],
                                                                             "precision": "fp32"}


def test_params_refuse_unknown_keys_and_out_of_range_values():
    with pytest.raises(BpnetError, match="threshod"):
        parse_params("prune", {"threshod": 0.1})
    with pytest.raises(BpnetError, match="INT8 export needs calibration"):
        parse_params("export", {"input_hw": [64, 64], "precision": "int8"})


def test_an_export_row_cached_before_outputs_named_files_is_still_read():
    legacy = parse_outputs("export", {"model": "model.int8.onnx", "precision": "int8", "num_stages": 2,
                                      "prune_threshold": None})
    assert (legacy.onnx, legacy.int8_tensorrt, legacy.cal_cache, legacy.tensor_file) == (
        "model.onnx", "model.int8_trt.onnx", "model.cal.bin", "calibration_tensor.npy")
    fp32 = parse_outputs("export", {"model": "model.onnx", "precision": "fp32"})
    assert fp32.onnx == "model.onnx" and fp32.int8 is None and fp32.fp16 is None
    named = parse_outputs("export", {"model": "a.onnx", "precision": "fp32", "onnx": "a.onnx"})
    assert named.report is None   # a row that names its files is taken as it is


def test_a_parent_file_that_is_gone_is_a_clear_error(tmp_path):
    parent = Parent("train", tmp_path, parse_outputs("train", {"model": "bpnet_model.hdf5"}))
    with pytest.raises(BpnetError, match="parent train stage's model is missing"):
        parent.model()


def test_the_gate_reuses_an_evaluation_only_of_the_same_exported_file(tmp_path):
    export_dir, eval_dir = tmp_path / "export", tmp_path / "evaluate"
    export_dir.mkdir(), eval_dir.mkdir()
    (eval_dir / "metrics.json").write_text(json.dumps({"AP": 0.5}))
    (eval_dir / "results.json").write_text("[]")
    exported = Parent("export", export_dir, parse_outputs("export", {"model": "model.int8.onnx", "precision": "int8"}))
    evaluation = Parent("evaluate", eval_dir, parse_outputs("evaluate", {"model": "model.int8.onnx"}))
    other = Parent("evaluate", eval_dir, parse_outputs("evaluate", {"model": "model.onnx"}))
    assert not gate.reuse_evaluation(other, exported, tmp_path / "no")
    assert gate.reuse_evaluation(evaluation, exported, tmp_path / "child")
    assert json.loads((tmp_path / "child" / "metrics.json").read_text()) == {"AP": 0.5}


def test_one_evaluation_result_model_for_store_client_and_charts():
    assert client.RESULT_FIELDS == tuple(evaluate.EvaluationResult.model_fields)
    assert set(evaluate.METRIC_KEYS) <= set(client.RESULT_FIELDS)
    row = evaluate.EvaluationResult(AP=0.4, pth=0.1, branch="pruned", stages=3).model_dump()
    assert row["AP"] == 0.4 and row["latency_ms"] is None and set(row) == set(client.RESULT_FIELDS)
