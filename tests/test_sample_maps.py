"""The evaluate stage's sample maps: the raw heatmaps and PAFs of the images with the most
annotated people, for the dashboard's overlays (which never run a model themselves)."""

import numpy as np
import pytest

from bpnet.sample_maps import images_with_most_people, save_sample_maps
from bpnet.specs import InferSpec

from tests.tiny_models import save_tiny_model


def test_the_images_with_the_most_annotated_people_are_chosen():
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "c.jpg"}],
            "annotations": [{"image_id": 2, "num_keypoints": 5}, {"image_id": 2, "num_keypoints": 3},
                            {"image_id": 1, "num_keypoints": 4}, {"image_id": 3, "num_keypoints": 0},
                            {"image_id": 3, "num_keypoints": 9, "iscrowd": 1}]}
    assert images_with_most_people(coco, 5) == [(2, "b.jpg"), (1, "a.jpg")]


@pytest.mark.slow
def test_sample_maps_hold_each_chosen_images_outputs(tmp_path, coco_mini):
    from app.overlay import read_sample_maps

    model = save_tiny_model(tmp_path / "tiny.hdf5")
    spec = InferSpec(input_shape=(64, 64))
    out = save_sample_maps(model, coco_mini[0], coco_mini[1], spec, tmp_path / "sample_maps.npz", count=2)
    maps = read_sample_maps(out)
    assert len(maps) == 2 and maps[0]["heatmaps"].shape == (8, 8, 19) and maps[0]["pafs"].shape == (8, 8, 38)
    assert np.isfinite(maps[0]["heatmaps"].astype(np.float32)).all()
    assert maps[0]["image_hw"][0] > 64 and 0 < maps[0]["scale"] < 1
