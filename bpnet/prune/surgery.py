"""Structured pruning of a functional Keras model: `graph.plan_pruning` decides which channels
each tensor keeps (numpy only); this module rebuilds the model from its config with fewer
filters and copies the sliced weights.

Only the model's config and weights are read; the input model object is never changed.
"""

from bpnet.limits import (DEFAULT_PRUNE_GRANULARITY, DEFAULT_PRUNE_MIN_FILTERS, DEFAULT_PRUNE_THRESHOLD, EQUALIZATIONS,
                          NORMALIZERS)
from bpnet.prune.graph import is_prunable_conv, needs_bias, plan_pruning, sliced_weights


def layer_weights(model):
    """{layer name: [numpy arrays]} in `get_weights()` order, the input of `plan_pruning`."""
    return {layer.name: layer.get_weights() for layer in model.layers}


def pruned_config(config, plan):
    """The model config with each convolution's filter count set to the channels it keeps."""
    new_layers = []
    for entry in plan.layers:
        entry = {**entry, "config": dict(entry["config"])}
        # The recorded build shape is the unpruned one; layers rebuild from their real inputs.
        entry.pop("build_config", None)
        if is_prunable_conv(entry):
            entry["config"]["filters"] = plan.filters(entry["name"])[0]
        if needs_bias(plan, entry):
            entry["config"]["use_bias"] = True
        new_layers.append(entry)
    return {**config, "layers": new_layers}


def prune_keras_model(model, threshold=DEFAULT_PRUNE_THRESHOLD, equalization=EQUALIZATIONS[0],
                      granularity=DEFAULT_PRUNE_GRANULARITY, min_filters=DEFAULT_PRUNE_MIN_FILTERS,
                      normalizer=NORMALIZERS[0], excluded_layers=(), return_plan=False):
    """A new, smaller functional model and {conv name: (kept, total)} (depthwise convs included);
    with `return_plan`, the `PruningPlan` as a third value.

    `excluded_layers` (and every layer whose output reaches a model output) keep all filters.
    """
    import tensorflow as tf

    config = model.get_config()
    weights = layer_weights(model)
    plan = plan_pruning(config, weights, threshold=threshold, equalization=equalization,
                        granularity=granularity, min_filters=min_filters, normalizer=normalizer,
                        excluded_layers=excluded_layers)
    new_model = tf.keras.Model.from_config(pruned_config(config, plan))
    for entry in plan.layers:
        sliced = sliced_weights(plan, entry, weights)
        if sliced:
            new_model.get_layer(entry["name"]).set_weights(sliced)
    if return_plan:
        return new_model, plan.pruned_layers(), plan
    return new_model, plan.pruned_layers()
