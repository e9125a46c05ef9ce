"""Optimization runs as plain data, their expansion into a stage DAG, and content-addressed keys.

A run spec (YAML/JSON) is validated here, before anything is queued. It expands into
    base model (train, or import an existing one)
      -> per prune threshold: prune -> retrain
      -> per (model, input resolution, precision): export (ONNX; INT8 = calibrated QDQ) -> evaluate
Each stage's cache key hashes what determines its output: its kind and parameters, its parent's key
and the fingerprints of the data files it reads. Two stages with the same key (in any run) compute
the same thing, so it is computed once; adding a precision to a finished sweep only adds export and
evaluate stages whose parents are already cached.

No TensorFlow here: the dashboard imports this module to validate forms and preview sweeps.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError, field_validator, model_validator

from bpnet.errors import BpnetError
from bpnet.guide.accuracy_control import AccuracyControlOptions
from bpnet.image_files import count_images, is_image_file
from bpnet.limits import (DEFAULT_AP_BUDGET, DEFAULT_EXPORT_HW, DEFAULT_GATE_MAX_AP_DROP, DEFAULT_SEARCH_ITERS,
                          DEFAULT_SEARCH_THRESHOLD_RANGE, MAX_AP_DROP_POINTS, MAX_EPOCHS, MAX_PRUNE_THRESHOLD, MAX_SEARCH_ITERS,
                          PRECISIONS, calibration_count_problem, prune_threshold_problem, stages_problem)
from bpnet.model_safety import check_model_file
from bpnet.preprocess import check_input_hw
from bpnet.specs import (InferSpec, Strict, TrainSpec, _resolve_paths, describe_field_error,
                         format_validation_error, load_yaml, parse_spec)
from worker.kinds import (engine, evaluate, explore, explore_point, export, gate, import_model, prune, quantize,
                          retrain, search, train)
from worker.kinds.evaluate import BenchmarkOptions
# A run's base `model` may be a pretrained .tflite/.pb (its model card beside it): the import
# stage rebuilds it with `bpnet import` on first use; the stage cache keeps the result.
from worker.kinds.import_model import IMPORTED_SUFFIXES
from worker.kinds.export import CalibrationOptions
from worker.kinds.prune import PruneOptions

# Bump when an engine change makes old cached outputs wrong: every key changes with it.
ENGINE_CACHE_VERSION = "1"


class RunDataset(Strict):
    annotations: Path                       # COCO person-keypoints JSON used for training
    images: Path
    eval_annotations: Optional[Path] = None   # default: the training annotations
    eval_images: Optional[Path] = None        # default: the training images


def _check_resolution(h, w):
    try:   # the engine's own check (one place for the limit); pydantic reports ValueErrors by field
        check_input_hw((h, w), f"[{h}, {w}]")
    except BpnetError as err:
        raise ValueError(str(err)) from None


class SearchOptions(Strict):
    """`kind: search`: the smallest pruned + retrained model within an AP budget."""
    budget_ap: float = Field(DEFAULT_AP_BUDGET, ge=0, le=MAX_AP_DROP_POINTS)        # largest AP drop (points) from the unpruned model
    objective: Literal["params", "latency"] = "params"
    max_iters: int = Field(DEFAULT_SEARCH_ITERS, ge=1, le=MAX_SEARCH_ITERS)
    # evaluation (and latency) input [H, W] of every trial; default: the first of `resolutions`
    resolution: Optional[tuple[int, int]] = None
    # the engine measures each trial's latency on the retrained float (Keras) model
    latency_precision: Literal["fp32"] = "fp32"
    threshold_range: tuple[float, float] = DEFAULT_SEARCH_THRESHOLD_RANGE

    @field_validator("resolution")
    @classmethod
    def _resolution_multiple_of_stride(cls, value):
        if value is not None:
            _check_resolution(*value)
        return value

    @field_validator("threshold_range")
    @classmethod
    def _range_order(cls, value):
        if not 0 < value[0] < value[1] <= MAX_PRUNE_THRESHOLD:
            raise ValueError(f"{list(value)}: give [low, high] with 0 < low < high <= {MAX_PRUNE_THRESHOLD:g}")
        return value


class ExplorerOptions(Strict):
    """`kind: explore`: every stage exit of the base model at each of `resolutions` and
    `precisions`, with the oracle per resolution (bpnet/guide/explorer.py); no training."""
    stage_exits: tuple[int, ...] = ()      # () = every stage 1..last of the model


class RunSpec(Strict):
    """One optimization run (or sweep): a base model (trained from `train_spec`/`train`, or an
    existing `model`), swept over stages x prune thresholds x resolutions x precisions; or, with
    `kind: search`, an AP-budget search for the prune threshold."""
    name: str = ""
    kind: Literal["sweep", "search", "explore"] = "sweep"
    dataset: RunDataset
    train_spec: Optional[Path] = None      # training spec YAML for the base model
    train: Optional[dict] = None           # ... or the same inline (dataset filled from `dataset`)
    model: Optional[Path] = None           # ... or an existing model (.hdf5, or .tflite/.pb + card)
    stages: tuple[int, ...] = ()           # model stage counts to train (a sweep); () = the spec's
    resolutions: tuple[tuple[int, int], ...] = (DEFAULT_EXPORT_HW,)   # network input [H, W] for export/eval
    prune_thresholds: tuple[float, ...] = ()
    prune: PruneOptions = PruneOptions()
    retrain_epochs: int = Field(2, ge=0, le=MAX_EPOCHS)   # 0 = evaluate pruned models without retraining
    evaluate_unpruned: bool = True         # also export/evaluate the base model itself
    precisions: tuple[Literal[PRECISIONS], ...] = ("fp32",)
    calibration: CalibrationOptions = CalibrationOptions()
    infer_spec: Optional[Path] = None      # inference spec YAML (input_shape is set per resolution)
    infer: Optional[dict] = None           # ... or inline fields
    benchmark: BenchmarkOptions = BenchmarkOptions()
    eval_max_images: Optional[int] = Field(None, ge=1)   # None = every annotated image
    search: SearchOptions = SearchOptions()
    explorer: ExplorerOptions = ExplorerOptions()
    # the stage exit every result exports and evaluates (TAO's output_stage_to_use); None = the last
    output_stage: Optional[int] = Field(None, ge=1)
    # INT8/FP16 results losing more AP points than this against their float parent fail the gate
    int8_gate_max_ap_drop: float = Field(DEFAULT_GATE_MAX_AP_DROP, ge=0, le=MAX_AP_DROP_POINTS)
    engines: bool = False                  # also build TensorRT engines (needs a TensorRT worker)
    # INT8 by accuracy control (`bpnet quantize`): every calibrator, then layers back to float
    # until the AP drop is within max_drop (docs/int8.md); None = one calibrator, as exported
    accuracy_control: Optional[AccuracyControlOptions] = None

    @field_validator("stages")
    @classmethod
    def _stage_range(cls, value):
        for stages in value:
            if stages_problem(stages):
                raise ValueError(stages_problem(stages))
        return tuple(dict.fromkeys(value))

    @field_validator("resolutions")
    @classmethod
    def _multiples_of_stride(cls, value):
        if not value:
            raise ValueError("give at least one resolution [H, W]")
        for h, w in value:
            _check_resolution(h, w)
        return tuple(dict.fromkeys(value))

    @field_validator("prune_thresholds")
    @classmethod
    def _threshold_range(cls, value):
        for threshold in value:
            problem = prune_threshold_problem(threshold, sweep=True)
            if problem:
                raise ValueError(problem)
        return tuple(dict.fromkeys(value))

    @field_validator("precisions")
    @classmethod
    def _some_precision(cls, value):
        if not value:
            raise ValueError(f"give at least one precision of {', '.join(PRECISIONS)}")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _accuracy_control_needs_int8(self):
        if self.accuracy_control is not None:
            if "int8" not in self.precisions:
                raise ValueError("accuracy_control applies to INT8: add int8 to precisions")
            if self.calibration.qat_steps:
                raise ValueError("accuracy_control and calibration.qat_steps both make the INT8 model; give one")
        return self

    @model_validator(mode="after")
    def _one_base(self):
        if self.train_spec is not None and self.train is not None:
            raise ValueError("give train_spec or train, not both")
        if self.model is None and self.train_spec is None and self.train is None:
            raise ValueError("give the base model: train_spec, train (inline) or model (a trained "
                             ".hdf5); with model, train_spec/train is the retraining recipe")
        if self.model is not None and self.stages:
            raise ValueError("stages applies to training a new model; remove it when `model` is given")
        if self.infer_spec is not None and self.infer is not None:
            raise ValueError("give infer_spec or infer, not both")
        if self.kind == "search":
            if self.prune_thresholds:
                raise ValueError("prune_thresholds: kind 'search' picks the thresholds itself; remove "
                                 "them (or use kind 'sweep')")
            if self.retrain_epochs < 1:
                raise ValueError("retrain_epochs: kind 'search' retrains every trial, give at least 1")
        if self.kind == "explore":
            if self.model is None:
                raise ValueError("kind 'explore' measures one existing model: give `model` (a trained "
                                 "or imported model), not train_spec/train")
            if self.prune_thresholds:
                raise ValueError("prune_thresholds: kind 'explore' does not prune; remove them")
            if self.output_stage is not None:
                raise ValueError("output_stage: kind 'explore' measures every stage exit; list them "
                                 "in explorer.stage_exits")
            if self.accuracy_control is not None:
                raise ValueError("accuracy_control: kind 'explore' calibrates INT8 once per resolution; "
                                 "use accuracy control on the export run of the point you choose")
        elif self.explorer.stage_exits:
            raise ValueError("explorer.stage_exits applies to kind 'explore' only")
        return self


# ------------------------------------------------------------------ parsing and checks

def parse_run_spec(data, source="run spec", base_dir=None):
    """Validate a run spec dict; relative paths resolve against `base_dir` (default: cwd).

    Raises BpnetError naming every bad field, and checks that the files it names exist, that
    training/inference specs are valid and that there are enough calibration images, so a bad run
    is rejected before anything is queued.
    """
    if not isinstance(data, dict):
        raise BpnetError(f"{source} must be a mapping of fields, got {type(data).__name__}")
    spec = parse_spec(RunSpec, data, source)
    spec = _resolve_paths(spec, Path(base_dir or os.getcwd()).resolve())
    check_run_inputs(spec, source)
    return spec


def run_spec_problems(data, base_dir=None):
    """[(field path, message)] of everything a run spec dict is refused for that belongs to one
    field: RunSpec's rules, then (when they pass) the files it names, the base model's safety and
    the calibration image count. The dashboard shows each message under the widget of its field;
    `parse_run_spec` refuses the same spec with the same messages."""
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as err:
        problems = [(_field_path(e), describe_field_error(e)) for e in err.errors()]
        refused = {loc[0] for loc, _ in problems if loc}
        rest = {k: v for k, v in data.items() if k not in refused}
        if refused and len(rest) < len(data):
            # pydantic checks rules across fields, and we check files, only once every field is
            # valid: check them on the spec without the refused fields, so all are said at once
            problems += [(loc, message) for loc, message in run_spec_problems(rest, base_dir)
                         if loc and loc[0] not in refused]
        return problems
    return run_input_problems(_resolve_paths(spec, Path(base_dir or os.getcwd()).resolve()))


def _field_path(error):
    """The error's field path; a rule across fields names its field first ('retrain_epochs: ...')."""
    if error["loc"]:
        return tuple(error["loc"])
    named = error["msg"].removeprefix("Value error, ").split(":", 1)[0].split(".")[0]
    return (named,) if named in RunSpec.model_fields else ()


def load_run_spec(path):
    path = Path(path)
    return parse_run_spec(load_yaml(path, "run spec"), f"run spec {path}", path.resolve().parent)


def check_run_inputs(spec, source):
    problems = run_input_problems(spec)
    if problems:
        raise BpnetError(f"{source}: {len(problems)} problem(s):\n" +
                         "\n".join(f"  - {message}" for _, message in problems))
    if spec.output_stage is not None:
        check_output_stage(spec, source)
    if spec.train_spec is not None or spec.train is not None:
        base_train_spec(spec, source)   # raises on an invalid training spec
    infer_spec(spec, spec.resolutions[0], source)


def run_input_problems(spec):
    """[(field path, message)] of the files a valid RunSpec names: missing files and folders, a
    base model that is not a model we read (or carries code), too few calibration images."""
    problems = []

    def need_file(path, field):
        if path is not None and not Path(path).is_file():
            problems.append((tuple(field.split(".")), f"{field}: file not found: {path}"))

    def need_dir(path, field):
        if path is not None and not Path(path).is_dir():
            problems.append((tuple(field.split(".")), f"{field}: folder not found: {path}"))

    need_file(spec.dataset.annotations, "dataset.annotations")
    need_dir(spec.dataset.images, "dataset.images")
    need_file(spec.dataset.eval_annotations, "dataset.eval_annotations")
    need_dir(spec.dataset.eval_images, "dataset.eval_images")
    need_file(spec.train_spec, "train_spec")
    need_file(spec.model, "model")
    need_file(spec.infer_spec, "infer_spec")
    if spec.model is not None and spec.model.suffix.lower() in IMPORTED_SUFFIXES:
        from bpnet.imports import find_card
        try:   # a pretrained network the import stage rebuilds: its model card must be there
            find_card(spec.model)
        except BpnetError as err:
            problems.append((("model",), f"model: {err}"))
    elif spec.model is not None and spec.model.suffix.lower() not in (".hdf5", ".h5"):
        problems.append((("model",), f"model: {spec.model} is not a Keras model (.hdf5 or .h5) nor a "
                         f"pretrained network `bpnet import` rebuilds ({', '.join(IMPORTED_SUFFIXES)})"))
    elif spec.model is not None and Path(spec.model).is_file():
        try:   # a model file is data: a Lambda/custom layer is refused before anything is queued
            check_model_file(spec.model, "model")
        except BpnetError as err:
            problems.append((("model",), str(err)))
    if "int8" in spec.precisions:
        cal_dir = calibration_images(spec)
        need_dir(cal_dir, "calibration.images")
        if Path(cal_dir).is_dir():
            problem = calibration_count_problem(count_images(cal_dir), spec.calibration.batch_size,
                                                spec.calibration.batches)
            if problem:
                problems.append((("calibration",), f"calibration: {cal_dir} {problem}; add images or lower "
                                 "the batches"))
    if spec.kind == "explore" and not problems:
        try:   # a stage exit beyond the model, a bad resolution: refused before queueing
            explorer_plan(spec)
        except BpnetError as err:
            problems.append((("explorer",), str(err)))
    return problems


def explorer_plan(spec):
    """The explorer's grid (stage exits, [(H, W)], precisions), checked against the model by
    bpnet.guide.explorer.check_plan (the same check the engine makes). A Keras model's stages are
    read from its file; a model in another format is imported at run time, so its stage exits
    must be listed, and are checked against it then."""
    from bpnet.guide.explorer import check_plan, stage_count_of_file

    count = stage_count_of_file(spec.model)
    if count is None:
        if not spec.explorer.stage_exits:
            raise BpnetError(f"explorer.stage_exits: list the stage exits to measure for {spec.model.name} "
                             "(its stage count is known only once it is imported)")
        count = max(spec.explorer.stage_exits)
    return check_plan(count, spec.explorer.stage_exits, spec.resolutions, spec.precisions)


def check_output_stage(spec, source):
    """`output_stage` must be one of the base model's stages."""
    if spec.model is not None:
        from bpnet.guide.explorer import stage_count_of_file

        count = stage_count_of_file(spec.model)
    else:
        count = min(base_train_spec(spec, source, stages).model.stages for stages in spec.stages or (None,))
    if count is not None and spec.output_stage > count:
        raise BpnetError(f"{source}: output_stage: {spec.output_stage} beyond the model's stages 1..{count}")


def calibration_images(spec):
    return spec.calibration.images or spec.dataset.images


def eval_data(spec):
    return (spec.dataset.eval_annotations or spec.dataset.annotations,
            spec.dataset.eval_images or spec.dataset.images)


def base_train_spec(spec, source="run spec", stages=None):
    """The validated TrainSpec of the base model, on the run's dataset (and `stages` if given)."""
    if spec.train_spec is not None:
        data = load_yaml(spec.train_spec, "training spec")
        data = _absolute_spec_paths(data, spec.train_spec.resolve().parent)
        where = f"{source}: training spec {spec.train_spec}"
    else:
        data = json.loads(json.dumps(spec.train))
        where = f"{source}: train"
    loader = data.setdefault("dataloader", {})
    if not isinstance(loader, dict):
        raise BpnetError(f"{where}: dataloader must be a mapping, got {loader!r}")
    dataset = loader.setdefault("dataset", {})
    dataset["annotations"] = str(spec.dataset.annotations)
    dataset["images"] = str(spec.dataset.images)
    if stages is not None:
        data.setdefault("model", {})["stages"] = stages
    return parse_spec(TrainSpec, data, where)


def _absolute_spec_paths(data, base):
    # The training spec's own relative paths (pretrained weights) are relative to its file.
    weights = data.get("pretrained_weights")
    if weights and not Path(weights).is_absolute():
        data["pretrained_weights"] = str((base / weights).resolve())
    return data


def infer_spec(spec, input_hw, source="run spec"):
    if spec.infer_spec is not None:
        data = load_yaml(spec.infer_spec, "inference spec")
        where = f"{source}: inference spec {spec.infer_spec}"
    else:
        data = dict(spec.infer or {})
        where = f"{source}: infer"
    data["input_shape"] = list(input_hw)
    if spec.output_stage is not None:
        data["output_stage_to_use"] = spec.output_stage
    return parse_spec(InferSpec, data, where)


# ------------------------------------------------------------------ fingerprints and keys

_FILE_HASHES = {}


def file_fingerprint(path):
    """sha256 of a file's bytes (memoised on path, size and mtime: COCO JSON is large)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_HASHES:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_HASHES[memo] = h.hexdigest()
    return _FILE_HASHES[memo]


def folder_fingerprint(path):
    """Hash of a folder's image names, sizes and mtimes: changes when any image changes."""
    h = hashlib.sha256()
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file() and is_image_file(entry.name):
            st = entry.stat()
            h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(kind, params, parent_key, data_fingerprints=()):
    payload = {"v": ENGINE_CACHE_VERSION, "kind": kind, "params": params, "parent": parent_key,
               "data": list(data_fingerprints)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------ DAG expansion

@dataclass(frozen=True)
class ModelNode:
    """A model the run exports and evaluates: its node, which branch it is and its threshold."""
    node: int
    branch: str                          # unpruned | pruned | search
    threshold: Optional[float] = None    # the sweep's prune threshold (pruned only)

    def tag(self, stages_label):
        if self.branch == "search":
            return f"{stages_label} search"
        return stages_label if self.threshold is None else f"{stages_label} pth={self.threshold:g}"


def expand_run(spec, tensorrt=False):
    """The run's stages in topological order: dicts with kind, label, params (the kind's Params
    dump), parent (index into the list or None) and key. Paths to parent outputs are not params:
    the worker reads the parent's Outputs. `tensorrt`: a TensorRT worker is registered, so
    `engines: true` adds engine stages."""
    nodes = []

    def add(kind, label, params, parent, data=()):
        """Append a node of `kind` (a worker.kinds module) with `params` (its Params)."""
        stored = params.key_dict()
        parent_key = nodes[parent]["key"] if parent is not None else None
        nodes.append({"kind": kind.KIND, "label": label, "params": stored, "parent": parent,
                      "key": cache_key(kind.KIND, stored, parent_key, data)})
        return len(nodes) - 1

    train_data = (file_fingerprint(spec.dataset.annotations), folder_fingerprint(spec.dataset.images))
    for base, stages_label in _base_nodes(spec, add, train_data):
        if spec.kind == "explore":
            _add_explore(spec, add, base)
            continue
        unpruned_only = spec.kind == "sweep" and not spec.prune_thresholds
        models = [ModelNode(base, "unpruned")] if spec.evaluate_unpruned or unpruned_only else []
        if spec.kind == "search":
            models.append(ModelNode(_add_search(spec, add, nodes, base, stages_label, train_data), "search"))
        for pth in spec.prune_thresholds:
            pruned = add(prune, f"prune {stages_label} pth={pth:g}",
                         prune.Params(threshold=pth, **spec.prune.model_dump()), base)
            if spec.retrain_epochs > 0:
                pruned = add(retrain, f"retrain {stages_label} pth={pth:g}",
                             retrain.Params(train_spec=_retrain_spec(spec, nodes[base])), pruned, train_data)
            models.append(ModelNode(pruned, "pruned", pth))
        qat_train = _qat_train_spec(spec, nodes[base]) if spec.calibration.qat_steps else None
        for model in models:
            _add_export_and_evaluate(spec, add, nodes, model, stages_label, tensorrt, qat_train)
    return nodes


def _add_search(spec, add, nodes, base, stages_label, train_data):
    """One stage that runs the whole AP-budget search (its trials are cached by the engine)."""
    options = spec.search
    hw = tuple(options.resolution or spec.resolutions[0])
    eval_ann, eval_images = eval_data(spec)
    latency = None
    if options.objective == "latency":
        latency = search.LatencyOptions(input_hw=hw, **spec.benchmark.model_dump())
    params = search.Params(
        retrain_spec=_retrain_spec(spec, nodes[base]), prune=spec.prune, budget_ap=options.budget_ap,
        objective=options.objective, max_iters=options.max_iters, threshold_range=options.threshold_range,
        input_hw=hw, infer_spec=infer_spec(spec, hw), annotations=str(eval_ann), images=str(eval_images),
        max_images=spec.eval_max_images, latency=latency)
    eval_fp = (file_fingerprint(eval_ann), folder_fingerprint(eval_images))
    return add(search, f"search {stages_label} budget {options.budget_ap:g} AP {options.objective}",
               params, base, train_data + eval_fp)


def _add_explore(spec, add, base):
    """One `explore` stage measuring the whole grid in one job, then one `explore_point` per
    (resolution, stage exit, precision): the result row Compare and the Pareto front show, with
    that point's model file as its downloadable artifact."""
    stage_exits, hws, precisions = explorer_plan(spec)
    eval_ann, eval_images = eval_data(spec)
    data = (file_fingerprint(eval_ann), folder_fingerprint(eval_images))
    int8 = "int8" in precisions
    if int8:
        data += (folder_fingerprint(calibration_images(spec)),)
    params = explore.Params(infer_spec=infer_spec(spec, hws[0]), annotations=str(eval_ann), images=str(eval_images),
                            resolutions=hws, stage_exits=stage_exits, precisions=precisions,
                            calibration=calibration_params(spec) if int8 else None, max_images=spec.eval_max_images)
    grid = f"{len(hws)} resolutions x {len(stage_exits)} stage exits x {len(precisions)} precisions"
    explored = add(explore, f"explore {spec.model.name}: {grid}", params, base, data)
    for hw in hws:
        for stage in stage_exits:
            for precision in precisions:
                add(explore_point, f"explore {hw[0]}x{hw[1]} stage {stage} {precision}",
                    explore_point.Params(input_hw=hw, stage=stage, precision=precision, annotations=str(eval_ann),
                                         images=str(eval_images)), explored)


def model_fingerprints(model):
    """The base model's bytes, and for a pretrained network the model card beside it (the
    import folds the card into the model, so a changed card is a changed base model)."""
    fingerprints = (file_fingerprint(model),)
    if Path(model).suffix.lower() in IMPORTED_SUFFIXES:
        from bpnet.imports.card import card_path_for
        card = card_path_for(model)
        if card.is_file():
            fingerprints += (file_fingerprint(card),)
    return fingerprints


def _base_nodes(spec, add, train_data):
    """[(node, stages label)] of the run's base models: the imported model, or one trained model
    per stage count."""
    if spec.model is not None:
        base = add(import_model, f"import {spec.model.name}", import_model.Params(model=str(spec.model)),
                   None, model_fingerprints(spec.model))
        return [(base, "model")]
    bases = []
    for stages in spec.stages or (None,):
        spec_of_base = base_train_spec(spec, stages=stages)
        label = f"s{spec_of_base.model.stages}"
        bases.append((add(train, f"train {label}", train.Params(train_spec=spec_of_base), None, train_data), label))
    return bases


def _retrain_spec(spec, base_node):
    """The retraining recipe: the base model's (or, for an imported model, the run's) training
    spec for `retrain_epochs`, continuing from the pruned graph (the worker sets the weights)."""
    if base_node["kind"] == train.KIND:
        recipe = train.Params.model_validate(base_node["params"]).train_spec
    else:
        recipe = base_train_spec_for_import(spec)
    return recipe.model_copy(update={
        "num_epoch": spec.retrain_epochs, "load_graph": True, "pretrained_weights": None,
        "checkpoint_n_epoch": min(recipe.checkpoint_n_epoch or 1, spec.retrain_epochs)})


def _qat_train_spec(spec, base_node):
    """The recipe of the QAT fine-tune: the base model's data and loss at a tenth of its learning
    rate (fake quantization needs small updates); the worker gives it the model to start from."""
    recipe = _retrain_spec(spec, base_node)
    schedule = recipe.optimizer.learning_rate_schedule
    slower = schedule.model_copy(update={"base_learning_rate": schedule.base_learning_rate / 10,
                                         "min_learning_rate": schedule.min_learning_rate / 10})
    return recipe.model_copy(update={"load_graph": False,
                                     "optimizer": recipe.optimizer.model_copy(update={"learning_rate_schedule": slower})})


def base_train_spec_for_import(spec):
    """The retraining recipe for an imported model: the run's train_spec/train when given, else
    the bundled small spec, on the run's dataset."""
    if spec.train_spec is not None or spec.train is not None:
        return base_train_spec(spec)
    pretrained = spec.model is not None and spec.model.suffix.lower() in IMPORTED_SUFFIXES
    default = Path(__file__).resolve().parent.parent / "specs" / (
        "retrain_pretrained.yaml" if pretrained else "train_small.yaml")
    data = load_yaml(default, "default training spec")
    data["dataloader"]["dataset"] = {"annotations": str(spec.dataset.annotations),
                                     "images": str(spec.dataset.images),
                                     "include_images_without_people": False}
    return parse_spec(TrainSpec, data, f"default training spec {default}")


def _add_export_and_evaluate(spec, add, nodes, model, stages_label, tensorrt=False, qat_train=None):
    """Per resolution and precision: export -> evaluate; then a gate after every FP16/INT8
    evaluate, comparing it with its FP32 sibling (same model and resolution). `qat_train`: the
    training recipe of an INT8 export by quantization-aware fine-tuning (calibration.qat_steps)."""
    eval_ann, eval_images = eval_data(spec)
    eval_fp = (file_fingerprint(eval_ann), folder_fingerprint(eval_images))
    cal_fp = (folder_fingerprint(calibration_images(spec)),)
    tag = model.tag(stages_label)
    for hw in spec.resolutions:
        infer = infer_spec(spec, hw)
        evaluations = {}
        for precision in spec.precisions:
            int8 = precision == "int8"
            # fine-tuned at the resolution it is exported at
            qat = (qat_train.model_copy(update={"dataloader": qat_train.dataloader.model_copy(update={"image_shape": hw})})
                   if int8 and qat_train is not None else None)
            export_params = export.Params(input_hw=hw, precision=precision, stage=spec.output_stage,
                                          calibration=calibration_params(spec) if int8 else None,
                                          qat_train_spec=qat)
            name = f"{tag} {hw[0]}x{hw[1]} {precision}"
            if int8 and spec.accuracy_control is not None:
                exported = _add_quantize(spec, add, model, hw, infer, name, cal_fp + eval_fp)
            else:
                exported = add(export, f"export {name}", export_params, model.node, cal_fp if int8 else ())
            if spec.engines and tensorrt:   # a leaf: results are measured on ONNX Runtime
                add(engine, f"engine {name}", export_params, exported)
            evaluate_params = evaluate.Params(
                infer_spec=infer, annotations=str(eval_ann), images=str(eval_images), benchmark=spec.benchmark,
                precision=precision, max_images=spec.eval_max_images, input_hw=hw,
                prune_threshold=model.threshold, stages_label=stages_label,
                branch="search" if model.branch == "search" else None)
            evaluated = add(evaluate, f"evaluate {name}", evaluate_params, exported, eval_fp)
            evaluations[precision] = (exported, evaluated, name)
        for precision in gate.GATED_PRECISIONS:
            if precision in evaluations:
                _add_gate(spec, add, nodes, evaluations, precision, infer, eval_ann, eval_images, eval_fp)


def _add_quantize(spec, add, model, hw, infer, name, data):
    """INT8 with accuracy control in place of the INT8 export. Calibration images in the
    evaluation folder are chosen from the evaluation annotations (and kept out of the subset the
    AP drop is measured on); another folder is used as it is."""
    eval_ann, eval_images = eval_data(spec)
    cal_images = calibration_images(spec)
    separate = Path(cal_images).resolve() != Path(eval_images).resolve()
    params = quantize.Params(input_hw=hw, accuracy_control=spec.accuracy_control, infer_spec=infer,
                             annotations=str(eval_ann), images=str(eval_images),
                             calibration_images=str(cal_images) if separate else None)
    return add(quantize, f"quantize {name} (max drop {spec.accuracy_control.max_drop:g} AP)", params, model.node, data)


def calibration_params(spec):
    return export.CalibrationParams(**{**spec.calibration.model_dump(), "images": str(calibration_images(spec))})


def _add_gate(spec, add, nodes, evaluations, precision, infer, eval_ann, eval_images, eval_fp):
    exported, evaluated, name = evaluations[precision]
    # Stages of the same run this one reads besides its parent, by key: the scheduler starts the
    # gate once they are final (a failed FP32 sibling only means the gate evaluates the parent).
    inputs = {"export": nodes[exported]["key"]}
    if "fp32" in evaluations:
        float_export, float_evaluate, _ = evaluations["fp32"]
        inputs.update(float_export=nodes[float_export]["key"], float_evaluate=nodes[float_evaluate]["key"])
    int8 = precision == "int8"
    calibrated = int8 and nodes[exported]["kind"] == export.KIND    # accuracy control picks its own
    params = gate.Params(
        precision=precision, threshold_ap=spec.int8_gate_max_ap_drop, infer_spec=infer, annotations=str(eval_ann),
        images=str(eval_images), max_images=spec.eval_max_images,
        calibrator=spec.calibration.calibrator if calibrated else None,
        num_calibration_images=spec.calibration.batch_size * spec.calibration.batches if calibrated else None,
        inputs=inputs)
    add(gate, f"gate {name}", params, evaluated, eval_fp)


def dataset_label(spec):
    return str(spec.dataset.annotations)


__all__ = ["RunSpec", "parse_run_spec", "load_run_spec", "expand_run", "cache_key",
           "format_validation_error"]
