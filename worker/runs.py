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
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import Field, field_validator, model_validator

from bpnet.errors import BpnetError
from bpnet.model_safety import check_model_file
from bpnet.specs import (InferSpec, Strict, TrainSpec, _resolve_paths, format_validation_error,
                         load_yaml, parse_spec)

# Bump when an engine change makes old cached outputs wrong: every key changes with it.
ENGINE_CACHE_VERSION = "1"
PRECISIONS = ("fp32", "fp16", "int8")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


class RunDataset(Strict):
    annotations: Path                       # COCO person-keypoints JSON used for training
    images: Path
    eval_annotations: Optional[Path] = None   # default: the training annotations
    eval_images: Optional[Path] = None        # default: the training images


class PruneOptions(Strict):
    equalization: Literal["union", "intersection", "arithmetic_mean", "geometric_mean"] = "union"
    granularity: int = Field(8, ge=1)
    min_filters: int = Field(16, ge=1)
    normalizer: Literal["max", "L2"] = "max"
    excluded_layers: tuple[str, ...] = ()


class CalibrationOptions(Strict):
    images: Optional[Path] = None          # default: the training images
    batch_size: int = Field(8, ge=1, le=256)
    batches: int = Field(10, ge=1, le=10000)
    calibrator: Literal["entropy", "minmax", "percentile"] = "entropy"
    # Q/DQ nodes of these layers are removed after calibration (the gate's FP32-fallback remedy)
    keep_float_layers: tuple[str, ...] = ()
    # > 0: INT8 by quantization-aware fine-tuning of the float model for this many steps instead
    # of post-training calibration (the gate's QAT remedy)
    qat_steps: int = Field(0, ge=0, le=100000)


class SearchOptions(Strict):
    """`kind: search`: the smallest pruned + retrained model within an AP budget."""
    budget_ap: float = Field(2.0, ge=0, le=100)        # largest AP drop (points) from the unpruned model
    objective: Literal["params", "latency"] = "params"
    max_iters: int = Field(6, ge=1, le=30)
    # evaluation (and latency) input [H, W] of every trial; default: the first of `resolutions`
    resolution: Optional[tuple[int, int]] = None
    # the engine measures each trial's latency on the retrained float (Keras) model
    latency_precision: Literal["fp32"] = "fp32"
    threshold_range: tuple[float, float] = (0.05, 1.0)

    @field_validator("resolution")
    @classmethod
    def _resolution_multiple_of_8(cls, value):
        if value is not None and (value[0] <= 0 or value[1] <= 0 or value[0] % 8 or value[1] % 8):
            raise ValueError(f"{list(value)}: H and W must be positive multiples of 8")
        return value

    @field_validator("threshold_range")
    @classmethod
    def _range_order(cls, value):
        if not 0 < value[0] < value[1] <= 10:
            raise ValueError(f"{list(value)}: give [low, high] with 0 < low < high <= 10")
        return value


class BenchmarkOptions(Strict):
    batch_size: int = Field(1, ge=1, le=256)
    runs: int = Field(20, ge=1, le=10000)
    warmup: int = Field(3, ge=0, le=1000)


# A run's base `model` may be a pretrained network in these formats: the import stage rebuilds it
# with `bpnet import` (its model card beside it) on first use; the stage cache keeps the result.
IMPORTED_SUFFIXES = (".tflite", ".pb")


class RunSpec(Strict):
    """One optimization run (or sweep): a base model (trained from `train_spec`/`train`, or an
    existing `model`), swept over stages x prune thresholds x resolutions x precisions; or, with
    `kind: search`, an AP-budget search for the prune threshold."""
    name: str = ""
    kind: Literal["sweep", "search"] = "sweep"
    dataset: RunDataset
    train_spec: Optional[Path] = None      # training spec YAML for the base model
    train: Optional[dict] = None           # ... or the same inline (dataset filled from `dataset`)
    model: Optional[Path] = None           # ... or an existing model (.hdf5, or .tflite/.pb + card)
    stages: tuple[int, ...] = ()           # model stage counts to train (a sweep); () = the spec's
    resolutions: tuple[tuple[int, int], ...] = ((288, 384),)   # network input [H, W] for export/eval
    prune_thresholds: tuple[float, ...] = ()
    prune: PruneOptions = PruneOptions()
    retrain_epochs: int = Field(2, ge=0, le=10000)   # 0 = evaluate pruned models without retraining
    evaluate_unpruned: bool = True         # also export/evaluate the base model itself
    precisions: tuple[Literal["fp32", "fp16", "int8"], ...] = ("fp32",)
    calibration: CalibrationOptions = CalibrationOptions()
    infer_spec: Optional[Path] = None      # inference spec YAML (input_shape is set per resolution)
    infer: Optional[dict] = None           # ... or inline fields
    benchmark: BenchmarkOptions = BenchmarkOptions()
    eval_max_images: Optional[int] = Field(None, ge=1)   # None = every annotated image
    search: SearchOptions = SearchOptions()
    # INT8/FP16 results losing more AP points than this against their float parent fail the gate
    int8_gate_max_ap_drop: float = Field(2.0, ge=0, le=100)
    engines: bool = False                  # also build TensorRT engines (needs a TensorRT worker)

    @field_validator("stages")
    @classmethod
    def _stage_range(cls, value):
        if any(s < 2 or s > 7 for s in value):
            raise ValueError("each stages value must be between 2 and 7")
        return tuple(dict.fromkeys(value))

    @field_validator("resolutions")
    @classmethod
    def _multiples_of_8(cls, value):
        if not value:
            raise ValueError("give at least one resolution [H, W]")
        for h, w in value:
            if h <= 0 or w <= 0 or h % 8 or w % 8:
                raise ValueError(f"[{h}, {w}]: H and W must be positive multiples of 8")
        return tuple(dict.fromkeys(value))

    @field_validator("prune_thresholds")
    @classmethod
    def _threshold_range(cls, value):
        if any(t <= 0 or t > 10 for t in value):
            raise ValueError("each prune threshold must be in (0, 10] (typical 0.05-3.0)")
        return tuple(dict.fromkeys(value))

    @field_validator("precisions")
    @classmethod
    def _some_precision(cls, value):
        if not value:
            raise ValueError(f"give at least one precision of {', '.join(PRECISIONS)}")
        return tuple(dict.fromkeys(value))

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


def load_run_spec(path):
    path = Path(path)
    return parse_run_spec(load_yaml(path, "run spec"), f"run spec {path}", path.resolve().parent)


def check_run_inputs(spec, source):
    problems = []

    def need_file(path, field):
        if path is not None and not Path(path).is_file():
            problems.append(f"{field}: file not found: {path}")

    def need_dir(path, field):
        if path is not None and not Path(path).is_dir():
            problems.append(f"{field}: folder not found: {path}")

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
            problems.append(f"model: {err}")
    elif spec.model is not None and spec.model.suffix.lower() not in (".hdf5", ".h5"):
        problems.append(f"model: {spec.model} is not a Keras model (.hdf5 or .h5) nor a pretrained "
                        f"network `bpnet import` rebuilds ({', '.join(IMPORTED_SUFFIXES)})")
    elif spec.model is not None and Path(spec.model).is_file():
        try:   # a model file is data: a Lambda/custom layer is refused before anything is queued
            check_model_file(spec.model, "model")
        except BpnetError as err:
            problems.append(str(err))
    if "int8" in spec.precisions:
        cal_dir = calibration_images(spec)
        need_dir(cal_dir, "calibration.images")
        if Path(cal_dir).is_dir():
            have = count_images(cal_dir)
            want = spec.calibration.batch_size * spec.calibration.batches
            if have < want:
                problems.append(f"calibration: {cal_dir} has {have} images, fewer than batch_size x "
                                f"batches = {spec.calibration.batch_size} x {spec.calibration.batches}"
                                f" = {want}; lower batches or add images")
    if problems:
        raise BpnetError(f"{source}: {len(problems)} problem(s):\n" +
                         "\n".join(f"  - {p}" for p in problems))
    if spec.train_spec is not None or spec.train is not None:
        base_train_spec(spec, source)   # raises on an invalid training spec
    infer_spec(spec, spec.resolutions[0], source)


def count_images(folder):
    return sum(1 for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


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
        if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            st = entry.stat()
            h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(kind, params, parent_key, data_fingerprints=()):
    payload = {"v": ENGINE_CACHE_VERSION, "kind": kind, "params": params, "parent": parent_key,
               "data": list(data_fingerprints)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------ DAG expansion

def expand_run(spec, tensorrt=False):
    """The run's stages in topological order: dicts with kind, label, params, parent (index into
    the list or None) and key. Paths to parent outputs are not params; the worker finds them.
    `tensorrt`: a TensorRT worker is registered, so `engines: true` adds engine stages."""
    nodes = []

    def add(kind, label, params, parent, data=()):
        parent_key = nodes[parent]["key"] if parent is not None else None
        nodes.append({"kind": kind, "label": label, "params": params, "parent": parent,
                      "key": cache_key(kind, params, parent_key, data)})
        return len(nodes) - 1

    train_data = (file_fingerprint(spec.dataset.annotations), folder_fingerprint(spec.dataset.images))
    for base, stages_label in _base_nodes(spec, add, train_data):
        unpruned_only = spec.kind == "sweep" and not spec.prune_thresholds
        models = [(base, None)] if spec.evaluate_unpruned or unpruned_only else []
        if spec.kind == "search":
            models.append((_add_search(spec, add, nodes, base, stages_label, train_data), "search"))
        for pth in spec.prune_thresholds:
            pruned = add("prune", f"prune {stages_label} pth={pth:g}",
                         {"threshold": pth, **spec.prune.model_dump(mode="json")}, base)
            if spec.retrain_epochs > 0:
                pruned = add("retrain", f"retrain {stages_label} pth={pth:g}",
                             {"train_spec": _retrain_spec_dict(spec, nodes[base])}, pruned, train_data)
            models.append((pruned, pth))
        qat_train = _qat_train_spec_dict(spec, nodes[base]) if spec.calibration.qat_steps else None
        for model, pth in models:
            _add_export_and_evaluate(spec, add, nodes, model, pth, stages_label, tensorrt, qat_train)
    return nodes


def _add_search(spec, add, nodes, base, stages_label, train_data):
    """One stage that runs the whole AP-budget search (its trials are cached by the engine)."""
    options = spec.search
    hw = tuple(options.resolution or spec.resolutions[0])
    eval_ann, eval_images = eval_data(spec)
    latency = None
    if options.objective == "latency":
        latency = {"input_hw": list(hw), "batch_size": spec.benchmark.batch_size,
                   "runs": spec.benchmark.runs, "warmup": spec.benchmark.warmup}
    params = {"retrain_spec": _retrain_spec_dict(spec, nodes[base]),
              "prune": spec.prune.model_dump(mode="json"), "budget_ap": options.budget_ap,
              "objective": options.objective, "max_iters": options.max_iters,
              "threshold_range": list(options.threshold_range), "input_hw": list(hw),
              "infer_spec": infer_spec(spec, hw).model_dump(mode="json"),
              "annotations": str(eval_ann), "images": str(eval_images),
              "max_images": spec.eval_max_images, "latency": latency}
    eval_fp = (file_fingerprint(eval_ann), folder_fingerprint(eval_images))
    return add("search", f"search {stages_label} budget {options.budget_ap:g} AP {options.objective}",
               params, base, train_data + eval_fp)


def _base_nodes(spec, add, train_data):
    if spec.model is not None:
        base = add("import", f"import {spec.model.name}", {"model": str(spec.model)}, None,
                   (file_fingerprint(spec.model),))
        return [(base, "model")]
    bases = []
    for stages in spec.stages or (None,):
        train = base_train_spec(spec, stages=stages)
        label = f"s{train.model.stages}"
        params = {"train_spec": train.model_dump(mode="json")}
        bases.append((add("train", f"train {label}", params, None, train_data), label))
    return bases


def _retrain_spec_dict(spec, base_node):
    # Retraining continues from the pruned graph (the worker fills pretrained_weights).
    if base_node["kind"] == "train":
        train = dict(base_node["params"]["train_spec"])
    else:
        train = base_train_spec_for_import(spec)
    train["num_epoch"] = spec.retrain_epochs
    train["load_graph"] = True
    train["pretrained_weights"] = None
    train["checkpoint_n_epoch"] = min(train.get("checkpoint_n_epoch") or 1, spec.retrain_epochs)
    return train


def _qat_train_spec_dict(spec, base_node):
    """The recipe of the QAT fine-tune: the base model's data and loss at a tenth of its learning
    rate (fake quantization needs small updates); the worker gives it the model to start from."""
    train = _retrain_spec_dict(spec, base_node)
    train["load_graph"] = False
    schedule = train["optimizer"]["learning_rate_schedule"]
    train["optimizer"] = {**train["optimizer"], "learning_rate_schedule": {
        **schedule, "base_learning_rate": schedule["base_learning_rate"] / 10,
        "min_learning_rate": schedule["min_learning_rate"] / 10}}
    return train


def base_train_spec_for_import(spec):
    """The retraining recipe for an imported model: the run's train_spec/train when given, else
    the bundled small spec, on the run's dataset."""
    if spec.train_spec is not None or spec.train is not None:
        return base_train_spec(spec).model_dump(mode="json")
    pretrained = spec.model is not None and spec.model.suffix.lower() in IMPORTED_SUFFIXES
    default = Path(__file__).resolve().parent.parent / "specs" / (
        "retrain_pretrained.yaml" if pretrained else "train_small.yaml")
    data = load_yaml(default, "default training spec")
    data["dataloader"]["dataset"] = {"annotations": str(spec.dataset.annotations),
                                     "images": str(spec.dataset.images),
                                     "include_images_without_people": False}
    return parse_spec(TrainSpec, data, f"default training spec {default}").model_dump(mode="json")


GATED_PRECISIONS = ("int8", "fp16")


def _add_export_and_evaluate(spec, add, nodes, model, pth, stages_label, tensorrt=False, qat_train=None):
    """Per resolution and precision: export -> evaluate; then a gate after every FP16/INT8
    evaluate, comparing it with its FP32 sibling (same model and resolution). `qat_train`: the
    training recipe of an INT8 export by quantization-aware fine-tuning (calibration.qat_steps)."""
    eval_ann, eval_images = eval_data(spec)
    eval_fp = (file_fingerprint(eval_ann), folder_fingerprint(eval_images))
    cal_fp = (folder_fingerprint(calibration_images(spec)),)
    searched = pth == "search"   # the search's chosen model: its threshold is known only at run time
    tag = stages_label if pth is None else f"{stages_label} search" if searched else f"{stages_label} pth={pth:g}"
    for hw in spec.resolutions:
        infer = infer_spec(spec, hw).model_dump(mode="json")
        evaluations = {}
        for precision in spec.precisions:
            params = {"input_hw": list(hw), "precision": precision}
            if precision == "int8":
                params["calibration"] = calibration_params(spec)
                if qat_train is not None:   # fine-tuned at the resolution it is exported at
                    params["qat_train_spec"] = {**qat_train, "dataloader": {**qat_train["dataloader"],
                                                                            "image_shape": list(hw)}}
            name = f"{tag} {hw[0]}x{hw[1]} {precision}"
            export = add("export", f"export {name}", params, model,
                         cal_fp if precision == "int8" else ())
            if spec.engines and tensorrt:   # a leaf: results are measured on ONNX Runtime
                add("engine", f"engine {name}", {key: params[key] for key in params}, export)
            params = {"infer_spec": infer, "annotations": str(eval_ann), "images": str(eval_images),
                      "benchmark": spec.benchmark.model_dump(mode="json"), "precision": precision,
                      "max_images": spec.eval_max_images, "input_hw": list(hw),
                      "prune_threshold": None if searched else pth, "stages_label": stages_label}
            if searched:
                params["branch"] = "search"
            evaluate = add("evaluate", f"evaluate {name}", params, export, eval_fp)
            evaluations[precision] = (export, evaluate, name)
        for precision in GATED_PRECISIONS:
            if precision in evaluations:
                _add_gate(spec, add, nodes, evaluations, precision, infer, eval_ann, eval_images, eval_fp)


def calibration_params(spec):
    cal = {**spec.calibration.model_dump(mode="json"), "images": str(calibration_images(spec))}
    for option in ("keep_float_layers", "qat_steps"):
        if not cal[option]:
            del cal[option]   # keeps the keys of runs made before this option existed
    return cal


def _add_gate(spec, add, nodes, evaluations, precision, infer, eval_ann, eval_images, eval_fp):
    export, evaluate, name = evaluations[precision]
    # Stages of the same run this one reads besides its parent, by key: the scheduler starts the
    # gate once they are final (a failed FP32 sibling only means the gate evaluates the parent).
    inputs = {"export": nodes[export]["key"]}
    if "fp32" in evaluations:
        float_export, float_evaluate, _ = evaluations["fp32"]
        inputs.update(float_export=nodes[float_export]["key"], float_evaluate=nodes[float_evaluate]["key"])
    params = {"precision": precision, "threshold_ap": spec.int8_gate_max_ap_drop, "infer_spec": infer,
              "annotations": str(eval_ann), "images": str(eval_images), "max_images": spec.eval_max_images,
              "calibrator": spec.calibration.calibrator if precision == "int8" else None,
              "num_calibration_images": (spec.calibration.batch_size * spec.calibration.batches
                                         if precision == "int8" else None),
              "inputs": inputs}
    add("gate", f"gate {name}", params, evaluate, eval_fp)


def run_spec_to_yaml(spec):
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)


def dataset_label(spec):
    return str(spec.dataset.annotations)


__all__ = ["RunSpec", "parse_run_spec", "load_run_spec", "expand_run", "cache_key",
           "format_validation_error"]
