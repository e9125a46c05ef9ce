"""Which filters a convolution keeps: pure numpy, no TensorFlow.

The TLT "min weight" rule: a filter's importance is the L2 norm of its kernel (bias ignored),
normalised per layer; filters whose normalised norm is not above the threshold go. The number kept
is raised to at least `min_filters` and then rounded up to a multiple of `granularity` (GPU kernels
are fastest on channel counts that are multiples of 8), never above the layer's filter count; the
kept filters are the strongest ones, returned in their original order.
Layers tied by an element-wise op must keep the same channels, so their statistics are merged
first (`merge_stats`).
"""

import numpy as np

from bpnet.errors import BpnetError
from bpnet.limits import (DEFAULT_PRUNE_GRANULARITY, DEFAULT_PRUNE_MIN_FILTERS, EQUALIZATIONS, NORMALIZERS,
                          prune_threshold_problem)



def filter_norms(kernel):
    """L2 norm of each output filter of a kernel whose last axis indexes the filters."""
    kernel = np.asarray(kernel, dtype=np.float64)
    return np.sqrt(np.sum(kernel ** 2, axis=tuple(range(kernel.ndim - 1))))


def normalize_stats(norms, normalizer="max"):
    """Per-layer normalisation of filter norms.

    "max": divide by the largest norm (the strongest filter scores 1).
    "L2": divide by the L2 norm of all the layer's norms and multiply by their count, exactly as
    TLT does (so `-pth` values carry over from TAO); n equal filters then score sqrt(n) each.
    A layer whose filters are all zero scores 0 everywhere (rather than NaN).
    """
    norms = np.asarray(norms, dtype=np.float64)
    check_choice(normalizer, NORMALIZERS, "normalizer (-n)")
    scale = np.max(norms) if normalizer == "max" else np.sqrt(np.sum(norms ** 2)) / len(norms)
    if scale <= 0:
        return np.zeros_like(norms)
    return norms / scale


def rank_filters(kernel, normalizer="max"):
    """The normalised importance of each filter of `kernel` (last axis = filters)."""
    return normalize_stats(filter_norms(kernel), normalizer)


def depthwise_filter_norms(kernel):
    """L2 norm of each channel's filter of a depthwise kernel (kh, kw, channels, multiplier 1)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    return np.sqrt(np.sum(kernel ** 2, axis=(0, 1, 3)))


def rank_depthwise_filters(kernel, normalizer="max"):
    """The normalised importance of each channel of a depthwise conv, as TAO ranks it."""
    return normalize_stats(depthwise_filter_norms(kernel), normalizer)


def merge_stats(stats, equalization=EQUALIZATIONS[0]):
    """One statistic per channel for layers that must keep the same channels.

    union: a channel stays if any layer needs it (max); intersection: only if all do (min);
    arithmetic_mean / geometric_mean: if the layers' mean importance passes the threshold.
    """
    check_choice(equalization, EQUALIZATIONS, "equalization criterion (-eq)")
    stats = np.stack([np.asarray(s, dtype=np.float64) for s in stats])
    if equalization == "union":
        return stats.max(axis=0)
    if equalization == "intersection":
        return stats.min(axis=0)
    if equalization == "arithmetic_mean":
        return stats.mean(axis=0)
    # A zero statistic makes the geometric mean zero; log(0) = -inf is exactly that.
    with np.errstate(divide="ignore"):
        return np.exp(np.log(stats).mean(axis=0))


def count_to_keep(num_above, num_filters, granularity, min_filters):
    """How many filters to keep: at least `min_filters`, a multiple of `granularity`, at most all."""
    count = max(num_above, min(min_filters, num_filters))
    count = -(-count // granularity) * granularity
    return min(count, num_filters)


def filters_to_keep(stats, threshold, granularity=DEFAULT_PRUNE_GRANULARITY, min_filters=DEFAULT_PRUNE_MIN_FILTERS):
    """Sorted indices of the filters kept, given their normalised statistics."""
    stats = np.asarray(stats, dtype=np.float64)
    check_pruning_options(threshold, granularity, min_filters)
    count = count_to_keep(int(np.sum(stats > threshold)), len(stats), granularity, min_filters)
    # A stable sort keeps ties in channel order, so the result is deterministic.
    strongest = np.argsort(-stats, kind="stable")[:count]
    return np.sort(strongest)


def check_choice(value, allowed, what):
    if value not in allowed:
        raise BpnetError(f"{what}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def check_pruning_options(threshold, granularity, min_filters):
    """Raise a BpnetError naming the option if a pruning number is out of range."""
    problem = prune_threshold_problem(threshold)
    if problem:
        raise BpnetError(f"pruning threshold (-pth): {problem} (normalised filter norms below it "
                         "are removed)")
    if not _is_int(granularity) or granularity < 1:
        raise BpnetError(f"pruning granularity (-pg): {granularity!r} is invalid; "
                         "it must be an integer >= 1")
    if not _is_int(min_filters) or min_filters < 1:
        raise BpnetError(f"minimum number of filters (-nf): {min_filters!r} is invalid; "
                         "it must be an integer >= 1")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
