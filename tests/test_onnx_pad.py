"""Channel padding for ONNX Runtime's CPU kernels (bpnet.onnx_pad): outputs unchanged, the
padded counts are multiples of the block, INT8 calibration still works, `--optimize_for trt`
leaves the graph alone, and parameter counts exclude the zero channels."""

import json

import numpy as np
import onnx
import pytest

from bpnet.onnx_graph import onnx_session
from bpnet.onnx_pad import choose_padding, pad_concat_channels, padded_channels

HW = (32, 48)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny 3-stage model (concatenations of 16 + 19 + 38 = 73 channels) and its FP32 ONNX."""
    from bpnet.export import export_onnx
    from tests.tiny_models import save_tiny_model

    folder = tmp_path_factory.mktemp("pad")
    model = save_tiny_model(folder / "tiny.hdf5", stages=3, seed=2, bias=0.02)
    export_onnx(model, folder / "tiny.onnx", HW)
    return model, folder / "tiny.onnx"


def outputs(model_or_path, batch):
    return onnx_session(model_or_path).run(["heatmaps", "pafs"], {"input": batch})


def batch(n=2, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, *HW, 3)).astype(np.float32)


def concat_reader_channels(model):
    """In-channels of every conv that reads a Concat."""
    init = {i.name: i for i in model.graph.initializer}
    concats = {n.output[0] for n in model.graph.node if n.op_type == "Concat"}
    return [int(init[n.input[1]].dims[1]) for n in model.graph.node if n.op_type == "Conv" and n.input[0] in concats]


@pytest.mark.slow
@pytest.mark.parametrize("block", [8, 16])
def test_padding_keeps_the_outputs_and_reaches_the_block(exported, block):
    _, path = exported
    original = onnx.load(str(path))
    padded = onnx.load(str(path))
    assert concat_reader_channels(original) == [73] * 4
    changes = pad_concat_channels(padded, block)
    onnx.checker.check_model(padded)
    expected = 80 if block == 8 else 80
    assert [c["padded_to"] for c in changes] == [expected, expected]
    assert concat_reader_channels(padded) == [expected] * 4
    assert all(count % 8 == 0 for count in concat_reader_channels(padded))
    for a, b in zip(outputs(original, batch()), outputs(padded, batch())):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())
    added = padded_channels(padded)
    assert sum(v[0] for v in added.values()) == 2 * (expected - 73)      # zero filters
    assert sum(v[1] for v in added.values()) == 4 * (expected - 73)      # zero input channels
    assert pad_concat_channels(padded, 8) == []    # already aligned: nothing more to do


@pytest.mark.slow
def test_parameter_and_flop_counts_exclude_the_padding(exported, tmp_path):
    from bpnet.benchmark import onnx_complexity

    _, path = exported
    padded = onnx.load(str(path))
    pad_concat_channels(padded, 16)
    onnx.save(padded, str(tmp_path / "padded.onnx"))
    assert onnx_complexity(tmp_path / "padded.onnx", HW) == pytest.approx(onnx_complexity(path, HW))


@pytest.mark.slow
def test_int8_from_a_padded_graph_matches_int8_from_the_original(exported, tmp_path):
    from bpnet import calibrate

    _, path = exported
    padded_path = tmp_path / "padded.onnx"
    padded = onnx.load(str(path))
    pad_concat_channels(padded, 8)
    onnx.save(padded, str(padded_path))
    data = np.random.default_rng(4).uniform(-0.5, 0.5, (4, *HW, 3)).astype(np.float32)
    results = []
    for source in (path, padded_path):
        calibration = calibrate.calibrate_onnx(source, data, ("minmax",))["minmax"]
        out = tmp_path / f"{source.stem}.int8.onnx"
        calibrate.write_qdq_onnx(source, out, calibration, target="ort")
        results.append(outputs(out, batch()))
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=0, atol=0.02 * np.abs(a).max())


@pytest.mark.slow
def test_choose_padding_for_trt_leaves_the_file_and_cpu_measures(exported, tmp_path):
    _, path = exported
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(path.read_bytes())
    report = choose_padding(copy, "trt")
    assert report["padded"] is False and "TensorRT" in report["reason"]
    assert copy.read_bytes() == path.read_bytes()
    report = choose_padding(copy, "cpu", rounds=2)
    assert set(report["measured_ms"]) == {"unpadded", "block 8"}    # 73 -> 80 for both blocks
    assert report["machine"]["cpu"] and "load_average" in report["machine"]
    padded_now = bool(padded_channels(onnx.load(str(copy))))
    assert padded_now == report["padded"]   # the file holds what the report says was chosen
    for a, b in zip(outputs(path, batch()), outputs(copy, batch())):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())


@pytest.mark.slow
def test_export_verb_records_the_layout_choice(exported, tmp_path, capsys):
    from bpnet.cli import main

    model, _ = exported
    out = tmp_path / "verb.onnx"
    assert main(["export", "-m", str(model), "-o", str(out), "-d", f"{HW[0]},{HW[1]},3", "--optimize_for", "trt"]) == 0
    report = json.loads((tmp_path / "verb.export.json").read_text())
    assert report["channel_padding"]["optimize_for"] == "trt" and not report["channel_padding"]["padded"]
    assert "channel padding: none" in capsys.readouterr().out
    from bpnet.errors import BpnetError
    from bpnet.export import export_model

    with pytest.raises(BpnetError, match="--optimize_for: 'gpu' is not one of cpu, trt"):
        export_model(model, out, HW, optimize_for="gpu")
