"""A Keras HDF5 model file's config and weights as plain JSON and numpy arrays, read with h5py
alone: enough to plan pruning without TensorFlow (the dashboard never imports it).

Nothing in the file is executed: the config is parsed as JSON and only datasets are read.
"""

import json
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_model_config_and_weights(path):
    """(functional model config as `model.get_config()` gives it, {layer name: [arrays]})."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise BpnetError(f"model file not found: {path}")
    if not h5py.is_hdf5(path):
        raise BpnetError(f"model file {path} is not a Keras HDF5 file (.hdf5/.h5 expected)")
    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raise BpnetError(f"model file {path} has no model config (a weights-only file?); "
                                 "pruning needs the layer graph")
            config = json.loads(_text(f.attrs["model_config"]))
            group = f["model_weights"] if "model_weights" in f else f
            weights = {}
            for layer in group.attrs.get("layer_names", []):
                layer = _text(layer)
                names = [_text(n) for n in group[layer].attrs.get("weight_names", [])]
                weights[layer] = [np.asarray(group[layer][n]) for n in names]
    except BpnetError:
        raise
    except (OSError, KeyError, ValueError) as err:   # truncated or foreign HDF5 layouts
        raise BpnetError(f"model file {path} could not be read as a Keras HDF5 model: "
                         f"{type(err).__name__}: {err}") from None
    return config.get("config", config), weights
