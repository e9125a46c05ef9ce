"""TAO parity: TAO's command lines, spec files and calibration TensorFile work as they are.

The spec fixtures (tests/fixtures/tao) have every field of TAO's published BodyPoseNet specs,
with the workflow's container paths; `tao_workspace` replaces those path prefixes with temporary
folders, as a TAO user fills in theirs.
"""

import importlib.util
import json
import os
import shlex
import string
from pathlib import Path

import numpy as np
import pytest
import yaml

from bpnet.cli import main
from bpnet.errors import BpnetError
from tests.conftest import COCO_IMAGES, COCO_MINI

FIXTURES = Path(__file__).parent / "fixtures" / "tao"
TAO_EXPERIMENT = "/workspace/tao-experiments/bpnet"
TAO_EXAMPLES = "/workspace/examples/bpnet"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def tao_workspace(tmp_path):
    """(experiment dir, examples dir): the fixtures with their paths pointed at tmp_path, and the
    bundled COCO sample's annotations and images linked into the experiment's data/ folder (a
    real folder: the workflow writes calibration_samples/ there)."""
    experiment, examples = tmp_path / "tao-experiments" / "bpnet", tmp_path / "examples" / "bpnet"
    (experiment / "data").mkdir(parents=True)
    for name in ("annotations", "train2017"):
        os.symlink(COCO_MINI / name, experiment / "data" / name)
    for source in FIXTURES.rglob("*"):
        if source.suffix in (".yaml", ".json"):
            target = examples / source.relative_to(FIXTURES)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source.read_text().replace(TAO_EXPERIMENT, str(experiment))
                              .replace(TAO_EXAMPLES, str(examples)))
    return experiment, examples


# ---------------------------------------------------------------- spec files

def test_tao_training_spec_translates_every_field(tao_workspace):
    from bpnet.tao_spec import load_train_spec_any

    experiment, examples = tao_workspace
    loaded = load_train_spec_any(examples / "specs" / "bpnet_train_m1_coco.yaml")
    spec = loaded.spec
    assert loaded.checkpoint_dir == experiment / "models" / "exp_m1_unpruned"
    assert (spec.num_epoch, spec.checkpoint_n_epoch, spec.random_seed, spec.load_graph) == (4, 2, 7, False)
    dl = spec.dataloader
    assert dl.batch_size == 4 and dl.image_shape == (128, 128) and dl.skeleton == "bpnet_18joints"
    assert dl.dataset.annotations == (COCO_MINI / "annotations" / "person_keypoints_train2017.json").resolve()
    assert dl.dataset.images == (COCO_MINI / "train2017").resolve()
    assert dl.dataset.min_keypoints == 3                       # data_filtering_params.min_acceptable_kpts
    aug = dl.augmentation
    assert (aug.flip_lr_prob, aug.rotate_deg_max, aug.target_person_scale) == (0.4, 30.0, 0.7)
    assert (aug.zoom_ratio_min, aug.zoom_ratio_max) == (1.0, 1.0)    # zoom_prob 0: TAO never zooms
    assert aug.translate_ratio_max == pytest.approx(16 / 128)        # 16 px of a 128 px input
    assert (dl.targets.heatmap_sigma_px, dl.targets.paf_width_px) == (6.0, 12.0)   # 1.5 cells x 8 px
    assert spec.model.stages == 3 and spec.model.kernel_regularization_factor == 1e-4
    assert spec.optimizer.type == "sgd" and spec.optimizer.momentum == 0.85
    lr = spec.optimizer.learning_rate_schedule
    assert (lr.base_learning_rate, lr.min_learning_rate, lr.soft_start, lr.annealing) == (1e-4, 1e-6, 0.1, 0.6)
    ignored = [n.split(" ")[1] for n in loaded.notes if n.startswith("ignored: ")]
    assert len(ignored) == len(set(ignored)), "each ignored field is listed once"
    assert set(ignored) == {
        "log_every_n_secs", "summary_every_n_steps", "infrequent_summary_every_n_steps",
        "validation_every_n_epoch", "max_ckpt_to_keep", "use_stagewise_lr_multipliers", "inference_spec",
        "dataloader.image_config.image_encoding", "dataloader.dataset_config.root_data_path",
        "dataloader.dataset_config.train_records_folder_path", "dataloader.dataset_config.train_records_path",
        "dataloader.dataset_config.val_records_folder_path", "dataloader.dataset_config.val_records_path",
        "coco_spec.json:train_data.mask_root_dir_path", "coco_spec.json:data_filtering_params.min_acceptable_height",
        "coco_spec.json:data_filtering_params.min_acceptable_width",
        "coco_spec.json:data_filtering_params.min_acceptable_interperson_dist_ratio",
        "coco_spec.json:duplicate_data_with_each_person_as_center", "coco_spec.json:categories",
        "coco_spec.json:visibility_flags", "dataloader.normalization_params.mask_scale",
        "dataloader.normalization_params.mask_offset", "dataloader.label_processor_config.paf_gaussian_sigma",
        "dataloader.shuffle_buffer_size", "model.backbone_attributes.use_bias", "model.kernel_initializer"}
    assert all("TFRecords are not needed" in n for n in loaded.notes if "records" in n or "root_data_path" in n)


def test_tao_spec_field_that_is_neither_mapped_nor_known_is_an_error(tao_workspace):
    from bpnet.tao_spec import load_train_spec_any

    _, examples = tao_workspace
    path = examples / "specs" / "bpnet_retrain_m1_coco.yaml"
    data = yaml.safe_load(path.read_text())
    data["dataloader"]["augmentation_config"]["spatial_aug_params"]["flip_lr_prb"] = 0.5
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BpnetError, match="spatial_aug_params.flip_lr_prb"):
        load_train_spec_any(path)


def test_a_tao_container_path_left_in_a_spec_names_the_field_and_the_way_out(tmp_path):
    from bpnet.tao_spec import load_train_spec_any

    path = tmp_path / "bpnet_retrain_m1_coco.yaml"   # as published: paths inside TAO's container
    path.write_text((FIXTURES / "specs" / "bpnet_retrain_m1_coco.yaml").read_text())
    with pytest.raises(BpnetError, match=r"dataloader.dataset_config.dataset_specs.coco: "
                                         rf"{TAO_EXAMPLES}/data_pose_config/coco_spec.json: file not found "
                                         r"\(TAO's specs name paths inside TAO's container"):
        load_train_spec_any(path)


def test_tao_inference_specs_load_unchanged(tao_workspace):
    from bpnet.tao_spec import load_infer_spec_any

    experiment, examples = tao_workspace
    strict = load_infer_spec_any(examples / "specs" / "infer_spec_retrained_strict.yaml")
    assert strict.spec.input_shape == (64, 64) and strict.spec.keep_aspect_ratio_mode == "pad_image_input"
    assert strict.model_path == experiment / "models" / "exp_m1_retrain" / "bpnet_model.hdf5"
    assert strict.spec.normalization.image_scale == (256.0, 256.0, 256.0)   # from its train_spec
    default = load_infer_spec_any(examples / "specs" / "infer_spec.yaml")
    assert default.spec.keep_aspect_ratio_mode == "adjust_network_input"
    assert not default.spec.multi_scale_inference and default.notes == []


def test_spec_from_tao_prints_an_equivalent_native_spec(tao_workspace, tmp_path, capsys):
    from bpnet.specs import load_train_spec
    from bpnet.tao_spec import load_train_spec_any

    _, examples = tao_workspace
    tao_file = examples / "specs" / "bpnet_train_m1_coco.yaml"
    assert main(["spec", "--from-tao", str(tao_file)]) == 0
    out = capsys.readouterr()
    assert "ignored: dataloader.shuffle_buffer_size" in out.err
    native = tmp_path / "native.yaml"
    native.write_text(out.out)
    assert load_train_spec(native) == load_train_spec_any(tao_file).spec


def test_dataset_convert_says_it_is_not_needed_and_checks_the_data(tao_workspace, capsys):
    _, examples = tao_workspace
    spec = examples / "data_pose_config" / "coco_spec.json"
    assert main(["dataset_convert", "-m", "train", "-o", "/nonexistent/train", "-r", "/nonexistent",
                 "--generate_masks", "--dataset_spec", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "not needed" in out and "80 found" in out
    assert not Path("/nonexistent").exists()


# ---------------------------------------------------------------- flags and model files

def test_encrypted_tao_model_is_refused_with_the_way_out(tmp_path, capsys):
    model = tmp_path / "model.tlt"
    model.write_bytes(b"\x13\x37 not HDF5: a key-encrypted TLT file" * 4)
    assert main(["prune", "-m", str(model), "-o", str(tmp_path / "p.hdf5"), "-k", "nvidia_tlt"]) == 2
    err = capsys.readouterr().err
    assert "-k/--key is not needed" in err
    assert "key-encrypted" in err and "tao model bpnet prune" in err and "Traceback" not in err


def test_uff_backend_is_refused_with_the_reason(tmp_path, capsys):
    assert main(["export", "-m", str(tmp_path / "m.hdf5"), "-t", "uff"]) == 2
    assert "TensorRT 9 removed" in capsys.readouterr().err


def test_launcher_flags_and_log_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")     # restored after the test
    log = tmp_path / "logs" / "run.log"
    code = main(["dataset-stats", "-a", str(COCO_MINI / "annotations" / "person_keypoints_train2017.json"),
                 "--gpus", "2", "--gpu_index", "0", "--use_amp", "--log_file", str(log)])
    assert code == 0 and os.environ.get("CUDA_VISIBLE_DEVICES") == "0"
    text = log.read_text()
    assert "note: --gpus 2" in text and "--use_amp is not used" in text and "people per image" in text


def test_tao_spellings_of_evaluate_and_inference_inputs(tmp_path):
    from types import SimpleNamespace

    from bpnet.commands.evaluate import spec_given_as_images
    from bpnet.commands.inference import check_input_type

    args = SimpleNamespace(images="specs/infer_spec.yaml", inference_spec=None)
    spec_given_as_images(args)                  # TAO's -i is the inference spec
    assert (args.inference_spec, args.images) == ("specs/infer_spec.yaml", None)
    both = SimpleNamespace(images="a.yaml", inference_spec="b.yaml")
    with pytest.raises(BpnetError, match="-i a.yaml looks like an inference spec"):
        spec_given_as_images(both)
    (tmp_path / "list.json").write_text("[]")
    check_input_type(tmp_path / "list.json", "json")
    check_input_type(tmp_path, "dir")
    with pytest.raises(BpnetError, match="--input_type image: .* is not an image file"):
        check_input_type(tmp_path, "image")


def test_export_output_names_follow_tao(tmp_path, capsys):
    from types import SimpleNamespace

    from bpnet.commands.export import output_path

    assert output_path(SimpleNamespace(output_file=None, model="m/bpnet_model.hdf5")) == Path("m/bpnet_model.onnx")
    assert output_path(SimpleNamespace(output_file="out/model.etlt", model="x")) == Path("out/model.onnx")
    assert "not an encrypted .etlt" in capsys.readouterr().out
    assert output_path(SimpleNamespace(output_file="out/model", model="x")) == Path("out/model.onnx")


@pytest.mark.slow
def test_channels_first_export_has_an_nchw_input_and_the_same_outputs(tmp_path):
    from bpnet.onnx_graph import onnx_session
    from tests.tiny_models import save_tiny_model

    model = save_tiny_model(tmp_path / "m.hdf5", stages=2, seed=2, bias=0.01)
    assert main(["export", "-m", str(model), "-o", str(tmp_path / "nhwc.onnx"), "-d", "32,48,3"]) == 0
    assert main(["export", "-m", str(model), "-o", str(tmp_path / "nchw.onnx"), "-d", "3,32,48",
                 "--data_format", "channels_first", "--data_type", "int8", "--cal_image_dir", str(COCO_IMAGES),
                 "--batches", "2", "--cal_data_file", str(tmp_path / "cal.tensorfile")]) == 0
    import h5py

    with h5py.File(tmp_path / "cal.tensorfile", "r") as f:     # NCHW batches, as TAO's channels_first
        assert tuple(f.attrs["shape"]) == (1, 3, 32, 48)
    batch = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 32, 48, 3)).astype(np.float32)
    nhwc = onnx_session(tmp_path / "nhwc.onnx").run(None, {"input": batch})
    nchw_session = onnx_session(tmp_path / "nchw.onnx")
    assert [d for d in nchw_session.get_inputs()[0].shape[1:]] == [3, 32, 48]
    nchw = nchw_session.run(None, {"input": batch.transpose(0, 3, 1, 2)})
    for a, b in zip(nhwc, nchw):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(a).max())


# ---------------------------------------------------------------- TensorFile

def write_tao_layout(path, batches):
    """A TensorFile exactly as TAO's writer lays it out (independent of bpnet.tensorfile)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["count"] = len(batches)
        f.attrs["shape"] = batches[0].shape
        for i, batch in enumerate(batches):
            f.create_group(f"_tensorfile_array_key__{i}").create_dataset(
                "_tensorfile_array_key_", data=batch, compression="gzip")


def test_tensorfile_reads_taos_layout_nhwc_and_nchw(tmp_path):
    from bpnet.tensorfile import read_tensorfile

    rng = np.random.default_rng(0)
    batches = [rng.uniform(-0.5, 0.5, (2, 16, 24, 3)) for _ in range(3)]     # float64, as TAO wrote
    write_tao_layout(tmp_path / "nhwc.tensorfile", batches)
    np.testing.assert_allclose(read_tensorfile(tmp_path / "nhwc.tensorfile"), np.concatenate(batches), rtol=1e-6)
    write_tao_layout(tmp_path / "nchw.tensorfile", [b.transpose(0, 3, 1, 2) for b in batches])
    np.testing.assert_allclose(read_tensorfile(tmp_path / "nchw.tensorfile"), np.concatenate(batches), rtol=1e-6)


def test_tensorfile_written_in_taos_layout(tmp_path):
    import h5py

    from bpnet.tensorfile import write_tensorfile

    data = np.random.default_rng(1).uniform(-0.5, 0.5, (4, 8, 8, 3)).astype(np.float32)
    write_tensorfile(tmp_path / "cal.bin", data, batch_size=2)
    with h5py.File(tmp_path / "cal.bin", "r") as f:
        assert f.attrs["count"] == 2 and tuple(f.attrs["shape"]) == (2, 8, 8, 3)
        np.testing.assert_array_equal(f["_tensorfile_array_key__1"]["_tensorfile_array_key_"][()], data[2:])


def test_calibration_reuses_a_tao_tensorfile_of_any_name(tmp_path):
    from bpnet import calibrate

    batches = [np.full((1, 16, 16, 3), v) for v in (-0.25, 0.0, 0.25)]
    write_tao_layout(tmp_path / "coco.16.16.tensorfile", batches)
    data, reused = calibrate.calibration_tensor((16, 16), 1, 3, None, tmp_path / "coco.16.16.tensorfile")
    assert reused and data.shape == (3, 16, 16, 3) and data.dtype == np.float32
    np.testing.assert_array_equal(data[:, 0, 0, 0], [-0.25, 0.0, 0.25])
    with pytest.raises(BpnetError, match="holds 3 images"):
        calibrate.calibration_tensor((16, 16), 2, 2, None, tmp_path / "coco.16.16.tensorfile")
    (tmp_path / "broken.tensorfile").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(BpnetError, match="broken.tensorfile"):
        calibrate.calibration_tensor((16, 16), 1, 1, None, tmp_path / "broken.tensorfile")


# ---------------------------------------------------------------- the workflow's command lines

# As published (TLT/TAO BodyPoseNet workflow), with only `tlt bpnet` -> `bpnet` (and the
# sampler's `python3 sample_calibration_images.py` -> `bpnet sample_calibration_images`); the
# $VARIABLES are the notebook's, filled in below.
WORKFLOW = {
    "prune": "tlt bpnet prune -m $USER_EXPERIMENT_DIR/models/exp_m1_unpruned/$MODEL_CHECKPOINT "
             "-o $USER_EXPERIMENT_DIR/models/exp_m1_pruned/bpnet_model.pruned-0.2.hdf5 "
             "-r $USER_EXPERIMENT_DIR/ -eq union -pth 0.2 -k $KEY",
    "retrain": "tlt bpnet train -e $SPECS_DIR/bpnet_retrain_m1_coco.yaml "
               "-r $USER_EXPERIMENT_DIR/models/exp_m1_retrain -k $KEY --gpus $NUM_GPUS",
    "sampler": "python3 sample_calibration_images.py "
               "-a $USER_EXPERIMENT_DIR/data/annotations/person_keypoints_train2017.json "
               "-i $USER_EXPERIMENT_DIR/data/train2017/ -o $USER_EXPERIMENT_DIR/data/calibration_samples/ "
               "-n $NUM_CALIB_SAMPLES -pth 1 --randomize",
    "export_int8": "tlt bpnet export -m $USER_EXPERIMENT_DIR/models/exp_m1_retrain/$RETRAIN_MODEL_CHECKPOINT "
                   "-o $USER_EXPERIMENT_DIR/models/exp_m1_final/bpnet_model.etlt -k $KEY "
                   "-d $IN_HEIGHT,$IN_WIDTH,$IN_CHANNELS -e $SPECS_DIR/bpnet_retrain_m1_coco.yaml -t tfonnx "
                   "--data_type int8 "
                   "--engine_file $USER_EXPERIMENT_DIR/models/exp_m1_final/bpnet_model.$IN_HEIGHT.$IN_WIDTH.int8.engine "
                   "--cal_image_dir $USER_EXPERIMENT_DIR/data/calibration_samples/ "
                   "--cal_cache_file $USER_EXPERIMENT_DIR/models/exp_m1_final/calibration.$IN_HEIGHT.$IN_WIDTH.bin "
                   "--cal_data_file $USER_EXPERIMENT_DIR/models/exp_m1_final/coco.$IN_HEIGHT.$IN_WIDTH.tensorfile "
                   "--batch_size 1 --batches $NUM_CALIB_SAMPLES --max_batch_size 1 --data_format channels_last",
    "export_deploy": "tlt bpnet export -m $USER_EXPERIMENT_DIR/models/exp_m1_retrain/$RETRAIN_MODEL_CHECKPOINT "
                     "-o $USER_EXPERIMENT_DIR/models/exp_m1_final/bpnet_model.deploy.onnx -r $USER_EXPERIMENT_DIR/ "
                     "-d $IN_HEIGHT,$IN_WIDTH,$IN_CHANNELS -e $SPECS_DIR/bpnet_retrain_m1_coco.yaml -t tfonnx "
                     "--data_type int8 "
                     "--engine_file $USER_EXPERIMENT_DIR/models/exp_m1_final/bpnet_model.$IN_HEIGHT.$IN_WIDTH.int8.deploy.engine "
                     "--cal_image_dir $USER_EXPERIMENT_DIR/data/calibration_samples/ "
                     "--cal_cache_file $USER_EXPERIMENT_DIR/models/exp_m1_final/calibration.$IN_HEIGHT.$IN_WIDTH.deploy.bin "
                     "--cal_data_file $USER_EXPERIMENT_DIR/models/exp_m1_final/coco.$IN_HEIGHT.$IN_WIDTH.tensorfile "
                     "--batch_size 1 --batches $NUM_CALIB_SAMPLES --max_batch_size 1 --data_format channels_last "
                     "--sdk_compatible_model",
    "evaluate_strict": "tlt bpnet evaluate --inference_spec $SPECS_DIR/infer_spec_retrained_strict.yaml "
                       "--model_filename $USER_EXPERIMENT_DIR/models/exp_m1_retrain/$RETRAIN_MODEL_CHECKPOINT "
                       "--dataset_spec $DATA_POSE_SPECS_DIR/coco_spec.json "
                       "--results_dir $USER_EXPERIMENT_DIR/results/exp_m1_retrain/$EVAL_DIR_NAME -k $KEY",
    # Not one of the six, but the notebook's visualisation step: TAO's --input_type json list.
    "inference": "tlt bpnet inference --inference_spec $SPECS_DIR/infer_spec_retrained_strict.yaml "
                 "--model_filename $USER_EXPERIMENT_DIR/models/exp_m1_retrain/$RETRAIN_MODEL_CHECKPOINT "
                 "--input_type json --input $USER_EXPERIMENT_DIR/data/viz_example_data.json "
                 "--results_dir $USER_EXPERIMENT_DIR/results/exp_m1_retrain/infer_default --dump_visualizations",
}


def as_bpnet_argv(command, env):
    argv = shlex.split(string.Template(command).substitute(env))
    if argv[:2] == ["tlt", "bpnet"]:
        return argv[2:]
    assert argv[:2] == ["python3", "sample_calibration_images.py"]
    return ["sample_calibration_images"] + argv[2:]


@pytest.mark.slow
def test_published_workflow_commands_run_as_written(tao_workspace, capsys):
    """The six command lines (and the notebook's inference) each exit 0. Without TensorRT (this machine) the engine is not built:
    export says so and still writes the ONNX models, calibration cache and tensor file."""
    from tests.tiny_models import save_tiny_model

    experiment, examples = tao_workspace
    env = {"USER_EXPERIMENT_DIR": str(experiment), "SPECS_DIR": str(examples / "specs"),
           "DATA_POSE_SPECS_DIR": str(examples / "data_pose_config"), "KEY": "nvidia_tlt", "NUM_GPUS": "1",
           "MODEL_CHECKPOINT": "bpnet_model.hdf5", "RETRAIN_MODEL_CHECKPOINT": "bpnet_model.hdf5",
           "NUM_CALIB_SAMPLES": "2", "IN_HEIGHT": "32", "IN_WIDTH": "48", "IN_CHANNELS": "3",
           "EVAL_DIR_NAME": "eval_strict"}
    (experiment / "models" / "exp_m1_unpruned").mkdir(parents=True)
    save_tiny_model(experiment / "models" / "exp_m1_unpruned" / "bpnet_model.hdf5", stages=2, seed=5, bias=0.01)
    viz = [str(experiment / "data" / "train2017" / name) for name in ("000000000790.jpg", "000000030752.jpg")]
    (experiment / "data" / "viz_example_data.json").write_text(json.dumps(viz))
    final = experiment / "models" / "exp_m1_final"
    outputs = {}
    for step, command in WORKFLOW.items():
        code = main(as_bpnet_argv(command, env))
        outputs[step] = capsys.readouterr()
        assert code == 0, f"{step}: {outputs[step].err}"
    assert "-k/--key is not needed" in outputs["prune"].err
    assert (experiment / "models" / "exp_m1_pruned" / "bpnet_model.pruned-0.2.hdf5").is_file()
    assert "ignored: dataloader.shuffle_buffer_size" in outputs["retrain"].err
    assert (experiment / "models" / "exp_m1_retrain" / "bpnet_model.hdf5").is_file()
    assert len(list((experiment / "data" / "calibration_samples").glob("*.jpg"))) == 2
    assert "writing " + str(final / "bpnet_model.onnx") in outputs["export_int8"].out
    assert not (final / "bpnet_model.etlt").exists()
    for name in ("bpnet_model.onnx", "bpnet_model.int8.onnx", "calibration.32.48.bin", "coco.32.48.tensorfile",
                 "bpnet_model.deploy.onnx", "bpnet_model.deploy.int8.onnx", "calibration.32.48.deploy.bin"):
        assert (final / name).is_file(), name
    from bpnet.tensorfile import read_tensorfile

    assert read_tensorfile(final / "coco.32.48.tensorfile").shape == (2, 32, 48, 3)
    assert "reused tensor file" in outputs["export_deploy"].out     # the first export's tensorfile
    if HAS_TENSORRT:
        assert (final / "bpnet_model.32.48.int8.engine").is_file()
    else:
        assert "TensorRT engine skipped" in outputs["export_int8"].out
        assert not (final / "bpnet_model.32.48.int8.engine").exists()
    metrics = experiment / "results" / "exp_m1_retrain" / "eval_strict" / "metrics.json"
    assert metrics.is_file() and "80 images" in outputs["evaluate_strict"].out
    drawn = experiment / "results" / "exp_m1_retrain" / "infer_default" / "images_annotated"
    assert "in 2 images" in outputs["inference"].out and len(list(drawn.iterdir())) == 2
