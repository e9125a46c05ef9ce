"""Float comparisons whose tolerance follows the values' scale (threads and summation order
change the last bits; a bound fixed in absolute terms fails on large outputs under load)."""

import numpy as np


def max_relative_diff(actual, expected):
    """max |actual - expected| over the largest |expected| (1 when the maps are all ~0)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(float(np.abs(expected).max(initial=0.0)), 1.0)
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


def assert_close_to_scale(actual, expected, rel, what="outputs"):
    diff = max_relative_diff(actual, expected)
    assert diff <= rel, f"{what} differ by {diff:.3g} of their scale (allowed {rel:g})"
