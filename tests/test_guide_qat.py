"""Quantization-aware fine-tuning (`bpnet.guide.qat`): fake-quant model, fine-tune, Q/DQ ONNX."""

from pathlib import Path

import numpy as np
import pytest

from bpnet.errors import BpnetError
from bpnet.specs import TrainSpec, parse_spec
from tests.conftest import tiny_train_spec_dict
from tests.tiny_models import save_tiny_model


def qat_spec():
    return parse_spec(TrainSpec, tiny_train_spec_dict(**{
        "optimizer.learning_rate_schedule.base_learning_rate": 1e-4}), "qat spec")


@pytest.mark.slow
def test_qat_finetunes_and_exports_a_qdq_onnx_close_to_the_float_model(tmp_path):
    import bpnet  # noqa: F401
    import onnx
    import tensorflow as tf

    from bpnet.export import parity_batch

    from bpnet.onnx_graph import onnx_session
    from bpnet.fileio import read_json
    from bpnet.guide.gate_run import run_remedy
    from bpnet.guide.qat import count_fake_quant_layers, quantize_bodyposenet
    from bpnet.model import load_model, num_stages, stage_model

    float_path = save_tiny_model(tmp_path / "float.hdf5", bias=0.05)
    float_model = load_model(float_path)
    qat_model = quantize_bodyposenet(float_model)
    assert count_fake_quant_layers(qat_model) > len([l for l in float_model.layers if "conv" in l.name])
    assert num_stages(qat_model) == 2

    events = []
    # Through the gate's remedy entry point, as the CLI/worker would run it.
    onnx_path = run_remedy({"kind": "qat", "params": {"steps": 3}}, None, tmp_path / "model.qat.onnx",
                           progress=events.append, float_model=float_path, train_spec=qat_spec())
    summary = read_json(tmp_path / "model.qat_qat_run" / "qat_summary.json", "qat summary")
    assert Path(summary["onnx"]) == onnx_path == tmp_path / "model.qat.onnx"
    assert summary["steps"] == 3 and len(summary["losses"]) == 3
    assert all(np.isfinite(summary["losses"]))
    events = [e for e in events if e["stage"] == "qat"]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    assert events[0]["calibrated_ranges"] >= 10   # activation ranges start from the data, not [-6, 6]

    proto = onnx.load(summary["onnx"])
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    batch = parity_batch((64, 64))
    heat, pafs = onnx_session(summary["onnx"]).run(["heatmaps", "pafs"], {"input": batch})
    float_heat, float_pafs = [np.asarray(o) for o in stage_model(float_model)(batch, training=False)]
    assert heat.shape == float_heat.shape == (2, 8, 8, 19) and pafs.shape == (2, 8, 8, 38)
    # Three small steps barely move the weights: what differs is mostly int8 rounding.
    for qat_out, float_out in ((heat, float_heat), (pafs, float_pafs)):
        error = np.linalg.norm(qat_out - float_out) / np.linalg.norm(float_out - float_out.mean())
        print(f"qat vs float output error {error:.3f}")
        assert error < 0.3, error   # the gate's output-agreement limit; measured 0.17-0.18
    tf.keras.backend.clear_session()


def test_qat_refuses_missing_model_and_bad_steps(tmp_path):
    from bpnet.guide.gate_run import run_remedy
    from bpnet.guide.qat import quantization_aware_finetune

    with pytest.raises(BpnetError, match="model_path.*not found"):
        quantization_aware_finetune(tmp_path / "nope.hdf5", qat_spec(), tmp_path / "out")
    (tmp_path / "m.hdf5").write_bytes(b"x")
    with pytest.raises(BpnetError, match="steps: 0"):
        quantization_aware_finetune(tmp_path / "m.hdf5", qat_spec(), tmp_path / "out", steps=0)
    with pytest.raises(BpnetError, match="float_model.*train_spec"):
        run_remedy({"kind": "qat", "params": {}}, None, tmp_path / "o.onnx", float_model=tmp_path / "m.hdf5")
