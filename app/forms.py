"""The New-run form: what the user typed turned into values (pure: no Streamlit, no store).

Each `parse_*` / `check_*` function raises `BpnetError` naming the field, the value and what is
allowed, by the rules of `bpnet.limits` (the dataset check is `bpnet.data.coco.inspect_dataset`);
`validate_new_run` runs them all and returns every problem at once, keyed by widget. The values
become a run spec (`run_spec_dict`) that the page validates with `RunSpec` itself, each error's
`loc` shown under its widget (`errors_by_widget`). How guidance reads is `app.present`.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from bpnet.data.coco import DatasetInfo
from bpnet.data.coco import inspect_dataset as inspect_coco
from bpnet.errors import BpnetError
from bpnet.image_files import count_images
from bpnet.limits import (DEFAULT_AP_BUDGET, DEFAULT_GATE_MAX_AP_DROP, DEFAULT_INT8_MAX_DROP, DEFAULT_SEARCH_ITERS,
                          MAX_AP_DROP_POINTS, MAX_CALIBRATION_BATCH_SIZE, MAX_CALIBRATION_BATCHES, MAX_EPOCHS,
                          MAX_SEARCH_ITERS, MAX_SIDE_PX, MAX_STAGES, MIN_STAGES, PRECISIONS as RUN_PRECISIONS,
                          STRIDE)
from bpnet.limits import calibration_count_problem, prune_threshold_problem, stages_problem

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_ANNOTATIONS = ROOT / "data" / "coco-mini" / "annotations" / "person_keypoints_train2017.json"
BUNDLED_IMAGES = ROOT / "data" / "coco-mini" / "train2017"
# The bundled pretrained network (data/models/SOURCE.md): the default base model of a new run;
# its first run imports it (`bpnet import`, a cached stage).
PRETRAINED_MODEL = ROOT / "data" / "models" / "mobilenet_v2_pose_dm14_368_432_weight_quant.tflite"
PRETRAINED_LABEL = "tf-pose MobileNetV2 (depth 1.4) OpenPose, trained on COCO train2017 — bundled, MIT"
# Measured on it (docs/pretrained.md): 0.1 removes 1.5% of its parameters and keeps AP 0.153 (of
# 0.176); at 0.2 and above TAO's norm criterion removes filters it cannot do without (AP ~0).
PRETRAINED_DEFAULT_THRESHOLDS = "0.1"

RUN_KINDS = ("sweep", "search", "explore")
SEARCH_OBJECTIVES = ("params", "latency")
RESOLUTION_PRESETS = {"224×320": (224, 320), "288×384": (288, 384), "320×448": (320, 448)}
PRECISIONS = tuple(p.upper() for p in RUN_PRECISIONS)   # as the widgets show them


def default_new_run_form():
    """The New-run form as the page opens: the bundled sample, the bundled pretrained network, one
    prune threshold, a short retrain, FP32 and INT8 at 288x384. The page starts its widgets from
    these values and bench/pretrained_table.py measures the run they submit (docs/pretrained.md):
    the threshold removes parameters while the network still finds people (measured there), and
    the run finishes in minutes on 2 cores."""
    return {"dataset": "bundled", "base": "pretrained", "existing_model": None, "train_epochs": 1,
            "presets": ["288×384"], "use_custom": False, "custom_h": None, "custom_w": None,
            "stages": 2, "kind": "sweep", "thresholds": PRETRAINED_DEFAULT_THRESHOLDS,
            "precisions": ["FP32", "INT8"], "gate_max_ap_drop": DEFAULT_GATE_MAX_AP_DROP, "retrain_epochs": 1,
            "cal_images": str(BUNDLED_IMAGES), "cal_batch_size": 8, "cal_batches": 2, "name": "",
            "eval_annotations": None, "eval_images": None, "budget_ap": DEFAULT_AP_BUDGET, "objective": "params",
            "max_iters": DEFAULT_SEARCH_ITERS, "stage_exits": ""}


@dataclass
class RunRequest:
    """A validated New-run form; `jobs.submit_run` turns it into the job system's run spec."""
    name: str
    dataset: DatasetInfo
    base_model: str | None            # None = train a new model; else an existing model's id/path
    train_epochs: int
    resolutions: list                 # [(H, W), ...]
    stages: int
    thresholds: list                  # prune thresholds, sorted; a sweep when several
    precisions: list
    calibration_images: Path | None   # folder; None when no INT8 result is asked for
    calibration_batches: int
    calibration_batch_size: int
    retrain_epochs: int
    eval_dataset: DatasetInfo | None = None   # None = evaluate on the training data
    kind: str = "sweep"                       # or "search": the AP-budget search picks the threshold
    budget_ap: float = DEFAULT_AP_BUDGET                    # search: largest AP drop (points) from the unpruned model
    objective: str = "params"                 # search: params | latency
    max_iters: int = DEFAULT_SEARCH_ITERS                        # search: iteration limit
    gate_max_ap_drop: float = DEFAULT_GATE_MAX_AP_DROP             # INT8/FP16 results losing more AP points fail the gate
    # INT8 by accuracy control (`bpnet quantize`): every calibrator, then the layers that cost most
    # AP back to float until the drop is within this many points; None = one calibrated export
    int8_max_drop: float | None = None
    stage_exits: tuple = ()                   # explore: stage exits to measure; () = every stage


def parse_resolution(height, width, what="custom resolution"):
    """(H, W) as ints, each a positive multiple of the stride (8) and at most 2048."""
    values = []
    for name, value in (("H", height), ("W", width)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise BpnetError(f"{what}: {name} = {value!r} is not a number; "
                             f"give a multiple of {STRIDE} between {STRIDE} and {MAX_SIDE_PX}") from None
        if not number.is_integer() or number < STRIDE or number > MAX_SIDE_PX or int(number) % STRIDE:
            raise BpnetError(f"{what}: {name} = {value} is not allowed; H and W must be multiples of "
                             f"{STRIDE} between {STRIDE} and {MAX_SIDE_PX} (the network's output stride "
                             f"is {STRIDE}), e.g. {nearest_multiple(number)}")
        values.append(int(number))
    return tuple(values)


def nearest_multiple(value, step=STRIDE):
    """The multiple of `step` closest to `value` (for a hint in error messages)."""
    try:
        return max(step, min(MAX_SIDE_PX, int(round(float(value) / step)) * step))
    except (TypeError, ValueError, OverflowError):
        return 288


def collect_resolutions(presets, custom=None):
    """Chosen preset names plus an optional custom (H, W) -> unique list of (H, W)."""
    unknown = [p for p in presets if p not in RESOLUTION_PRESETS]
    if unknown:
        raise BpnetError(f"input resolution: unknown preset(s) {unknown}; allowed: {list(RESOLUTION_PRESETS)}")
    chosen = [RESOLUTION_PRESETS[p] for p in presets]
    if custom is not None:
        chosen.append(parse_resolution(*custom))
    if not chosen:
        raise BpnetError("input resolution: none chosen; pick at least one preset or enter a custom H×W")
    return list(dict.fromkeys(chosen))


def parse_thresholds(text):
    """'0.05, 0.1 0.2' -> [0.05, 0.1, 0.2] (sorted, unique). Several thresholds make a sweep."""
    tokens = [t for t in str(text or "").replace(";", ",").replace(",", " ").split() if t]
    if not tokens:
        raise BpnetError("prune thresholds: the list is empty; give at least one number such as 0.1 "
                         "(several, e.g. '0.05, 0.1, 0.2', make a sweep)")
    values = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            raise BpnetError(f"prune thresholds: {token!r} is not a number; give numbers separated "
                             "by commas") from None
        problem = prune_threshold_problem(value, sweep=True)   # the run spec's own rule
        if problem:
            raise BpnetError(f"prune thresholds: {problem}")
        values.append(value)
    return sorted(set(values))


def parse_stage_exits(text):
    """'1, 3' -> (1, 3); '' -> () (every stage exit of the model). Checked against the model's
    stages when the run spec is validated (bpnet.guide.explorer.check_plan)."""
    tokens = [t for t in str(text or "").replace(",", " ").split() if t]
    return tuple(sorted({parse_int(t, "stage exits", 1, MAX_STAGES) for t in tokens}))


def parse_int(value, what, low, high):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BpnetError(f"{what}: {value!r} is not a number; allowed whole numbers {low} to {high}") from None
    if not number.is_integer() or not low <= number <= high:
        raise BpnetError(f"{what}: {value} is not allowed; allowed whole numbers {low} to {high}")
    return int(number)


def parse_stages(value):
    """The stage count of a new model, checked by the run spec's rule (bpnet.limits.stages_problem)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BpnetError(f"stages: {value!r} is not a number; allowed whole numbers {MIN_STAGES} to "
                         f"{MAX_STAGES}") from None
    problem = stages_problem(int(number) if number.is_integer() else number)
    if problem:
        raise BpnetError(f"stages: {problem}")
    return int(number)


def check_precisions(precisions):
    chosen = list(dict.fromkeys(precisions or []))
    if not chosen:
        raise BpnetError(f"precisions: none chosen; pick at least one of {list(PRECISIONS)}")
    unknown = [p for p in chosen if p not in PRECISIONS]
    if unknown:
        raise BpnetError(f"precisions: unknown {unknown}; allowed {list(PRECISIONS)}")
    return [p for p in PRECISIONS if p in chosen]


def inspect_dataset(annotations, images=None, bundled=False):
    """`bpnet.data.coco.inspect_dataset`, its message named for the dataset widget."""
    try:
        return inspect_coco(annotations, images, bundled)
    except BpnetError as err:
        raise BpnetError(f"dataset: {err}") from None


def parse_float(value, what, low, high):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BpnetError(f"{what}: {value!r} is not a number; allowed {low:g} to {high:g}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise BpnetError(f"{what}: {value} is out of range; allowed {low:g} to {high:g}")
    return number


def check_calibration(images_dir, batches, batch_size):
    """The seed's rule: calibration needs at least batch_size × batches images in its folder."""
    batches = parse_int(batches, "calibration batches", 1, MAX_CALIBRATION_BATCHES)
    batch_size = parse_int(batch_size, "calibration batch size", 1, MAX_CALIBRATION_BATCH_SIZE)
    folder = Path(str(images_dir or "").strip()).expanduser()
    if not str(images_dir or "").strip() or not folder.is_dir():
        raise BpnetError(f"calibration images: folder {str(images_dir or '')!r} does not exist; "
                         "give a folder of images like the deployment's (default: the training images)")
    problem = calibration_count_problem(count_images(folder), batch_size, batches)   # the run spec's rule
    if problem:
        raise BpnetError(f"calibration: {folder} {problem}; add images or lower the batches")
    return folder.resolve(), batches, batch_size


def validate_new_run(form, dataset_info=None):
    """All checks of the New-run form -> (RunRequest or None, {field: message}).

    `form` is a dict of the widget values; `dataset_info` a DatasetInfo already checked (the page
    caches it), otherwise the dataset is inspected here.
    """
    errors = {}

    def attempt(key, fn, *args):
        try:
            return fn(*args)
        except BpnetError as err:
            errors[key] = str(err)
            return None

    if dataset_info is None:
        if form.get("dataset") == "bundled":
            dataset_info = attempt("dataset", inspect_dataset, BUNDLED_ANNOTATIONS, BUNDLED_IMAGES, True)
        else:
            dataset_info = attempt("dataset", inspect_dataset, form.get("annotations"), form.get("images"))
    eval_dataset = None
    if form.get("dataset") != "bundled" and str(form.get("eval_annotations") or "").strip():
        eval_dataset = attempt("eval_dataset", inspect_dataset, form.get("eval_annotations"),
                               form.get("eval_images"))
    custom = (form.get("custom_h"), form.get("custom_w")) if form.get("use_custom") else None
    resolutions = attempt("resolution", collect_resolutions, form.get("presets", []), custom)
    stages = attempt("stages", parse_stages, form.get("stages"))
    kind = form.get("kind") or "sweep"
    if kind not in RUN_KINDS:
        errors["kind"] = f"run kind: {kind!r} is not one of {list(RUN_KINDS)}"
    search = {}
    if kind == "search":
        thresholds = []   # the search picks them
        search["budget_ap"] = attempt("budget_ap", parse_float, form.get("budget_ap", DEFAULT_AP_BUDGET),
                                      "AP budget (points)", 0.0, MAX_AP_DROP_POINTS)
        search["max_iters"] = attempt("max_iters", parse_int, form.get("max_iters", DEFAULT_SEARCH_ITERS), "search iterations", 1, MAX_SEARCH_ITERS)
        search["objective"] = form.get("objective") or "params"
        if search["objective"] not in SEARCH_OBJECTIVES:
            errors["objective"] = f"objective: {search['objective']!r} is not one of {list(SEARCH_OBJECTIVES)}"
    elif kind == "explore":
        thresholds = []   # the explorer measures the model as it is
        search["stage_exits"] = attempt("stage_exits", parse_stage_exits, form.get("stage_exits"))
        if form.get("base", "pretrained") == "train":
            errors["base"] = ("base model: the explorer measures an existing trained or imported model; "
                              "pick the pretrained or an existing one (train it first with a sweep)")
    else:
        thresholds = attempt("thresholds", parse_thresholds, form.get("thresholds"))
    precisions = attempt("precisions", check_precisions, form.get("precisions"))
    train_epochs = attempt("train_epochs", parse_int, form.get("train_epochs", 1), "training epochs", 1, MAX_EPOCHS)
    retrain_epochs = attempt("retrain_epochs", parse_int, form.get("retrain_epochs"), "retrain epochs", 0, MAX_EPOCHS)
    if kind == "search" and retrain_epochs == 0:
        errors["retrain_epochs"] = ("retrain epochs: the search retrains every pruned model; give at least 1 "
                                    f"(allowed 1 to {MAX_EPOCHS})")
    gate_max_ap_drop = DEFAULT_GATE_MAX_AP_DROP
    if precisions and set(precisions) & {"INT8", "FP16"}:
        gate_max_ap_drop = attempt("gate", parse_float, form.get("gate_max_ap_drop", DEFAULT_GATE_MAX_AP_DROP),
                                   "INT8/FP16 gate: largest AP drop (points)", 0.0, MAX_AP_DROP_POINTS)
    base_model = None
    if form.get("base", "pretrained") == "pretrained":
        base_model = str(PRETRAINED_MODEL)
    elif form.get("base") == "existing":
        base_model = form.get("existing_model") or None
        if base_model is None:
            errors["base"] = "base model: 'existing trained model' chosen but none picked; pick one or train a new model"
    calibration = (None, 0, 0)
    int8_max_drop = None
    if precisions and "INT8" in precisions:
        cal_dir = form.get("cal_images") or (dataset_info.images if dataset_info else "")
        calibration = attempt("calibration", check_calibration, cal_dir, form.get("cal_batches"),
                              form.get("cal_batch_size")) or calibration
        if form.get("int8_max_drop") is not None:
            int8_max_drop = attempt("int8_max_drop", parse_float, form.get("int8_max_drop"),
                                    "INT8 accuracy control: largest AP drop (points)", 0.0, MAX_AP_DROP_POINTS)
    if errors:
        return None, errors
    name = str(form.get("name") or "").strip() or default_run_name(thresholds, resolutions, precisions,
                                                                    search.get("budget_ap"))
    return RunRequest(name=name, dataset=dataset_info, base_model=base_model, train_epochs=train_epochs,
                      resolutions=resolutions, stages=stages, thresholds=thresholds, precisions=precisions,
                      calibration_images=calibration[0], calibration_batches=calibration[1],
                      calibration_batch_size=calibration[2], retrain_epochs=retrain_epochs,
                      eval_dataset=eval_dataset, kind=kind, gate_max_ap_drop=gate_max_ap_drop,
                      int8_max_drop=int8_max_drop, **search), {}


# The widget that shows a run spec field's problem (first element of a pydantic error `loc`).
WIDGET_OF_FIELD = {
    "dataset": "dataset", "model": "base", "train": "base", "train_spec": "base", "stages": "stages",
    "resolutions": "resolution", "prune_thresholds": "thresholds", "retrain_epochs": "retrain_epochs",
    "precisions": "precisions", "calibration": "calibration", "int8_gate_max_ap_drop": "gate",
    "explorer": "stage_exits", "accuracy_control": "int8_max_drop",
}
SEARCH_WIDGETS = {"budget_ap": "budget_ap", "max_iters": "max_iters", "objective": "objective"}


def errors_by_widget(problems):
    """{widget key: message} of the run spec's [(field path, message)] problems, so the page shows
    the RunSpec's own message under the widget the field came from (unplaced ones under 'base')."""
    errors = {}
    for loc, message in problems:
        field = ".".join(str(part) for part in loc) or "run spec"
        widget = (SEARCH_WIDGETS.get(loc[1]) if len(loc) > 1 and loc[0] == "search" else None) \
            or (WIDGET_OF_FIELD.get(loc[0]) if loc else None) or "base"
        errors.setdefault(widget, f"{field}: {message}")
    return errors


def default_run_name(thresholds, resolutions, precisions, budget_ap=None):
    res = ",".join(f"{h}x{w}" for h, w in resolutions)
    what = (f"search within {budget_ap:g} AP" if budget_ap is not None
            else f"pth {','.join(f'{t:g}' for t in thresholds)}" if thresholds else "explore stage exits")
    return f"{what} @ {res} {'/'.join(precisions)}"


def count_results(request):
    """How many evaluated models the run produces: the unpruned model and one per threshold (or
    the search's chosen model), each at every resolution and precision."""
    models = 2 if request.kind == "search" else 1 + len(request.thresholds)
    return len(request.resolutions) * models * len(request.precisions)


def run_spec_dict(request, train_template):
    """The job system's run spec (see worker/runs.py `RunSpec`) for a validated request.

    `train_template` is the training spec (a dict) used for a new base model; its epochs come
    from the form and its dataset from the run.
    """
    spec = {"name": request.name,
            "dataset": {"annotations": str(request.dataset.annotations), "images": str(request.dataset.images)},
            "resolutions": [list(hw) for hw in request.resolutions],
            "prune_thresholds": list(request.thresholds),
            "retrain_epochs": request.retrain_epochs,
            "precisions": [p.lower() for p in request.precisions]}
    if request.eval_dataset is not None:
        spec["dataset"]["eval_annotations"] = str(request.eval_dataset.annotations)
        spec["dataset"]["eval_images"] = str(request.eval_dataset.images)
    if request.base_model:
        spec["model"] = str(request.base_model)
    else:
        train = json.loads(json.dumps(train_template))
        train["num_epoch"] = request.train_epochs
        train["checkpoint_n_epoch"] = min(train.get("checkpoint_n_epoch") or 1, request.train_epochs)
        spec["train"] = train
        spec["stages"] = [request.stages]
    if request.calibration_images is not None:
        spec["calibration"] = {"images": str(request.calibration_images),
                               "batch_size": request.calibration_batch_size,
                               "batches": request.calibration_batches}
        if request.base_model == str(PRETRAINED_MODEL):
            # measured (docs/pretrained.md): entropy collapses this network's INT8 maps, min-max keeps AP
            spec["calibration"]["calibrator"] = "minmax"
        if request.int8_max_drop is not None:
            # the calibration images the form asks for are the ones accuracy control calibrates on
            spec["accuracy_control"] = {"max_drop": request.int8_max_drop, "num_calibration_images":
                                        request.calibration_batch_size * request.calibration_batches}
    if set(request.precisions) & {"INT8", "FP16"}:
        spec["int8_gate_max_ap_drop"] = request.gate_max_ap_drop
    if request.kind == "explore":
        spec["kind"] = "explore"
        spec["explorer"] = {"stage_exits": list(request.stage_exits)}
        del spec["retrain_epochs"]
    if request.kind == "search":
        spec["kind"] = "search"
        spec["search"] = {"budget_ap": request.budget_ap, "objective": request.objective,
                          "max_iters": request.max_iters}
    return spec
