"""Kind `train`: a BodyPoseNet trained from a training spec (`bpnet train`)."""

from bpnet.fileio import write_text_atomic
from bpnet.specs import TrainSpec, spec_to_yaml
from worker.kinds.base import ModelOutputs, StageParams, StageResult, training_work

KIND = "train"
MODEL_FILE = "bpnet_model.hdf5"        # what bpnet.train.train writes into its results folder
SUMMARY_METRICS = ("final_loss", "loss", "images_per_s", "params")


class Params(StageParams):
    train_spec: TrainSpec


Outputs = ModelOutputs


def work(params, result=None):
    return "train", training_work(params.train_spec)


def train_into(spec, out_dir, progress, num_stages=None):
    """Train `spec` into `out_dir`; the spec is saved beside the model."""
    from bpnet.train import train

    write_text_atomic(out_dir / "train_spec.yaml", spec_to_yaml(spec))
    summary = train(spec, out_dir, progress)
    metrics = {k: summary[k] for k in SUMMARY_METRICS if isinstance(summary.get(k), (int, float))}
    return StageResult(ModelOutputs(model=MODEL_FILE, num_stages=num_stages or spec.model.stages), None, metrics)


def run(params, parent, out_dir, progress, inputs=None):
    return train_into(params.train_spec, out_dir, progress)

