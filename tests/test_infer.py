"""Backends (Keras, ONNX Runtime), the inference verb and model evaluation on tiny models."""

import json

import numpy as np
import pytest

from bpnet.backends import load_backend
from bpnet.errors import BpnetError
from bpnet.infer import ImageItem, check_backend_fits, image_items, run_inference, scaled_hw
from bpnet.specs import InferSpec
from tests.conftest import COCO_ANNOTATIONS, COCO_IMAGES

INPUT_HW = (64, 96)


@pytest.fixture(scope="module")
def tiny_hdf5(tmp_path_factory):
    """An untrained 2-stage BodyPoseNet at width 0.125 (shapes and plumbing, not accuracy)."""
    import bpnet.model
    from bpnet.specs import ModelSpec

    path = tmp_path_factory.mktemp("tiny_model") / "tiny.hdf5"
    model = bpnet.model.build_model(ModelSpec(backbone_width=0.125, stages=2))
    model.save(path)
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tiny_hdf5):
    from bpnet.export import export_onnx

    path = tiny_hdf5.with_suffix(".onnx")
    export_onnx(tiny_hdf5, path, INPUT_HW)
    return path


def batch(n=2, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, *INPUT_HW, 3)).astype(np.float32)


@pytest.mark.slow
def test_keras_backend_stages_and_shapes(tiny_hdf5):
    with load_backend(tiny_hdf5) as last, load_backend(tiny_hdf5, stage=1) as first:
        heat2, paf2 = last.predict(batch())
        heat1, paf1 = first.predict(batch())
        assert heat2.shape == (2, 8, 12, 19) and paf2.shape == (2, 8, 12, 38)
        assert (last.stage, first.stage, last.num_stages, last.input_hw) == (2, 1, 2, None)
        assert not np.allclose(heat1, heat2)          # a truncated model, not the same outputs
        assert len(first.model.layers) < len(last.model.layers)
    with pytest.raises(BpnetError, match="stage: 3 is outside"):
        load_backend(tiny_hdf5, stage=3)


@pytest.mark.slow
def test_keras_backend_compiles_one_graph_per_shape_with_the_eager_outputs(tiny_hdf5):
    with load_backend(tiny_hdf5) as backend:
        for images in (batch(), batch()[:1], np.zeros((1, 32, 64, 3), np.float32), batch()):
            eager = backend.model(images, training=False)
            for compiled, reference in zip(backend.predict(images), eager):
                np.testing.assert_allclose(compiled, reference.numpy(), rtol=1e-5, atol=1e-6)
        assert sorted(backend._compiled) == [(1, 32, 64, 3), (1, *INPUT_HW, 3), (2, *INPUT_HW, 3)]


@pytest.mark.slow
def test_onnx_runtime_backend_matches_keras(tiny_hdf5, tiny_onnx):
    with load_backend(tiny_hdf5) as keras, load_backend(tiny_onnx) as ort:
        assert (ort.name, ort.precision, ort.input_hw) == ("onnxruntime", "fp32", INPUT_HW)
        for a, b in zip(keras.predict(batch()), ort.predict(batch())):
            np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(BpnetError, match="output_stage_to_use 1 is not in it"):
        load_backend(tiny_onnx, stage=1)


@pytest.mark.slow
def test_inference_writes_results_and_drawings(tiny_hdf5, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in sorted(p.name for p in COCO_IMAGES.iterdir())[:2]:
        (images / name).write_bytes((COCO_IMAGES / name).read_bytes())
    spec = InferSpec(input_shape=INPUT_HW, heatmap_threshold=0.0, min_parts=1, min_person_score=0.0)
    summary = run_inference(tiny_hdf5, images, spec, tmp_path / "out", dump_visualizations=True)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["num_images"] == 2 and summary["num_people"] == len(results)
    assert {r["image_id"] for r in results} <= {int(p.stem) for p in images.iterdir()}
    assert len(list((tmp_path / "out" / "images_annotated").glob("*.jpg"))) == 2
    assert summary["timing"]["cnn_ms_per_image"] > 0


@pytest.mark.slow
def test_evaluate_model_on_onnx(tiny_onnx, tmp_path):
    from bpnet.evaluate import evaluate_model

    spec = InferSpec(input_shape=INPUT_HW)
    metrics = evaluate_model(tiny_onnx, COCO_ANNOTATIONS, COCO_IMAGES, spec, tmp_path, max_images=3)
    assert metrics["num_images"] == 3 and len(metrics["image_ids"]) == 3
    assert {"AP", "AP50", "ARl"} <= set(metrics) and metrics["backend"] == "onnxruntime"
    assert set(metrics["timing"]) >= {"cnn_ms_per_image", "decode_ms_per_image"}
    assert json.loads((tmp_path / "metrics.json").read_text())["AP"] == metrics["AP"]


@pytest.mark.slow
def test_fixed_size_backend_refuses_other_sizes_and_scales(tiny_onnx):
    with load_backend(tiny_onnx) as backend:
        with pytest.raises(BpnetError, match=r"input_shape \[288, 384\] does not match"):
            check_backend_fits(backend, InferSpec())
        with pytest.raises(BpnetError, match="multi_scale_inference"):
            check_backend_fits(backend, InferSpec(input_shape=INPUT_HW, multi_scale_inference=True,
                                                  scales=(0.5, 1.0)))


def test_model_files_of_unknown_kind_or_missing(tmp_path):
    with pytest.raises(BpnetError, match="unknown model type '.pt'"):
        load_backend(tmp_path / "model.pt")
    with pytest.raises(BpnetError, match="model not found"):
        load_backend(tmp_path / "model.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx")
    with pytest.raises(BpnetError, match="could not be loaded as an ONNX model"):
        load_backend(garbage)


def test_image_lists_from_a_folder_or_a_coco_json(tmp_path):
    from_folder = image_items(COCO_IMAGES)
    from_json = image_items(COCO_ANNOTATIONS, images_dir=COCO_IMAGES)
    assert len(from_folder) == len(from_json) == 80
    assert {i.image_id for i in from_folder} == {i.image_id for i in from_json}
    assert isinstance(from_json[0], ImageItem)
    with pytest.raises(BpnetError, match="holds no images"):
        image_items(tmp_path)
    with pytest.raises(BpnetError, match="neither a folder"):
        image_items(tmp_path / "x.txt")


def test_scaled_sizes_stay_multiples_of_the_stride():
    assert scaled_hw((288, 384), 0.5) == (144, 192)
    assert scaled_hw((288, 384), 1.3) == (376, 496)
