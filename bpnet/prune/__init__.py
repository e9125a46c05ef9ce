"""Structured (filter) pruning: `ranking` decides which filters stay (pure numpy), `surgery`
rebuilds a smaller Keras model, `model_file` is the `bpnet prune` verb on BodyPoseNet files.

TensorFlow is imported only inside the functions that need it, so the ranking functions stay
importable without it.
"""

from bpnet.prune.model_file import format_summary, prune_model_file
from bpnet.prune.ranking import filters_to_keep, merge_stats, rank_filters

__all__ = ["filters_to_keep", "format_summary", "merge_stats", "prune_model_file", "rank_filters"]
