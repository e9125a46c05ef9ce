"""TensorRT: clear refusals where it is absent (always tested), the real build and run where it
is present (skipped here with the reason)."""

import importlib.util

import numpy as np
import pytest

from bpnet.errors import BpnetError
from tests.tiny_models import save_tiny_model

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
NO_TENSORRT = "TensorRT is not installed (it needs an NVIDIA GPU and driver)"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("trt") / "tiny.hdf5", stages=2, seed=3)


def test_build_source_follows_the_tensorrt_version():
    from bpnet.backends.trt_backend import engine_source

    # 8-10 quantise implicitly from the FP32 graph; 11 needs precision in the graph itself.
    assert engine_source(8, "int8", "fp32.onnx", "qdq.onnx").name == "fp32.onnx"
    assert engine_source(10, "fp16", "fp32.onnx", "fp16.onnx").name == "fp32.onnx"
    assert engine_source(11, "int8", "fp32.onnx", "qdq.onnx").name == "qdq.onnx"
    assert engine_source(11, "fp16", "fp32.onnx", "fp16.onnx").name == "fp16.onnx"
    assert engine_source(11, "fp32", "fp32.onnx", "fp32.onnx").name == "fp32.onnx"


@pytest.mark.parametrize("option", [{"engine_file": "m.engine"}, {"max_batch_size": 8},
                                    {"max_workspace_size": 1 << 30}])
def test_tensorrt_only_option_fails_before_any_work(option, tmp_path):
    if HAS_TENSORRT:
        pytest.skip("TensorRT is installed here; the refusal only happens without it")
    from bpnet.export import export_model

    model = tmp_path / "m.hdf5"
    model.write_bytes(b"never read: the TensorRT check comes first")
    with pytest.raises(BpnetError, match=f"--{next(iter(option))}: TensorRT is not installed"):
        export_model(model, tmp_path / "m.onnx", (64, 64), data_type="int8", **option)
    assert not (tmp_path / "m.onnx").exists()


def test_engine_backend_without_tensorrt_is_a_clear_error(tmp_path):
    if HAS_TENSORRT:
        pytest.skip("TensorRT is installed here; the refusal only happens without it")
    from bpnet.backends import load_backend

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(BpnetError, match="TensorRT is not installed"):
        load_backend(engine)


@pytest.mark.slow
@pytest.mark.tensorrt
@pytest.mark.parametrize("data_type", ["fp32", "fp16", "int8"])
def test_engine_builds_and_matches_onnx_runtime(data_type, tiny_model, tmp_path, coco_mini):
    pytest.importorskip("tensorrt", reason=NO_TENSORRT)
    from bpnet.backends import load_backend
    from bpnet.export import export_model
    from bpnet.onnx_graph import onnx_session

    _, images = coco_mini
    engine = tmp_path / f"m.{data_type}.engine"
    report = export_model(tiny_model, tmp_path / "m.onnx", (64, 64), data_type=data_type,
                          cal_image_dir=images, cal_data_file=tmp_path / "cal.npy", batch_size=2,
                          batches=2, engine_file=engine, max_batch_size=4)
    assert engine.is_file() and report["engine"]["precision"] == data_type
    batch = np.random.default_rng(0).uniform(-0.5, 0.5, (3, 64, 64, 3)).astype(np.float32)
    reference = onnx_session(tmp_path / "m.onnx").run(["heatmaps", "pafs"], {"input": batch})
    with load_backend(engine) as backend:
        assert backend.precision == data_type and backend.input_hw == (64, 64)
        outputs = backend.predict(batch)
    tolerance = {"fp32": 1e-3, "fp16": 1e-2, "int8": 0.1}[data_type]
    for got, want in zip(outputs, reference):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= tolerance * max(1.0, np.abs(want).max())


@pytest.mark.slow
@pytest.mark.tensorrt
def test_engine_keeps_accuracy_control_float_layers_in_float(tiny_model, tmp_path, coco_mini):
    pytest.importorskip("tensorrt", reason=NO_TENSORRT)
    import onnx

    from bpnet.backends import load_backend
    from bpnet.backends.trt_backend import build_engine, tensorrt_major
    from bpnet.export import export_model
    from bpnet.guide.sensitivity import keep_layers_float, quantized_layers
    from bpnet.onnx_graph import onnx_session
    import tensorrt

    _, images = coco_mini
    export_model(tiny_model, tmp_path / "m.onnx", (64, 64), data_type="int8", cal_image_dir=images,
                 cal_data_file=tmp_path / "cal.npy", batch_size=2, batches=2)
    qdq = tmp_path / "m.int8_trt.onnx"
    layer = next(name for name in quantized_layers(onnx.load(str(qdq))) if not name.startswith("output:"))
    keep_layers_float(qdq, qdq, [layer], float_path=tmp_path / "m.onnx")
    info = build_engine(tmp_path / "m.onnx", qdq, tmp_path / "m.engine", "int8", (64, 64),
                        cal_cache_file=tmp_path / "m.cal.bin", cal_data_file=tmp_path / "cal.npy",
                        batch_size=2, batches=2, float_layers=[layer])
    assert info["float_layers"] == [layer]
    assert info["pinned_float_layers"] == ([layer] if tensorrt_major(tensorrt) < 11 else [])
    batch = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 64, 64, 3)).astype(np.float32)
    reference = onnx_session(tmp_path / "m.onnx").run(["heatmaps", "pafs"], {"input": batch})
    with load_backend(tmp_path / "m.engine") as backend:
        for got, want in zip(backend.predict(batch), reference):
            assert np.abs(got - want).max() <= 0.1 * max(1.0, np.abs(want).max())
