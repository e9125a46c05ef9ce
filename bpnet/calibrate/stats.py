"""Per-tensor statistics of calibration activations and the thresholds each calibrator picks
(pure numpy). One pass records min/max and a 2048-bin histogram of |x| per tensor (`TensorStats`);
`entropy`, `minmax` and `percentile` turn a histogram into a clipping threshold `amax`."""

from dataclasses import dataclass, field

import numpy as np

from bpnet.errors import BpnetError
from bpnet.limits import CALIBRATORS, DEFAULT_PERCENTILE

NUM_BINS = 2048
NUM_LEVELS = 128              # positive int8 levels; the quantised distribution has this many bins
MIN_AMAX = 1e-8               # dead tensors (always 0) still need a positive scale


class TensorStats:
    """Running min, max and a histogram of |x| over [0, top] with a fixed number of bins.

    The first batch fixes `top` to its max |x|; a later batch with larger values doubles `top`
    (merging bin pairs) until it fits, so one pass over the data suffices.
    """

    def __init__(self, num_bins=NUM_BINS):
        self.counts = np.zeros(num_bins, dtype=np.int64)
        self.top = 0.0
        self.lo = np.inf
        self.hi = -np.inf

    @property
    def num_bins(self):
        return self.counts.size

    @property
    def bin_width(self):
        return self.top / self.num_bins

    def observe(self, values):
        values = np.asarray(values, dtype=np.float32).ravel()
        if values.size == 0:
            return
        self.lo = min(self.lo, float(values.min()))
        self.hi = max(self.hi, float(values.max()))
        magnitude = np.abs(values)
        amax = float(magnitude.max())
        if self.top == 0.0:
            if amax == 0.0:
                self.counts[0] += magnitude.size
                return
            self.top = amax
        while amax > self.top:
            self._double_range()
        bins = np.minimum((magnitude * (self.num_bins / self.top)).astype(np.int64), self.num_bins - 1)
        self.counts += np.bincount(bins, minlength=self.num_bins)

    def _double_range(self):
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts = np.concatenate([merged, np.zeros_like(merged)])
        self.top *= 2.0

    @property
    def abs_max(self):
        return max(abs(self.lo), abs(self.hi)) if np.isfinite(self.lo) else 0.0


def entropy_threshold_bins(counts, num_levels=NUM_LEVELS):
    """Number of histogram bins to keep so that the KL divergence between the clipped reference
    distribution P and its `num_levels`-level quantisation Q is smallest (EntropyCalibration2).

    For each candidate i: P = counts[:i] with the clipped tail counts[i:] added to its last bin;
    Q = counts[:i] merged into `num_levels` groups (bin j -> group j * levels // i), each group's
    mass spread evenly over the group's non-empty bins. Because Q is constant inside a group, the
    divergence needs only per-group sums, which cumulative sums give for all candidates at once:
        KL = (sum_j P_j log P_j - sum_g mass_g log q_g - tail log q_last) / S + log(S_i / S)
    with S the total count and S_i = sum(counts[:i]).
    """
    hist = np.array(counts, dtype=np.float64)
    n = hist.size
    # The spike of exact zeros (every ReLU output) would dominate the first quantisation group
    # and push the threshold down; NVIDIA's reference implementation flattens it the same way.
    if n > 1:
        hist[0] = hist[1]
    if n <= num_levels or hist[num_levels:].sum() == 0:
        last = np.flatnonzero(hist)
        return int(last[-1] + 1) if last.size else n
    cum = np.concatenate([[0.0], np.cumsum(hist)])                      # cum[i] = sum(hist[:i])
    cum_nonzero = np.concatenate([[0], np.cumsum(hist > 0)])
    cum_hlogh = np.concatenate([[0.0], np.cumsum(_xlogx(hist))])
    total = cum[-1]
    cand = np.arange(num_levels, n + 1)                                 # (C,)
    # group g covers bins [ceil(g i / L), ceil((g + 1) i / L))
    starts = -((-np.arange(num_levels + 1)[None, :] * cand[:, None]) // num_levels)   # (C, L+1)
    mass = np.diff(cum[starts], axis=1)                                 # (C, L)
    filled = np.diff(cum_nonzero[starts], axis=1)
    q = np.where(filled > 0, mass / np.maximum(filled, 1), 0.0)
    tail = total - cum[cand]
    last_bin = hist[cand - 1]
    p_last = last_bin + tail
    p_log_p = cum_hlogh[cand - 1] + _xlogx(p_last)
    q_last = q[:, -1]                                                   # bin i-1 is in the last group
    cross = np.sum(_xlogy(mass, q), axis=1) + _xlogy(tail, q_last)
    kept = cum[cand]
    # No mass below the candidate (a tensor that is never near 0) or a tail on an empty last bin:
    # Q has no mass where P has, the divergence is infinite. Masked before the log, which would
    # otherwise warn (divide by zero) on every such tensor.
    infinite = (kept <= 0) | ((tail > 0) & (last_bin == 0))
    kl = (p_log_p - cross) / total + np.log(np.where(infinite, total, kept) / total)
    kl = np.where(infinite, np.inf, kl)
    if not np.isfinite(kl).any():
        return n
    best = cand.size - 1 - int(np.argmin(kl[::-1]))                     # ties: the larger threshold
    return int(cand[best])


def _xlogx(x):
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def _xlogy(x, y):
    return np.where(x > 0, x * np.log(np.where(y > 0, y, 1.0)), 0.0)


def percentile_amax(counts, bin_width, percentile=DEFAULT_PERCENTILE):
    """Upper edge of the bin where the cumulative share of |x| reaches `percentile` percent."""
    if not 0 < percentile <= 100:
        raise BpnetError(f"--percentile: {percentile} is not in (0, 100]")
    cumulative = np.cumsum(counts)
    if cumulative[-1] == 0:
        return 0.0
    index = int(np.searchsorted(cumulative, cumulative[-1] * percentile / 100.0))
    return (min(index, counts.size - 1) + 1) * bin_width


def tensor_amax(stats, method, percentile=DEFAULT_PERCENTILE):
    """The clipping threshold of one tensor by the chosen calibrator."""
    if stats.top == 0.0:
        return MIN_AMAX
    if method == "minmax":
        amax = stats.abs_max
    elif method == "entropy":
        amax = entropy_threshold_bins(stats.counts) * stats.bin_width
    elif method == "percentile":
        amax = percentile_amax(stats.counts, stats.bin_width, percentile)
    else:
        raise BpnetError(f"--calibrator: {method!r} is not one of {', '.join(CALIBRATORS)}")
    return max(min(amax, stats.abs_max), MIN_AMAX)


def asymmetric_range(stats, amax):
    """(lo, hi) for uint8 activations: the observed range clipped to [-amax, amax], always
    containing 0 (a ReLU output gets [0, amax], so all 256 levels cover real values)."""
    lo = max(min(stats.lo, 0.0), -amax)
    hi = min(max(stats.hi, 0.0), amax)
    if hi - lo < MIN_AMAX:
        hi = lo + MIN_AMAX
    return lo, hi


@dataclass
class Calibration:
    """Per-tensor thresholds (symmetric amax) and asymmetric ranges of one calibrator."""
    method: str
    amax: dict                       # tensor name -> float
    ranges: dict                     # tensor name -> (lo, hi)
    num_images: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def scales(self):
        return {name: a / 127.0 for name, a in self.amax.items()}


def calibration_from_stats(stats_by_tensor, method, percentile=DEFAULT_PERCENTILE, num_images=0):
    if method not in CALIBRATORS:
        raise BpnetError(f"--calibrator: {method!r} is not one of {', '.join(CALIBRATORS)}")
    amax = {name: float(tensor_amax(s, method, percentile)) for name, s in stats_by_tensor.items()}
    ranges = {name: asymmetric_range(s, amax[name]) for name, s in stats_by_tensor.items()}
    return Calibration(method=method, amax=amax, ranges=ranges, num_images=num_images)
