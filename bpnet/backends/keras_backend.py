"""Keras (HDF5) backend: the trained model itself, truncated at the chosen stage.

Truncation (bpnet.model.stage_model) means an earlier `output_stage_to_use` really skips the
later stages, so its speed and AP show the stages trade-off without retraining.
"""

import numpy as np

from bpnet.backends.base import Backend


class KerasBackend(Backend):
    name = "keras"
    precision = "fp32"

    def __init__(self, model_path, stage=None):
        from bpnet.model import load_model, num_stages, stage_model

        full = load_model(model_path)
        self.num_stages = num_stages(full)
        self.stage = self.num_stages if stage is None else int(stage)
        self.model = stage_model(full, stage)   # raises a BpnetError for a stage out of range
        self.input_name = self.model.input.name.split(":")[0]
        fixed = tuple(self.model.input.shape[1:3])
        self.input_hw = fixed if all(fixed) else None

    def predict(self, batch):
        heatmaps, pafs = self.model(np.asarray(batch, np.float32), training=False)
        return heatmaps.numpy(), pafs.numpy()

    def close(self):
        self.model = None
