"""`bpnet bench`, `bpnet export`, `bpnet sample-calibration`: the library functions behind them
and the verbs as a user runs them."""

import json

import pytest

from bpnet.cli import main
from bpnet.errors import BpnetError

ANNOTATIONS_KEY = "annotations"


def test_conv_cost_by_hand():
    from bpnet.benchmark import conv_cost

    params, flops = conv_cost((3, 3), 16, 32, (10, 20))
    assert params == 3 * 3 * 16 * 32 + 32
    assert flops == 2 * 3 * 3 * 16 * 32 * 10 * 20


def test_latency_statistics():
    from bpnet.benchmark import latency_stats

    stats = latency_stats([0.010] * 19 + [0.050], batch_size=4)
    assert stats["median_ms"] == 10.0 and stats["p95_ms"] == pytest.approx(12.0)
    assert stats["images_per_s"] == 400.0


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A tiny model, its FP32 ONNX and its INT8 ONNX (at 64x64)."""
    from bpnet.export import export_model
    from tests.conftest import COCO_IMAGES
    from tests.tiny_models import save_tiny_model

    folder = tmp_path_factory.mktemp("bench")
    model = save_tiny_model(folder / "tiny.hdf5", stages=3, seed=5, bias=0.01)
    report = export_model(model, folder / "tiny.onnx", (64, 64), data_type="int8", stage=2,
                          cal_image_dir=COCO_IMAGES, batch_size=2, batches=1, calibrator="minmax")
    return model, folder / "tiny.onnx", report["int8"]["onnx_int8"]


@pytest.mark.slow
def test_keras_and_onnx_count_the_same_params_and_gflops(tiny_files):
    from bpnet.benchmark import keras_complexity, onnx_complexity

    model, onnx_path, int8_path = tiny_files
    keras = keras_complexity(model, (64, 64), stage=2)
    assert keras == pytest.approx(onnx_complexity(onnx_path, (64, 64)))
    assert keras == pytest.approx(onnx_complexity(int8_path, (64, 64)))
    params, gflops = keras_complexity(model, (128, 128), stage=2)
    assert params == keras[0] and gflops == pytest.approx(4 * keras[1])   # FLOPs scale with pixels


@pytest.mark.slow
def test_bench_every_backend_and_precision(tiny_files, tmp_path, capsys):
    model, onnx_path, int8_path = tiny_files
    for path, backend, precision in ((model, "keras", "fp32"), (onnx_path, "onnxruntime", "fp32"),
                                     (int8_path, "onnxruntime", "int8")):
        out = tmp_path / f"{precision}_{backend}.json"
        assert main(["bench", "-m", str(path), "-d", "64,64", "--batch_size", "2", "--runs", "3",
                     "--warmup", "1", "--stage", "2", "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        assert (result["backend"], result["precision"]) == (backend, precision)
        assert result["runs"] == 3 and result["batch_size"] == 2 and result["input_hw"] == [64, 64]
        assert 0 < result["median_ms"] <= result["p95_ms"]
        assert result["images_per_s"] == pytest.approx(2000 / result["median_ms"], rel=1e-3)
        assert result["params"] > 0 and result["gflops"] > 0
    assert "images/s" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_rejects_a_size_the_onnx_was_not_exported_for(tiny_files, capsys):
    _, onnx_path, _ = tiny_files
    assert main(["bench", "-m", str(onnx_path), "-d", "64,96"]) == 2
    assert "exported for 64,64" in capsys.readouterr().err


def test_bench_bad_options_are_clear(tmp_path, capsys):
    assert main(["bench", "-m", str(tmp_path / "missing.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["bench", "-m", str(tmp_path / "m.onnx"), "--runs", "0"]) == 2
    assert "--runs: 0" in capsys.readouterr().err


@pytest.mark.slow
def test_export_verb_prints_calibration_time(tiny_files, tmp_path, capsys):
    model, _, _ = tiny_files
    from tests.conftest import COCO_IMAGES

    out = tmp_path / "verb.onnx"
    code = main(["export", "-m", str(model), "-o", str(out), "-d", "64,64,3", "--data_type", "int8",
                 "--cal_image_dir", str(COCO_IMAGES), "--batch_size", "1", "--batches", "2",
                 "--cal_cache_file", str(tmp_path / "cal.bin")])
    printed = capsys.readouterr().out
    assert code == 0 and "INT8 calibration (entropy, 2 images" in printed and " s\n" in printed
    assert (tmp_path / "cal.bin").read_text().startswith("TRT-")
    assert (tmp_path / "verb.int8.onnx").is_file() and (tmp_path / "verb.export.json").is_file()


def test_export_verb_bad_inputs(tmp_path, capsys):
    assert main(["export", "-m", str(tmp_path / "m.hdf5"), "-o", str(tmp_path / "m.onnx"), "-d", "60,64,3"]) == 2
    assert "multiples of 8" in capsys.readouterr().err
    # Without -d the export size is the workflow's 288x384, so the next problem is the model.
    assert main(["export", "-m", str(tmp_path / "m.hdf5"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "model not found" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["export", "bench", "sample-calibration"])
def test_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0 and "usage: bpnet" in capsys.readouterr().out


# ---------------------------------------------------------------- sample-calibration

def people_per_image(annotations, min_keypoints):
    coco = json.loads(annotations.read_text())
    counts = {}
    for ann in coco[ANNOTATIONS_KEY]:
        if not ann["iscrowd"] and ann["num_keypoints"] >= min_keypoints:
            counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + 1
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    return {names[i]: c for i, c in counts.items()}


def test_sampling_follows_the_criteria(coco_mini, tmp_path):
    from bpnet.sampling import sample_calibration

    annotations, images = coco_mini
    expected = people_per_image(annotations, 5)
    eligible = sorted(name for name, count in expected.items() if count >= 2)
    report = sample_calibration(annotations, images, tmp_path / "out", 5, min_persons=2, min_keypoints=5)
    assert [f["file_name"] for f in report["files"]] == eligible[:5]
    assert all(expected[f["file_name"]] == f["persons"] for f in report["files"])
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == eligible[:5]
    assert report["eligible"] == len(eligible)


def test_random_sampling_is_seeded(coco_mini, tmp_path):
    from bpnet.sampling import sample_calibration

    annotations, images = coco_mini
    runs = [sample_calibration(annotations, images, tmp_path / f"r{i}", 6, randomize=True, seed=seed, link=True)
            for i, seed in enumerate((4, 4, 5))]
    chosen = [[f["file_name"] for f in r["files"]] for r in runs]
    assert chosen[0] == chosen[1] and chosen[0] != chosen[2]
    assert (tmp_path / "r0" / chosen[0][0]).is_symlink()


def test_shortfall_is_explained_by_the_verb(coco_mini, tmp_path, capsys):
    annotations, images = coco_mini
    out = tmp_path / "cal"
    assert main(["sample-calibration", "-a", str(annotations), "-i", str(images), "-o", str(out),
                 "-n", "50", "--min_keypoints", "5"]) == 0
    printed = capsys.readouterr().out
    eligible = sum(1 for c in people_per_image(annotations, 5).values() if c >= 1)
    assert f"chose {eligible} of 50" in printed and "fewer than requested" in printed
    assert json.loads((out / "calibration_images.json").read_text())["chosen"] == eligible
    assert main(["sample-calibration", "-a", str(annotations), "-i", str(images), "-o", str(out), "-n", "5"]) == 2
    assert "already holds images" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [(["-n", "0"], "-n: 0"), (["-n", "3", "--min_keypoints", "18"], "0..17"),
                                            (["-n", "3", "--min_persons", "-1"], "--min_persons")])
def test_sampling_bad_options(coco_mini, tmp_path, flags, message):
    from bpnet.sampling import sample_calibration

    annotations, images = coco_mini
    args = dict(zip(("n", "min_keypoints", "min_persons"), (3, 1, 1)))
    for flag, value in zip(flags[::2], flags[1::2]):
        args[{"-n": "n", "--min_keypoints": "min_keypoints", "--min_persons": "min_persons"}[flag]] = int(value)
    with pytest.raises(BpnetError, match=message):
        sample_calibration(annotations, images, tmp_path / "o", args["n"], args["min_persons"], args["min_keypoints"])


def test_sampling_missing_annotations(tmp_path, coco_mini):
    from bpnet.sampling import sample_calibration

    with pytest.raises(BpnetError, match="not found"):
        sample_calibration(tmp_path / "none.json", coco_mini[1], tmp_path / "o", 3)
