"""Keras (HDF5) backend: the trained model itself, truncated at the chosen stage.

Truncation (bpnet.model.stage_model) means an earlier `output_stage_to_use` really skips the
later stages, so its speed and AP show the stages trade-off without retraining.

The forward pass is compiled: one `tf.function` graph per input shape (batch, H, W), traced on
first use with that fixed signature. Calling the Keras model eagerly costs a fixed ~60 ms of
Python/op dispatch per call on a 2-core CPU, which made every `.hdf5` evaluation and the "Keras
FP32" baseline of speed-up tables several times slower than the network itself (issue 17).
"""

import numpy as np

from bpnet.backends.base import Backend

# Distinct input shapes kept compiled; evaluation in `adjust_network_input` mode sees a few widths.
MAX_COMPILED_SHAPES = 16


def set_tensorflow_threads(threads):
    """TensorFlow's intra-op (and inter-op) thread count. It can only be set before TensorFlow
    runs its first op; later a different count is a clear error, not a silent default."""
    import tensorflow as tf

    from bpnet.errors import BpnetError

    current = tf.config.threading.get_intra_op_parallelism_threads()
    if current == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        raise BpnetError(f"Keras backend: TensorFlow already runs with {current or 'its default'} threads in "
                         f"this process; {threads} threads must be set before the first model runs") from None


class KerasBackend(Backend):
    name = "keras"
    precision = "fp32"

    def __init__(self, model_path, stage=None, threads=None):
        from bpnet.model import load_model, num_stages, stage_model

        if threads:
            set_tensorflow_threads(int(threads))
        full = load_model(model_path)
        self.num_stages = num_stages(full)
        self.stage = self.num_stages if stage is None else int(stage)
        self.model = stage_model(full, stage)   # raises a BpnetError for a stage out of range
        self.input_name = self.model.input.name.split(":")[0]
        fixed = tuple(self.model.input.shape[1:3])
        self.input_hw = fixed if all(fixed) else None
        self._compiled = {}

    def forward(self, shape):
        """The compiled forward pass for inputs of exactly `shape` (N, H, W, 3)."""
        if shape not in self._compiled:
            import tensorflow as tf

            if len(self._compiled) >= MAX_COMPILED_SHAPES:
                self._compiled.pop(next(iter(self._compiled)))   # oldest first
            model = self.model
            signature = [tf.TensorSpec(shape, tf.float32)]
            self._compiled[shape] = tf.function(lambda x: model(x, training=False),
                                                input_signature=signature, reduce_retracing=False)
        return self._compiled[shape]

    def predict(self, batch):
        batch = np.ascontiguousarray(batch, np.float32)
        heatmaps, pafs = self.forward(tuple(batch.shape))(batch)
        return heatmaps.numpy(), pafs.numpy()

    def close(self):
        self.model = None
        self._compiled = {}
