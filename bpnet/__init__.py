"""BPNet Studio engine: BodyPoseNet training, pruning, export, INT8 calibration and evaluation.

tf-keras (the Keras 2 API) must be selected before TensorFlow is first imported, because
tensorflow-model-optimization only works with it; importing `bpnet` does that and nothing heavy.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
