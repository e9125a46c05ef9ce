"""What every stage kind module builds on: typed `StageParams` (what the stage computes from, hashed
into its cache key), typed `StageOutputs` (every file a child reads, by name, inside the stage's
folder), the `Parent` a stage reads from and the `StageResult` it returns.

No TensorFlow here: run specs and the dashboard import the Params models.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, model_serializer

from bpnet.errors import BpnetError
from bpnet.specs import Strict, TrainSpec, skeleton_channel_counts


class StageParams(Strict):
    """A stage's parameters. `key_dict()` is what is stored in the stage row and hashed into its
    cache key; fields in OMIT_WHEN_EMPTY are left out of it while empty, so options added later
    keep the keys of runs made before them."""

    OMIT_WHEN_EMPTY: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler):
        data = handler(self)
        for name in self.OMIT_WHEN_EMPTY:
            if name in data and data[name] in (None, 0, [], (), {}):
                del data[name]
        for name, value in self:
            if isinstance(value, TrainSpec) and isinstance(data.get(name), dict):
                data[name] = hashed_train_spec(value, data[name])
        return data

    def key_dict(self):
        return self.model_dump(mode="json")


# TrainSpec fields added after the first keys were computed: left out of a stage's hashed dump
# while at their default, so the runs made before keep their keys (as OMIT_WHEN_EMPTY does for
# stage params). worker_processes: threads or processes compute the same examples.
TRAIN_SPEC_FIELDS_ADDED = (("dataloader", "worker_processes"),)


def hashed_train_spec(spec, dumped):
    """A TrainSpec's dump as stage params hashed it before: with the skeleton's channel counts in
    `model` (ModelSpec no longer has them: the skeleton fixes them; `TrainSpec` drops them again
    when the row is read), without fields added later while at their default. Every train,
    retrain, search and QAT export key stays the key of the runs made before."""
    out = dict(dumped)
    try:
        out["model"] = {**dumped["model"], **skeleton_channel_counts(spec.dataloader.skeleton)}
    except BpnetError:
        pass   # no such skeleton: the stage fails with that message, its key matters not
    for section, name in TRAIN_SPEC_FIELDS_ADDED:
        default = type(getattr(spec, section)).model_fields[name].default
        if name in out.get(section, {}) and out[section][name] == default:
            out[section] = {k: v for k, v in out[section].items() if k != name}
    return out


class StageOutputs(BaseModel):
    """A stage's outputs as stored in its row. Extra keys of rows written by older versions are
    ignored, so a cached stage from before stays readable."""
    model_config = ConfigDict(extra="ignore", frozen=True)

    def dump(self):
        return self.model_dump(mode="json", exclude_none=True)


class ModelOutputs(StageOutputs):
    """Outputs of a stage that produces a Keras model (import, train, retrain, prune, search)."""
    model: str                                # the .hdf5 file inside the stage folder
    num_stages: Optional[int] = None
    prune_threshold: Optional[float] = None   # the search's chosen threshold


# ---------------------------------------------------------------- work units (cost estimates)
# A kind's `work(params, result=None) -> (cost kind, units)` scales its time (worker.costs turns
# past stages' seconds per unit into estimates with bpnet.guide.cost); a kind without one is one
# unit per model (prune, FP32/FP16 export, import, engine, explore).

def training_work(spec):
    """Images seen x input megapixels x stages of training `spec` (a TrainSpec)."""
    from bpnet.data.coco import count_annotated_images
    from bpnet.guide.cost import training_work as work

    loader = spec.dataloader
    images = spec.steps_per_epoch * loader.batch_size if spec.steps_per_epoch else \
        count_annotated_images(loader.dataset.annotations)
    return work(images, spec.num_epoch, loader.image_shape, spec.model.stages)


def evaluation_work(annotations, max_images, input_hw, result=None):
    """Evaluated images (the result's count once measured) x input megapixels."""
    from bpnet.data.coco import count_annotated_images
    from bpnet.guide.cost import inference_work

    if result and result.get("num_images"):
        images = result["num_images"]
    else:
        images = count_annotated_images(annotations)
        images = min(images, max_images) if max_images else images
    return inference_work(images, input_hw)


@dataclass(frozen=True)
class Parent:
    """The finished stage a stage reads: its kind, folder and validated Outputs."""
    kind: str
    dir: Path
    outputs: Any

    def file(self, name, what="file"):
        """The parent's file `name` (a name from its Outputs); a clear error when it is gone."""
        if not name:
            raise BpnetError(f"the parent {self.kind} stage records no {what}")
        path = Path(self.dir) / name
        if not path.is_file():
            raise BpnetError(f"the parent {self.kind} stage's {what} is missing: {path} (artifacts deleted?)")
        return path

    def model(self):
        return self.file(self.outputs.model, "model")


@dataclass
class StageResult:
    """What a kind's `run` returns: its Outputs, the Compare row of an evaluation (else None) and
    name -> number metrics for the metrics table."""
    outputs: StageOutputs
    result: Optional[dict] = None
    metrics: dict = field(default_factory=dict)
