"""Kind `prune`: `bpnet prune` of the parent's model at one threshold."""

from typing import Literal

from pydantic import Field, field_validator

from bpnet.limits import (DEFAULT_PRUNE_GRANULARITY, DEFAULT_PRUNE_MIN_FILTERS, EQUALIZATIONS, NORMALIZERS,
                          prune_threshold_problem)
from bpnet.specs import Strict
from worker.kinds.base import ModelOutputs, StageParams, StageResult

KIND = "prune"
MODEL_FILE = "pruned_model.hdf5"


class PruneOptions(Strict):
    """The pruning options of a run spec (`prune:`), TAO's `bpnet prune` flags."""
    equalization: Literal[EQUALIZATIONS] = EQUALIZATIONS[0]
    granularity: int = Field(DEFAULT_PRUNE_GRANULARITY, ge=1)
    min_filters: int = Field(DEFAULT_PRUNE_MIN_FILTERS, ge=1)
    normalizer: Literal[NORMALIZERS] = NORMALIZERS[0]
    excluded_layers: tuple[str, ...] = ()


class Params(PruneOptions, StageParams):
    threshold: float

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value):
        problem = prune_threshold_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def options(self):
        """The keyword arguments of bpnet.prune.prune_model_file (and the search's prune options)."""
        return self.model_dump()


Outputs = ModelOutputs


def run(params, parent, out_dir, progress, inputs=None):
    from bpnet.prune.model_file import prune_model_file

    report = prune_model_file(parent.model(), out_dir / MODEL_FILE, progress=progress, **params.options())
    metrics = {k: report[k] for k in ("params_before", "params_after", "param_ratio")}
    return StageResult(ModelOutputs(model=MODEL_FILE, num_stages=parent.outputs.num_stages), None, metrics)

