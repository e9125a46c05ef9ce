"""Structured (filter) pruning: `ranking` decides which filters stay (pure numpy), `graph`
walks a model's config and weights to decide which channels every layer keeps (numpy; depthwise
convs, residual Adds, concatenations), `surgery` rebuilds a smaller Keras model, `model_file` is
the `bpnet prune` verb on BodyPoseNet files and its dry run (`preview_pruning`).

TensorFlow is imported only inside the functions that need it, so the ranking, the plan and the
dry run stay importable without it (`h5_file` reads a model file with h5py alone).
"""

from bpnet.prune.model_file import (count_kept_params, format_summary, load_for_preview,
                                     preview_pruning, prune_model_file)
from bpnet.prune.ranking import filters_to_keep, merge_stats, rank_filters

__all__ = ["count_kept_params", "filters_to_keep", "format_summary", "load_for_preview",
           "merge_stats", "preview_pruning", "prune_model_file", "rank_filters"]
