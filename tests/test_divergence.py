"""The divergence finder: per-tensor agreement of two versions of one graph (Polygraphy runs them)."""

import numpy as np
import pytest

from bpnet.errors import BpnetError
from bpnet.guide.divergence import first_divergence, find_divergence, largest_jump, tensor_agreement, with_jumps
from tests.tiny_models import CHAIN_HARMFUL, build_chain_onnx


def images(count, seed=1):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, size=(count, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from bpnet import calibrate

    folder = tmp_path_factory.mktemp("div")
    float_path = build_chain_onnx(folder / "float.onnx")
    calibration = calibrate.calibrate_onnx(float_path, images(8), ("minmax",))["minmax"]
    int8_path = calibrate.write_qdq_onnx(float_path, folder / "int8.onnx", calibration)
    return float_path, int8_path, folder


def test_agreement_measures():
    a = np.array([1.0, 2.0, 3.0])
    assert tensor_agreement(a, a) == {"relative_error": 0.0, "cosine": 1.0, "max_abs_error": 0.0}
    row = tensor_agreement(a, -a)
    assert row["cosine"] == pytest.approx(-1.0) and row["relative_error"] == pytest.approx(2.0)
    assert tensor_agreement(np.zeros(3), np.zeros(3))["cosine"] == 1.0


def test_first_divergence_and_jump_on_rows():
    rows = [{"tensor": "a", "relative_error": 0.01, "cosine": 0.999},
            {"tensor": "b", "relative_error": 0.15, "cosine": 0.97},
            {"tensor": "c", "relative_error": 0.9, "cosine": 0.5}]
    assert first_divergence(rows)["tensor"] == "b"                 # cosine below 0.98
    assert first_divergence(rows, min_cosine=0.9)["tensor"] == "c"
    jumped = with_jumps(rows, {"b": ["a"], "c": ["b"]})
    assert [round(r["jump"], 2) for r in jumped] == [0.01, 0.14, 0.75]
    assert largest_jump(jumped)["tensor"] == "c"


def test_names_the_harmful_layer(chain, tmp_path):
    float_path, int8_path, _ = chain
    report = find_divergence(float_path, int8_path, images(4, seed=3), out_path=tmp_path / "d.json")
    assert report["first_divergence"]["layer"] == f"conv{CHAIN_HARMFUL[0]}"
    assert report["largest_jump"]["layer"] in {f"conv{k}" for k in CHAIN_HARMFUL}
    before = [r for r in report["rows"] if r["layer"] in {f"conv{k}" for k in range(CHAIN_HARMFUL[0])}]
    assert before and all(r["relative_error"] < 0.2 for r in before)
    assert (tmp_path / "d.json").is_file()


def test_identical_graphs_agree(chain):
    float_path, _, _ = chain
    report = find_divergence(float_path, float_path, images(2))
    assert report["first_divergence"] is None and all(r["relative_error"] == 0 for r in report["rows"])


def test_fp16_stays_within_tolerance(chain):
    from bpnet.export import to_fp16

    float_path, _, folder = chain
    fp16 = to_fp16(float_path, folder / "fp16.onnx")
    report = find_divergence(float_path, fp16, images(2))
    assert report["num_compared"] >= 12 and report["first_divergence"] is None


@pytest.mark.tensorrt
def test_tensorrt_build_agrees_with_onnx_runtime(chain):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (no NVIDIA GPU): the ONNX Runtime "
                                           "vs TensorRT comparison cannot run")
    float_path, _, _ = chain
    report = find_divergence(float_path, float_path, images(2), candidate_backend="tensorrt")
    assert report["num_compared"] >= 12 and report["first_divergence"] is None


def test_tensorrt_missing_is_a_clear_error(chain):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed: the missing-TensorRT message does not apply")
    except ImportError:
        pass
    float_path, int8_path, _ = chain
    with pytest.raises(BpnetError, match="tensorrt package and an NVIDIA GPU"):
        find_divergence(float_path, int8_path, images(1), candidate_backend="tensorrt")


def test_unrelated_graphs_are_refused(chain, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    float_path, _, _ = chain
    other = tmp_path / "other.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"], name="r")], "o",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16, 16, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(other))
    with pytest.raises(BpnetError, match="share no tensor names"):
        find_divergence(float_path, other, images(1))


def test_divergence_command(chain, coco_mini, tmp_path, capsys):
    from bpnet.cli import main

    float_path, int8_path, _ = chain
    infer = tmp_path / "infer.yaml"
    infer.write_text("input_shape: [16, 16]\n")
    args = ["divergence", "-r", str(float_path), "-i", str(coco_mini[1]), "--infer_spec", str(infer),
            "--num_images", "2", "-o", str(tmp_path / "d.json")]
    assert main([*args, "-m", str(int8_path)]) == 1
    assert f"first layer beyond tolerance: conv{CHAIN_HARMFUL[0]}" in capsys.readouterr().out
    assert main([*args, "-m", str(float_path)]) == 0
    assert "all tensors within tolerance" in capsys.readouterr().out


def test_layers_back_in_float_are_compared_as_their_readers_see_them(chain):
    """Returning a layer to float rewires it to the pre-Q tensor, which ONNX Runtime's quantizer
    left un-clamped (it folded the Relu into the Q): the comparison must clamp it again, or the
    tensor looks broken although the model is fine."""
    from bpnet.guide.sensitivity import keep_layers_float

    float_path, int8_path, folder = chain
    repaired = keep_layers_float(int8_path, folder / "repaired.onnx", [f"conv{k}" for k in CHAIN_HARMFUL],
                                 float_path=float_path)
    report = find_divergence(float_path, repaired, images(4, seed=3))
    assert report["first_divergence"] is None, report["first_divergence"]
    assert report["num_compared"] >= 12
