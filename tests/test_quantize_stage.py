"""INT8 with accuracy control as the job system runs it: `accuracy_control:` in a run spec puts a
quantize stage where the INT8 export would be; its evaluate and gate read it like an export."""

import json

import pytest

from bpnet.errors import BpnetError
from tests.conftest import tiny_train_spec_dict
from tests.test_runs import run_spec_dict
from tests.tiny_models import save_tiny_model
from worker.runs import expand_run, parse_run_spec


def spec_with(**overrides):
    return parse_run_spec(run_spec_dict(**{"prune_thresholds": [], "precisions": ["fp32", "int8"],
                                           "accuracy_control": {"max_drop": 1.0}, **overrides}))


def test_int8_with_accuracy_control_is_a_quantize_stage():
    nodes = expand_run(spec_with())
    kinds = [n["kind"] for n in nodes]
    assert "quantize" in kinds and kinds.count("export") == 1          # the FP32 export only
    quantize = next(n for n in nodes if n["kind"] == "quantize")
    assert quantize["params"]["accuracy_control"]["max_drop"] == 1.0
    # the calibration images are the evaluation images: chosen from the annotations instead
    assert quantize["params"]["calibration_images"] is None
    evaluate = next(n for n in nodes if n["kind"] == "evaluate" and nodes[n["parent"]]["kind"] == "quantize")
    gate = next(n for n in nodes if n["kind"] == "gate" and n["parent"] == nodes.index(evaluate))
    assert gate["params"]["inputs"]["export"] == quantize["key"] and gate["params"]["calibrator"] is None
    other = expand_run(spec_with(accuracy_control={"max_drop": 0.5}))
    assert next(n for n in other if n["kind"] == "quantize")["key"] != quantize["key"]


def test_engine_stage_after_quantize_reads_its_files_and_float_layers(tmp_path):
    from worker.kinds import engine, quantize

    nodes = expand_run(spec_with(engines=True), tensorrt=True)
    built = [n for n in nodes if n["kind"] == "engine"]
    assert [nodes[n["parent"]]["kind"] for n in built] == ["export", "quantize"]
    assert not [n for n in expand_run(spec_with(engines=True)) if n["kind"] == "engine"]   # no TensorRT worker
    outputs = quantize.Outputs(model="model.int8.onnx", precision="int8", onnx="model.onnx",
                               float_layers=("conv_a", "conv_b"), num_calibration_images=12)
    params = engine.Params(**next(n for n in built if nodes[n["parent"]]["kind"] == "quantize")["params"])
    # TensorRT 8-10 calibrates from the stage's own tensor file (12 images) only without a cache
    assert engine.calibration_batches(params, outputs) == (1, 12)
    assert engine.calibration_batches(params, outputs.model_copy(update={"num_calibration_images": None})) == \
        (params.calibration.batch_size, params.calibration.batches)


@pytest.mark.parametrize("overrides, needle", [
    ({"precisions": ["fp32"]}, "add int8 to precisions"),
    ({"accuracy_control": {"max_drop": -1}}, "accuracy_control.max_drop"),
    ({"calibration": {"batch_size": 2, "batches": 2, "qat_steps": 5}}, "give one"),
    ({"accuracy_control": {"calibrators": ["kl"]}}, "calibrator 'kl'"),
])
def test_bad_accuracy_control_specs(overrides, needle):
    with pytest.raises(BpnetError, match=needle):
        spec_with(**overrides)


@pytest.mark.slow
def test_quantize_stage_writes_an_export_its_children_read(tmp_path):
    from worker.stages import parent_of, run_stage

    float_path = save_tiny_model(tmp_path / "float.hdf5", bias=0.05)
    spec = spec_with(model=str(float_path), train=tiny_train_spec_dict(), train_spec=None,
                     resolutions=[[32, 32]],
                     accuracy_control={"max_drop": 1.0, "calibrators": ["minmax"], "num_calibration_images": 2,
                                       "max_eval_images": 3, "latency_runs": 1})
    nodes = expand_run(spec)
    stage = next(n for n in nodes if n["kind"] == "quantize")
    out_dir = tmp_path / "quantize"
    out_dir.mkdir()
    parent = parent_of("import", tmp_path, {"model": float_path.name, "num_stages": 2})
    outputs, result, metrics = run_stage(stage, parent, out_dir, lambda e: None)
    assert outputs["model"] == "model.int8.onnx" and outputs["onnx"] == "model.onnx" and result is None
    for name in ("model.int8.onnx", "model.onnx", "model.int8_trt.onnx", "model.cal.bin", "accuracy_control.json"):
        assert (out_dir / name).is_file()
    report = json.loads((out_dir / "accuracy_control.json").read_text())
    assert report["num_evaluations"] == 1 and metrics["float_layers"] == 0 and metrics["int8_evaluations"] == 1
    assert not outputs["float_layers"] and outputs["num_calibration_images"] == 2


def test_a_result_of_an_accuracy_controlled_model_names_its_float_layers_and_budget(tmp_path):
    from worker.kinds import evaluate, quantize
    from worker.kinds.base import Parent

    (tmp_path / quantize.REPORT_FILE).write_text(json.dumps({"max_drop": 0.5, "final": {"float_layers": 2}}))
    outputs = quantize.Outputs(model="model.int8.onnx", precision="int8", onnx="model.onnx")
    assert evaluate.accuracy_control_fields(Parent("quantize", tmp_path, outputs)) == \
        {"float_layers": 2, "int8_max_drop": 0.5}
    assert evaluate.accuracy_control_fields(Parent("export", tmp_path, outputs)) == {}
