"""The QAT remedy as the job system runs it: a run spec with `calibration.qat_steps` plans an INT8
export that fine-tunes its parent model, and the worker's export stage leaves the float ONNX (the
gate's reference) beside the fine-tuned Q/DQ model."""

import pytest

from tests.conftest import tiny_train_spec_dict
from tests.test_runs import run_spec_dict
from tests.tiny_models import save_tiny_model
from worker.runs import expand_run, parse_run_spec


@pytest.mark.slow
def test_export_stage_with_qat_steps_fine_tunes_and_writes_float_and_int8_onnx(tmp_path):
    import onnx

    from worker.stages import parent_of, run_stage

    float_path = save_tiny_model(tmp_path / "float.hdf5", bias=0.05)
    spec = parse_run_spec(run_spec_dict(model=str(float_path), train=tiny_train_spec_dict(),
                                        train_spec=None, prune_thresholds=[], precisions=["fp32", "int8"],
                                        calibration={"batch_size": 2, "batches": 2, "qat_steps": 2}))
    nodes = expand_run(spec)
    export = next(n for n in nodes if n["kind"] == "export" and n["params"]["precision"] == "int8")
    parent = nodes[export["parent"]]
    assert parent["kind"] == "import"
    out_dir = tmp_path / "export"
    out_dir.mkdir()
    events = []
    parent_stage = parent_of("import", tmp_path, {"model": float_path.name, "num_stages": 2})
    outputs, result, metrics = run_stage(export, parent_stage, out_dir, events.append)
    assert outputs["model"] == "model.int8.onnx" and outputs["qat_steps"] == 2 and result is None
    assert (out_dir / "model.onnx").is_file()
    ops = [n.op_type for n in onnx.load(out_dir / "model.int8.onnx").graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    assert any(e.get("stage") == "qat" and e.get("event") == "done" for e in events)
    assert metrics["qat_steps"] == 2 and metrics["max_abs_diff"] < 1e-3
