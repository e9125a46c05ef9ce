"""Data: COCO reading and masks, augmentation geometry, the tf.data pipeline, clear input errors.

All on the bundled real COCO images; pipeline tests run at 64x64 with tiny batches.
"""

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from bpnet.data.augment import mirror_x, place_sample, random_placement, transform_parts, warp
from bpnet.data.coco import load_coco_samples, load_mask
from bpnet.errors import BpnetError
from bpnet.preprocess import read_image
from bpnet.skeleton import load_skeleton
from bpnet.specs import AugmentationSpec, TrainSpec, parse_spec
from conftest import tiny_train_spec_dict

SKELETON = load_skeleton()
PART = {name: i for i, name in enumerate(SKELETON.parts)}


@pytest.fixture(scope="module")
def samples(coco_mini):
    annotations, images = coco_mini
    return load_coco_samples(annotations, images, SKELETON)


def spec_for(coco_dir=None, **overrides):
    if coco_dir is not None:
        overrides["dataloader.dataset.annotations"] = str(coco_dir / "annotations" / "person_keypoints_train2017.json")
        overrides["dataloader.dataset.images"] = str(coco_dir / "train2017")
    return parse_spec(TrainSpec, tiny_train_spec_dict(**overrides), "test spec")


# ---------------------------------------------------------------- COCO reading and masks

def test_reader_keeps_labelled_people_and_masks_the_rest(coco_mini, samples):
    annotations, images = coco_mini
    assert len(samples) == 80  # images without people are kept by default
    with_people = [s for s in samples if s.num_people]
    assert len(with_people) == 28 and sum(s.num_people for s in with_people) == 86
    only_people = load_coco_samples(annotations, images, SKELETON, include_images_without_people=False)
    assert [s.image_id for s in only_people] == [s.image_id for s in with_people]
    strict = load_coco_samples(annotations, images, SKELETON, min_keypoints=10)
    assert 0 < sum(s.num_people for s in strict) < 86
    assert sum(len(s.ignore_regions) for s in strict) > sum(len(s.ignore_regions) for s in samples)
    s = with_people[0]
    assert s.parts.shape == (s.num_people, 18, 3) and s.boxes.shape == (s.num_people, 4)
    assert s.image_path.is_file() and read_image(s.image_path).shape[:2] == (s.height, s.width)


def test_neck_is_the_midpoint_of_the_shoulders(samples):
    people = np.concatenate([s.parts for s in samples if s.num_people])
    both = (people[:, PART["left_shoulder"], 2] > 0) & (people[:, PART["right_shoulder"], 2] > 0)
    mid = (people[both, PART["left_shoulder"], :2] + people[both, PART["right_shoulder"], :2]) / 2
    assert both.sum() > 10 and np.allclose(people[both, PART["neck"], :2], mid)
    assert np.all(people[~both, PART["neck"], 2] == 0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_mask_zeroes_crowd_regions_like_pycocotools_ann_to_mask(coco_mini, samples):
    annotations, _ = coco_mini
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(annotations))
    crowd = next(a for a in coco.dataset["annotations"] if a["iscrowd"])
    sample = next(s for s in samples if s.image_id == crowd["image_id"])
    mask = load_mask(sample)
    assert mask.shape == (sample.height, sample.width) and mask.dtype == np.float32
    assert np.all(mask[coco.annToMask(crowd) > 0] == 0)
    ignored = np.zeros_like(mask, dtype=bool)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[crowd["image_id"]], iscrowd=None)):
        if ann["iscrowd"] or ann["num_keypoints"] == 0:
            ignored |= coco.annToMask(ann) > 0
    assert np.array_equal(mask == 0, ignored)
    clean = next(s for s in samples if not s.ignore_regions)
    assert np.all(load_mask(clean) == 1)


# ---------------------------------------------------------------- augmentation geometry

def test_flip_swaps_left_and_right_parts():
    width = 64
    parts = np.zeros((1, 18, 3), np.float32)
    parts[0, PART["left_wrist"]] = (10.0, 20.0, 2)
    parts[0, PART["nose"]] = (30.0, 5.0, 1)
    flipped = transform_parts(parts, mirror_x(width)[:2], SKELETON.flip_permutation)
    assert tuple(flipped[0, PART["right_wrist"]]) == (width - 1 - 10.0, 20.0, 2)
    assert flipped[0, PART["left_wrist"], 2] == 0  # the left wrist is now unlabelled
    assert tuple(flipped[0, PART["nose"]]) == (width - 1 - 30.0, 5.0, 1)  # centre parts stay


def test_random_flip_mirrors_image_and_keypoints_of_a_real_sample(samples):
    sample = next(s for s in samples if s.ignore_regions and s.num_people and s.parts[0, PART["left_wrist"], 2] > 0)
    image, mask = read_image(sample.image_path), load_mask(sample)
    still = AugmentationSpec(flip_lr_prob=0.0, rotate_deg_max=15, translate_ratio_max=0.1)
    always = still.model_copy(update={"flip_lr_prob": 1.0})
    # Same seed, same draws: the only difference is the flip.
    plain = place_sample(image, mask, sample.parts, sample.boxes, (96, 128), still,
                         SKELETON.flip_permutation, np.random.default_rng(3))
    mirrored = place_sample(image, mask, sample.parts, sample.boxes, (96, 128), always,
                            SKELETON.flip_permutation, np.random.default_rng(3))
    assert np.abs(cv2.flip(plain[0], 1).astype(int) - mirrored[0].astype(int)).mean() < 1.0
    assert plain[1].min() == 0 and np.abs(cv2.flip(plain[1], 1) - mirrored[1]).mean() < 0.01  # the mask follows
    left, right = plain[2][0, PART["left_wrist"]], mirrored[2][0, PART["right_wrist"]]
    assert right[0] == pytest.approx(128 - 1 - left[0], abs=1e-3) and right[1] == pytest.approx(left[1], abs=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_augmented_keypoints_land_where_the_image_moved_them(samples, seed):
    """Paint a bright disk at each labelled keypoint, place image and keypoints with the same
    random augmentation, and find the disk again where the keypoint went."""
    sample = [s for s in samples if s.num_people == 1][seed]
    aug = AugmentationSpec(rotate_deg_max=40, flip_lr_prob=0.5, zoom_ratio_min=0.8, zoom_ratio_max=1.2,
                           translate_ratio_max=0.1)
    input_hw = (128, 128)
    checked = 0
    for part in np.nonzero(sample.parts[0, :, 2] > 0)[0]:
        x, y = np.round(sample.parts[0, part, :2])  # a disk drawn on whole pixels: centred there
        canvas = np.zeros((sample.height, sample.width, 3), np.uint8)
        cv2.circle(canvas, (int(x), int(y)), 12, (255, 255, 255), -1)
        one = np.zeros_like(sample.parts)
        one[0, part] = (x, y, 2)
        placed, _, parts = place_sample(canvas, np.ones(canvas.shape[:2], np.float32), one, sample.boxes,
                                        input_hw, aug, SKELETON.flip_permutation, np.random.default_rng(seed))
        moved = parts[parts[..., 2] > 0]
        assert len(moved) == 1  # the label survived (perhaps under its mirrored name)
        mx, my = moved[0, :2]
        if not (8 <= mx < input_hw[1] - 8 and 8 <= my < input_hw[0] - 8):
            continue  # pushed (partly) off the input: the disk is cut, its centroid moves
        where = np.argwhere(placed[..., 0] > 200)
        assert len(where), (seed, SKELETON.parts[part])
        assert abs(where[:, 1].mean() - mx) < 1.0 and abs(where[:, 0].mean() - my) < 1.0, SKELETON.parts[part]
        checked += 1
    assert checked >= 3


def test_preshrink_keeps_geometry_exact():
    """A strong downscale goes through an area resize first; the keypoint mapping must not move."""
    image = np.zeros((400, 600), np.uint8)
    cv2.circle(image, (450, 100), 40, 255, -1)
    matrix = np.array([[0.1, 0.0, 3.0], [0.0, 0.1, 5.0]])
    out = warp(image, matrix, (64, 80), 0)
    where = np.argwhere(out > 100)
    assert abs(where[:, 1].mean() - (0.1 * 450 + 3)) < 0.5 and abs(where[:, 0].mean() - (0.1 * 100 + 5)) < 0.5


def test_person_centric_scale_sizes_the_chosen_person():
    aug = AugmentationSpec(rotate_deg_max=0, translate_ratio_max=0, zoom_ratio_min=1, zoom_ratio_max=1,
                           flip_lr_prob=0, target_person_scale=0.5)
    box = np.array([[100.0, 50.0, 40.0, 120.0]], np.float32)  # a person 120 px tall in a 480x640 image
    matrix, flipped = random_placement(np.random.default_rng(0), aug, (480, 640), (128, 128), box)
    assert not flipped and matrix[0, 0] == pytest.approx(0.5 * 128 / 120)
    centre = matrix[:, :2] @ [120.0, 110.0] + matrix[:, 2]
    assert np.allclose(centre, [63.5, 63.5])  # the person's box centre lands at the input centre


def test_without_augmentation_the_sample_is_letterboxed_like_inference(samples):
    from bpnet.preprocess import letterbox_image

    sample = next(s for s in samples if s.num_people)
    image = read_image(sample.image_path)
    placed, mask, parts = place_sample(image, load_mask(sample), sample.parts, sample.boxes, (64, 96))
    expected, box = letterbox_image(image, (64, 96), "pad_image_input")
    assert np.array_equal(placed, expected)
    labelled = sample.parts[..., 2] > 0
    assert np.allclose(parts[labelled][:, :2], box.to_input(sample.parts[labelled][:, :2]), atol=1e-3)
    assert mask.shape == (64, 96)


# ---------------------------------------------------------------- pipeline

def test_example_carries_the_crowd_mask_at_the_output_stride(samples):
    from bpnet.data.pipeline import downsample_mask, make_example

    spec = spec_for(**{"dataloader.image_shape": [64, 96]})
    crowd = max((s for s in samples if s.ignore_regions), key=lambda s: (load_mask(s) == 0).mean())
    image, heatmaps, pafs, mask = make_example(crowd, spec, SKELETON)
    assert image.shape == (64, 96, 3) and heatmaps.shape == (8, 12, 19) and pafs.shape == (8, 12, 38)
    _, placed_mask, _ = place_sample(read_image(crowd.image_path), load_mask(crowd), crowd.parts, crowd.boxes, (64, 96))
    assert mask.shape == (8, 12, 1) and mask.min() < 0.5
    assert np.allclose(mask[..., 0], downsample_mask(placed_mask, (8, 12)))
    clean = next(s for s in samples if not s.ignore_regions)
    assert np.all(make_example(clean, spec, SKELETON)[3] == 1)


def as_numpy(batches):
    return [(x.numpy(), {k: v.numpy() for k, v in y.items()}) for x, y in batches]


@pytest.mark.slow
def test_pipeline_yields_documented_shapes_deterministically_for_a_seed():
    from bpnet.data.pipeline import count_samples, make_dataset

    spec = spec_for(**{"dataloader.num_parallel_calls": 2})
    assert count_samples(spec) == 28
    first = as_numpy(make_dataset(spec).take(3))
    again = as_numpy(make_dataset(spec).take(3))
    other = as_numpy(make_dataset(spec_for(random_seed=2)).take(3))
    images, targets = first[0]
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.float32
    assert targets["heatmaps"].shape == (2, 8, 8, 19) and targets["pafs"].shape == (2, 8, 8, 38)
    assert targets["mask"].shape == (2, 8, 8, 1)
    assert all(v.dtype == np.float32 for v in targets.values())
    assert -0.5 <= images.min() and images.max() < 0.5  # default normalisation: x / 256 - 0.5
    assert np.allclose(targets["heatmaps"][..., -1], 1 - targets["heatmaps"][..., :-1].max(-1), atol=1e-6)
    for (a, ta), (b, tb) in zip(first, again):
        assert np.array_equal(a, b) and all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, other))
    assert max(t["heatmaps"][..., :-1].max() for _, t in first) > 0.5  # people are in the targets


@pytest.mark.slow
def test_evaluation_pipeline_is_one_ordered_letterboxed_pass():
    from bpnet.data.pipeline import make_dataset

    spec = spec_for(**{"dataloader.batch_size": 8})
    batches = as_numpy(make_dataset(spec, training=False))
    assert [len(x) for x, _ in batches] == [8, 8, 8, 4]  # 28 images, last partial batch kept
    assert np.array_equal(batches[0][0], as_numpy(make_dataset(spec, training=False).take(1))[0][0])


# ---------------------------------------------------------------- bad inputs

def annotations_of(coco_dir):
    return coco_dir / "annotations" / "person_keypoints_train2017.json"


def load_copy(coco_dir, **kwargs):
    return load_coco_samples(annotations_of(coco_dir), coco_dir / "train2017", SKELETON, **kwargs)


def rewrite(coco_dir, change):
    path = annotations_of(coco_dir)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(BpnetError, match="annotations file not found: .*nope.json"):
        load_coco_samples(tmp_path / "nope.json", tmp_path, SKELETON)


def test_empty_and_non_json_annotation_files(copy_of_coco_mini):
    path = annotations_of(copy_of_coco_mini)
    path.write_text("")
    with pytest.raises(BpnetError, match=r"person_keypoints_train2017.json is empty"):
        load_copy(copy_of_coco_mini)
    path.write_text("{ not json")
    with pytest.raises(BpnetError, match="is not valid JSON"):
        load_copy(copy_of_coco_mini)
    path.write_text("[1, 2]")
    with pytest.raises(BpnetError, match="expected a JSON object, got list"):
        load_copy(copy_of_coco_mini)


def test_annotation_file_without_persons(copy_of_coco_mini):
    rewrite(copy_of_coco_mini, lambda d: d.update(annotations=[]))
    with pytest.raises(BpnetError, match="no person with at least 1 labelled keypoints in 80 images"):
        load_copy(copy_of_coco_mini)
    rewrite(copy_of_coco_mini, lambda d: d.update(categories=[{"id": 3, "name": "car"}]))
    with pytest.raises(BpnetError, match=r"no 'person' category with 'keypoints' \(categories present: \['car'\]\)"):
        load_copy(copy_of_coco_mini)


def test_malformed_keypoints_name_the_annotation(copy_of_coco_mini):
    def break_one(data):
        ann = next(a for a in data["annotations"] if a["num_keypoints"] > 0)
        ann["keypoints"] = ann["keypoints"][:-3]
        data["broken_id"] = ann["id"]

    rewrite(copy_of_coco_mini, break_one)
    broken_id = json.loads(annotations_of(copy_of_coco_mini).read_text())["broken_id"]
    with pytest.raises(BpnetError, match=rf"annotation {broken_id} keypoints has a list of 48 numbers; .* 51 numbers"):
        load_copy(copy_of_coco_mini)


def test_keypoint_names_must_match_the_skeleton(copy_of_coco_mini):
    rewrite(copy_of_coco_mini, lambda d: d["categories"][0].update(keypoints=["head"] * 17))
    with pytest.raises(BpnetError, match="differ from skeleton 'bpnet_18joints'"):
        load_copy(copy_of_coco_mini)


def test_missing_image_is_named_up_front(copy_of_coco_mini, samples):
    victim = next(s for s in samples if s.num_people).image_path.name
    (copy_of_coco_mini / "train2017" / victim).unlink()
    with pytest.raises(BpnetError, match=rf"1 of 80 image files .* missing from .*train2017: {victim}"):
        load_copy(copy_of_coco_mini)


def test_missing_images_folder_is_named(coco_mini, tmp_path):
    annotations, _ = coco_mini
    with pytest.raises(BpnetError, match=r"images folder not found: .*no_such_dir"):
        load_coco_samples(annotations, tmp_path / "no_such_dir", SKELETON)


@pytest.mark.slow
def test_corrupt_jpeg_is_named_when_the_pipeline_reads_it(copy_of_coco_mini, samples):
    from bpnet.data.pipeline import data_errors, make_dataset

    victim = next(s for s in samples if s.num_people).image_path.name
    path = copy_of_coco_mini / "train2017" / victim
    path.write_bytes(path.read_bytes()[:2000])  # truncated mid-scan
    spec = spec_for(copy_of_coco_mini, **{"dataloader.batch_size": 28})
    with pytest.raises(BpnetError, match=rf"^image .*{victim} is not a readable image \(corrupt"):
        with data_errors():
            for _ in make_dataset(spec, training=False):
                pass


def test_inverted_zoom_range_is_a_clear_error():
    from bpnet.data.pipeline import make_dataset

    spec = spec_for(**{"dataloader.augmentation.zoom_ratio_min": 1.5, "dataloader.augmentation.zoom_ratio_max": 1.0})
    with pytest.raises(BpnetError, match="zoom_ratio_min 1.5 is larger than zoom_ratio_max 1.0"):
        make_dataset(spec)
