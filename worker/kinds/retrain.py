"""Kind `retrain`: fine-tune the parent's (pruned) model on the run's training recipe; the graph
is loaded from the parent's model file (`load_graph`), so the pruned architecture is kept."""

from worker.kinds import train
from worker.kinds.base import ModelOutputs

KIND = "retrain"
Params = train.Params
Outputs = ModelOutputs
work = train.work      # the same cost kind: a retrain's time per unit is a training's


def run(params, parent, out_dir, progress, inputs=None):
    spec = params.train_spec.model_copy(update={"pretrained_weights": parent.model(), "load_graph": True})
    return train.train_into(spec, out_dir, progress, num_stages=parent.outputs.num_stages)
