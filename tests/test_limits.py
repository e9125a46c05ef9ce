"""Every limit is enforced by one rule (bpnet/limits.py): the dashboard form, the run spec, the
spec files and the CLI refuse the same values with the same message. No TensorFlow."""

import math

import pytest

from app import forms
from bpnet import limits
from bpnet.errors import BpnetError
from bpnet.prune.ranking import check_pruning_options
from bpnet.specs import ModelSpec, parse_spec
from tests.test_runs import run_spec_dict
from worker.kinds import export as export_kind
from worker.kinds import prune as prune_kind
from worker.runs import RunSpec, parse_run_spec


def form_errors(**changes):
    """{widget: message} the New-run page shows for the bundled-data form with `changes`."""
    from app import jobs

    form = {"dataset": "bundled", "base": "train", "presets": ["288×384"], "stages": 2, "thresholds": "0.1",
            "precisions": ["FP32"], "retrain_epochs": 1, "train_epochs": 1, **changes}
    return jobs.new_run_spec(form, None, {"num_epoch": 1})[1]


def refusal(fn, *args):
    """The message of the BpnetError `fn(*args)` raises."""
    with pytest.raises(BpnetError) as err:
        fn(*args)
    return str(err.value)


@pytest.mark.parametrize("threshold", [0, -0.1, 10.5, math.nan])
def test_a_sweep_threshold_is_refused_by_form_and_run_spec_with_one_message(threshold):
    rule = limits.prune_threshold_problem(threshold, sweep=True)
    assert rule and "out of range" in rule
    assert form_errors(thresholds=str(threshold)) == {"thresholds": f"prune_thresholds: {rule}"}
    run_spec = refusal(parse_run_spec, run_spec_dict(prune_thresholds=[threshold]))
    assert "prune_thresholds" in run_spec and rule in run_spec


@pytest.mark.parametrize("threshold", [-0.1, 10.5, math.nan])
def test_the_engine_threshold_is_refused_by_the_cli_check_and_the_prune_stage_with_one_message(threshold):
    rule = limits.prune_threshold_problem(threshold)
    assert rule in refusal(check_pruning_options, threshold, 8, 16)
    assert rule in refusal(parse_spec, prune_kind.Params, {"threshold": threshold})


def test_zero_prunes_only_dead_filters_in_the_engine_but_is_no_sweep_value():
    # TAO's -pth 0 removes only all-zero filters; a sweep evaluates the unpruned model anyway.
    assert limits.prune_threshold_problem(0) is None
    check_pruning_options(0.0, 8, 16)
    assert "the unpruned model is always evaluated too" in limits.prune_threshold_problem(0, sweep=True)


@pytest.mark.parametrize("stages", [1, 8])
def test_the_stage_range_is_one_rule_for_form_run_spec_and_spec_files(stages):
    rule = limits.stages_problem(stages)
    assert f"between {limits.MIN_STAGES} and {limits.MAX_STAGES}" in rule
    assert form_errors(stages=stages) == {"stages": f"stages: {rule}"}
    assert rule in refusal(parse_run_spec, run_spec_dict(stages=[stages]))
    assert rule in refusal(parse_spec, ModelSpec, {"stages": stages})
    assert form_errors(stages=float(limits.MAX_STAGES)) == {}


def test_calibrators_equalisations_and_precisions_come_from_limits():
    import argparse

    from bpnet.commands import export as export_command

    parser = argparse.ArgumentParser()
    export_command.add_arguments(parser)
    choices = {a.dest: a.choices for a in parser._actions if a.choices}
    assert tuple(choices["calibrator"]) == limits.CALIBRATORS
    assert tuple(choices["data_type"]) == limits.PRECISIONS
    assert export_kind.CalibrationOptions.model_fields["calibrator"].annotation.__args__ == limits.CALIBRATORS
    assert prune_kind.PruneOptions.model_fields["equalization"].annotation.__args__ == limits.EQUALIZATIONS
    assert forms.PRECISIONS == tuple(p.upper() for p in limits.PRECISIONS)
    assert RunSpec.model_fields["precisions"].default == ("fp32",)
    from bpnet.guide.accuracy_control import CALIBRATOR_METHODS
    from bpnet.guide.recommend import static_guidance

    assert CALIBRATOR_METHODS == limits.CALIBRATORS
    stages = next(a for a in static_guidance() if a.field == "model.stages")
    assert stages.recommended_range == (limits.MIN_STAGES, limits.MAX_STAGES) and stages.value == limits.DEFAULT_STAGES


def test_run_spec_problems_land_under_the_widget_of_their_field():
    from worker.client import run_spec_problems

    problems = run_spec_problems(run_spec_dict(prune_thresholds=[0], stages=[9], resolutions=[[60, 64]],
                                               search={"max_iters": 0}))
    errors = forms.errors_by_widget(problems)
    assert errors["thresholds"] == f"prune_thresholds: {limits.prune_threshold_problem(0, sweep=True)}"
    assert errors["stages"] == f"stages: {limits.stages_problem(9)}"
    assert "multiples of 8" in errors["resolution"] and errors["max_iters"].startswith("search.max_iters:")
    assert run_spec_problems(run_spec_dict()) == []


def test_too_few_calibration_images_is_one_rule_for_form_run_spec_cli_and_tensor_file(tmp_path, coco_mini):
    from bpnet.calibrate.tensor_file import build_calibration_tensor
    from bpnet.export import export_model

    images = coco_mini[1]
    rule = limits.calibration_count_problem(80, 9, 9)
    assert rule == "holds 80 images, fewer than batch_size x batches = 9 x 9 = 81"
    assert rule in form_errors(precisions=["INT8"], cal_images=str(images), cal_batches=9, cal_batch_size=9)["calibration"]
    assert rule in refusal(parse_run_spec, run_spec_dict(precisions=["int8"], calibration={"batch_size": 9, "batches": 9}))
    model = tmp_path / "m.hdf5"
    model.write_bytes(b"not read: the image count is checked first")
    assert rule in refusal(export_model, model, tmp_path / "m.onnx", (64, 64), "int8", None, "entropy", 99.99,
                           images, None, None, 9, 9)
    assert rule in refusal(build_calibration_tensor, images, (64, 64), 9, 9)


@pytest.mark.parametrize("field, bound, form_low, engine_args", [
    ("max_iters", limits.MAX_SEARCH_ITERS, "1", lambda v: (2.0, "params", v)),
    ("budget_ap", limits.MAX_AP_DROP_POINTS, "0", lambda v: (v, "params", 3)),
])
def test_search_iterations_and_ap_budget_have_one_bound_in_form_run_spec_and_engine(
        tmp_path, field, bound, form_low, engine_args):
    from bpnet.guide.search_run import check_search_inputs

    model = tmp_path / "m.hdf5"
    model.write_bytes(b"only its existence is checked first")
    over = bound + 1
    run_spec = refusal(parse_run_spec, run_spec_dict(kind="search", prune_thresholds=[], search={field: over}))
    assert f"search.{field}" in run_spec and f"less than or equal to {bound:g}" in run_spec
    assert form_errors(kind="search", **{field: over}) == {field: f"search.{field}: value {over} is invalid: "
                                                                  f"Input should be less than or equal to {bound:g}"}
    assert f"between {form_low} and {bound:g}" in refusal(check_search_inputs, model, *engine_args(over), {})


def test_the_search_threshold_range_ends_at_the_prune_threshold_limit():
    high = limits.MAX_PRUNE_THRESHOLD + 1
    assert f"<= {limits.MAX_PRUNE_THRESHOLD:g}" in refusal(
        parse_run_spec, run_spec_dict(kind="search", prune_thresholds=[], search={"threshold_range": [0.1, high]}))


def test_channel_counts_come_from_the_skeleton_only():
    from bpnet.specs import TrainSpec

    assert "heat_channels" not in ModelSpec.model_fields and "paf_channels" not in ModelSpec.model_fields
    base = {"dataloader": {"dataset": {"annotations": "a.json", "images": "img"}}}
    # a copy written by an older version (or TAO) that matches the skeleton is accepted and dropped
    spec = parse_spec(TrainSpec, {**base, "model": {"stages": 3, "heat_channels": 19, "paf_channels": 38}})
    assert spec.model == ModelSpec(stages=3)
    wrong = refusal(parse_spec, TrainSpec, {**base, "model": {"paf_channels": 40}})
    assert "model.paf_channels: 40 does not match skeleton 'bpnet_18joints', which needs 38" in wrong


def test_search_gate_and_accuracy_control_defaults_are_one_value_everywhere():
    """The form's starting values, the run spec's defaults, the engine's and the CLI's are the
    values of bpnet/limits.py (they were typed again in six places)."""
    from bpnet.cli import build_parser
    from bpnet.guide.accuracy_control import AccuracyControlOptions
    from bpnet.guide.gate import DEFAULT_THRESHOLD_AP
    from bpnet.guide.search import SearchConfig
    from worker.runs import SearchOptions

    form = forms.default_new_run_form()
    assert (form["budget_ap"], form["max_iters"], form["gate_max_ap_drop"]) == (
        limits.DEFAULT_AP_BUDGET, limits.DEFAULT_SEARCH_ITERS, limits.DEFAULT_GATE_MAX_AP_DROP)
    options = SearchOptions()
    assert (options.budget_ap, options.max_iters, options.threshold_range) == (
        limits.DEFAULT_AP_BUDGET, limits.DEFAULT_SEARCH_ITERS, limits.DEFAULT_SEARCH_THRESHOLD_RANGE)
    assert RunSpec.model_fields["int8_gate_max_ap_drop"].default == limits.DEFAULT_GATE_MAX_AP_DROP
    assert DEFAULT_THRESHOLD_AP == limits.DEFAULT_GATE_MAX_AP_DROP
    config = SearchConfig(base_ap=0.5, budget_ap=limits.DEFAULT_AP_BUDGET)
    assert (config.max_iters, config.threshold_range) == (limits.DEFAULT_SEARCH_ITERS,
                                                          limits.DEFAULT_SEARCH_THRESHOLD_RANGE)
    assert AccuracyControlOptions().max_drop == limits.DEFAULT_INT8_MAX_DROP
    search = build_parser().parse_args(["search", "-m", "m.hdf5", "-e", "r.yaml", "-a", "a.json", "-i", "i",
                                        "--infer_spec", "s.yaml", "-r", "out"])
    assert (search.budget, search.max_iters) == (limits.DEFAULT_AP_BUDGET, limits.DEFAULT_SEARCH_ITERS)
    quantize = build_parser().parse_args(["quantize", "-m", "m.onnx", "-a", "a.json", "-i", "i",
                                          "--infer_spec", "s.yaml", "-r", "out"])
    assert quantize.max_drop == limits.DEFAULT_INT8_MAX_DROP
