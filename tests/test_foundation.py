"""The shared foundation: skeleton config, specs, preprocessing geometry, atomic writes."""

import json

import numpy as np
import pytest

from bpnet.errors import BpnetError
from bpnet.fileio import atomic_path, read_json, write_json_atomic
from bpnet.geometry import cells_to_pixels, pixels_to_cells
from bpnet.preprocess import check_input_hw, letterbox_image, normalize, prepare_batch, read_image
from bpnet.skeleton import load_skeleton
from bpnet.specs import InferSpec, TrainSpec, load_infer_spec, load_train_spec, parse_spec
from tests.conftest import ROOT, tiny_train_spec_dict


def test_default_skeleton_has_bpnet_channel_counts():
    sk = load_skeleton()
    assert (sk.num_parts, sk.num_heatmaps, sk.num_pafs) == (18, 19, 38)
    assert sk.parts[1] == "neck"


def test_neck_is_mid_shoulders_and_needs_both():
    sk = load_skeleton()
    kps = np.zeros((17, 3), np.float32)
    kps[5] = (10, 20, 2)   # left shoulder
    kps[6] = (30, 40, 1)   # right shoulder
    parts = sk.coco_to_parts(kps)
    assert parts[1].tolist() == [20, 30, 1]
    kps[6, 2] = 0
    assert sk.coco_to_parts(kps)[1, 2] == 0


def test_parts_to_coco_inverts_coco_to_parts():
    sk = load_skeleton()
    kps = np.random.default_rng(0).uniform(0, 100, (3, 17, 3)).astype(np.float32)
    kps[..., 2] = 2
    assert np.array_equal(sk.parts_to_coco(sk.coco_to_parts(kps)), kps)


def test_flip_permutation_swaps_left_and_right():
    sk = load_skeleton()
    perm = sk.flip_permutation
    for i, name in enumerate(sk.parts):
        flipped = sk.parts[perm[i]]
        assert flipped == name.replace("left_", "tmp_").replace("right_", "left_").replace("tmp_", "right_")


def test_unknown_skeleton_lists_bundled_ones():
    with pytest.raises(BpnetError, match="bpnet_18joints"):
        load_skeleton("no_such_skeleton")


def test_skeleton_with_unknown_limb_part_is_rejected(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"parts": ["nose"], "coco_keypoints": ["nose"], "limbs": [["nose", "tail"]]}))
    with pytest.raises(BpnetError, match="malformed"):
        load_skeleton(str(bad))


def test_grid_convention_round_trips():
    x = np.array([0.0, 3.5, 17.25])
    assert np.allclose(cells_to_pixels(pixels_to_cells(x, 8), 8), x)
    assert cells_to_pixels(0, 8) == 3.5   # centre of input pixels 0..7


def test_bundled_specs_load_and_resolve_paths():
    spec = load_train_spec(ROOT / "specs" / "train_small.yaml")
    assert spec.dataloader.dataset.annotations.is_file()
    assert load_infer_spec(ROOT / "specs" / "infer_default.yaml").input_shape == (288, 384)


def test_spec_errors_name_every_bad_field():
    data = tiny_train_spec_dict(**{"num_epoch": "many", "dataloader.image_shape": [250, 256], "colour": "red"})
    with pytest.raises(BpnetError) as err:
        parse_spec(TrainSpec, data, "my.yaml")
    text = str(err.value)
    assert "my.yaml" in text and "num_epoch" in text and "'many'" in text
    assert "dataloader.image_shape" in text and "multiples of 8" in text
    assert "colour: unknown field" in text


def test_infer_spec_upsampling_factor_accepts_int_and_checks_range():
    assert parse_spec(InferSpec, {"output_upsampling_factor": 4}).output_upsampling_factor == (4, 4)
    with pytest.raises(BpnetError, match="output_upsampling_factor"):
        parse_spec(InferSpec, {"output_upsampling_factor": [16, 16]})


def test_missing_or_broken_spec_file(tmp_path):
    with pytest.raises(BpnetError, match="not found"):
        load_train_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(BpnetError, match="not valid YAML"):
        load_train_spec(bad)


def test_check_input_hw_suggests_valid_size():
    assert check_input_hw([288, 384]) == (288, 384)
    with pytest.raises(BpnetError, match="multiples of 8.*287x384"):
        check_input_hw([287, 384], where="input_shape")


def test_letterbox_pad_mode_maps_points_back(coco_mini):
    _, images = coco_mini
    image = read_image(next(images.glob("*.jpg")))
    boxed, box = letterbox_image(image, (288, 384), "pad_image_input")
    assert boxed.shape == (288, 384, 3)
    h, w = image.shape[:2]
    corner = box.to_image(box.to_input([w - 0.5, h - 0.5]))
    assert np.allclose(corner, [w - 0.5, h - 0.5], atol=1e-3)


def test_adjust_mode_keeps_height_and_rounds_width_to_stride():
    image = np.zeros((100, 250, 3), np.uint8)
    boxed, box = letterbox_image(image, (64, 64), "adjust_network_input")
    assert boxed.shape[0] == 64 and boxed.shape[1] % 8 == 0 and boxed.shape[1] >= 160


def test_prepare_batch_normalises_with_default_offsets():
    batch, boxes = prepare_batch([np.full((10, 10, 3), 128, np.uint8)], (16, 16))
    assert batch.shape == (1, 16, 16, 3) and batch.dtype == np.float32
    assert np.allclose(batch, 0.0)
    assert np.allclose(normalize(np.array([0, 255], np.uint8).reshape(1, 1, 2, 1).repeat(3, -1))[..., 0], [-0.5, 255 / 256 - 0.5])


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(BpnetError, match="not found"):
        read_image(tmp_path / "missing.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(BpnetError, match="corrupt.jpg"):
        read_image(corrupt)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "result.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json_atomic(target, {"a": np.float32(1.5)})
    assert read_json(target) == {"a": 1.5}


def test_atomic_results_are_not_private(tmp_path):
    target = tmp_path / "shared.json"
    write_json_atomic(target, {})
    assert target.stat().st_mode & 0o044 == 0o044   # readable by group and others (umask 022)
