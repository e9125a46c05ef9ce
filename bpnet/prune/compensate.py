"""What a removed channel still contributed, folded into the next convolution's bias (numpy).

A filter whose kernel is zero still outputs a constant: its bias, through the layers after it
(BatchNorm's shift, ReLU6, a depthwise conv's own bias in a network whose BatchNorms were folded,
as in imported TFLite graphs). Dropping the channel would drop that constant too, so the
convolution reading it gets `constant x sum of its kernel taps` added to its bias. With a 1x1
reader (MobileNet's pointwise convs) or 'valid' padding this is exact; with a kxk 'same' reader it
is exact away from the border (zero padding sees no constant). For a pruned filter whose kernel is
small but not zero, the constant is the best single-number stand-in for its output.

`removed_values` walks the graph once: for every tensor, the value each channel would carry if
its producing filter's kernel were zero (NaN where a layer does not map constants to constants).
"""

import numpy as np

from bpnet.prune.graph import ELEMENTWISE, is_channel_concat, is_prunable_conv

IDENTITY = {
    "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
    "UpSampling2D", "Resizing", "ZeroPadding2D", "Cropping2D", "Dropout", "SpatialDropout2D",
    "GaussianNoise", "GaussianDropout", "ActivityRegularization",
}
ACTIVATIONS = {
    "linear": lambda v: v,
    "relu": lambda v: np.maximum(v, 0.0),
    "relu6": lambda v: np.clip(v, 0.0, 6.0),
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "tanh": np.tanh,
}


def _activation(name, values):
    function = ACTIVATIONS.get(name or "linear")
    return function(values) if function else np.full_like(values, np.nan)


def _relu(cfg, v):
    """tf-keras ReLU: max_value, negative_slope below threshold."""
    threshold = cfg.get("threshold") or 0.0
    slope = cfg.get("negative_slope") or 0.0
    out = np.where(v >= threshold, v, slope * (v - threshold))
    return out if cfg.get("max_value") is None else np.minimum(out, cfg["max_value"])


def _batch_norm(cfg, arrays, v):
    arrays = list(arrays)
    gamma = arrays.pop(0) if cfg.get("scale", True) else 1.0
    beta = arrays.pop(0) if cfg.get("center", True) else 0.0
    mean, var = arrays
    return gamma * (v - mean) / np.sqrt(var + cfg.get("epsilon", 1e-3)) + beta


def _conv_bias(entry, arrays, width):
    bias = arrays[1] if entry["config"].get("use_bias", True) and len(arrays) > 1 else 0.0
    return np.zeros(width) + bias


def layer_values(entry, arrays, inputs, width):
    """The constant each output channel carries, given the constants of the inputs."""
    kind, cfg = entry["class_name"], entry["config"]
    if width is None:
        return None
    if kind == "Conv2D":   # its own removed filter: whatever its input, a zero kernel gives bias
        return _activation(cfg.get("activation"), _conv_bias(entry, arrays, width))
    if not inputs or any(v is None for v in inputs):
        return None
    if kind == "DepthwiseConv2D" and cfg.get("depth_multiplier", 1) == 1:
        taps = arrays[0].sum(axis=(0, 1))[:, 0]
        value = inputs[0] * taps + _conv_bias(entry, arrays, width)
        return _activation(cfg.get("activation"), value)
    if kind == "BatchNormalization":
        return _batch_norm(cfg, arrays, inputs[0])
    if kind == "ReLU":
        return _relu(cfg, inputs[0])
    if kind == "LeakyReLU":
        return np.where(inputs[0] >= 0, inputs[0], cfg.get("alpha", 0.3) * inputs[0])
    if kind == "Activation":
        return _activation(cfg.get("activation"), inputs[0])
    if kind in IDENTITY:
        return inputs[0]
    if is_channel_concat(entry):
        return np.concatenate(inputs)
    if kind in ELEMENTWISE and len({len(v) for v in inputs}) == 1:
        stacked = np.stack(inputs)
        reduce = {"Add": np.sum, "Average": np.mean, "Maximum": np.max, "Minimum": np.min,
                  "Multiply": np.prod}.get(kind)
        return reduce(stacked, axis=0) if reduce else stacked[0] - stacked[1]
    return None


def removed_values(layers, inbound, widths, weights):
    """{(layer, tensor index): per-channel constant (float64) or None}."""
    values = {}
    for entry in layers:
        name = entry["name"]
        inputs = [values[key] for key in inbound[name]]
        with np.errstate(all="ignore"):
            out = layer_values(entry, [np.asarray(w, np.float64) for w in weights.get(name, [])],
                               inputs, widths[(name, 0)])
        values[(name, 0)] = out
    return values


def bias_shifts(layers, inbound, kept, widths, weights):
    """{conv name: the shift of every original output's bias} for each convolution that loses
    input channels carrying a (finite, non-zero) constant."""
    values = removed_values(layers, inbound, widths, weights)
    shifts = {}
    for entry in layers:
        name = entry["name"]
        if not is_prunable_conv(entry):
            continue
        source = inbound[name][0]
        in_kept, value = kept[source], values.get(source)
        if in_kept is None or value is None:
            continue
        removed = np.setdiff1d(np.arange(len(value)), in_kept)
        removed = removed[np.isfinite(value[removed]) & (value[removed] != 0)]
        if len(removed):
            taps = np.asarray(weights[name][0], np.float64)[:, :, removed, :].sum(axis=(0, 1))
            shifts[name] = value[removed] @ taps            # (outputs,)
    return shifts
