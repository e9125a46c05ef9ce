"""The explorer as a run kind: its run spec section, its stages, its bad inputs refused before
anything is queued, and one result row per point (Compare, Pareto front). No TensorFlow run here
except building a tiny model file once; the worker run itself is in tests/test_browser_explorer.py."""

import json

import pytest

from bpnet.errors import BpnetError
from tests.conftest import COCO_ANNOTATIONS, COCO_IMAGES
from worker.runs import expand_run, parse_run_spec


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    from tests.tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("explore_model") / "tiny3.hdf5", stages=3)


def explore_spec(model, **overrides):
    spec = {"name": "explore", "kind": "explore", "model": str(model),
            "dataset": {"annotations": str(COCO_ANNOTATIONS), "images": str(COCO_IMAGES)},
            "resolutions": [[64, 64], [64, 96]], "precisions": ["fp32", "int8"],
            "calibration": {"batch_size": 2, "batches": 2}, "eval_max_images": 8}
    spec.update(overrides)
    return spec


def test_an_explore_run_is_one_job_and_one_result_per_point(tiny3):
    from tests.test_runs import kinds

    nodes = expand_run(parse_run_spec(explore_spec(tiny3)))
    assert kinds(nodes)[:2] == ["import", "explore"]
    points = [n for n in nodes if n["kind"] == "explore_point"]
    # every stage exit 1..3 of the model x 2 resolutions x 2 precisions
    assert {(tuple(n["params"]["input_hw"]), n["params"]["stage"], n["params"]["precision"]) for n in points} == \
        {(hw, s, p) for hw in ((64, 64), (64, 96)) for s in (1, 2, 3) for p in ("fp32", "int8")}
    assert all(nodes[n["parent"]]["kind"] == "explore" for n in points)
    explore = nodes[1]["params"]
    assert explore["stage_exits"] == [1, 2, 3] and explore["max_images"] == 8
    assert explore["calibration"]["batches"] == 2


def test_explorer_stage_exits_can_be_chosen(tiny3):
    nodes = expand_run(parse_run_spec(explore_spec(tiny3, explorer={"stage_exits": [3, 1]},
                                                   precisions=["fp32"])))
    assert sorted(n["params"]["stage"] for n in nodes if n["kind"] == "explore_point") == [1, 1, 3, 3]
    assert "calibration" not in nodes[1]["params"]   # no INT8: the key does not depend on calibration


@pytest.mark.parametrize("overrides, needle", [
    ({"explorer": {"stage_exits": [2, 4]}}, "explorer stages: [4] beyond this model's stages 1..3"),
    ({"resolutions": [[64, 64], [60, 64]]}, "H and W must be positive multiples of 8 up to 2048, got 60x64"),
    ({"precisions": ["int4"]}, "precisions"),
    ({"prune_thresholds": [0.1]}, "kind 'explore' does not prune"),
    ({"output_stage": 2}, "list them in explorer.stage_exits"),
])
def test_bad_explorer_plans_are_refused_before_queueing(tiny3, overrides, needle):
    with pytest.raises(BpnetError) as err:
        parse_run_spec(explore_spec(tiny3, **overrides))
    assert needle in str(err.value)


def test_explore_needs_an_existing_model(tiny3):
    spec = explore_spec(tiny3, train={"num_epoch": 1})
    del spec["model"]
    with pytest.raises(BpnetError, match="kind 'explore' measures one existing model"):
        parse_run_spec(spec)


def test_stage_exits_belong_to_explore_runs_only(tiny3):
    spec = explore_spec(tiny3, kind="sweep", explorer={"stage_exits": [1]})
    with pytest.raises(BpnetError, match="applies to kind 'explore' only"):
        parse_run_spec(spec)


def test_an_export_run_at_a_stage_exit_exports_and_evaluates_that_stage(tiny3):
    """What an explorer point's 'export this point' button submits: a sweep at one resolution,
    precision and `output_stage`."""
    spec = explore_spec(tiny3, kind="sweep", output_stage=2, resolutions=[[64, 96]], precisions=["int8"])
    nodes = expand_run(parse_run_spec(spec))
    export = next(n for n in nodes if n["kind"] == "export")
    evaluate = next(n for n in nodes if n["kind"] == "evaluate")
    assert export["params"]["stage"] == 2 and export["params"]["input_hw"] == [64, 96]
    assert evaluate["params"]["infer_spec"]["output_stage_to_use"] == 2
    # without output_stage the export parameters (and so every cache key) are what they were
    plain = expand_run(parse_run_spec(explore_spec(tiny3, kind="sweep", precisions=["int8"])))
    assert "stage" not in next(n for n in plain if n["kind"] == "export")["params"]
    with pytest.raises(BpnetError, match="output_stage: 4 beyond the model's stages 1..3"):
        parse_run_spec(explore_spec(tiny3, kind="sweep", output_stage=4))


def test_an_explorer_point_becomes_a_compare_row(tmp_path):
    """explore_point reads its point from the explore stage's explorer.json: the row carries the
    stage exit and resolution, its model file is named relative to the explore folder."""
    from worker.kinds import explore, explore_point
    from worker.stages import parent_of

    explore_dir = tmp_path / "explore"
    (explore_dir / "stage2_64x96").mkdir(parents=True)
    model = explore_dir / "stage2_64x96" / "model.int8.onnx"
    model.write_bytes(b"onnx bytes")
    detections = explore_dir / "stage2_64x96" / "results.int8.json"
    detections.write_text("[]")
    point = {"resolution": [64, 96], "stage": 2, "precision": "int8", "AP": 0.25, "APm": 0.2, "APl": 0.3,
             "AP50": 0.5, "pre_ms": 1.5, "cnn_ms": 4.0, "decode_ms": 2.5, "latency_ms": 8.0,
             "model_file": str(model), "results_file": str(detections)}
    (explore_dir / "explorer.json").write_text(json.dumps({"points": [point], "num_images": 8}))
    parent = parent_of(explore.KIND, explore_dir, {"report": "explorer.json", "num_stages": 3})
    out = tmp_path / "point"
    out.mkdir()
    events = []

    def params(hw):
        return explore_point.Params(input_hw=hw, stage=2, precision="int8", annotations="a.json", images="img")

    done = explore_point.run(params((64, 96)), parent, out, events.append)
    assert done.outputs.dump() == {"model": "stage2_64x96/model.int8.onnx", "results": "results.json",
                                   "num_stages": 2}
    row = done.result
    assert row["stage_exit"] == 2 and row["stages"] == 2 and row["resolution"] == "64x96"
    assert row["branch"] == "explore" and row["latency_ms"] == 4.0
    assert row["pipeline_ms_per_image"] == 8.0 and row["size_bytes"] == len(b"onnx bytes")
    assert done.metrics["AP"] == 0.25
    assert (out / "results.json").read_text() == "[]"
    with pytest.raises(BpnetError, match="no point"):
        explore_point.run(params((64, 64)), parent, out, events.append)


def test_an_explorer_points_export_run_is_a_valid_run_spec(tiny3):
    """The spec New run is pre-filled with ("Export this point") passes the run-spec checks and
    exports that resolution, stage exit and precision."""
    from app.views.explorer_section import export_run_spec, point_choices

    explored = parse_run_spec(explore_spec(tiny3)).model_dump(mode="json")
    point = {"resolution": [64, 96], "stage": 2, "precision": "int8", "AP": 0.1}
    spec = export_run_spec(explored, point)
    assert spec["name"] == "export 64x96 stage 2 int8"
    nodes = expand_run(parse_run_spec(spec))
    exports = [n for n in nodes if n["kind"] == "export"]
    assert [(n["params"]["input_hw"], n["params"]["stage"], n["params"]["precision"]) for n in exports] == \
        [([64, 96], 2, "int8")]
    assert exports[0]["params"]["calibration"]["batches"] == 2
    assert point_choices({"points": [point]}) == [("64×96 · stage 2 · INT8", point)]


def test_new_run_form_builds_an_explore_run(tiny3):
    from app import jobs

    form = {"dataset": "bundled", "base": "existing", "existing_model": str(tiny3), "kind": "explore",
            "presets": ["224×320"], "stage_exits": "2, 1", "precisions": ["FP32"], "retrain_epochs": 0,
            "train_epochs": 1, "stages": 2}
    spec, errors = jobs.new_run_spec(form, None, {})
    assert errors == {}
    assert spec["kind"] == "explore" and spec["explorer"] == {"stage_exits": [1, 2]}
    assert parse_run_spec(spec).explorer.stage_exits == (1, 2)
    _, errors = jobs.new_run_spec({**form, "base": "train"}, None, {})
    assert "kind 'explore' measures one existing model" in errors["base"]
    _, errors = jobs.new_run_spec({**form, "stage_exits": "0, 4"}, None, {})
    assert set(errors) == {"stage_exits"} and "beyond this model's stages 1..3" in errors["stage_exits"]
