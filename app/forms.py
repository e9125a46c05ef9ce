"""The New-run form: the widgets' values turned into a run spec (pure: no Streamlit, no store).

Only turning what the user typed into values happens here (`parse_*`: text that is not a number,
an unknown preset, 'existing model' with none picked). Every rule — ranges, combinations, files,
enough calibration images — is the run spec's own (`worker.runs.RunSpec` and `run_spec_problems`):
the page validates the spec `run_spec_of_form` builds and shows each message under the widget of
its field (`errors_by_widget`; `jobs.new_run_spec` does both). How guidance reads is `app.present`.
"""

import json
from pathlib import Path
from types import SimpleNamespace

from bpnet.data.coco import inspect_dataset as inspect_coco
from bpnet.errors import BpnetError
from bpnet.limits import DEFAULT_AP_BUDGET, DEFAULT_GATE_MAX_AP_DROP, DEFAULT_SEARCH_ITERS, PRECISIONS as RUN_PRECISIONS
# The widgets' bounds and starting values, for the page (the rules themselves are the run spec's).
from bpnet.limits import (DEFAULT_INT8_MAX_DROP, MAX_AP_DROP_POINTS, MAX_CALIBRATION_BATCH_SIZE,  # noqa: F401
                          MAX_CALIBRATION_BATCHES, MAX_EPOCHS, MAX_SEARCH_ITERS, MAX_STAGES, MIN_STAGES)

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


def parse_number(value, what):
    """A widget's text as a number (an int when it is whole); its range is the run spec's rule."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BpnetError(f"{what}: {value!r} is not a number") from None
    return int(number) if number.is_integer() else number


def parse_numbers(text, what):
    """'0.05, 0.1;0.2' -> [0.05, 0.1, 0.2] (sorted, unique)."""
    tokens = [t for t in str(text or "").replace(";", ",").replace(",", " ").split() if t]
    values = []
    for token in tokens:
        try:
            values.append(float(token))
        except ValueError:
            raise BpnetError(f"{what}: {token!r} is not a number; give numbers separated by commas") from None
    return sorted(set(values))


def parse_thresholds(text):
    """The thresholds widget: at least one number (a sweep prunes at each; their range is the
    run spec's rule)."""
    values = parse_numbers(text, "prune thresholds")
    if not values:
        raise BpnetError("prune thresholds: the list is empty; give at least one number such as 0.1 "
                         "(several, e.g. '0.05, 0.1, 0.2', make a sweep)")
    return values


def parse_stage_exits(text):
    """'1, 3' -> [1, 3]; '' -> [] (every stage exit of the model; checked against its stages by
    the run spec, bpnet.guide.explorer.check_plan)."""
    return sorted({parse_number(t, "stage exits") for t in str(text or "").replace(",", " ").split() if t})


def collect_resolutions(presets, custom=None):
    """Chosen preset names plus an optional custom (H, W) -> unique list of [H, W]."""
    unknown = [p for p in presets if p not in RESOLUTION_PRESETS]
    if unknown:
        raise BpnetError(f"input resolution: unknown preset(s) {unknown}; allowed: {list(RESOLUTION_PRESETS)}")
    chosen = [RESOLUTION_PRESETS[p] for p in presets]
    if custom is not None:
        chosen.append(tuple(parse_number(side, f"custom resolution {name}") for name, side in zip("HW", custom)))
    return [list(hw) for hw in dict.fromkeys(chosen)]


def inspect_dataset(annotations, images=None, bundled=False):
    """`bpnet.data.coco.inspect_dataset`, its message named for the dataset widget."""
    try:
        return inspect_coco(annotations, images, bundled)
    except BpnetError as err:
        raise BpnetError(f"dataset: {err}") from None


def run_spec_of_form(form, dataset_info, train_template):
    """The New-run form's widget values -> (run spec dict, {widget: message}).

    `form` is a dict of the widget values, `dataset_info` the page's checked (cached) DatasetInfo
    or None (then the dataset is inspected here), `train_template` the training spec (a dict) of
    a new base model. The messages are only those of values that do not convert (and of a dataset
    that cannot be read); a field that does not convert is left out of the spec.
    """
    errors = {}

    def convert(key, fn, *args):
        try:
            return fn(*args)
        except BpnetError as err:
            errors[key] = str(err)
            return None

    kind = form.get("kind") or "sweep"
    bundled = form.get("dataset") == "bundled"
    spec = {"kind": kind, "dataset": _dataset(form, dataset_info, bundled, convert),
            "precisions": [str(p).lower() for p in form.get("precisions") or []]}
    custom = (form.get("custom_h"), form.get("custom_w")) if form.get("use_custom") else None
    resolutions = convert("resolution", collect_resolutions, form.get("presets", []), custom)
    if resolutions is not None:
        spec["resolutions"] = resolutions
    base = form.get("base", "pretrained")
    if base == "train":
        train = json.loads(json.dumps(train_template))
        epochs = convert("train_epochs", parse_number, form.get("train_epochs", 1), "training epochs")
        if epochs is not None:
            train["num_epoch"] = epochs
            train["checkpoint_n_epoch"] = min(train.get("checkpoint_n_epoch") or 1, epochs)
        spec["train"] = train
        stages = convert("stages", parse_number, form.get("stages"), "stages")
        spec["stages"] = [stages] if stages is not None else []
    elif base == "existing" and not form.get("existing_model"):
        errors["base"] = "base model: 'existing trained model' chosen but none picked; pick one or train a new model"
    else:
        spec["model"] = str(PRETRAINED_MODEL) if base == "pretrained" else str(form["existing_model"])
    if kind == "sweep":
        spec["prune_thresholds"] = convert("thresholds", parse_thresholds, form.get("thresholds")) or []
    if kind != "explore":
        spec["retrain_epochs"] = convert("retrain_epochs", parse_number, form.get("retrain_epochs"), "retrain epochs")
    if kind == "search":
        spec["search"] = {"budget_ap": form.get("budget_ap", DEFAULT_AP_BUDGET),
                          "objective": form.get("objective") or "params",
                          "max_iters": form.get("max_iters", DEFAULT_SEARCH_ITERS)}
    if kind == "explore":
        spec["explorer"] = {"stage_exits": convert("stage_exits", parse_stage_exits, form.get("stage_exits")) or []}
    if set(spec["precisions"]) & {"int8", "fp16"}:
        spec["int8_gate_max_ap_drop"] = form.get("gate_max_ap_drop", DEFAULT_GATE_MAX_AP_DROP)
    if "int8" in spec["precisions"]:
        spec["calibration"] = _calibration(form, spec)
        if form.get("int8_max_drop") is not None and kind != "explore":
            # the calibration images the form asks for are the ones accuracy control calibrates on
            spec["accuracy_control"] = {"max_drop": form["int8_max_drop"], "num_calibration_images":
                                        _product(form.get("cal_batch_size"), form.get("cal_batches"))}
    spec["name"] = str(form.get("name") or "").strip() or default_run_name(spec)
    return {k: v for k, v in spec.items() if v is not None}, errors


def _dataset(form, dataset_info, bundled, convert):
    """The run spec's dataset: the checked DatasetInfo's files (inspected here when the page has
    none), and a held-out evaluation set whose images folder defaults to its COCO layout's."""
    if dataset_info is None:
        dataset_info = convert("dataset", inspect_dataset, *((BUNDLED_ANNOTATIONS, BUNDLED_IMAGES, True) if bundled
                               else (form.get("annotations"), form.get("images"))))
    files = dataset_info or SimpleNamespace(annotations=form.get("annotations") or "", images=form.get("images") or "")
    dataset = {"annotations": str(files.annotations), "images": str(files.images)}
    if not bundled and str(form.get("eval_annotations") or "").strip():
        held_out = convert("eval_dataset", inspect_dataset, form["eval_annotations"], form.get("eval_images"))
        if held_out is not None:
            dataset.update(eval_annotations=str(held_out.annotations), eval_images=str(held_out.images))
    return dataset


def _calibration(form, spec):
    calibration = {"images": str(form.get("cal_images") or "").strip() or spec["dataset"]["images"],
                   "batch_size": form.get("cal_batch_size"), "batches": form.get("cal_batches")}
    if spec.get("model") == str(PRETRAINED_MODEL):
        # measured (docs/pretrained.md): entropy collapses this network's INT8 maps, min-max keeps AP
        calibration["calibrator"] = "minmax"
    return {k: v for k, v in calibration.items() if v is not None}


def _product(a, b):
    try:
        return int(a) * int(b)
    except (TypeError, ValueError):
        return None   # the calibration fields themselves say what is wrong


# The widget that shows a run spec field's problem (first element of a pydantic error `loc`).
WIDGET_OF_FIELD = {
    "dataset": "dataset", "model": "base", "train": "train_epochs", "train_spec": "base", "stages": "stages",
    "resolutions": "resolution", "prune_thresholds": "thresholds", "retrain_epochs": "retrain_epochs",
    "precisions": "precisions", "calibration": "calibration", "int8_gate_max_ap_drop": "gate",
    "explorer": "stage_exits", "accuracy_control": "int8_max_drop", "kind": "kind",
}
SEARCH_WIDGETS = {"budget_ap": "budget_ap", "max_iters": "max_iters", "objective": "objective"}
DATASET_WIDGETS = {"eval_annotations": "eval_dataset", "eval_images": "eval_dataset"}


def errors_by_widget(problems):
    """{widget key: message} of the run spec's [(field path, message)] problems, so the page shows
    the RunSpec's own message under the widget the field came from (unplaced ones under 'base')."""
    errors = {}
    for loc, message in problems:
        nested = {"search": SEARCH_WIDGETS, "dataset": DATASET_WIDGETS}.get(loc[0] if loc else None, {})
        widget = (nested.get(loc[1]) if len(loc) > 1 else None) \
            or (WIDGET_OF_FIELD.get(loc[0]) if loc else None) or "base"
        errors.setdefault(widget, message)
    return errors


def default_run_name(spec):
    res = ",".join(f"{h}x{w}" for h, w in spec.get("resolutions") or [])
    thresholds = spec.get("prune_thresholds") or []
    what = (f"search within {spec['search']['budget_ap']:g} AP" if spec["kind"] == "search"
            else f"pth {','.join(f'{t:g}' for t in thresholds)}" if thresholds
            else "explore stage exits" if spec["kind"] == "explore" else "unpruned")
    return f"{what} @ {res} {'/'.join(p.upper() for p in spec['precisions'])}"
