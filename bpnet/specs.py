"""Spec files (YAML) parsed once, at the edge, into validated objects.

Unknown keys are rejected and every error names the file, the field path, the value given and
what is allowed, in one message listing all problems. Relative paths inside a spec file are
resolved against the spec file's own folder, so specs can travel with their data.
Inside the engine, functions take these objects (or plain arguments), never raw dicts.
"""

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bpnet.errors import BpnetError
from bpnet.limits import DEFAULT_EXPORT_HW, DEFAULT_STAGES, MAX_STAGES, STRIDE, stages_problem
from bpnet.preprocess import DEFAULT_IMAGE_OFFSET, DEFAULT_IMAGE_SCALE
from bpnet.skeleton import DEFAULT_SKELETON, load_skeleton


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_hw(value):
    h, w = value
    if h <= 0 or w <= 0 or h % STRIDE or w % STRIDE:
        raise ValueError(f"H and W must be positive multiples of {STRIDE}")
    return value


# ---------------------------------------------------------------- training spec

class DatasetSpec(Strict):
    annotations: Path                     # COCO person-keypoints JSON
    images: Path                          # folder of the images named in it
    min_keypoints: int = Field(1, ge=0, le=17)   # people with fewer labelled keypoints are masked
    include_images_without_people: bool = True   # negatives: all-background targets


class NormalizationSpec(Strict):
    image_scale: tuple[float, float, float] = DEFAULT_IMAGE_SCALE
    image_offset: tuple[float, float, float] = DEFAULT_IMAGE_OFFSET


class AugmentationSpec(Strict):
    enabled: bool = True
    flip_lr_prob: float = Field(0.5, ge=0, le=1)
    rotate_deg_max: float = Field(40.0, ge=0, le=180)
    zoom_ratio_min: float = Field(0.5, gt=0)
    zoom_ratio_max: float = Field(1.1, gt=0)
    translate_ratio_max: float = Field(0.2, ge=0, le=1)   # of the input size
    target_person_scale: float = Field(0.6, gt=0, le=2)   # main person's height / input height


class TargetSpec(Strict):
    heatmap_sigma_px: float = Field(7.0, gt=0)    # Gaussian sigma in input pixels
    paf_width_px: float = Field(8.0, gt=0)        # half-width of a limb's PAF band, input pixels


class DataloaderSpec(Strict):
    batch_size: int = Field(8, ge=1, le=1024)
    image_shape: tuple[int, int] = (256, 256)     # network input [H, W]
    skeleton: str = DEFAULT_SKELETON              # bundled name or path to a skeleton JSON
    dataset: DatasetSpec
    normalization: NormalizationSpec = NormalizationSpec()
    augmentation: AugmentationSpec = AugmentationSpec()
    targets: TargetSpec = TargetSpec()
    num_parallel_calls: int = Field(2, ge=1, le=64)
    # Parallel examples in threads (default: the numpy/OpenCV work releases the GIL; measured
    # faster than processes on 2 cores, docs/performance.md) or in spawned worker processes
    # (for many cores, where the GIL-held part would cap threads).
    worker_processes: bool = False

    _hw = field_validator("image_shape")(_check_hw)


class ModelSpec(Strict):
    backbone: Literal["vgg"] = "vgg"
    backbone_width: float = Field(1.0, gt=0, le=2)   # channel multiplier; 0.25 = narrow CPU model
    stages: int = DEFAULT_STAGES                      # MIN_STAGES..MAX_STAGES (bpnet.limits)
    # (no channel counts: the output convolutions have the skeleton's, `TrainSpec` checks old files' copies)
    use_bias: bool = True
    use_batch_norm: bool = False
    regularization_type: Literal["l1", "l2", "none"] = "l1"
    kernel_regularization_factor: float = Field(5e-4, ge=0)

    @field_validator("stages")
    @classmethod
    def _stage_range(cls, value):
        if stages_problem(value):
            raise ValueError(stages_problem(value))
        return value


class LRScheduleSpec(Strict):
    """TLT's soft-start annealing: ramp up over `soft_start` of training, hold, anneal from
    `annealing` to the end, between min and base learning rate (fractions of total steps)."""
    base_learning_rate: float = Field(2e-5, gt=0)
    min_learning_rate: float = Field(8e-8, ge=0)
    soft_start: float = Field(0.05, ge=0, le=1)
    annealing: float = Field(0.5, ge=0, le=1)


class OptimizerSpec(Strict):
    type: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)
    learning_rate_schedule: LRScheduleSpec = LRScheduleSpec()


class TrainSpec(Strict):
    random_seed: int = 42
    num_epoch: int = Field(100, ge=1)
    steps_per_epoch: Optional[int] = Field(None, ge=1)   # null = one pass over the data
    checkpoint_n_epoch: int = Field(5, ge=1)
    pretrained_weights: Optional[Path] = None
    load_graph: bool = False
    model: ModelSpec = ModelSpec()
    dataloader: DataloaderSpec
    optimizer: OptimizerSpec = OptimizerSpec()

    @model_validator(mode="before")
    @classmethod
    def _channel_counts_of_the_skeleton(cls, data):
        """Spec files written before (and TAO's) give model.heat_channels / paf_channels; the
        skeleton fixes them, so a matching copy is accepted and dropped, another one refused."""
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or not set(CHANNEL_FIELDS) & set(model):
            return data
        loader = data.get("dataloader")
        name = loader.get("skeleton", DEFAULT_SKELETON) if isinstance(loader, dict) else DEFAULT_SKELETON
        problem = channel_count_problem(model, name)
        if problem:
            raise ValueError(problem)
        return {**data, "model": {k: v for k, v in model.items() if k not in CHANNEL_FIELDS}}


CHANNEL_FIELDS = ("heat_channels", "paf_channels")


def skeleton_channel_counts(skeleton_name):
    """{"heat_channels": P + 1, "paf_channels": 2 x limbs} of a skeleton (bundled name or file)."""
    skeleton = load_skeleton(skeleton_name)
    return {"heat_channels": skeleton.num_heatmaps, "paf_channels": skeleton.num_pafs}


def channel_count_problem(model, skeleton_name):
    """None when the channel counts a model section gives are its skeleton's, else why not."""
    try:
        counts = skeleton_channel_counts(skeleton_name)
    except BpnetError as err:
        return f"dataloader.skeleton: {err}"
    for field in CHANNEL_FIELDS:
        if field in model and model[field] != counts[field]:
            return (f"model.{field}: {model[field]!r} does not match skeleton {skeleton_name!r}, which needs "
                    f"{counts[field]} (the channel counts come from the skeleton; leave the field out)")
    return None


# ---------------------------------------------------------------- inference spec

class InferSpec(Strict):
    input_shape: tuple[int, int] = DEFAULT_EXPORT_HW
    keep_aspect_ratio_mode: Literal["pad_image_input", "adjust_network_input"] = "pad_image_input"
    output_stage_to_use: Optional[int] = Field(None, ge=1, le=MAX_STAGES)   # null = the last stage
    output_upsampling_factor: tuple[int, int] = (8, 8)
    heatmap_threshold: float = Field(0.1, ge=0, le=1)
    paf_threshold: float = Field(0.05, ge=0, le=1)
    paf_num_samples: int = Field(10, ge=2, le=100)
    paf_min_positive_fraction: float = Field(0.8, ge=0, le=1)
    min_parts: int = Field(3, ge=1)           # people with fewer parts are dropped
    min_person_score: float = Field(0.2, ge=0)  # mean score per part below this -> dropped
    fragment_merge_reach: float = Field(0.0, ge=0, le=5)  # join neck-less pieces of one person; 0 = off
    # join pieces of a person that fit average body proportions within this stretch; 0 = off
    fragment_join_slack: float = Field(0.0, ge=0, le=3)
    # "upsample": argmax on the map upsampled by output_upsampling_factor (TAO); "gaussian": log-quadratic fit
    peak_refinement: Literal["upsample", "gaussian"] = "upsample"
    multi_scale_inference: bool = False
    scales: tuple[float, ...] = (1.0,)
    skeleton: str = DEFAULT_SKELETON
    normalization: NormalizationSpec = NormalizationSpec()
    batch_size: int = Field(1, ge=1, le=256)

    _hw = field_validator("input_shape")(_check_hw)

    @field_validator("output_upsampling_factor", mode="before")
    @classmethod
    def _factor_pair(cls, value):
        return (value, value) if isinstance(value, int) else value

    @field_validator("output_upsampling_factor")
    @classmethod
    def _factor_range(cls, value):
        if any(f < 1 or f > STRIDE for f in value):
            raise ValueError(f"each factor must be between 1 and {STRIDE}")
        return value

    @field_validator("scales")
    @classmethod
    def _positive_scales(cls, value):
        if not value or any(s <= 0 or s > 4 for s in value):
            raise ValueError("scales must be a non-empty list of numbers in (0, 4]")
        return value


# ---------------------------------------------------------------- loading

def load_yaml(path, what="spec file"):
    path = Path(path)
    if not path.is_file():
        raise BpnetError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise BpnetError(f"{what} {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise BpnetError(f"{what} {path} must be a mapping of fields, got {type(data).__name__}")
    return data


def parse_spec(cls, data, source="spec"):
    """Validate a dict into `cls`; all problems in one BpnetError naming field, value and rule."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise BpnetError(format_validation_error(err, source)) from None


def format_validation_error(err, source):
    lines = [f"{source}: {err.error_count()} invalid field(s):"]
    lines += [f"  - {describe_field_error(e)}" for e in err.errors()]
    return "\n".join(lines)


def describe_field_error(error):
    """One pydantic error as a sentence naming the field, the value and the rule."""
    field = ".".join(str(p) for p in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"] and error["type"] == "value_error":   # a rule across fields: its message names them
        return message
    if error["type"] == "value_error":   # our own rules name the value and what is allowed
        return f"{field}: {message}"
    if error["type"] == "extra_forbidden":
        return f"{field}: unknown field (value {error['input']!r}); check the spelling"
    if error["type"] == "missing":
        return f"{field}: required field is missing"
    return f"{field}: value {error['input']!r} is invalid: {message}"


def _resolve_paths(obj, base):
    """Make every Path field of a validated spec absolute relative to `base` (the spec's folder)."""
    updates = {}
    for name, value in obj:
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = (base / value).resolve()
        elif isinstance(value, BaseModel):
            updates[name] = _resolve_paths(value, base)
    return obj.model_copy(update=updates)


def load_train_spec(path):
    path = Path(path)
    spec = parse_spec(TrainSpec, load_yaml(path, "training spec"), source=f"training spec {path}")
    return _resolve_paths(spec, path.resolve().parent)


def load_infer_spec(path):
    path = Path(path)
    spec = parse_spec(InferSpec, load_yaml(path, "inference spec"), source=f"inference spec {path}")
    return _resolve_paths(spec, path.resolve().parent)


def spec_to_yaml(spec):
    """A spec as YAML text (paths as strings), to save beside every artifact."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
