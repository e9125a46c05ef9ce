"""Bad inputs found by trying the tools as an operator would: each is a clear error (naming the
file, the field or the entries), never a silent double count, an AP of -1 or a crash."""

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from bpnet.errors import BpnetError
from bpnet.skeleton import load_skeleton
from tests.conftest import COCO_ANNOTATIONS, COCO_IMAGES

ROOT = Path(__file__).resolve().parent.parent
SKELETON = load_skeleton("bpnet_18joints")


def _coco():
    return json.loads(COCO_ANNOTATIONS.read_text())


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _with_duplicate_image_id(data):
    first, second = data["images"][0], data["images"][1]
    second["id"] = first["id"]
    return data, first["file_name"], second["file_name"]


def test_duplicate_image_ids_name_both_images_in_training(tmp_path):
    from bpnet.data.coco import load_coco_samples

    data, a, b = _with_duplicate_image_id(_coco())
    with pytest.raises(BpnetError, match=rf"images '{a}' and '{b}' have the same id \d+; ids must be unique"):
        load_coco_samples(_write(tmp_path, data), COCO_IMAGES, SKELETON)


def test_duplicate_image_ids_in_evaluation_and_sampling(tmp_path):
    from bpnet.evaluate import evaluate_results
    from bpnet.sampling import sample_calibration

    data, a, b = _with_duplicate_image_id(_coco())
    annotations = _write(tmp_path, data)
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(BpnetError, match=f"'{a}' and '{b}'"):
        evaluate_results(tmp_path / "results.json", annotations, tmp_path / "out")
    with pytest.raises(BpnetError, match=f"'{a}' and '{b}'"):
        sample_calibration(annotations, COCO_IMAGES, tmp_path / "cal", 4)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cal").exists()


def test_duplicate_annotation_ids_are_named(tmp_path):
    from bpnet.data.coco import read_coco

    data = _coco()
    data["annotations"][1]["id"] = data["annotations"][0]["id"]
    with pytest.raises(BpnetError, match="annotations of image .* and of image .* have the same id"):
        read_coco(_write(tmp_path, data))


@pytest.mark.parametrize("case", ["no keypoint persons", "no images"])
def test_ap_over_no_labelled_person_is_an_error_not_minus_one(tmp_path, case):
    from bpnet.evaluate import evaluate_results

    data = _coco()
    if case == "no images":
        data["images"], data["annotations"] = [], []
        message = "'images' is empty"
    else:
        for ann in data["annotations"]:
            ann["num_keypoints"], ann["keypoints"] = 0, [0] * 51
        message = "none of the 80 evaluated images has a person with labelled keypoints"
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(BpnetError, match=message):
        evaluate_results(tmp_path / "results.json", _write(tmp_path, data), tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_sample_calibration_with_nothing_chosen_is_an_error(tmp_path):
    from bpnet.sampling import sample_calibration

    with pytest.raises(BpnetError, match="none of the 80 images .* meets the criteria"):
        sample_calibration(COCO_ANNOTATIONS, COCO_IMAGES, tmp_path / "cal", 4, min_persons=50)
    assert not (tmp_path / "cal").exists()


def test_sample_calibration_names_a_missing_annotations_key(tmp_path):
    from bpnet.sampling import sample_calibration

    data = _coco()
    del data["annotations"]
    with pytest.raises(BpnetError, match="-a/--annotations: COCO annotations file .*: field 'annotations' must be a list"):
        sample_calibration(_write(tmp_path, data), COCO_IMAGES, tmp_path / "cal", 4)


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (a decompression bomb is a few bytes on disk)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width, height", [(20000, 20000), (8000, 7000)])
def test_oversize_images_are_refused_from_their_header(tmp_path, width, height):
    import resource

    from bpnet.preprocess import read_image

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BpnetError, match=r"more than the 50 MP allowed"):
        read_image(_png_header_only(tmp_path / "huge.png", width, height))
    # never decoded: the peak memory did not grow by the image's size (1.2 GB / 168 MB)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024


def test_images_at_the_limit_are_read(tmp_path):
    import cv2
    import numpy as np

    from bpnet.preprocess import read_image

    path = tmp_path / "ok.png"
    cv2.imwrite(str(path), np.zeros((64, 48, 3), np.uint8))
    assert read_image(path).shape == (64, 48, 3)


@pytest.mark.slow
def test_train_on_a_corrupt_jpeg_exits_2_every_time(copy_of_coco_mini, tmp_path):
    data = json.loads((copy_of_coco_mini / "annotations" / "person_keypoints_train2017.json").read_text())
    with_people = {a["image_id"] for a in data["annotations"] if a.get("num_keypoints", 0) > 0}
    image = copy_of_coco_mini / "train2017" / next(i["file_name"] for i in data["images"] if i["id"] in with_people)
    image.write_bytes(image.read_bytes()[:200] + b"\0" * 100)   # a valid header, corrupt data
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "random_seed: 1\nnum_epoch: 1\nsteps_per_epoch: 3\ncheckpoint_n_epoch: 1\n"
        "model: {backbone_width: 0.125, stages: 2}\n"
        "dataloader:\n  batch_size: 2\n  image_shape: [64, 64]\n"
        f"  dataset: {{annotations: {copy_of_coco_mini}/annotations/person_keypoints_train2017.json, "
        f"images: {copy_of_coco_mini}/train2017, include_images_without_people: false}}\n")
    for attempt in range(2):   # the abort was intermittent (exit 134 or a hang at exit)
        proc = subprocess.run([sys.executable, "-m", "bpnet.cli", "train", "-e", str(spec), "-r",
                               str(tmp_path / f"out{attempt}")], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"image {image} is not a readable image" in proc.stderr and "Traceback" not in proc.stderr
