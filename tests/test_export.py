"""Keras -> ONNX export: parity, every stage, a pruned model, FP16, INT8 Q/DQ, the SDK variant and
the errors a user sees. Tiny models (width 0.125, 64 px inputs) keep this fast."""

import json

import numpy as np
import pytest

from bpnet.errors import BpnetError
from tests.tiny_models import save_tiny_model

pytestmark = pytest.mark.slow
HW = (64, 96)
SEED = 2   # fixed weights: the INT8 closeness check is about this one network


@pytest.fixture(scope="module")
def seven_stage_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "seven.hdf5", stages=7, seed=7)


@pytest.fixture(scope="module")
def two_stage_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "two.hdf5", stages=2, seed=SEED)


def keras_outputs(model_path, stage, batch):
    from bpnet.model import load_model, stage_model

    return [np.asarray(o) for o in stage_model(load_model(model_path), stage)(batch, training=False)]


def onnx_outputs(path, batch):
    from bpnet.onnx_graph import onnx_session

    return onnx_session(path).run(["heatmaps", "pafs"], {"input": batch})


def test_onnx_matches_keras_with_dynamic_batch(two_stage_model, tmp_path):
    import onnx

    from bpnet.export import export_onnx, parity_batch

    out = tmp_path / "m.onnx"
    summary = export_onnx(two_stage_model, out, HW)
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["heatmaps", "pafs"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 64, 96, 3]
    for n in (1, 3):   # dynamic batch really works
        batch = parity_batch(HW, batch=n, seed=n)
        for onnx_map, keras_map in zip(onnx_outputs(out, batch), keras_outputs(two_stage_model, None, batch)):
            assert onnx_map.shape == keras_map.shape
            assert np.abs(onnx_map - keras_map).max() <= 1e-4
    assert summary["max_abs_diff"] <= 1e-4 and summary["stage"] == 2


def test_every_stage_2_to_7_exports_its_own_maps(seven_stage_model, tmp_path):
    from bpnet.export import export_keras, parity_batch
    from bpnet.model import load_model, stage_model

    model = load_model(seven_stage_model)
    batch = parity_batch((64, 64), batch=1)
    previous = None
    for stage in range(2, 8):
        out = tmp_path / f"s{stage}.onnx"
        export_keras(model, out, (64, 64), stage=stage)
        heatmaps, pafs = onnx_outputs(out, batch)
        expected = [np.asarray(o) for o in stage_model(model, stage)(batch, training=False)]
        assert np.abs(heatmaps - expected[0]).max() <= 1e-4 and np.abs(pafs - expected[1]).max() <= 1e-4
        assert previous is None or not np.allclose(previous, heatmaps)   # a different stage really
        previous = heatmaps


def test_pruned_model_exports(two_stage_model, tmp_path):
    from bpnet.export import export_onnx, parity_batch
    from bpnet.prune import prune_model_file

    pruned = tmp_path / "pruned.hdf5"
    report = prune_model_file(two_stage_model, pruned, threshold=0.9, granularity=8, min_filters=8)
    assert report["params_after"] < report["params_before"]
    out = tmp_path / "pruned.onnx"
    export_onnx(pruned, out, HW)
    batch = parity_batch(HW, batch=2)
    for onnx_map, keras_map in zip(onnx_outputs(out, batch), keras_outputs(pruned, None, batch)):
        assert np.abs(onnx_map - keras_map).max() <= 1e-4


def test_int8_export_writes_cache_and_qdq_models_close_to_fp32(two_stage_model, tmp_path, coco_mini):
    from bpnet import calibrate
    from bpnet.export import export_model
    from bpnet.onnx_graph import onnx_precision

    _, images = coco_mini
    out = tmp_path / "m.onnx"
    report = export_model(two_stage_model, out, HW, data_type="int8", cal_image_dir=images,
                          cal_data_file=tmp_path / "cal.npy", batch_size=2, batches=3)
    int8 = report["int8"]
    assert int8["num_images"] == 6 and not int8["tensor_file_reused"]
    header, scales = calibrate.read_trt_cache(int8["cal_cache_file"])
    assert header.endswith("-EntropyCalibration2")
    onnx_names = set(calibrate.activation_tensor_names(__import__("onnx").load(str(out))))
    assert set(scales) == onnx_names and "input" in scales and "heatmaps" in scales
    assert all(s > 0 for s in scales.values())

    data = np.load(tmp_path / "cal.npy")[:4]
    reference = onnx_outputs(out, data)
    for path in (int8["onnx_int8"], int8["onnx_int8_tensorrt"]):
        assert onnx_precision(path) == "int8"
        for quantised, fp32 in zip(onnx_outputs(path, data), reference):
            # An untrained 8-channel network is a hard case for int8 (errors add up over ~20
            # layers). Measured here (AVX-512 VNNI) the correlation is 0.98-0.99; ONNX Runtime's
            # U8S8 kernels on AVX2-only CPUs saturate (VPMADDUBSW) and give ~0.87 on the same
            # model, so the bound is set below that. A broken quantization (wrong scales, a
            # missing Q/DQ pair) gives a correlation near 0 and errors of the maps' own size.
            corr = np.corrcoef(quantised.ravel(), fp32.ravel())[0, 1]
            assert corr > 0.8, f"{path}: correlation {corr:.3f} with the FP32 maps"
            error = np.abs(quantised - fp32).mean()
            assert error <= 0.05 * np.abs(fp32).max(), f"{path}: mean error {error:.4g}"
    saved = json.loads((tmp_path / "m.export.json").read_text())
    assert saved["int8"]["calibrator"] == "entropy"


def test_second_int8_export_reuses_the_tensor_file(two_stage_model, tmp_path, coco_mini, monkeypatch):
    from bpnet import calibrate
    from bpnet.export import export_model

    _, images = coco_mini
    data_file = tmp_path / "cal.npy"
    export_model(two_stage_model, tmp_path / "a.onnx", HW, data_type="int8", cal_image_dir=images,
                 cal_data_file=data_file, batch_size=2, batches=1, calibrator="minmax")
    monkeypatch.setattr(calibrate, "build_calibration_tensor",
                        lambda *a, **k: pytest.fail("preprocessed again although the tensor file exists"))
    report = export_model(two_stage_model, tmp_path / "b.onnx", HW, data_type="int8",
                          cal_data_file=data_file, batch_size=2, batches=1, calibrator="minmax")
    assert report["int8"]["tensor_file_reused"]
    header, _ = calibrate.read_trt_cache(report["int8"]["cal_cache_file"])
    assert header.endswith("-MinMaxCalibration")


def test_fp16_export_is_detected_and_close(two_stage_model, tmp_path):
    from bpnet.export import export_model, parity_batch
    from bpnet.onnx_graph import onnx_precision

    report = export_model(two_stage_model, tmp_path / "m.onnx", HW, data_type="fp16")
    assert onnx_precision(report["fp16_onnx"]) == "fp16"
    assert onnx_precision(tmp_path / "m.onnx") == "fp32"
    batch = parity_batch(HW, batch=1)
    for half, full in zip(onnx_outputs(report["fp16_onnx"], batch), onnx_outputs(tmp_path / "m.onnx", batch)):
        assert half.dtype == np.float32 and np.abs(half - full).max() <= 1e-2


def test_fp16_onnx_is_valid_topologically_sorted_and_sized(two_stage_model, tmp_path):
    import onnx

    from bpnet.benchmark import onnx_complexity
    from bpnet.export import export_model

    report = export_model(two_stage_model, tmp_path / "m.onnx", HW, data_type="fp16")
    onnx.checker.check_model(onnx.load(report["fp16_onnx"]))   # fails on out-of-order nodes
    assert onnx_complexity(report["fp16_onnx"], HW) == onnx_complexity(tmp_path / "m.onnx", HW)


def test_sdk_variant_is_nchw_upsampled_with_nms_peaks(two_stage_model, tmp_path):
    from bpnet.export import export_onnx, parity_batch
    from bpnet.onnx_graph import onnx_session

    plain, sdk = tmp_path / "plain.onnx", tmp_path / "sdk.onnx"
    export_onnx(two_stage_model, plain, HW)
    export_onnx(two_stage_model, sdk, HW, sdk_compatible=True, upsample_ratio=4)
    batch = parity_batch(HW, batch=1)
    heatmaps, pafs = onnx_outputs(plain, batch)
    session = onnx_session(sdk)
    paf_out, heat_out, peaks = session.run(["paf_out", "heatmap_out", "heatmap_peaks"],
                                           {"input": batch.transpose(0, 3, 1, 2).copy()})
    assert heat_out.shape == (1, 19, 32, 48) and paf_out.shape == (1, 38, 32, 48)
    expected = heatmaps.transpose(0, 3, 1, 2).repeat(4, axis=2).repeat(4, axis=3)
    assert np.abs(heat_out - expected).max() <= 1e-5
    assert np.abs(paf_out - pafs.transpose(0, 3, 1, 2).repeat(4, axis=2).repeat(4, axis=3)).max() <= 1e-5
    padded = np.pad(heat_out, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3)).max(axis=(-1, -2))
    assert np.array_equal(peaks, np.where(heat_out == windows, heat_out, 0))


# ---------------------------------------------------------------- bad input

def test_int8_without_calibration_images_is_refused_before_work(two_stage_model, tmp_path):
    from bpnet.export import export_model

    with pytest.raises(BpnetError, match="--cal_image_dir"):
        export_model(two_stage_model, tmp_path / "m.onnx", HW, data_type="int8")
    assert not (tmp_path / "m.onnx").exists()


def test_fewer_images_than_batch_size_times_batches(two_stage_model, tmp_path, coco_mini):
    from bpnet.export import export_model

    _, images = coco_mini
    with pytest.raises(BpnetError, match=r"holds 80 images, fewer than batch_size x batches = 9 x 9 = 81"):
        export_model(two_stage_model, tmp_path / "m.onnx", HW, data_type="int8", cal_image_dir=images,
                     batch_size=9, batches=9)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("dims", ["60,96,3", "64,90", "64,96,1", "a,b,3", "0,96,3"])
def test_input_dims_must_be_multiples_of_8_with_3_channels(dims):
    from bpnet.export import parse_input_dims

    with pytest.raises(BpnetError, match="input_dims"):
        parse_input_dims(dims)


def test_unreadable_model_is_named(tmp_path):
    from bpnet.export import export_model

    broken = tmp_path / "broken.hdf5"
    broken.write_bytes(b"not an hdf5 file")
    with pytest.raises(BpnetError, match="broken.hdf5"):
        export_model(broken, tmp_path / "m.onnx", HW)
    with pytest.raises(BpnetError, match="not found"):
        export_model(tmp_path / "missing.hdf5", tmp_path / "m.onnx", HW)


def test_stage_out_of_range_is_named(two_stage_model, tmp_path):
    from bpnet.export import export_onnx

    with pytest.raises(BpnetError, match="stage: 5"):
        export_onnx(two_stage_model, tmp_path / "m.onnx", HW, stage=5)
