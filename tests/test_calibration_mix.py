"""Calibration-set curation: stratified choice covering the evaluation mix, the mix report."""

import json

import pytest

from bpnet.errors import BpnetError
from bpnet.sampling import SIZE_CLASSES, sample_calibration, size_class

AREAS = {"small": 600.0, "medium": 4000.0, "large": 20000.0}


def person(image_id, k, size, visible=8):
    return {"id": 1000 * image_id + k, "image_id": image_id, "category_id": 1, "iscrowd": 0, "num_keypoints": visible,
            "area": AREAS[size], "keypoints": [5, 5, 2] * visible + [0, 0, 0] * (17 - visible)}


def write_coco(tmp_path, people):
    """people: one list of size classes per image; writes the JSON and empty image files."""
    images_dir = tmp_path / "images"
    images_dir.mkdir(exist_ok=True)
    images, annotations = [], []
    for i, sizes in enumerate(people):
        images.append({"id": i, "file_name": f"{i:03d}.jpg", "height": 480, "width": 640})
        (images_dir / f"{i:03d}.jpg").write_bytes(b"")
        annotations += [person(i, k, s) for k, s in enumerate(sizes)]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "person"}]}))
    return path, images_dir


def test_size_classes_follow_coco():
    assert [size_class(a) for a in (32 ** 2 - 1, 32 ** 2, 96 ** 2 - 1, 96 ** 2)] == \
        ["small", "medium", "medium", "large"]


def test_stratified_choice_covers_each_size_class_present(tmp_path):
    # mostly large single people; medium ones in crowds; one small person hides in an image of
    # large people (its dominant class is large) - in file-name order the first 4 would all be large
    people = [["large"]] * 12 + [["medium"] * 3] * 4 + [["large", "large", "small"]] + [[]] * 3
    annotations, images = write_coco(tmp_path, people)
    plain = sample_calibration(annotations, images, tmp_path / "plain", 4)
    assert {f["file_name"] for f in plain["files"]} == {"000.jpg", "001.jpg", "002.jpg", "003.jpg"}
    assert plain["mix"]["calibration"]["person_size_counts"] == {"small": 0, "medium": 0, "large": 4}
    assert any("no small or medium people" in w for w in plain["warnings"])

    report = sample_calibration(annotations, images, tmp_path / "strat", 4, stratify=True)
    counts = report["mix"]["calibration"]["person_size_counts"]
    assert all(counts[c] > 0 for c in SIZE_CLASSES) and report["warnings"] == []
    assert report["mix"]["evaluation"]["images_without_people"] == 3
    assert report["chosen"] == 4 and len({f["file_name"] for f in report["files"]}) == 4


def test_stratified_choice_follows_another_evaluation_set(tmp_path):
    pool, images = write_coco(tmp_path, [["large"]] * 6 + [["medium"]] * 6)
    target_dir = tmp_path / "eval"
    target_dir.mkdir()
    target, _ = write_coco(target_dir, [["medium"]] * 9 + [["large"]] * 3)
    report = sample_calibration(pool, images, tmp_path / "cal", 4, stratify=True, eval_annotations=target)
    assert report["mix"]["calibration"]["person_size_counts"] == {"small": 0, "medium": 3, "large": 1}


def test_criteria_on_size_and_visible_keypoints(tmp_path):
    annotations, images = write_coco(tmp_path, [["large"], ["medium"], ["medium", "medium"]])
    report = sample_calibration(annotations, images, tmp_path / "m", 3, sizes=("medium",), max_persons=1)
    assert [f["file_name"] for f in report["files"]] == ["001.jpg"]
    # no image meets the criteria: an error, not a report of 0 images (nothing is written)
    with pytest.raises(BpnetError, match=r"none of the 3 images .* meets the criteria .*visible"):
        sample_calibration(annotations, images, tmp_path / "v", 3, min_visible=9)
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("kwargs, message", [({"sizes": ("tiny",)}, "--sizes: tiny"),
                                             ({"min_visible": 18}, "--min_visible"),
                                             ({"max_persons": 0}, "--max_persons")])
def test_bad_curation_options(tmp_path, kwargs, message):
    annotations, images = write_coco(tmp_path, [["large"]])
    with pytest.raises(BpnetError, match=message):
        sample_calibration(annotations, images, tmp_path / "o", 1, **kwargs)
