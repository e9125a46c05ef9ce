"""Training on the bundled real COCO images: the loss falls, resume continues, bad input is clear."""

import json

import numpy as np
import pytest
import yaml
from conftest import tiny_train_spec_dict

from bpnet.errors import BpnetError, RunCancelled
from bpnet.events import read_events
from bpnet.specs import TrainSpec, parse_spec

pytestmark = pytest.mark.slow


def tiny_spec(**overrides):
    return parse_spec(TrainSpec, tiny_train_spec_dict(**overrides), "test spec")


def events_of(results, kind):
    return [e for e in read_events(results / "events.jsonl") if e["event"] == kind]


def all_background_loss(spec):
    """Loss of the best input-blind guess (background 1, everything else 0), per image, summed
    over the model's stages: a model below it has learned where people are."""
    from bpnet.data.pipeline import make_dataset
    from bpnet.losses import bpnet_loss_np

    total, images = 0.0, 0
    for _, targets in make_dataset(spec, training=False):
        heat, pafs, mask = (targets[k].numpy() for k in ("heatmaps", "pafs", "mask"))
        guess = np.zeros_like(heat)
        guess[..., -1] = 1.0
        outputs = [guess, np.zeros_like(pafs)] * spec.model.stages
        total += bpnet_loss_np(outputs, heat, pafs, mask) * len(heat)
        images += len(heat)
    return total / images


def test_loss_falls_on_bundled_images(tmp_path):
    from bpnet.model import load_model, num_stages

    # No augmentation and no annealing: the fastest honest way to see learning in ~30 s.
    spec = tiny_spec(**{
        "num_epoch": 16, "steps_per_epoch": 7, "checkpoint_n_epoch": 8,
        "model.backbone_width": 0.25, "dataloader.batch_size": 4,
        "dataloader.augmentation.enabled": False,
        "optimizer.learning_rate_schedule": {"base_learning_rate": 1e-3, "min_learning_rate": 1e-5,
                                             "soft_start": 0.05, "annealing": 1.0}})
    summary = train_quietly(spec, tmp_path)

    assert summary["final_loss"] <= 0.7 * summary["first_epoch_loss"], summary["epoch_losses"]
    assert summary["final_loss"] < all_background_loss(spec)
    assert summary["epochs"] == 16 and summary["steps"] == 112
    assert summary["images_per_s"] > 0 and summary["parameter_count"] > 100_000
    assert summary["spec"]["model"]["backbone_width"] == 0.25

    on_disk = json.loads((tmp_path / "training_summary.json").read_text())
    assert on_disk["final_loss"] == summary["final_loss"]
    assert num_stages(load_model(tmp_path / "bpnet_model.hdf5")) == 2
    assert yaml.safe_load((tmp_path / "spec.yaml").read_text())["num_epoch"] == 16
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch_0008.hdf5", "epoch_0016.hdf5"]

    kinds = [e["event"] for e in read_events(tmp_path / "events.jsonl")]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("epoch_end") == 16 and kinds.count("checkpoint") == 2
    step = events_of(tmp_path, "step")[-1]
    assert {"epoch", "step", "loss", "lr", "eta_s", "images_per_s"} <= set(step)
    assert step["lr"] == pytest.approx(1e-3)


def train_quietly(spec, results, progress=None):
    from bpnet.train import train

    return train(spec, results, progress=progress)


def cancel_after_epoch(epoch):
    def progress(event):
        if event["event"] == "epoch_end" and event["epoch"] == epoch:
            raise RunCancelled()
    return progress


def test_resume_after_cancel_continues_epoch_count(tmp_path):
    import h5py

    spec = tiny_spec(**{"num_epoch": 3, "steps_per_epoch": 2})
    with pytest.raises(RunCancelled):
        train_quietly(spec, tmp_path, progress=cancel_after_epoch(1))
    assert not (tmp_path / "bpnet_model.hdf5").exists()
    assert not (tmp_path / "training_summary.json").exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch_0001.hdf5"]
    assert events_of(tmp_path, "cancelled")

    summary = train_quietly(spec, tmp_path)
    assert summary["epochs"] == 3 and summary["steps"] == 6
    assert summary["resumed_from_epoch"] == 1
    assert len(summary["epoch_losses"]) == 3
    assert [e["epoch"] for e in events_of(tmp_path, "epoch_end")] == [1, 2, 3]
    second_start = events_of(tmp_path, "start")[1]
    assert second_start["resumed_from_epoch"] == 1 and second_start["optimizer_state_restored"]
    with h5py.File(tmp_path / "checkpoints" / "epoch_0003.hdf5", "r") as f:
        assert int(f["bpnet_training"]["optimizer_0000"][()]) == 6   # Adam's step counter went on


    # The checkpoints belong to this architecture; another one must not silently resume from them.
    with pytest.raises(BpnetError, match="model.backbone_width"):
        train_quietly(tiny_spec(**{"num_epoch": 4, "model.backbone_width": 0.25}), tmp_path)


def test_load_graph_keeps_the_file_architecture_with_the_spec_regularizer(tmp_path):
    import tensorflow as tf

    from bpnet.model import build_model, count_params, load_model, save_model

    # A model of another width stands in for a pruned graph: load_graph must keep its shape.
    donor = build_model(tiny_spec(**{"model.backbone_width": 0.25}).model)
    save_model(donor, tmp_path / "pruned.hdf5")
    spec = tiny_spec(**{"pretrained_weights": str(tmp_path / "pruned.hdf5"), "load_graph": True,
                        "model.regularization_type": "l2", "steps_per_epoch": 1})
    summary = train_quietly(spec, tmp_path / "run")
    assert summary["parameter_count"] == count_params(donor)
    assert summary["pretrained"]["load_graph"] is True
    trained = load_model(tmp_path / "run" / "bpnet_model.hdf5")
    assert isinstance(trained.get_layer("block1_conv1").kernel_regularizer,
                      tf.keras.regularizers.L2)


def test_pretrained_weights_without_graph_load_matching_layers(tmp_path):
    from bpnet.model import build_model, save_model

    donor = build_model(tiny_spec(**{"model.stages": 3}).model)
    save_model(donor, tmp_path / "three_stages.hdf5")
    spec = tiny_spec(**{"pretrained_weights": str(tmp_path / "three_stages.hdf5"),
                        "steps_per_epoch": 1})
    summary = train_quietly(spec, tmp_path / "run")
    assert summary["stages"] == 2
    assert summary["pretrained"]["layers_matched"] > 30 and summary["pretrained"]["layers_skipped"] == []
    start = events_of(tmp_path / "run", "start")[0]
    assert "matching weights" in start["message"]


@pytest.mark.parametrize("overrides, match", [
    ({"model.heat_channels": 20}, "model.heat_channels: 20"),
    ({"load_graph": True}, "load_graph"),
    ({"optimizer.learning_rate_schedule.soft_start": 0.9}, "soft_start"),
    ({"pretrained_weights": "/nonexistent/model.hdf5"}, "not found: /nonexistent/model.hdf5"),
])
def test_spec_problems_are_clear_and_write_no_model(tmp_path, overrides, match):
    with pytest.raises(BpnetError, match=match):
        train_quietly(tiny_spec(**overrides), tmp_path)
    assert not (tmp_path / "bpnet_model.hdf5").exists()


def test_pretrained_file_that_is_not_a_bodyposenet(tmp_path):
    import tensorflow as tf

    from bpnet.model import save_model

    save_model(tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)]),
               tmp_path / "dense.hdf5")
    for load_graph, match in ((True, "not a BodyPoseNet"), (False, "no layer matches")):
        spec = tiny_spec(**{"pretrained_weights": str(tmp_path / "dense.hdf5"),
                            "load_graph": load_graph})
        with pytest.raises(BpnetError, match=match):
            train_quietly(spec, tmp_path / "run")


# ---------------------------------------------------------------- through the CLI

def write_spec(path, spec_dict):
    path.write_text(yaml.safe_dump(spec_dict))
    return path


def test_cli_trains_and_prints_a_summary(tmp_path, capsys):
    from bpnet.cli import main

    spec = write_spec(tmp_path / "spec.yaml", tiny_train_spec_dict(steps_per_epoch=1))
    assert main(["train", "-e", str(spec), "-r", str(tmp_path / "run"), "--num_epoch", "2"]) == 0
    out, err = capsys.readouterr()
    assert "epochs:     2 (2 steps)" in out and "images/s" in out
    assert "epoch 2/2" in err   # the per-epoch progress line (stderr is not a terminal here)
    assert (tmp_path / "run" / "bpnet_model.hdf5").exists()


def corrupt_all_images(coco_dir):
    for jpeg in (coco_dir / "train2017").glob("*.jpg"):
        jpeg.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG any more")


@pytest.mark.parametrize("breakage, match", [
    ("wrong_type", "num_epoch: value 'many'"),
    ("unknown_field", "learning_rat: unknown field"),
    ("bad_num_epoch_flag", "command line (--num_epoch)"),
    ("missing_annotations", "not found"),
    ("empty_annotations", "person_keypoints_train2017.json"),
    ("corrupt_jpegs", ".jpg"),
])
def test_cli_bad_input_exits_nonzero_without_a_model(tmp_path, capsys, copy_of_coco_mini,
                                                     breakage, match):
    from bpnet.cli import main

    spec = tiny_train_spec_dict(**{
        "dataloader.dataset.annotations": str(copy_of_coco_mini / "annotations"
                                              / "person_keypoints_train2017.json"),
        "dataloader.dataset.images": str(copy_of_coco_mini / "train2017")})
    extra = []
    if breakage == "wrong_type":
        spec["num_epoch"] = "many"
    elif breakage == "unknown_field":
        spec["optimizer"]["learning_rat"] = 0.1
    elif breakage == "bad_num_epoch_flag":
        extra = ["--num_epoch", "0"]
    elif breakage == "missing_annotations":
        (copy_of_coco_mini / "annotations" / "person_keypoints_train2017.json").unlink()
    elif breakage == "empty_annotations":
        (copy_of_coco_mini / "annotations" / "person_keypoints_train2017.json").write_text("")
    elif breakage == "corrupt_jpegs":
        corrupt_all_images(copy_of_coco_mini)
    results = tmp_path / "run"
    code = main(["train", "-e", str(write_spec(tmp_path / "spec.yaml", spec)), "-r", str(results)]
                + extra)
    err = capsys.readouterr().err
    assert code == 2
    assert match in err and "Traceback" not in err
    assert not (results / "bpnet_model.hdf5").exists()
    assert not (results / "training_summary.json").exists()


@pytest.mark.parametrize("name", ["train_small.yaml", "train_coco.yaml", "retrain_small.yaml"])
def test_bundled_specs_are_valid(name):
    from conftest import ROOT

    from bpnet.specs import load_train_spec
    from bpnet.train import check_train_spec

    spec = load_train_spec(ROOT / "specs" / name)
    check_train_spec(spec)
    assert spec.dataloader.dataset.annotations.name == "person_keypoints_train2017.json"


def test_coco_spec_without_coco_is_a_clear_error(tmp_path, capsys):
    from conftest import ROOT

    from bpnet.cli import main

    if (ROOT / "data" / "coco" / "annotations").exists():
        pytest.skip("a full COCO 2017 is installed here; this test is about its absence")
    code = main(["train", "-e", str(ROOT / "specs" / "train_coco.yaml"), "-r", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "person_keypoints_train2017.json" in err and "Traceback" not in err
