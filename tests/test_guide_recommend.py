"""Dataset statistics and recommendations on hand-made datasets with known size mixes."""

import json

import pytest

from bpnet.errors import BpnetError
from bpnet.guide.dataset_stats import dataset_stats, dataset_stats_file
from bpnet.guide.recommend import (recommend_all, recommend_calibration, recommend_resolution,
                                   round_dimension)

FULL_KEYPOINTS = [10, 10, 2] * 17


def person(ann_id, image_id, side_px, keypoints=FULL_KEYPOINTS, crowd=0):
    return {"id": ann_id, "image_id": image_id, "area": float(side_px) ** 2, "iscrowd": crowd,
            "bbox": [0, 0, side_px, side_px], "keypoints": list(keypoints),
            "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0)}


def make_dataset(sides_per_image, image_wh=(640, 480)):
    """A COCO dict: image i holds people of the given side lengths (pixels)."""
    images, annotations = [], []
    for image_id, sides in enumerate(sides_per_image):
        images.append({"id": image_id, "width": image_wh[0], "height": image_wh[1],
                       "file_name": f"{image_id}.jpg"})
        for side in sides:
            annotations.append(person(len(annotations) + 1, image_id, side))
    return {"images": images, "annotations": annotations}


def test_stats_count_people_sizes_and_images():
    coco = make_dataset([[20, 50], [200], []], image_wh=(640, 480))
    coco["annotations"].append(person(99, 0, 300, crowd=1))
    coco["annotations"].append(person(98, 1, 60, keypoints=[0, 0, 0] * 17))
    stats = dataset_stats(coco)
    assert stats["num_images"] == 3
    assert stats["num_images_with_people"] == 2
    assert stats["num_people"] == 3
    assert stats["num_crowd_regions"] == 1
    assert stats["num_people_without_keypoints"] == 1
    assert stats["area_ranges"]["counts"] == {"small": 1, "medium": 1, "large": 1}
    assert stats["people_per_image"]["max"] == 2
    assert stats["people_per_image_histogram"]["0"] == 1
    assert stats["keypoints_per_person"]["median"] == 17
    assert stats["image_aspect_ratio"]["median"] == pytest.approx(640 / 480)


def test_sizes_are_also_measured_at_cocos_640_px_scale():
    # 120-px people (large) in 1280-px images are 60 px (medium) at COCO's 640-px scale.
    stats = dataset_stats(make_dataset([[120]] * 4, image_wh=(1280, 960)))
    assert stats["area_ranges"]["counts"]["large"] == 4
    assert stats["area_ranges_at_640"]["counts"]["medium"] == 4


def test_mostly_large_people_get_the_cheapest_input():
    advice = recommend_resolution(dataset_stats(make_dataset([[200]] * 9 + [[50]])))
    assert advice.value == [224, 288]   # 224 * 4/3 = 299: 320 would be 7% off, 288 (32 x 9) is 4%
    assert "large people barely change" in advice.reasons[0]


def test_a_medium_mix_gets_288_and_a_medium_majority_gets_320():
    mixed = recommend_resolution(dataset_stats(make_dataset([[200]] * 6 + [[50]] * 4)))
    assert mixed.value == [288, 384]
    assert "7-10% AP on medium" in mixed.reasons[0]
    medium = recommend_resolution(dataset_stats(make_dataset([[200]] * 3 + [[50]] * 7)))
    assert medium.value[0] == 320


def test_crowded_scenes_get_a_taller_input():
    calm = recommend_resolution(dataset_stats(make_dataset([[200, 60]] * 4)))
    crowded = recommend_resolution(dataset_stats(make_dataset([[200, 200, 200, 60, 60, 60]] * 4)))
    assert crowded.value[0] > calm.value[0]
    assert any("crowded" in r for r in crowded.reasons)


def test_width_follows_the_deployment_aspect_and_prefers_round_multiples():
    stats = dataset_stats(make_dataset([[200]] * 6 + [[50]] * 4))
    wide = recommend_resolution(stats, deploy_aspect_ratio=16 / 9)
    assert wide.value == [288, 512]       # 288 * 16/9 = 512, a multiple of 64
    for h, w in (recommend_resolution(stats, a).value for a in (0.75, 1.0, 1.5, 2.2)):
        assert h % 16 == 0 and w % 16 == 0
    with pytest.raises(BpnetError, match="aspect ratio"):
        recommend_resolution(stats, deploy_aspect_ratio=10)


def test_round_dimension_picks_the_largest_multiple_close_enough():
    assert round_dimension(384) == (384, 64)
    assert round_dimension(300) == (288, 32)     # 320 would change the side by 6.7%
    assert round_dimension(8) == (8, 8)
    assert round_dimension(13)[0] % 8 == 0


def test_calibration_advice_follows_batch_rule_and_data_share():
    stats = dataset_stats(make_dataset([[100]] * 1000))
    advice = recommend_calibration(stats, batch_size=8, batches=10)
    assert advice.recommended_range == (100, 200)
    assert advice.value == 150
    few = recommend_calibration(dataset_stats(make_dataset([[100]] * 20)), batch_size=8, batches=10)
    assert few.value == 80 and any("only 20 images" in r for r in few.reasons)


def test_every_advice_has_a_field_a_value_and_a_reason():
    fields = [a.field for a in recommend_all(dataset_stats(make_dataset([[100]] * 3)))]
    assert {"dataloader.image_shape", "prune.threshold", "model.stages", "model.regularization_type",
            "calibration.num_images", "export.data_type"} <= set(fields)
    for advice in recommend_all(dataset_stats(make_dataset([[100]] * 3))):
        assert advice.reasons and all(isinstance(r, str) and r for r in advice.reasons)
        json.dumps(advice.to_dict())


def test_bundled_data_statistics(coco_mini):
    stats = dataset_stats_file(coco_mini[0])
    assert stats["num_images"] == 80
    assert stats["num_people"] == 86          # SOURCE.md: 86 annotations with keypoints
    assert stats["num_crowd_regions"] == 5
    assert stats["num_images_with_people"] == 28


PERSON = {"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(17)]}
IMAGE = {"id": 1, "file_name": "a.jpg", "width": 5, "height": 5}


@pytest.mark.parametrize("broken, message", [
    ({"images": "x", "annotations": [], "categories": []}, "'images' must be a list"),
    ({"images": [], "annotations": [], "categories": []}, "'images' is empty"),
    ({"images": [{**IMAGE, "width": 0}], "annotations": [], "categories": []}, "must be positive"),
    ({"images": [IMAGE], "annotations": [{"id": 7, "image_id": 2, "category_id": 1}], "categories": [PERSON]},
     "annotation 7 has image_id 2"),
    ({"images": [IMAGE], "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "keypoints": [1, 2]}],
      "categories": [PERSON]}, "keypoints has a list of 2 numbers; its category names 17 keypoints"),
])
def test_bad_annotations_are_named(broken, message, tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(BpnetError, match=message) as err:
        dataset_stats_file(path)
    assert str(path) in str(err.value)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(BpnetError, match="not found"):
        dataset_stats_file(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BpnetError, match="not valid JSON"):
        dataset_stats_file(tmp_path / "bad.json")
