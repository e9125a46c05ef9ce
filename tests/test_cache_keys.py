"""Cache keys are stable across refactors: the run specs below, expanded by the code of commit
0fbcbb1 (before ModelSpec lost its channel counts and the stage kinds were tidied), gave the keys in
fixtures/cache_keys.json; a run submitted then and re-submitted now reuses every cached stage.

Fingerprints of data files and folders are fixed strings here (a folder's depends on file mtimes,
so it differs per checkout) and paths are absolute fake ones: what is checked is the params and
the DAG, which is what a code change can alter. Regenerate the file (`python -m
tests.test_cache_keys > tests/fixtures/cache_keys.json`) only for a change meant to invalidate
cached stages, with the reason in the commit: an ENGINE_CACHE_VERSION bump, or a kind's own
version (bpnet.limits.INT8_METHOD_VERSION 2 re-keyed every INT8 stage and its descendants: the
INT8 exports, quantize, explore stages with INT8 points, their engines, evaluations and gates).
"""

import json
import sys
from pathlib import Path

from worker import runs

FIXTURE = Path(__file__).parent / "fixtures" / "cache_keys.json"
DATA = {"annotations": "/data/coco/annotations/person_keypoints_train2017.json", "images": "/data/coco/train2017"}
EVAL = {"eval_annotations": "/data/coco/annotations/person_keypoints_val2017.json",
        "eval_images": "/data/coco/val2017"}


def train_recipe():
    """A training recipe (specs/train_small.yaml as of 0fbcbb1, inline: a later edit of that file
    changes the keys on purpose, which is not what this test is about)."""
    return {"random_seed": 42, "num_epoch": 100, "checkpoint_n_epoch": 25,
            "model": {"backbone_width": 0.25, "stages": 2, "use_batch_norm": True, "regularization_type": "l1",
                      "kernel_regularization_factor": 1.0e-5},
            "dataloader": {"batch_size": 4, "image_shape": [128, 128], "augmentation": {"enabled": False},
                           "dataset": {"annotations": "x", "images": "x", "include_images_without_people": False}},
            "optimizer": {"type": "adam", "learning_rate_schedule": {
                "base_learning_rate": 1.0e-3, "min_learning_rate": 1.0e-5, "soft_start": 0.05, "annealing": 0.8}}}


def legacy_train_recipe():
    """A recipe written before: with the channel counts ModelSpec no longer has."""
    recipe = train_recipe()
    recipe["model"].update(heat_channels=19, paf_channels=38)
    return recipe


RUN_SPECS = {
    "sweep": {"dataset": {**DATA, **EVAL}, "train": "recipe", "stages": [2, 3], "resolutions": [[224, 320], [288, 384]],
              "prune_thresholds": [0.1, 0.5], "precisions": ["fp32", "fp16", "int8"],
              "calibration": {"batch_size": 4, "batches": 2, "calibrator": "minmax"}, "engines": True,
              "int8_gate_max_ap_drop": 1.5, "eval_max_images": 50, "benchmark": {"runs": 7}},
    "legacy-recipe": {"dataset": DATA, "train": "legacy", "prune_thresholds": [0.2], "precisions": ["fp32"]},
    "import-retrain": {"dataset": DATA, "model": "/models/base.hdf5", "train": "recipe", "prune_thresholds": [0.3],
                       "retrain_epochs": 3, "precisions": ["fp32", "int8"], "output_stage": 2,
                       "calibration": {"images": "/data/cal", "batch_size": 2, "batches": 2,
                                       "keep_float_layers": ["stage1_heat_conv1"]}},
    "pretrained-qat": {"dataset": DATA, "model": "/models/net.tflite", "train": "legacy", "prune_thresholds": [],
                       "precisions": ["int8"],
                       "calibration": {"batch_size": 2, "batches": 2, "qat_steps": 20}},
    "accuracy-control": {"dataset": {**DATA, **EVAL}, "model": "/models/base.hdf5", "train": "recipe",
                         "prune_thresholds": [0.1],
                         "precisions": ["fp32", "int8"], "accuracy_control": {"max_drop": 1.0}},
    "search": {"dataset": DATA, "train": "recipe", "kind": "search", "evaluate_unpruned": False,
               "search": {"budget_ap": 1.5, "objective": "latency", "max_iters": 4}},
    "explore": {"dataset": DATA, "model": "/models/net.tflite", "kind": "explore", "precisions": ["fp32", "int8"],
                "resolutions": [[224, 320], [288, 384]], "explorer": {"stage_exits": [1, 2]},
                "calibration": {"batch_size": 2, "batches": 2}},
}


def planned_keys():
    """{run spec name: {stage label: key}} with fixed data fingerprints."""
    file_fp, folder_fp = runs.file_fingerprint, runs.folder_fingerprint
    runs.file_fingerprint = lambda path: f"file:{path}"
    runs.folder_fingerprint = lambda path: f"folder:{path}"
    try:
        out = {}
        for name, data in RUN_SPECS.items():
            data = dict(data)
            if "train" in data:
                data["train"] = legacy_train_recipe() if data["train"] == "legacy" else train_recipe()
            spec = runs.RunSpec.model_validate(data)
            out[name] = {n["label"]: n["key"] for n in runs.expand_run(spec, tensorrt=True)}
        return out
    finally:
        runs.file_fingerprint, runs.folder_fingerprint = file_fp, folder_fp


def test_every_stage_key_is_the_key_of_the_runs_made_before():
    before = json.loads(FIXTURE.read_text())
    now = planned_keys()
    assert set(now) == set(before)
    for name in before:
        assert now[name] == before[name], name


def test_a_recipe_with_the_old_channel_fields_plans_the_same_stages_as_one_without():
    RUN_SPECS["legacy-as-new"] = {**RUN_SPECS["legacy-recipe"], "train": "recipe"}
    try:
        keys = planned_keys()
    finally:
        del RUN_SPECS["legacy-as-new"]
    assert keys["legacy-as-new"] == keys["legacy-recipe"]


if __name__ == "__main__":
    json.dump(planned_keys(), sys.stdout, indent=1, sort_keys=True)
    print()
