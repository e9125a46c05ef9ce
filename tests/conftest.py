"""Shared fixtures: the bundled real COCO sample and tiny specs/models built once per session.

Keep tests fast (the whole suite must stay under 20 minutes on 2 cores): tiny resolutions
(64-128 px), narrow backbones (`backbone_width` 0.125-0.25), few steps.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.browser import browser_page, studio  # noqa: F401  (the browser tests' fixtures)

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
COCO_MINI = ROOT / "data" / "coco-mini"
COCO_ANNOTATIONS = COCO_MINI / "annotations" / "person_keypoints_train2017.json"
COCO_IMAGES = COCO_MINI / "train2017"


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest installs the page script as `sys.modules["__main__"]` and never puts the
    real one back. Processes started with "spawn" (the input pipeline's pool, the race tests'
    workers) re-import `__main__` from its `__file__`, so after one AppTest they ran the page's
    temporary script, died with `NameError: __args`, and every later spawn test failed
    (BrokenProcessPool, queue.Empty). Restore it after each test."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def coco_mini():
    """(annotations json, image dir) of the 80 bundled real COCO images."""
    return COCO_ANNOTATIONS, COCO_IMAGES


def tiny_train_spec_dict(**overrides):
    """A training spec (as a dict) small enough for a test: 64x64, width 0.125, 2 stages."""
    spec = {
        "random_seed": 1,
        "num_epoch": 1,
        "steps_per_epoch": 4,
        "checkpoint_n_epoch": 1,
        "model": {"backbone_width": 0.125, "stages": 2, "regularization_type": "l1",
                  "kernel_regularization_factor": 1e-6},
        "dataloader": {
            "batch_size": 2,
            "image_shape": [64, 64],
            "num_parallel_calls": 1,
            "dataset": {"annotations": str(COCO_ANNOTATIONS), "images": str(COCO_IMAGES),
                        "include_images_without_people": False},
        },
        "optimizer": {"type": "adam", "learning_rate_schedule": {"base_learning_rate": 1e-3,
                                                                 "min_learning_rate": 1e-5}},
    }
    for dotted, value in overrides.items():
        node = spec
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return spec


# The `train` section of a tiny run spec (the run's dataset fills in the paths): 64x64, 3 steps.
TINY_RUN_TRAIN = {
    "random_seed": 1, "num_epoch": 1, "steps_per_epoch": 3, "checkpoint_n_epoch": 1,
    "model": {"backbone_width": 0.125, "stages": 2},
    "dataloader": {"batch_size": 2, "image_shape": [64, 64], "num_parallel_calls": 1,
                   "dataset": {"include_images_without_people": False}},
    "optimizer": {"learning_rate_schedule": {"base_learning_rate": 1e-3, "min_learning_rate": 1e-5}},
}


@pytest.fixture(scope="session")
def tiny_trained_model(tmp_path_factory):
    """Path of a tiny BodyPoseNet trained for a few steps on the bundled data (built once)."""
    from bpnet.specs import TrainSpec, parse_spec
    from bpnet.train import train

    results = tmp_path_factory.mktemp("tiny_trained")
    spec = parse_spec(TrainSpec, tiny_train_spec_dict(**{"num_epoch": 2}), "tiny spec")
    train(spec, results)
    return results / "bpnet_model.hdf5"


@pytest.fixture
def copy_of_coco_mini(tmp_path):
    """A writable copy of the bundled sample, for tests that break files on purpose."""
    dst = tmp_path / "coco-mini"
    shutil.copytree(COCO_MINI, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst
