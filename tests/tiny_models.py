"""Tiny BodyPoseNets saved to HDF5 for the export, calibration, TensorRT and bench tests."""

import numpy as np


def save_tiny_model(path, stages=2, seed=0, width=0.125, bias=None):
    """A seeded, untrained BodyPoseNet at `path`. `bias` sets every conv bias (trained models
    have non-zero ones; tf2onnx drops all-zero biases, which changes parameter counts)."""
    import bpnet  # noqa: F401  (tf-keras before TensorFlow)
    import tensorflow as tf

    from bpnet.model import build_model
    from bpnet.specs import ModelSpec

    tf.keras.utils.set_random_seed(seed)
    model = build_model(ModelSpec(backbone_width=width, stages=stages))
    if bias is not None:
        for layer in model.layers:
            if getattr(layer, "bias", None) is not None:
                layer.bias.assign(np.full(layer.bias.shape, bias, np.float32))
    model.save(path)
    return path
