"""Accuracy-controlled INT8: the bisection over float layers, the calibrator comparison, the
evaluation subset, bad inputs, and the whole loop on a small graph made harmful on purpose."""

import json
import math

import numpy as np
import pytest

from bpnet.errors import BpnetError
from bpnet.guide.accuracy_control import (AccuracyControlOptions, best_calibrator, bisect_float_count,
                                          cache_tensors_for, check_calibration_people, evaluation_subset,
                                          parse_calibrator)
from bpnet.specs import parse_spec
from tests.tiny_models import CHAIN_DEPTH as DEPTH
from tests.tiny_models import CHAIN_HARMFUL as HARMFUL
from tests.tiny_models import build_chain_onnx

# ---------------------------------------------------------------- the bisection alone


@pytest.mark.parametrize("num_layers, harmful", [(40, 3), (64, 1), (17, 9), (5, 5)])
def test_bisection_finds_the_harmful_count_in_log_n_evaluations(num_layers, harmful):
    calls = []

    def drop_at(k):          # each of the first `harmful` ranked layers costs 2 points while INT8
        calls.append(k)
        return 2.0 * max(harmful - k, 0) + 0.2

    result = bisect_float_count(num_layers, drop_at, 1.0, drop_at_zero=2.0 * harmful + 0.2)
    assert result["count"] == harmful and result["met"]
    assert len(calls) == len(result["evaluated"]) <= math.ceil(math.log2(num_layers)) + 1
    assert 0 not in calls                                 # k = 0 was measured before, never again


def test_budget_already_met_costs_no_evaluation():
    def drop_at(k):
        raise AssertionError("no evaluation may run when the plain INT8 model is within budget")

    result = bisect_float_count(30, drop_at, 1.0, drop_at_zero=0.4)
    assert result == {"count": 0, "met": True, "evaluated": [], "drops": {0: 0.4}}


def test_bisection_reports_a_budget_nothing_meets():
    result = bisect_float_count(8, lambda k: 3.0, 1.0, drop_at_zero=5.0)
    assert result["count"] == 8 and not result["met"] and result["drops"][8] == 3.0


def test_negative_max_drop_is_refused():
    with pytest.raises(BpnetError, match="--max_drop: -0.5 must be >= 0"):
        bisect_float_count(4, lambda k: 0.0, -0.5, drop_at_zero=1.0)
    with pytest.raises(BpnetError, match="max_drop"):
        parse_spec(AccuracyControlOptions, {"max_drop": -1}, "accuracy_control")


@pytest.mark.parametrize("label, parsed", [("entropy", ("entropy", None)), ("percentile:99.999", ("percentile", 99.999))])
def test_calibrator_labels(label, parsed):
    assert parse_calibrator(label) == parsed


@pytest.mark.parametrize("label", ["kl", "percentile:101", "minmax:3", "percentile:x"])
def test_bad_calibrator_labels(label):
    with pytest.raises(BpnetError, match="calibrator"):
        parse_spec(AccuracyControlOptions, {"calibrators": [label]}, "accuracy_control")


def test_best_calibrator_by_ap_then_latency():
    rows = [{"calibrator": "entropy", "AP": 0.30, "latency_ms": 2.0},
            {"calibrator": "minmax", "AP": 0.35, "latency_ms": 3.0},
            {"calibrator": "percentile:99.99", "AP": 0.35, "latency_ms": 2.5}]
    assert best_calibrator(rows)["calibrator"] == "percentile:99.99"


# ---------------------------------------------------------------- evaluation and calibration data

def coco_with(people_per_image):
    images = [{"id": i, "file_name": f"{i:03d}.jpg", "height": 100, "width": 100}
              for i in range(len(people_per_image))]
    annotations = [{"id": 100 * i + p, "image_id": i, "iscrowd": 0, "num_keypoints": 5, "area": 5000.0,
                    "keypoints": [10, 10, 2] * 5 + [0, 0, 0] * 12}
                   for i, n in enumerate(people_per_image) for p in range(n)]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}


def test_evaluation_subset_keeps_calibration_images_out():
    coco = coco_with([1] * 30 + [0] * 5)
    subset, warnings = evaluation_subset(coco, ["000.jpg", "001.jpg"], max_images=20)
    names = [im["file_name"] for im in subset["images"]]
    assert len(names) == 20 and "000.jpg" not in names and "001.jpg" not in names and not warnings
    assert {a["image_id"] for a in subset["annotations"]} == {im["id"] for im in subset["images"]}


def test_evaluation_subset_falls_back_with_a_warning_when_data_is_short():
    subset, warnings = evaluation_subset(coco_with([1] * 6), ["000.jpg", "001.jpg", "002.jpg"])
    assert len(subset["images"]) == 6 and "calibration images too" in warnings[0]


def test_evaluation_subset_without_people_is_an_error():
    with pytest.raises(BpnetError, match="ann.json: no image has a non-crowd person"):
        evaluation_subset(coco_with([0, 0, 0]), source="ann.json")


def test_calibration_images_without_people_are_an_error():
    coco = coco_with([0, 0, 2, 1])
    with pytest.raises(BpnetError, match="none of the 2 calibration images"):
        check_calibration_people(coco, ["000.jpg", "001.jpg", "unknown.jpg"], "--cal_image_dir cal")
    assert check_calibration_people(coco, ["001.jpg", "002.jpg"]) == {"known": 2, "with_people": 1}


def test_cache_keeps_tensors_of_int8_layers_only():
    consumers = {"x1": ["conv1"], "x2": ["conv2", "conv3"], "x3": ["conv3"]}
    kept, ambiguous = cache_tensors_for(consumers, ["x1", "x2", "x3"], ["conv1", "conv2"])
    assert kept == ["x2", "x3"] and ambiguous == ["conv2"]     # conv2 shares x2 with the INT8 conv3


# ---------------------------------------------------------------- the whole loop on a small graph

def images(count, seed=1):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, size=(count, 16, 16, 3)).astype(np.float32)


class OutputAgreementScore:
    """A measured score with AP's scale: 1 - output error against the float graph (so the float
    graph scores 1.0 and the drop in points is 100 x the output error). Counts its calls."""

    def __init__(self, float_path, data):
        import onnx

        from bpnet.guide.sensitivity import run_model

        self.data = data
        self.reference = run_model(onnx.load(str(float_path)), data)
        self.calls = []

    def __call__(self, path, key):
        import onnx

        from bpnet.guide.sensitivity import output_error, run_model

        self.calls.append(key)
        error = output_error(run_model(onnx.load(str(path)), self.data), self.reference)
        return {"AP": max(0.0, 1.0 - error), "latency_ms": 1.0}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chain")
    return build_chain_onnx(folder / "float.onnx"), folder


@pytest.mark.parametrize("ranking", ["isolated", "divergence"])
def test_loop_returns_the_harmful_layers_to_float(chain, ranking):
    from bpnet.guide.accuracy_control_run import control_loop, write_final_artifacts

    float_path, folder = chain
    data, held_out = images(8), images(6, seed=2)
    score = OutputAgreementScore(float_path, held_out)
    options = AccuracyControlOptions(max_drop=1.0, calibrators=("entropy", "minmax"), ranking=ranking)
    report = control_loop(float_path, data, held_out, score, folder / ranking, options, parent_ap=1.0)
    assert report["ranking"]["method"] == ranking
    final, search = report["final"], report["bisection"]
    assert {r["layer"] for r in report["ranking"]["layers"][:2]} == {f"conv{k}" for k in HARMFUL}
    assert all(c["ap_drop"] > 2 * options.max_drop for c in report["calibrators"])   # over budget
    assert sorted(final["layers"]) == [f"conv{k}" for k in HARMFUL] and final["met"]
    num_layers = search["num_layers"]
    assert num_layers >= DEPTH
    assert len(search["evaluated"]) <= math.ceil(math.log2(num_layers)) + 1
    assert report["num_evaluations"] == len(options.calibrators) + len(search["evaluated"]) == len(score.calls)
    assert [p["float_layers"] for p in report["curve"]] == sorted(search["drops"])

    artifacts = write_final_artifacts(report, float_path, folder / ranking)
    from bpnet.calibrate import read_trt_cache
    _, scales = read_trt_cache(artifacts["cal_cache_file"])
    assert all(f"x{k}" not in scales for k in HARMFUL)     # read only by the float layers
    assert "x1" in scales and artifacts["tensorrt_qdq_float_layers"] == final["layers"]


def test_loop_within_budget_keeps_the_plain_int8_model(chain):
    from bpnet.guide.accuracy_control_run import control_loop

    float_path, folder = chain
    data = images(8)
    score = OutputAgreementScore(float_path, data)
    options = AccuracyControlOptions(max_drop=100.0, calibrators=("entropy", "minmax", "percentile:99.99"))
    report = control_loop(float_path, data, data, score, folder / "met", options, parent_ap=1.0)
    assert report["final"]["float_layers"] == 0 and report["bisection"] is None and report["ranking"] is None
    assert len(score.calls) == report["num_evaluations"] == 3       # one per calibrator, nothing more
    assert report["final"]["model"] == next(c["model"] for c in report["calibrators"]
                                            if c["calibrator"] == report["best_calibrator"])


# ---------------------------------------------------------------- the command's bad inputs

def test_quantize_bad_inputs_are_clear_errors(coco_mini, tmp_path, capsys):
    from bpnet.cli import main

    annotations, images_dir = coco_mini
    model = tmp_path / "m.hdf5"
    model.write_bytes(b"not read before the data is checked")
    infer = tmp_path / "infer.yaml"
    infer.write_text("input_shape: [64, 64]\n")
    common = ["-m", str(model), "-i", str(images_dir), "--infer_spec", str(infer), "-r", str(tmp_path / "r")]
    assert main(["quantize", "-a", str(annotations), *common, "--max_drop", "-1"]) == 2
    assert "--max_drop: -1.0 must be >= 0" in capsys.readouterr().err

    coco = json.loads(annotations.read_text())
    no_people = tmp_path / "no_people.json"
    no_people.write_text(json.dumps({**coco, "annotations": []}))
    assert main(["quantize", "-a", str(no_people), *common]) == 2
    assert "no image has a non-crowd person" in capsys.readouterr().err

    with_people = {a["image_id"] for a in coco["annotations"] if a["num_keypoints"] > 0}
    empty = [im["file_name"] for im in coco["images"] if im["id"] not in with_people][:3]
    cal = tmp_path / "cal"
    cal.mkdir()
    for name in empty:
        (cal / name).symlink_to(images_dir / name)
    assert main(["quantize", "-a", str(annotations), *common, "--cal_image_dir", str(cal)]) == 2
    assert "none of the 3 calibration images" in capsys.readouterr().err


# ---------------------------------------------------------------- the command end to end (tiny Keras model)

@pytest.mark.slow
def test_quantize_command_on_a_tiny_model(coco_mini, tmp_path, capsys):
    """An untrained model scores AP 0 in float and INT8: within any budget, so the plain INT8
    model of the best calibrator comes back after one evaluation per calibrator, flagged."""
    from bpnet.cli import main
    from tests.tiny_models import save_tiny_model

    annotations, images_dir = coco_mini
    model = save_tiny_model(tmp_path / "tiny.hdf5", bias=0.01)
    infer = tmp_path / "infer.yaml"
    infer.write_text("input_shape: [32, 32]\n")
    out = tmp_path / "q"
    code = main(["quantize", "-m", str(model), "-a", str(annotations), "-i", str(images_dir), "--infer_spec",
                 str(infer), "-r", str(out), "--num_cal_images", "4", "--max_eval_images", "6",
                 "--calibrators", "entropy,percentile:99.999", "--latency_runs", "2"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "accuracy_control.json").read_text())
    assert report["num_evaluations"] == 2 and report["final"]["float_layers"] == 0
    assert report["bisection"] is None and any("finds (almost) nobody" in w for w in report["warnings"])
    calibration = set(report["calibration"]["files"])
    evaluated = {im["file_name"] for im in json.loads((out / "eval_annotations.json").read_text())["images"]}
    assert len(calibration) == 4 and len(evaluated) == 6 and not calibration & evaluated
    for name in ("model.int8.onnx", "model.int8_trt.onnx", "model.cal.bin"):
        assert (out / name).is_file()
    assert report["gate"]["status"] and "plain" in report["divergence"]
    assert "percentile:99.999" in printed and "gate" in printed
